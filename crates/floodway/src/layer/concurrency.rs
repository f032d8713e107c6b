use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Reason, Refused};
use crate::limit::concurrency::{AcquireError, Outcome};
use crate::{ConcurrencyLimiter, Priority};

/// Applies a shared [`ConcurrencyLimiter`]; each response feeds its algorithm (an `Ok` response is
/// a success, an `Err` a drop). The request's class comes from `priority` (default: all
/// [`Priority::Normal`]).
///
/// Requests that find the limit reached wait in the limiter's wait queue if it has one, else are
/// refused at once with [`Reason::Concurrency`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer<P = AllNormal> {
    limiter: ConcurrencyLimiter,
    priority: P,
}

/// Gives every request [`Priority::Normal`].
#[derive(Clone, Copy, Debug, Default)]
pub struct AllNormal;

/// Picks a request's class. Implemented for [`AllNormal`] and every `Fn(&Req) -> Priority`.
pub trait Classify<Req> {
    /// The class of `req`.
    fn class(&self, req: &Req) -> Priority;
}

impl<Req> Classify<Req> for AllNormal {
    fn class(&self, _req: &Req) -> Priority {
        Priority::Normal
    }
}

impl<Req, F: Fn(&Req) -> Priority> Classify<Req> for F {
    fn class(&self, req: &Req) -> Priority {
        self(req)
    }
}

impl ConcurrencyLimitLayer {
    /// A layer over `limiter`, all requests in [`Priority::Normal`].
    pub fn new(limiter: ConcurrencyLimiter) -> Self {
        ConcurrencyLimitLayer {
            limiter,
            priority: AllNormal,
        }
    }
}

impl<P> ConcurrencyLimitLayer<P> {
    /// Classes requests with `priority(&request)`.
    pub fn with_priority<Q>(self, priority: Q) -> ConcurrencyLimitLayer<Q> {
        ConcurrencyLimitLayer {
            limiter: self.limiter,
            priority,
        }
    }
}

impl<S, P: Clone> Layer<S> for ConcurrencyLimitLayer<P> {
    type Service = ConcurrencyLimit<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            limiter: self.limiter.clone(),
            priority: self.priority.clone(),
        }
    }
}

/// The service made by [`ConcurrencyLimitLayer`].
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S, P> {
    inner: S,
    limiter: ConcurrencyLimiter,
    priority: P,
}

impl<S, P, Req> Service<Req> for ConcurrencyLimit<S, P>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    P: Classify<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let class = self.priority.class(&req);
        // Keep the service that was driven to readiness for this call; leave a clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            let mut permit = limiter.acquire(class).await.map_err(|e| {
                let reason = match e {
                    AcquireError::Saturated { .. } => Reason::Concurrency,
                    AcquireError::Timeout { .. } => Reason::Timeout,
                };
                Box::new(Refused::new(reason, Some(e.retry_after()))) as BoxError
            })?;
            let result = inner.call(req).await;
            permit.set_outcome(if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::Dropped
            });
            drop(permit);
            result.map_err(Into::into)
        })
    }
}
