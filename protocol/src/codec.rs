//! tokio-util [`Decoder`]/[`Encoder`] adapters for packages over a byte stream (raw TCP).
//!
//! They only translate: all the work is in [`PackageDecoder`] and [`Package::encode`].

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::package::{Package, PackageDecoder};
use crate::{Error, Message};

/// Frames a byte stream into [`Package`]s and writes packages (or DATA messages) back.
#[derive(Debug, Clone)]
pub struct PackageCodec {
    decoder: PackageDecoder,
}

impl PackageCodec {
    /// A codec refusing package bodies over `max_body_len` bytes.
    pub fn new(max_body_len: usize) -> Self {
        Self {
            decoder: PackageDecoder::new(max_body_len),
        }
    }
}

impl Decoder for PackageCodec {
    type Item = Package;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Package>, Error> {
        self.decoder.decode(src)
    }
}

impl Encoder<Package> for PackageCodec {
    type Error = Error;

    fn encode(&mut self, item: Package, dst: &mut BytesMut) -> Result<(), Error> {
        item.encode(dst)
    }
}

impl Encoder<&Package> for PackageCodec {
    type Error = Error;

    fn encode(&mut self, item: &Package, dst: &mut BytesMut) -> Result<(), Error> {
        item.encode(dst)
    }
}

impl Encoder<&Message> for PackageCodec {
    type Error = Error;

    /// Writes a DATA package holding the message.
    fn encode(&mut self, item: &Message, dst: &mut BytesMut) -> Result<(), Error> {
        item.encode_package(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PackageType;

    #[test]
    fn decodes_across_reads_and_encodes() {
        let mut codec = PackageCodec::new(1024);
        let mut wire = BytesMut::new();
        codec
            .encode(Package::new(PackageType::Kick, &b"{}"[..]), &mut wire)
            .unwrap();
        let mut src = BytesMut::new();
        for byte in wire.iter() {
            assert!(codec.decode(&mut src).unwrap().is_none());
            src.extend_from_slice(&[*byte]);
        }
        let package = codec.decode(&mut src).unwrap().unwrap();
        assert_eq!(package, Package::new(PackageType::Kick, &b"{}"[..]));
        assert!(codec.decode_eof(&mut src).unwrap().is_none());
    }
}
