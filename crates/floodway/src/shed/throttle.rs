use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The throttle refused a request locally; try again after `retry_after`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttled {
    /// The rejection probability at the time of refusal.
    pub probability: f64,
    /// A hint: one bucket of the sliding window, after which the estimate has moved.
    pub retry_after: Duration,
}

impl fmt::Display for Throttled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throttled locally (rejection probability {:.2}); retry after {:?}",
            self.probability, self.retry_after
        )
    }
}

impl std::error::Error for Throttled {}

const BUCKETS: usize = 10;

#[derive(Debug)]
struct Window {
    requests: [u64; BUCKETS],
    accepts: [u64; BUCKETS],
    /// Index of the bucket that `bucket_start` belongs to.
    head: usize,
    bucket_start: Instant,
    rng: fastrand::Rng,
}

/// Client-side adaptive throttling: reject locally before an overloaded backend has to.
///
/// Over a sliding window (ten buckets), count `requests` (every attempt, including ones rejected
/// here) and `accepts` (requests the backend accepted). Each new request is rejected locally with
/// probability `max(0, (requests - K * accepts) / (requests + 1))`. With `K = 2` the backend keeps
/// seeing about twice the traffic it accepts, enough to notice recovery quickly; a smaller `K` is
/// more aggressive.
///
/// ```
/// use std::time::Duration;
/// use floodway::AdaptiveThrottle;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let throttle = AdaptiveThrottle::new(2.0, Duration::from_secs(60));
/// if throttle.try_acquire().is_ok() {
///     let accepted = true; // ... call the backend ...
///     throttle.record(accepted);
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct AdaptiveThrottle {
    k: f64,
    bucket: Duration,
    window: Mutex<Window>,
}

impl AdaptiveThrottle {
    /// A throttle with multiplier `k` over a sliding `window`.
    ///
    /// # Panics
    /// If `k` is not a positive finite number, or `window` is shorter than 10 ns.
    #[track_caller]
    pub fn new(k: f64, window: Duration) -> Self {
        Self::with_seed(k, window, fastrand::u64(..))
    }

    /// Like [`new`](Self::new), with a fixed random seed (reproducible decisions in tests).
    ///
    /// # Panics
    /// As [`new`](Self::new).
    #[track_caller]
    pub fn with_seed(k: f64, window: Duration, seed: u64) -> Self {
        assert!(k.is_finite() && k > 0.0, "K must be positive and finite");
        let bucket = window / BUCKETS as u32;
        assert!(!bucket.is_zero(), "window too short");
        AdaptiveThrottle {
            k,
            bucket,
            window: Mutex::new(Window {
                requests: [0; BUCKETS],
                accepts: [0; BUCKETS],
                head: 0,
                bucket_start: Instant::now(),
                rng: fastrand::Rng::with_seed(seed),
            }),
        }
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Window> {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        // Advance the ring, clearing buckets that fell out of the window.
        let elapsed = now.saturating_duration_since(w.bucket_start);
        let steps = (elapsed.as_nanos() / self.bucket.as_nanos()).min(BUCKETS as u128 + 1) as usize;
        if steps > 0 {
            for _ in 0..steps.min(BUCKETS) {
                w.head = (w.head + 1) % BUCKETS;
                let h = w.head;
                w.requests[h] = 0;
                w.accepts[h] = 0;
            }
            let advanced = self.bucket * steps as u32;
            w.bucket_start = if steps > BUCKETS {
                now
            } else {
                w.bucket_start + advanced
            };
        }
        w
    }

    fn probability_of(&self, w: &Window) -> f64 {
        let requests: u64 = w.requests.iter().sum();
        let accepts: u64 = w.accepts.iter().sum();
        ((requests as f64 - self.k * accepts as f64) / (requests as f64 + 1.0)).max(0.0)
    }

    /// The current local rejection probability.
    pub fn probability(&self) -> f64 {
        let w = self.lock(Instant::now());
        self.probability_of(&w)
    }

    /// Counts a request and decides whether to send it.
    ///
    /// # Errors
    /// [`Throttled`] when the request is rejected locally; do not send it.
    pub fn try_acquire(&self) -> Result<(), Throttled> {
        let mut w = self.lock(Instant::now());
        let p = self.probability_of(&w);
        let h = w.head;
        w.requests[h] += 1;
        if p > 0.0 && w.rng.f64() < p {
            return Err(Throttled {
                probability: p,
                retry_after: self.bucket,
            });
        }
        Ok(())
    }

    /// Records the backend's answer to a request that was sent: `true` if it accepted it.
    pub fn record(&self, accepted: bool) {
        if accepted {
            let mut w = self.lock(Instant::now());
            let h = w.head;
            w.accepts[h] += 1;
        }
    }
}
