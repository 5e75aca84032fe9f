//! Pushes: to sessions by id, by uid, to everyone; encoded once, shared by every queue.

use bytes::Bytes;
use serde_json::Value;

use super::{Error, Frontend};
use crate::session::SessionId;

/// Outcome of a push to several sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushReport {
    /// Sessions the message was queued for.
    pub sent: usize,
    /// Sessions not found or closed.
    pub missing: usize,
    /// Sessions whose queue was full (they were kicked as slow consumers).
    pub full: usize,
}

impl std::ops::AddAssign for PushReport {
    fn add_assign(&mut self, other: Self) {
        self.sent += other.sent;
        self.missing += other.missing;
        self.full += other.full;
    }
}

impl Frontend {
    /// Encodes a PUSH of `body` (JSON) on `route` once, as a whole DATA package; the route is
    /// compressed when the dictionary has it. Send the result with
    /// [`Session::send_encoded`](crate::Session::send_encoded) or [`Frontend::push_encoded`].
    ///
    /// # Errors
    /// [`Error::Encode`] for a route over 255 bytes or a body over the package limit.
    pub fn encode_push(&self, route: &str, body: &Value) -> Result<Bytes, Error> {
        Ok(self.inner.codec.push_package(route, body)?)
    }

    /// Pushes `body` on `route` to one session.
    ///
    /// # Errors
    /// [`Error::Encode`]; a missing or full session is reported in the [`PushReport`].
    pub fn push(&self, sid: SessionId, route: &str, body: &Value) -> Result<PushReport, Error> {
        self.push_many(&[sid], route, body)
    }

    /// Pushes `body` on `route` to each session of `sids`, encoding it once.
    ///
    /// # Errors
    /// [`Error::Encode`].
    pub fn push_many(
        &self,
        sids: &[SessionId],
        route: &str,
        body: &Value,
    ) -> Result<PushReport, Error> {
        let bytes = self.encode_push(route, body)?;
        Ok(self.push_encoded(sids, &bytes))
    }

    /// Sends already encoded packages (one shared buffer) to each session of `sids`.
    pub fn push_encoded(&self, sids: &[SessionId], packages: &Bytes) -> PushReport {
        let mut report = PushReport::default();
        for sid in sids {
            match self.inner.sessions.get(*sid) {
                None => report.missing += 1,
                Some(s) => tally(&mut report, s.send_encoded(packages.clone())),
            }
        }
        report
    }

    /// Sends already encoded packages (one shared buffer) to every session bound to each uid
    /// of `uids`; a uid with no session here counts as one `missing`.
    pub fn push_encoded_to_uids(&self, uids: &[String], packages: &Bytes) -> PushReport {
        self.push_to_uid_iter(uids.iter().map(String::as_str), packages)
    }

    /// As [`Frontend::push_encoded_to_uids`], with the uids packed in one buffer, each
    /// followed by a NUL byte (`PushArgs::uid_list`, what a channel sends). A uid that is not
    /// UTF-8 counts as `missing`.
    pub fn push_encoded_to_uid_list(&self, uid_list: &[u8], packages: &Bytes) -> PushReport {
        // Usually all of it is UTF-8: check it once, not uid by uid.
        if let Ok(list) = std::str::from_utf8(uid_list) {
            return self.push_to_uid_iter(list.split('\0').filter(|u| !u.is_empty()), packages);
        }
        let mut bad = 0;
        let uids = uid_list
            .split(|b| *b == 0)
            .filter(|u| !u.is_empty())
            .filter_map(|u| {
                let s = std::str::from_utf8(u).ok();
                bad += usize::from(s.is_none());
                s
            });
        let mut report = self.push_to_uid_iter(uids, packages);
        report.missing += bad;
        report
    }

