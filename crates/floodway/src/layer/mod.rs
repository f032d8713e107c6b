//! tower integration: floodway's limits and queues as [`tower_layer::Layer`]s.
//!
//! | layer | does | refuses with |
//! |---|---|---|
//! | [`RateLimitLayer`] | one GCRA quota shared by every clone of the service | [`Reason::Rate`] |
//! | [`KeyedRateLimitLayer`] | a GCRA quota per key taken from the request | [`Reason::Rate`], [`Reason::Keys`] |
//! | [`ConcurrencyLimitLayer`] | a shared (adaptive) concurrency limit; responses feed the algorithm | [`Reason::Concurrency`], [`Reason::Timeout`] |
//! | [`QueueLayer`] | a floodway [`Queue`](crate::Queue) in front of the service, drained by one worker task: priorities, deadlines, CoDel shedding | [`Reason::Full`], [`Reason::Shed`], [`Reason::Closed`] |
//!
//! State lives behind `Arc`s, so every clone of a layered service (one per connection in a
//! hyper/axum server) shares the same limit. Refusals are [`Refused`] errors, boxed as
//! [`BoxError`] like the rest of tower; downcast to read the [`Reason`] and the retry hint:
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::sync::Arc;
//! use floodway::layer::{BoxError, RateLimitLayer, Refused};
//! use floodway::{Quota, RateLimiter};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limiter = Arc::new(RateLimiter::new(Quota::per_second(NonZeroU32::new(1).unwrap())));
//! let mut svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter))
//!     .service_fn(|req: u32| async move { Ok::<_, BoxError>(req * 2) });
//! assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
//! let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
//! let refused = err.downcast_ref::<Refused>().unwrap();
//! assert!(refused.retry_after().is_some());
//! # }
//! ```

mod concurrency;
mod error;
mod queue;
mod rate;

pub use concurrency::{AllNormal, Classify, ConcurrencyLimit, ConcurrencyLimitLayer};
pub use error::{BoxError, Reason, Refused};
pub use queue::{QueueLayer, QueueService};
pub use rate::{KeyedRateLimit, KeyedRateLimitLayer, RateLimit, RateLimitLayer};
