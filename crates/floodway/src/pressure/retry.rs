use std::time::Duration;

use tokio::time::Instant;

/// Bounds for retry hints: never tell a caller "retry now" nor "retry in an hour".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryBounds {
    /// The smallest hint given (default 10 ms).
    pub min: Duration,
    /// The largest hint given, also used when nothing is draining (default 30 s).
    pub max: Duration,
}

impl Default for RetryBounds {
    fn default() -> Self {
        RetryBounds {
            min: Duration::from_millis(10),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryBounds {
    /// Clamps `d` into the bounds.
    pub fn clamp(&self, d: Duration) -> Duration {
        d.clamp(self.min, self.max.max(self.min))
    }
}

/// Measures how fast a backlog drains, as an exponentially weighted moving average over time.
///
/// Departures are counted and folded into the average once per `window`; the weight of a new
/// window's rate is `1 - exp(-elapsed / time_constant)`, so the estimate forgets at the same speed
/// whether departures are frequent or rare. Time with no departures counts as zero rate, so the
/// estimate of a stalled consumer decays and retry hints grow.
///
/// ```
/// use std::time::Duration;
/// use floodway::pressure::{DrainRate, RetryBounds};
/// use tokio::time::Instant;
///
/// let start = Instant::now();
/// let mut rate = DrainRate::new(Duration::from_millis(100), Duration::from_secs(1), start);
/// for i in 1..=100 {
///     rate.record(10, start + Duration::from_millis(10 * i)); // 1000 per second
/// }
/// let now = start + Duration::from_secs(1);
/// let hint = rate.time_to_drain(500, now, RetryBounds::default());
/// assert!(hint > Duration::from_millis(400) && hint < Duration::from_millis(1000));
/// ```
#[derive(Clone, Debug)]
pub struct DrainRate {
    window: Duration,
    tau: f64,
    rate: f64,
    pending: u64,
    window_start: Instant,
    primed: bool,
}

impl DrainRate {
    /// A rate estimator that folds departures every `window` with time constant `time_constant`.
    pub fn new(window: Duration, time_constant: Duration, now: Instant) -> Self {
        DrainRate {
            window: window.max(Duration::from_millis(1)),
            tau: time_constant.as_secs_f64().max(1e-3),
            rate: 0.0,
            pending: 0,
            window_start: now,
            primed: false,
        }
    }

    /// Records `n` departures at `now`.
    #[inline]
    pub fn record(&mut self, n: u64, now: Instant) {
        self.pending += n;
        if now.saturating_duration_since(self.window_start) >= self.window {
            self.rate = self.folded(now);
            self.primed = true;
            self.pending = 0;
            self.window_start = now;
        }
    }

    /// The rate with the open window folded in as of `now`.
    fn folded(&self, now: Instant) -> f64 {
        let elapsed = now
            .saturating_duration_since(self.window_start)
            .as_secs_f64();
        if elapsed <= 0.0 {
            return self.rate;
        }
        let instant = self.pending as f64 / elapsed;
        if !self.primed {
            // The first full window is the best estimate there is; do not average it with zero.
            return instant;
        }
        let weight = 1.0 - (-elapsed / self.tau).exp();
        self.rate + weight * (instant - self.rate)
    }

    /// The estimated departures per second as of `now`.
    pub fn per_second(&self, now: Instant) -> f64 {
        if now.saturating_duration_since(self.window_start) >= self.window {
            self.folded(now)
        } else {
            self.rate
        }
    }

    /// How long until `items` more departures, at the estimated rate, clamped to `bounds`.
    /// With no measured drain at all, the answer is `bounds.max`.
    pub fn time_to_drain(&self, items: u64, now: Instant, bounds: RetryBounds) -> Duration {
        let rate = self.per_second(now);
        if rate <= f64::EPSILON {
            return bounds.max.max(bounds.min);
        }
        let secs = items as f64 / rate;
        if !secs.is_finite() || secs > bounds.max.as_secs_f64() {
            return bounds.max.max(bounds.min);
        }
        bounds.clamp(Duration::from_secs_f64(secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn converges_and_decays() {
        let t0 = Instant::now();
        let mut r = DrainRate::new(ms(100), ms(500), t0);
        for i in 1..=300 {
            r.record(2, t0 + ms(10 * i)); // 200 per second for 3 s
        }
        let now = t0 + ms(3000);
        assert!(
            (r.per_second(now) - 200.0).abs() < 5.0,
            "{}",
            r.per_second(now)
        );
        // Two seconds of silence: the estimate falls, and the hint grows.
        let later = now + ms(2000);
        assert!(r.per_second(later) < 20.0, "{}", r.per_second(later));
        let b = RetryBounds::default();
        assert!(r.time_to_drain(100, later, b) > r.time_to_drain(100, now, b));
    }

    #[test]
    fn no_rate_means_max_and_clamps_apply() {
        let t0 = Instant::now();
        let r = DrainRate::new(ms(100), ms(500), t0);
        let b = RetryBounds {
            min: ms(50),
            max: ms(2000),
        };
        assert_eq!(r.time_to_drain(1, t0, b), ms(2000));
        let mut r = r;
        r.record(1000, t0 + ms(100)); // 10_000 per second
        assert_eq!(r.time_to_drain(1, t0 + ms(100), b), ms(50));
    }
}