    fn push_to_uid_iter<'a>(
        &self,
        uids: impl IntoIterator<Item = &'a str>,
        packages: &Bytes,
    ) -> PushReport {
        let mut report = PushReport::default();
        let missing = self.inner.sessions.for_each_of_uids(uids, |s| {
            tally(&mut report, s.send_encoded(packages.clone()));
        });
        report.missing += missing;
        report
    }

    /// Sends already encoded packages (one shared buffer) to every open session.
    pub fn broadcast_encoded(&self, packages: &Bytes) -> PushReport {
        let mut report = PushReport::default();
        for s in self.inner.sessions.all() {
            tally(&mut report, s.send_encoded(packages.clone()));
        }
        report
    }

    /// Pushes `body` on `route` to every open session, encoding it once.
    ///
    /// # Errors
    /// [`Error::Encode`].
    pub fn broadcast(&self, route: &str, body: &Value) -> Result<PushReport, Error> {
        let bytes = self.encode_push(route, body)?;
        Ok(self.broadcast_encoded(&bytes))
    }
}

fn tally(report: &mut PushReport, r: Result<(), crate::session::SessionError>) {
    match r {
        Ok(()) => report.sent += 1,
        Err(crate::session::SessionError::QueueFull { .. }) => report.full += 1,
        Err(_) => report.missing += 1,
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use serde_json::json;
    use shaddock_protocol::message::{Message, MessageType};

    use super::*;
    use crate::config::ConnectorConfig;
    use crate::session::Session;

    /// A frontend with `uids.len()` sessions (no connections), bound to the given uids.
    fn frontend_with_sessions(uids: &[Option<&str>]) -> (Frontend, Vec<Session>) {
        let frontend = Frontend::builder(ConnectorConfig::default())
            .build()
            .unwrap();
        let sessions = (0..uids.len())
            .map(|i| {
                let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                let s = frontend.inner.sessions.create(peer, 4);
                if let Some(uid) = uids[i] {
                    s.bind(uid).unwrap();
                }
                s
            })
            .collect();
        (frontend, sessions)
    }

    #[test]
    fn a_push_to_many_sessions_shares_one_buffer() {
        let (frontend, receivers) = frontend_with_sessions(&[None, None, None]);
        let sids: Vec<SessionId> = receivers.iter().map(Session::id).collect();
        let report = frontend
            .push_many(&sids, "onChat", &json!({"msg": "once"}))
            .unwrap();
        assert_eq!(report.sent, 3);
        let got: Vec<Bytes> = receivers
            .iter()
            .map(|session| {
                let mut batch = Vec::new();
                session.outbox().take(&mut batch, usize::MAX, usize::MAX);
                assert_eq!(batch.len(), 1);
                batch.remove(0)
            })
            .collect();
        // Same bytes, same allocation: encoded once, shared by all three queues.
        assert!(
            got.iter()
                .all(|b| b.as_ptr() == got[0].as_ptr() && b.len() == got[0].len())
        );
        let msg = Message::decode(got[0].slice(4..)).unwrap();
        assert_eq!(msg.kind, MessageType::Push);
        assert_eq!(&msg.body[..], br#"{"msg":"once"}"#);
    }

    #[test]
    fn a_packed_uid_list_reaches_every_session_of_each_uid() {
        let (frontend, all) =
            frontend_with_sessions(&[Some("alice"), Some("bob"), Some("alice"), Some("carol")]);
        let package = Bytes::from_static(b"pkg");
        // alice (2 sessions), bob, an unknown uid, and bytes that are not UTF-8.
        let report = frontend.push_encoded_to_uid_list(b"alice\0nobody\0bob\0\xff\0", &package);
        assert_eq!((report.sent, report.missing, report.full), (3, 2, 0));
        let queued: Vec<usize> = all.iter().map(|s| s.outbox().len()).collect();
        assert_eq!(queued, vec![1, 1, 1, 0], "carol was not a target");
        // All UTF-8 (the usual case, checked in one go).
        let report = frontend.push_encoded_to_uid_list(b"carol\0nobody\0alice\0", &package);
        assert_eq!((report.sent, report.missing, report.full), (3, 1, 0));
        let queued: Vec<usize> = all.iter().map(|s| s.outbox().len()).collect();
        assert_eq!(queued, vec![2, 1, 2, 1]);
    }
}
