use std::num::NonZeroU32;
use std::time::Duration;

/// A rate: `burst` cells at once, refilled at one cell per emission interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    pub(crate) interval: Duration,
    pub(crate) burst: NonZeroU32,
}

impl Quota {
    /// `rate` cells per second, with a burst of `rate`.
    pub fn per_second(rate: NonZeroU32) -> Self {
        Quota {
            interval: Duration::from_secs(1) / rate.get(),
            burst: rate,
        }
    }

    /// `rate` cells per minute, with a burst of `rate`.
    pub fn per_minute(rate: NonZeroU32) -> Self {
        Quota {
            interval: Duration::from_secs(60) / rate.get(),
            burst: rate,
        }
    }

    /// One cell every `interval`, with a burst of 1; `None` if `interval` is zero.
    pub fn with_interval(interval: Duration) -> Option<Self> {
        (!interval.is_zero()).then_some(Quota {
            interval,
            burst: NonZeroU32::MIN,
        })
    }

    /// The same rate with a different burst.
    pub fn allow_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// The time between two cells at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How many cells may pass at once.
    pub fn burst(&self) -> NonZeroU32 {
        self.burst
    }

    /// The sustained rate in cells per second.
    pub fn per_second_f64(&self) -> f64 {
        1.0 / self.interval.as_secs_f64()
    }
}

/// A request that passed, with what is left: the figures behind the standard `RateLimit` header.
///
/// The figures are computed on demand, so a caller that only needs "yes" pays nothing for them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub(crate) burst: u32,
    pub(crate) interval_nanos: u64,
    /// How far the TAT is ahead of now after this request, in nanoseconds.
    pub(crate) debt_nanos: u64,
}

impl Allowed {
    /// The burst size (the policy's quota).
    pub fn limit(&self) -> u32 {
        self.burst
    }

    /// Cells that could still pass at once.
    pub fn remaining(&self) -> u32 {
        let tau = self.interval_nanos.saturating_mul(u64::from(self.burst));
        (tau.saturating_sub(self.debt_nanos) / self.interval_nanos.max(1)) as u32
    }

    /// Time until the full burst is available again.
    pub fn reset(&self) -> Duration {
        Duration::from_nanos(self.debt_nanos)
    }
}
