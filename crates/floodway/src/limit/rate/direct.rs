use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::gcra;
use super::{Allowed, InsufficientCapacity, Quota, RateError, RateLimited};
use crate::clock::{Clock, Epoch};

/// One GCRA limiter shared by every caller (for example, the delivery rate to one downstream).
///
/// State is a single atomic timestamp: checks never lock, and clones of an `Arc<RateLimiter>` all
/// draw from the same quota. The quota can be changed at run time; debt already incurred carries
/// over.
///
/// ```
/// use std::num::NonZeroU32;
/// use floodway::{Quota, RateLimiter};
///
/// let limiter = RateLimiter::new(Quota::per_second(NonZeroU32::new(2).unwrap()));
/// assert!(limiter.check().is_ok());
/// assert!(limiter.check().is_ok());
/// let refused = limiter.check().unwrap_err();
/// assert!(refused.retry_after.as_millis() > 0 && refused.retry_after.as_millis() <= 500);
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    epoch: Epoch,
    tat: AtomicU64,
    // The quota is read as relaxed loads: a check racing a quota change may use old and new fields
    // together, which changes that one decision by at most the difference between the quotas.
    interval_nanos: AtomicU64,
    burst: AtomicU64,
    /// `interval_nanos * burst`, kept so that a check does not multiply.
    tau_nanos: AtomicU64,
    limited: AtomicU64,
}

impl RateLimiter {
    /// A limiter with `quota`, starting with its full burst available, on tokio's clock.
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, Clock::tokio())
    }

    /// A limiter with `quota` that reads `clock`; [`Clock::tsc`] makes a check several times
    /// cheaper, at the price of not following paused tokio time.
    pub fn with_clock(quota: Quota, clock: Clock) -> Self {
        let limiter = RateLimiter {
            epoch: clock.epoch(),
            tat: AtomicU64::new(0),
            interval_nanos: AtomicU64::new(0),
            burst: AtomicU64::new(1),
            tau_nanos: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        };
        limiter.set_quota(quota);
        limiter
    }

    /// The current quota.
    pub fn quota(&self) -> Quota {
        Quota {
            interval: Duration::from_nanos(self.interval_nanos.load(Ordering::Relaxed)),
            burst: NonZeroU32::new(self.burst.load(Ordering::Relaxed) as u32)
                .unwrap_or(NonZeroU32::MIN),
        }
    }

    /// Replaces the quota; takes effect for the next check.
    pub fn set_quota(&self, quota: Quota) {
        let t = quota.interval.as_nanos() as u64;
        self.interval_nanos.store(t, Ordering::Relaxed);
        self.burst
            .store(u64::from(quota.burst.get()), Ordering::Relaxed);
        self.tau_nanos
            .store(gcra::tolerance(t, quota.burst.get()), Ordering::Relaxed);
    }

    /// How many requests were refused so far.
    pub fn limited_count(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }

    /// Takes one cell if the quota allows it now.
    ///
    /// # Errors
    /// [`RateLimited`] with the exact time until one cell is available.
    #[inline]
    pub fn check(&self) -> Result<Allowed, RateLimited> {
        // One cell always fits: a burst is at least one.
        self.take(1, self.epoch.nanos())
    }

    /// Takes `n` cells at once, or none.
    ///
    /// # Errors
    /// [`RateError::Limited`] when not now; [`RateError::Insufficient`] when `n` exceeds the burst.
    pub fn check_n(&self, n: NonZeroU32) -> Result<Allowed, RateError> {
        let (n, burst) = (n.get(), self.burst.load(Ordering::Relaxed) as u32);
        if n > burst {
            return Err(RateError::Insufficient(InsufficientCapacity {
                requested: n,
                burst,
            }));
        }
        self.take(n, self.epoch.nanos()).map_err(RateError::Limited)
    }

    /// Takes `n` cells, known to fit in the burst, if the quota allows them at `now`.
    #[inline]
    fn take(&self, n: u32, now: u64) -> Result<Allowed, RateLimited> {
        let interval = self.interval_nanos.load(Ordering::Relaxed);
        let tau = self.tau_nanos.load(Ordering::Relaxed);
        let step = interval.saturating_mul(u64::from(n));
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let next = match gcra::test(tau, step, tat, now) {
                Ok(next) => next,
                Err(wait) => {
                    self.count_refusal();
                    return Err(RateLimited {
                        retry_after: Duration::from_nanos(wait),
                        limit: self.burst.load(Ordering::Relaxed) as u32,
                    });
                }
            };
            match self
                .tat
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Allowed {
                        burst: self.burst.load(Ordering::Relaxed) as u32,
                        interval_nanos: interval,
                        debt_nanos: next - now,
                    });
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Counts a refusal. Out of line, so the path that lets a request through stays small enough
    /// to inline; the refusal itself is built in the caller, so that an allowed and a refused
    /// result are written to the same place once (built here and returned, the refusal made the
    /// compiler assemble every result on the stack and then copy it).
    #[cold]
    #[inline(never)]
    fn count_refusal(&self) {
        self.limited.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until one cell is available and takes it.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken until the future completes.
    pub async fn until_ready(&self) -> Allowed {
        loop {
            match self.check() {
                Ok(a) => return a,
                Err(l) => tokio::time::sleep(l.retry_after).await,
            }
        }
    }

    /// Waits until `n` cells are available and takes them.
    ///
    /// # Errors
    /// [`InsufficientCapacity`] at once if `n` exceeds the burst.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken until the future completes.
    pub async fn until_n_ready(&self, n: NonZeroU32) -> Result<Allowed, InsufficientCapacity> {
        loop {
            match self.check_n(n) {
                Ok(a) => return Ok(a),
                Err(RateError::Limited(l)) => tokio::time::sleep(l.retry_after).await,
                Err(RateError::Insufficient(e)) => return Err(e),
            }
        }
    }
}
