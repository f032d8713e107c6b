//! Throttling: how fast work may start ([`rate`]) and how much may run at once ([`concurrency`]).
//!
//! - [`RateLimiter`] / [`KeyedRateLimiter`] implement GCRA (the generic cell rate algorithm): one
//!   timestamp per key, exact decisions, bursts up to a set size, and a precise "not before" time for
//!   every refusal. Keyed state is bounded: a key whose credit is fully restored carries no
//!   information and is forgotten, and a hard cap on tracked keys refuses new keys instead of growing.
//! - [`ConcurrencyLimiter`] bounds in-flight work with RAII permits. Its limit is fixed or follows an
//!   adaptive algorithm (AIMD, Vegas, Gradient2) fed with each permit's round-trip time and whether it
//!   was dropped; optional guaranteed shares per priority class and an optional bounded LIFO wait
//!   queue.
//!
//! ## Which one
//! Use a rate limit when the downstream states its capacity in requests per second (an API quota),
//! or to give each producer a fair share. Use a concurrency limit when the downstream's capacity is
//! in parallel work and unknown or changing: by Little's law, limiting concurrency bounds queueing
//! at the downstream, and an adaptive limit finds the capacity by watching latency and errors.

pub mod concurrency;
pub mod rate;

pub use concurrency::ConcurrencyLimiter;
pub use rate::{KeyedRateLimiter, Quota, RateLimiter};
