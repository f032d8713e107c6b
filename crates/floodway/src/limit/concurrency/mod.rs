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
//!   quick. **Where this differs from the published algorithm**: (1) the published one ignores
//!   drops; here a window with drops uses the minimum gradient (0.5), because a downstream that
//!   refuses fast (cheap 503s) would otherwise let the limit grow while it is overloaded.
//!   (2) Upward, the long RTT moves ten times slower than downward and takes at most 10% above
//!   itself as input: with a plain EWMA a standing queue becomes the "normal" latency within a few
//!   dozen windows and the limit drifts up to the refusal point (seen in the simulation tests).
//!   The price: after a lasting rise in the downstream's real latency, the limit stays low for
//!   longer. (3) The published version updates per sample; this one per window, which makes its
//!   behaviour independent of the request rate.
//!
//! Round-trip times of dropped samples are left out of a window's RTT figures: a refusal is often
//! a fast error, and its RTT would make the downstream look quicker, or (for Vegas, which keeps the
//! lowest RTT seen as its base) poison the baseline for good.
//!
//! The simulation tests (`tests/adaptive_sim.rs`, scenarios in `tests/data/concurrency/`) step a
//! simulated downstream's capacity 40 → 10 → 40 and state the band each algorithm settles in:
//! Vegas near capacity (40-60, 10-22), Gradient2 near 1.5-2× capacity, AIMD at the downstream's
//! refusal point (it sees nothing else).
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
