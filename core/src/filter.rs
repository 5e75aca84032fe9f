//! Filters: one async trait for frontends and backends, run around every request and notify
//! (pomelo's `app.before` / `app.after`).
//!
//! `before` may refuse a message (its error becomes the response, the handler does not run);
//! `after` sees the outcome — the response body or the error — of every message, refused
//! ones included. Filters run in registration order.

use std::future::Future;

use crate::error::HandlerError;
use crate::handler::{BoxFuture, Outcome};
use crate::request::Request;

/// A filter for sessions `S` (`Session` on frontends, `BackendSession` on backends).
///
/// ```
/// use shaddock_core::{Filter, HandlerError, Outcome, Request};
///
/// struct NoEmptyBodies;
///
/// impl<S: Send + Sync + 'static> Filter<S> for NoEmptyBodies {
///     async fn before(&self, req: &Request<S>) -> Result<(), HandlerError> {
///         if req.body().as_object().is_some_and(|o| o.is_empty()) {
///             return Err(HandlerError::new(400, format!("{}: empty body", req.route())));
///         }
///         Ok(())
///     }
///
///     async fn after(&self, req: &Request<S>, outcome: &Outcome) {
///         tracing::debug!(route = req.route(), ok = outcome.is_ok(), "handled");
///     }
/// }
/// ```
pub trait Filter<S>: Send + Sync + 'static {
    /// Checks a message before it is handled.
    ///
    /// # Errors
    /// The refusal, answered to requests as the error response.
    fn before(&self, req: &Request<S>) -> impl Future<Output = Result<(), HandlerError>> + Send {
        let _ = req;
        async { Ok(()) }
    }

    /// Observes a message's outcome (also of one a before filter refused).
    fn after(&self, req: &Request<S>, outcome: &Outcome) -> impl Future<Output = ()> + Send {
        let _ = (req, outcome);
        async {}
    }
}

/// A [`Filter`] behind a pointer (what servers store).
pub trait DynFilter<S>: Send + Sync {
    /// [`Filter::before`].
    fn before<'a>(&'a self, req: &'a Request<S>) -> BoxFuture<'a, Result<(), HandlerError>>;
    /// [`Filter::after`].
    fn after<'a>(&'a self, req: &'a Request<S>, outcome: &'a Outcome) -> BoxFuture<'a, ()>;
}

impl<S: 'static, F: Filter<S>> DynFilter<S> for F {
    fn before<'a>(&'a self, req: &'a Request<S>) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(Filter::before(self, req))
    }

    fn after<'a>(&'a self, req: &'a Request<S>, outcome: &'a Outcome) -> BoxFuture<'a, ()> {
        Box::pin(Filter::after(self, req, outcome))
    }
}

/// A before filter from a synchronous closure.
#[derive(Debug, Clone)]
pub struct BeforeFn<F>(pub F);

impl<S, F> Filter<S> for BeforeFn<F>
where
    S: Sync + 'static,
    F: Fn(&Request<S>) -> Result<(), HandlerError> + Send + Sync + 'static,
{
    fn before(&self, req: &Request<S>) -> impl Future<Output = Result<(), HandlerError>> + Send {
        std::future::ready((self.0)(req))
    }
}

/// An after filter from a synchronous closure.
#[derive(Debug, Clone)]
pub struct AfterFn<F>(pub F);

impl<S, F> Filter<S> for AfterFn<F>
where
    S: Sync + 'static,
    F: Fn(&Request<S>, &Outcome) + Send + Sync + 'static,
{
    fn after(&self, req: &Request<S>, outcome: &Outcome) -> impl Future<Output = ()> + Send {
        (self.0)(req, outcome);
        std::future::ready(())
    }
}

/// Runs `filters`' before hooks in order; the first refusal wins.
///
/// # Errors
/// The refusal.
pub async fn run_before<S>(
    filters: &[std::sync::Arc<dyn DynFilter<S>>],
    req: &Request<S>,
) -> Result<(), HandlerError> {
    for f in filters {
        f.before(req).await?;
    }
    Ok(())
}

/// Runs `filters`' after hooks in order.
pub async fn run_after<S>(
    filters: &[std::sync::Arc<dyn DynFilter<S>>],
    req: &Request<S>,
    outcome: &Outcome,
) {
    for f in filters {
        f.after(req, outcome).await;
    }
}
