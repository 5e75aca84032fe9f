//! Coming back after a lost connection: [`ReconnectPolicy`] (opt-in, through
//! [`ClientConfig::reconnect`](crate::ClientConfig::reconnect)).
//!
//! # What happens when a connection is lost
//! When a connection with a policy ends for any reason but [`Client::close`](crate::Client::close),
//! every handle being dropped, or a kick (unless [`ReconnectPolicy::on_kick`] or
//! [`ReconnectPolicy::reconnect_after_kick_if`] says otherwise), the client:
//! 1. fails the requests in flight with [`Error::Disconnected`] (the server may or may not
//!    have handled them) and emits [`Event::ConnectionLost`](crate::Event::ConnectionLost);
//! 2. for attempt *n* = 1, 2, …: emits [`Event::ReconnectAttempt`](crate::Event::ReconnectAttempt)
//!    with the delay it then waits (exponential backoff with jitter), asks the resolver for
//!    the address ([`ReconnectPolicy::resolve_with`]; by default the address it last used, or
//!    the gate again for [`connect_via_gate`](crate::connect_via_gate)), connects, repeats the
//!    handshake and runs the hook ([`ReconnectPolicy::on_reconnect`]) on the new connection;
//!    a failure of any step is [`Event::ReconnectFailed`](crate::Event::ReconnectFailed) and
//!    the next attempt follows;
//! 3. on success, emits [`Event::Reconnected`](crate::Event::Reconnected) and serves the
//!    requests again; subscriptions ([`Client::on`](crate::Client::on)) carry on with the new
//!    connection's pushes;
//! 4. when the attempts ([`ReconnectPolicy::max_attempts`]) or the time
//!    ([`ReconnectPolicy::max_elapsed`]) run out, emits
//!    [`Event::ReconnectGaveUp`](crate::Event::ReconnectGaveUp), then
//!    [`Event::Disconnected`](crate::Event::Disconnected) with the reason the connection was
//!    lost; the client is then closed for good.
//!
//! # Requests made while reconnecting
//! With [`WhileReconnecting::Wait`] (the default) a request or notify waits for the new
//! connection (after the hook ran), bounded by the handle's request timeout
//! ([`Error::Timeout`] when it runs out, [`Error::Disconnected`] if the client gives up). With
//! [`WhileReconnecting::FailFast`] it fails at once with [`Error::Reconnecting`].

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::{Client, DisconnectReason, Error};

/// A boxed future of the hooks.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// The resolver: attempt number → `host:port`.
pub(crate) type Resolver = Arc<dyn Fn(u32) -> BoxFuture<Result<String, Error>> + Send + Sync>;
/// The re-entry hook: the client bound to the new connection.
pub(crate) type Hook = Arc<dyn Fn(Client) -> BoxFuture<Result<(), Error>> + Send + Sync>;
/// Which kick reasons are reconnected.
pub(crate) type KickFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What requests and notifies do while the client reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhileReconnecting {
    /// Wait for the new connection (once its hook succeeded), up to the request timeout.
    #[default]
    Wait,
    /// Fail at once with [`Error::Reconnecting`].
    FailFast,
}

