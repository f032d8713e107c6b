//! # floodway
//!
//! Back pressure for tokio services. When work arrives faster than a component can finish it,
//! floodway gives you the four classic answers as small, composable primitives, each of which says
//! *why* it refused work and *when* to try again, and none of which drops an item without handing it
//! to someone:
//!
//! | answer | module | start from |
//! |---|---|---|
//! | buffer | [`queue`] | [`Queue`]: bounded by items and bytes, with an [`Overflow`] policy |
//! | shed | [`shed`] | [`CoDel`] sojourn shedding, priority and deadline shedding, [`AdaptiveThrottle`] |
//! | throttle | [`limit`] | [`RateLimiter`] / [`KeyedRateLimiter`] (GCRA), [`ConcurrencyLimiter`] (fixed or adaptive) |
//! | resize | [`elastic`] | [`ElasticPool`]: workers that follow backlog and sojourn time |
//!
//! The [`pressure`] module ties them together: a [`Level`] with hysteresis that producers can
//! subscribe to, and a retry estimate computed from the measured drain rate.
//!
//! ## Choosing
//! - Work that can wait and must not be lost: a [`Queue`] with [`Overflow::Block`] (true back
//!   pressure) or [`Overflow::Reject`] (the caller gets the item back with a retry hint).
//! - Work that is worthless when late: add a deadline per item and a [`CoDel`] shedder; shed items go
//!   to the dead-letter hook with their reason.
//! - A downstream with a known rate: [`RateLimiter`]; one quota per producer: [`KeyedRateLimiter`].
//! - A downstream whose capacity you do not know: an adaptive [`ConcurrencyLimiter`].
//! - A consumer side that should grow and shrink: [`ElasticPool`].
//!
//! ```
//! use floodway::{Overflow, Queue};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let queue = Queue::builder()
//!     .max_items(2)
//!     .overflow(Overflow::Reject)
//!     .dead_letter(|letter: floodway::DeadLetter<&str>| eprintln!("dead letter: {letter:?}"))
//!     .build()
//!     .unwrap();
//! queue.try_push("a").unwrap();
//! queue.try_push("b").unwrap();
//! let refused = queue.try_push("c").unwrap_err();
//! assert_eq!(refused.into_item(), "c"); // the item comes back, with a retry hint
//! assert_eq!(queue.pop().await.unwrap().item, "a");
//! # }
//! ```
//!
//! This crate does no network or disk I/O. By default all time is read from
//! [`tokio::time::Instant`], so every behaviour can be tested with paused time; hot paths can read
//! the CPU's counter instead (see [`Clock`]).
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod clock;
pub mod dead_letter;
pub mod elastic;
pub mod limit;
pub mod observe;
pub mod pressure;
mod priority;
pub mod queue;
pub mod shed;

#[cfg(feature = "tower")]
pub mod layer;

pub use clock::Clock;
pub use dead_letter::{DeadLetter, DropReason};
pub use elastic::ElasticPool;
pub use limit::{ConcurrencyLimiter, KeyedRateLimiter, Quota, RateLimiter};
pub use observe::Observer;
pub use pressure::{Level, Pressure};
pub use priority::{ParsePriorityError, Priority};
pub use queue::{Overflow, Queue};
pub use shed::{AdaptiveThrottle, CoDel};

// The README's example is compiled and run as a doctest.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
