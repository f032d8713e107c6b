//! Concurrency limits with RAII permits, fixed or adaptive.
//!
//! Take a [`Permit`] before starting work; when the work ends, say how it went
//! ([`Permit::success`] or [`Permit::dropped`]) or just drop the permit (no sample: a cancelled call
//! says nothing about the downstream). Capacity returns when the permit is dropped, however the
//! future holding it ends.
//!
//! ## Adaptive limits
//! Samples (round-trip time, in-flight count at start, dropped or not) are gathered into windows. A
//! window closes once it holds as many samples as the current limit (about one round of work), or
//! after `max_window` with at least one sample. The [`LimitAlgorithm`] then proposes the next limit
//! from the window's [`WindowSummary`]. Shipped algorithms:
//!
//! - [`Aimd`]: loss-based. A window with drops (or, if set, a mean RTT above `timeout`) multiplies
//!   the limit by `backoff` (default 0.9); a utilised window without drops adds 1. Simple, fair,
//!   finds the point where the downstream starts refusing.
//! - [`Vegas`]: delay-based, after TCP Vegas. With `base` the lowest RTT seen and `rtt` the window's
//!   mean, the estimated queue at the downstream is `q = limit · (1 − base / rtt)`. With
//!   `l = log10(limit)`: `q ≤ l` → `limit + 6l`; `q < 3l` → `limit + l`; `q > 6l` → `limit − l`;
//!   a window with drops → `limit − l`. Keeps the downstream's queue at a few items.
//! - [`Gradient2`]: delay-based, after Netflix's gradient2. `long` is an EWMA of window RTTs over
//!   `long_windows` windows; `gradient = clamp(tolerance · long / short, 0.5, 1.0)`;
//!   `target = limit · gradient + sqrt(limit)`; `limit ← (1 − smoothing) · limit + smoothing · target`.
//!   When `long > 2 · short` the long RTT is pulled down (×0.9) so recovery after a slow period is
//!   quick. **Where this differs from the published algorithm**: the published one ignores drops; here a
//!   window with drops uses the minimum gradient (0.5), because a downstream that refuses fast
//!   (cheap 503s) *lowers* the mean RTT and would otherwise make the limit grow while it is
//!   overloaded. The published version also updates per sample; this one per window, which
//!   makes its behaviour independent of the request rate.
//! - [`Fixed`]: never changes.
//!
//! ## Partitions and waiting
//! With [`ConcurrencyBuilder::partitions`], each priority class is guaranteed a share of the limit:
//! a request is admitted when total in-flight is under the limit, or when its class is under its
//! guaranteed share (even if the total is reached). With [`ConcurrencyBuilder::wait_queue`], a
//! request that cannot start waits in a bounded LIFO queue (the newest waiter is served first: it
//! is the one most likely to still be wanted) for at most a timeout.

mod controller;
mod error;
mod limiter;

pub use controller::{Aimd, Fixed, Gradient2, LimitAlgorithm, Vegas, WindowSummary};
pub use error::{AcquireError, ConcurrencyConfigError};
pub use limiter::{ConcurrencyBuilder, ConcurrencyLimiter, ConcurrencyStats, Outcome, Permit};
