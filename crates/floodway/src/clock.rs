//! Where primitives read the time.
//!
//! Every primitive reads [`tokio::time::Instant`] by default, so tests can pause and advance time
//! with `tokio::time::pause` and get exact, repeatable answers. Reading that clock is a system call
//! through the vDSO (about 30 ns on a virtual machine), which is most of the cost of a rate-limit
//! check and a large share of a queue operation. [`Clock::tsc`] reads the CPU's time-stamp counter
//! instead (a few nanoseconds), scaled to nanoseconds and anchored to a tokio instant taken when the
//! primitive was built, so deadlines and sojourn times stay comparable with `Instant::now()`.
//!
//! Choose [`Clock::tsc`] in production for hot paths, and keep the default where tests rely on
//! paused time: the counter does not stop when tokio's clock is paused.
//!
//! ```
//! use std::num::NonZeroU32;
//! use floodway::{Clock, Quota, RateLimiter};
//!
//! let limiter = RateLimiter::with_clock(Quota::per_second(NonZeroU32::new(100).unwrap()), Clock::tsc());
//! assert!(limiter.check().is_ok());
//! ```

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// A time source for floodway's primitives: tokio's clock (the default) or the CPU's counter.
#[derive(Clone, Default)]
pub struct Clock {
    counter: Option<quanta::Clock>,
}

impl Clock {
    /// tokio's clock: follows `tokio::time::pause` and `advance`. The default.
    pub fn tokio() -> Self {
        Clock { counter: None }
    }

    /// The CPU's time-stamp counter, through `quanta` (which falls back to the monotonic clock on
    /// machines without a usable counter). The first call in a process calibrates the counter
    /// against the monotonic clock, which takes up to 200 ms; later calls are immediate.
    ///
    /// Does not follow paused tokio time.
    pub fn tsc() -> Self {
        Clock {
            counter: Some(quanta::Clock::new()),
        }
    }

    /// True for the counter clock.
    pub fn is_tsc(&self) -> bool {
        self.counter.is_some()
    }

    /// A starting point for one primitive: the instant now, and the counter reading that goes with
    /// it.
    pub(crate) fn epoch(&self) -> Epoch {
        let start = Instant::now();
        let raw = self.counter.as_ref().map_or(0, quanta::Clock::raw);
        Epoch {
            start,
            raw,
            counter: self.counter.clone(),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_tsc() {
            "Clock::tsc"
        } else {
            "Clock::tokio"
        })
    }
}

/// Time as seen by one primitive: an anchor instant and, for the counter clock, the counter reading
/// taken with it.
#[derive(Clone)]
pub(crate) struct Epoch {
    start: Instant,
    raw: u64,
    counter: Option<quanta::Clock>,
}

impl Epoch {
    /// Nanoseconds since the epoch began.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        match &self.counter {
            // On std's instants: tokio's `saturating_duration_since` is one more call that is not
            // inlined, around the same arithmetic (a paused tokio clock is still followed: its
            // `now` is where the time is read).
            None => Instant::now()
                .into_std()
                .saturating_duration_since(self.start.into_std())
                .as_nanos() as u64,
            Some(c) => c.delta_as_nanos(self.raw, c.raw()),
        }
    }

    /// The current instant.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        match &self.counter {
            None => Instant::now(),
            Some(c) => self.start + Duration::from_nanos(c.delta_as_nanos(self.raw, c.raw())),
        }
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Epoch")
            .field("start", &self.start)
            .field("tsc", &self.counter.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_clock_tracks_the_monotonic_clock() {
        let epoch = Clock::tsc().epoch();
        let before = Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let counted = epoch.now();
        let after = Instant::now();
        // The counter's reading lies between two monotonic readings taken around it, within the
        // calibration's error.
        let slack = Duration::from_millis(2);
        assert!(counted + slack >= before + Duration::from_millis(20));
        assert!(counted <= after + slack);
        assert!(epoch.nanos() >= 20_000_000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let epoch = Clock::tokio().epoch();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(epoch.nanos(), 3_000_000_000);
    }
}
