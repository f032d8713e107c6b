use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Reason, Refused};
use crate::limit::rate::KeyedRateError;
use crate::{KeyedRateLimiter, RateLimiter};

/// Applies one shared [`RateLimiter`] to every request; see the [module docs](super).
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    limiter: Arc<RateLimiter>,
}

impl RateLimitLayer {
    /// A layer drawing from `limiter` (shared with anything else holding the `Arc`).
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        RateLimitLayer { limiter }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Arc<RateLimiter>,
}

pin_project! {
    /// The response future of the rate-limit services: the inner future, or an immediate refusal.
    #[project = GateProj]
    #[derive(Debug)]
    pub enum Gate<F> {
        /// Passed: the inner service's future.
        Passed { #[pin] future: F },
        /// Refused before reaching the inner service.
        Refused { refused: Option<Refused> },
    }
}

impl<F, T, E> Future for Gate<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GateProj::Passed { future } => future.poll(cx).map_err(Into::into),
            GateProj::Refused { refused } => Poll::Ready(Err(refused
                .take()
                .expect("Gate polled after completion")
                .into())),
        }
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Gate<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.limiter.check() {
            Ok(_) => Gate::Passed {
                future: self.inner.call(req),
            },
            Err(limited) => Gate::Refused {
                refused: Some(Refused::new(Reason::Rate, Some(limited.retry_after))),
            },
        }
    }
}

/// Applies a [`KeyedRateLimiter`], with the key taken from each request by `key`.
#[derive(Debug)]
pub struct KeyedRateLimitLayer<K, F> {
    limiter: Arc<KeyedRateLimiter<K>>,
    key: F,
}

impl<K, F: Clone> Clone for KeyedRateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, F> KeyedRateLimitLayer<K, F> {
    /// A layer drawing from `limiter`, keyed by `key(&request)`.
    pub fn new(limiter: Arc<KeyedRateLimiter<K>>, key: F) -> Self {
        KeyedRateLimitLayer { limiter, key }
    }
}

impl<S, K, F: Clone> Layer<S> for KeyedRateLimitLayer<K, F> {
    type Service = KeyedRateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// The service made by [`KeyedRateLimitLayer`].
#[derive(Debug)]
pub struct KeyedRateLimit<S, K, F> {
    inner: S,
    limiter: Arc<KeyedRateLimiter<K>>,
    key: F,
}

impl<S: Clone, K, F: Clone> Clone for KeyedRateLimit<S, K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, F, Req> Service<Req> for KeyedRateLimit<S, K, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Gate<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key)(&req);
        let refused = match self.limiter.check(&key) {
            Ok(_) => {
                return Gate::Passed {
                    future: self.inner.call(req),
                };
            }
            Err(KeyedRateError::Limited(l)) => Refused::new(Reason::Rate, Some(l.retry_after)),
            Err(KeyedRateError::TooManyKeys { retry_after }) => {
                Refused::new(Reason::Keys, Some(retry_after))
            }
            Err(KeyedRateError::Insufficient(_)) => Refused::new(Reason::Never, None),
        };
        Gate::Refused {
            refused: Some(refused),
        }
    }
}