/// How a client reconnects after losing its connection. See the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use serde_json::json;
/// use shaddock_client::{ClientConfig, ReconnectPolicy};
///
/// let policy = ReconnectPolicy::default()
///     .with_backoff(Duration::from_millis(100), Duration::from_secs(5))
///     .with_max_attempts(Some(20))
///     .on_reconnect(|client| async move {
///         // Re-enter the room on the new connection.
///         client
///             .request("connector.entryHandler.enter", &json!({"username": "bob", "rid": "lobby"}))
///             .await?;
///         Ok(())
///     });
/// let config = ClientConfig::default().with_reconnect(policy);
/// # let _ = config;
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// The delay before the first attempt; each next one doubles, up to `max_backoff`.
    /// Default 200 ms.
    pub initial_backoff: Duration,
    /// The longest delay between two attempts. Default 5 s.
    pub max_backoff: Duration,
    /// Randomness of each delay, from 0.0 (exact delays) to 1.0: the delay is drawn uniformly
    /// in `[d × (1 − jitter), d]`, so that the clients of a dead server do not all come back at
    /// the same instant. Default 0.5.
    pub jitter: f64,
    /// The most attempts per lost connection; `None`: no limit (then set `max_elapsed`).
    /// Default `Some(10)`.
    pub max_attempts: Option<u32>,
    /// The most time from the loss to the start of an attempt; `None`: no limit. Default
    /// `None`.
    pub max_elapsed: Option<Duration>,
    /// How long one attempt (resolver, connect, handshake, hook) may take. Default 30 s.
    pub attempt_timeout: Duration,
    /// Reconnect after any kick too. A kick means "go away" (pomelo kicks on a duplicate
    /// login or a ban), so by default a kicked client stays disconnected; see also
    /// [`reconnect_after_kick_if`](Self::reconnect_after_kick_if) to choose by reason (a
    /// connector that stops gracefully kicks its clients too). Default `false`.
    pub on_kick: bool,
    /// What requests made while reconnecting do. Default [`WhileReconnecting::Wait`].
    pub while_reconnecting: WhileReconnecting,
    pub(crate) resolver: Option<Resolver>,
    pub(crate) hook: Option<Hook>,
    pub(crate) kick_filter: Option<KickFilter>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            jitter: 0.5,
            max_attempts: Some(10),
            max_elapsed: None,
            attempt_timeout: Duration::from_secs(30),
            on_kick: false,
            while_reconnecting: WhileReconnecting::Wait,
            resolver: None,
            hook: None,
            kick_filter: None,
        }
    }
}

impl fmt::Debug for ReconnectPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReconnectPolicy")
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("jitter", &self.jitter)
            .field("max_attempts", &self.max_attempts)
            .field("max_elapsed", &self.max_elapsed)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("on_kick", &self.on_kick)
            .field("while_reconnecting", &self.while_reconnecting)
            .field("resolver", &self.resolver.is_some())
            .field("hook", &self.hook.is_some())
            .field("kick_filter", &self.kick_filter.is_some())
            .finish()
    }
}

impl ReconnectPolicy {
    /// This policy with other backoff bounds (`initial` for the first attempt, doubling up to
    /// `max`).
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// This policy with another jitter (clamped to 0.0..=1.0).
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// This policy with another attempt limit (`None`: unlimited).
    pub fn with_max_attempts(mut self, max: Option<u32>) -> Self {
        self.max_attempts = max;
        self
    }

    /// This policy with a time limit (`None`: unlimited).
    pub fn with_max_elapsed(mut self, max: Option<Duration>) -> Self {
        self.max_elapsed = max;
        self
    }

    /// This policy with another [`WhileReconnecting`] behaviour.
    pub fn with_while_reconnecting(mut self, mode: WhileReconnecting) -> Self {
        self.while_reconnecting = mode;
        self
    }

    /// This policy, reconnecting after a kick too (or not).
    pub fn with_on_kick(mut self, on_kick: bool) -> Self {
        self.on_kick = on_kick;
        self
    }

    /// Reconnect after a kick whose reason `filter` accepts (e.g. a server that is stopping,
    /// not a ban). [`on_kick`](Self::on_kick) `true` reconnects after every kick regardless.
    pub fn reconnect_after_kick_if<F>(mut self, filter: F) -> Self
    where
        F: Fn(&str) -> bool + Send + Sync + 'static,
    {
        self.kick_filter = Some(Arc::new(filter));
        self
    }

    /// Where to reconnect: `resolve(attempt)` gives the `host:port` for attempt *n* (from 1),
    /// e.g. by asking a gate ([`query_entry`](crate::query_entry)). The transport and TLS
    /// settings stay those of the first connection. An error fails that attempt. Without a
    /// resolver the client reconnects to the address it last used
    /// ([`connect_via_gate`](crate::connect_via_gate) sets one that asks the gate again).
    pub fn resolve_with<F, Fut>(mut self, resolve: F) -> Self
    where
        F: Fn(u32) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, Error>> + Send + 'static,
    {
        self.resolver = Some(Arc::new(move |attempt| Box::pin(resolve(attempt))));
        self
    }

