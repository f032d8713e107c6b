//! GCRA rate limiting, direct and keyed.
//!
//! A [`Quota`] says how many cells per period and how many may come at once (the burst). GCRA keeps
//! one "theoretical arrival time" (TAT) per limiter or key: a request of `n` cells at `now` is allowed
//! when `max(TAT, now) + n·T − burst·T ≤ now`, where `T` is the emission interval (period / rate);
//! the TAT then moves to `max(TAT, now) + n·T`. A refusal knows exactly when the same request would
//! pass, which is the retry hint. A request larger than the burst can never pass and is refused as
//! [`InsufficientCapacity`], which is a different error from "not yet".

mod direct;
mod error;
mod gcra;
mod keyed;
mod quota;

pub use direct::RateLimiter;
pub use error::{InsufficientCapacity, KeyedRateError, RateError, RateLimited};
pub use keyed::{KeyedRateLimiter, KeyedStats};
pub use quota::{Allowed, Quota};
