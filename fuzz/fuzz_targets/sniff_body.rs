// The body of the `sniff` fuzz target, in its own file so that an ordinary test can run it on
// stable over the seed corpus: `connector/tests/bad_input.rs` includes it with `include!`, and
// `fuzz_targets/sniff.rs` calls it. (The connector has no fuzzing module; `sniff` is a pub fn.)

/// Checks `shaddock_connector::sniff` on `data` and on every prefix of it, as the connector
/// reads a connection's first bytes piece by piece:
/// - it never panics;
/// - `NeedMore` only for fewer than `MAX_SNIFF_LEN` bytes, so the connector always decides;
/// - once a prefix is decided, every longer input gets the same answer (more bytes never
///   change a decision already acted on);
/// - `WebSocket` only for an upper-case HTTP method followed by a space.
pub(crate) fn sniff_body(data: &[u8]) {
    use shaddock_connector::sniff::MAX_SNIFF_LEN;
    use shaddock_connector::{Sniff, sniff};
    let whole = sniff(data);
    if whole == Sniff::NeedMore {
        assert!(
            data.len() < MAX_SNIFF_LEN,
            "{} bytes still undecided: {data:?}",
            data.len()
        );
    }
    if whole == Sniff::WebSocket {
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .expect("a request line has a space");
        assert!(space > 0 && data[..space].iter().all(u8::is_ascii_uppercase));
    }
    let mut decided: Option<Sniff> = None;
    for k in 0..=data.len().min(MAX_SNIFF_LEN + 2) {
        let r = sniff(&data[..k]);
        match decided {
            Some(d) => assert_eq!(r, d, "prefix of {k} bytes changed the decision: {data:?}"),
            None if r != Sniff::NeedMore => decided = Some(r),
            None => {}
        }
    }
    if let Some(d) = decided {
        assert_eq!(whole, d, "the whole input changed the decision: {data:?}");
    }
}