    /// Run `hook` on each new connection, after its handshake and before anything else uses
    /// it: to log in again, re-enter a room, subscribe on the server side. The [`Client`] it
    /// gets is bound to that connection (use it only inside the hook). Requests made meanwhile
    /// through the other handles wait for the hook (see [`WhileReconnecting`]). An error (or
    /// a hook that outlives [`attempt_timeout`](Self::attempt_timeout)) closes that
    /// connection and fails the attempt. Do not capture a [`Client`] of the same session in
    /// the hook: the policy lives as long as the session, so that handle would keep the
    /// session from ending when the others are dropped.
    pub fn on_reconnect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Error>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |client| Box::pin(hook(client))));
        self
    }

    /// Whether a connection that ended for `reason` is to be reconnected.
    pub(crate) fn applies_to(&self, reason: &DisconnectReason) -> bool {
        match reason {
            DisconnectReason::Closed => false,
            DisconnectReason::Kicked { reason } => {
                self.on_kick || self.kick_filter.as_ref().is_some_and(|f| f(reason))
            }
            _ => true,
        }
    }
}

/// The delays of one series of attempts.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    jitter: f64,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(policy: &ReconnectPolicy) -> Self {
        // A random seed without a dependency: std's hasher keys are random per process and
        // per `RandomState`.
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Self {
            next: policy.initial_backoff,
            max: policy.max_backoff.max(policy.initial_backoff),
            jitter: if policy.jitter.is_nan() {
                0.0
            } else {
                policy.jitter.clamp(0.0, 1.0)
            },
            rng: seed | 1,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // xorshift64*: plenty for spreading reconnects.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let unit =
            (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(1.0 - self.jitter * unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_max_within_the_jitter() {
        let policy = ReconnectPolicy::default()
            .with_backoff(Duration::from_millis(100), Duration::from_millis(700))
            .with_jitter(0.5);
        let mut b = Backoff::new(&policy);
        let bases = [100, 200, 400, 700, 700, 700];
        for base in bases {
            let d = b.next_delay();
            let base = Duration::from_millis(base);
            assert!(
                d <= base && d >= base / 2,
                "{d:?} not in [{:?}, {base:?}]",
                base / 2
            );
        }
        let mut exact = Backoff::new(&policy.clone().with_jitter(0.0));
        assert_eq!(exact.next_delay(), Duration::from_millis(100));
        assert_eq!(exact.next_delay(), Duration::from_millis(200));
        // Out-of-range jitter is clamped; delays never go negative.
        let mut wild = Backoff::new(&policy.with_jitter(7.0));
        for _ in 0..100 {
            assert!(wild.next_delay() <= Duration::from_millis(700));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        // 20 clients of one dead server: their first delays differ.
        let policy = ReconnectPolicy::default();
        let first: std::collections::HashSet<Duration> = (0..20)
            .map(|_| Backoff::new(&policy).next_delay())
            .collect();
        assert!(
            first.len() > 1,
            "20 clients would retry at one instant: {first:?}"
        );
    }

    #[test]
    fn a_kick_or_a_close_is_not_reconnected_by_default() {
        let p = ReconnectPolicy::default();
        assert!(!p.applies_to(&DisconnectReason::Closed));
        let kick = DisconnectReason::Kicked {
            reason: "kick".into(),
        };
        assert!(!p.applies_to(&kick));
        assert!(p.clone().with_on_kick(true).applies_to(&kick));
        let stopping = p
            .clone()
            .reconnect_after_kick_if(|reason| reason.contains("stop"));
        assert!(!stopping.applies_to(&kick));
        assert!(stopping.applies_to(&DisconnectReason::Kicked {
            reason: "cluster stop".into()
        }));
        assert!(p.applies_to(&DisconnectReason::ServerClosed));
        assert!(p.applies_to(&DisconnectReason::HeartbeatTimeout {
            after: Duration::from_secs(1)
        }));
    }
}
