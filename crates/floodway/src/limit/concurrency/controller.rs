use std::fmt;
use std::time::Duration;

/// What one window of samples showed.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct WindowSummary {
    /// Samples in the window.
    pub samples: u32,
    /// Samples that were dropped or timed out.
    pub drops: u32,
    /// The mean round-trip time of the window's successful samples (zero if there were none).
    pub mean_rtt: Duration,
    /// The lowest round-trip time of the window's successful samples (zero if there were none).
    pub min_rtt: Duration,
    /// The highest in-flight count seen when a sampled permit was taken.
    pub max_in_flight: usize,
}

impl WindowSummary {
    /// A summary (for driving an algorithm directly, as simulations do).
    pub fn new(
        samples: u32,
        drops: u32,
        mean_rtt: Duration,
        min_rtt: Duration,
        max_in_flight: usize,
    ) -> Self {
        WindowSummary {
            samples,
            drops,
            mean_rtt,
            min_rtt,
            max_in_flight,
        }
    }
}

/// An algorithm that proposes a concurrency limit from each closed window.
pub trait LimitAlgorithm: Send + fmt::Debug + 'static {
    /// The limit to start with.
    fn initial_limit(&self) -> usize;

    /// The next limit, given the current one and what the last window showed.
    fn update(&mut self, limit: usize, window: &WindowSummary) -> usize;
}

fn clamp(value: f64, min: usize, max: usize) -> usize {
    if value.is_nan() {
        return min;
    }
    (value.round() as usize).clamp(min, max)
}

fn log10(limit: usize) -> f64 {
    (limit.max(1) as f64).log10().max(1.0)
}

/// A limit that never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed(pub usize);

impl LimitAlgorithm for Fixed {
    fn initial_limit(&self) -> usize {
        self.0.max(1)
    }

    fn update(&mut self, _limit: usize, _window: &WindowSummary) -> usize {
        self.0.max(1)
    }
}

/// Additive increase, multiplicative decrease (loss-based). See the [module docs](super).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Aimd {
    min: usize,
    max: usize,
    initial: usize,
    backoff: f64,
    timeout: Option<Duration>,
}

impl Aimd {
    /// Limits within `min..=max`, starting at `min`, backing off by 0.9, no RTT timeout.
    ///
    /// # Panics
    /// If `min` is zero or greater than `max`.
    #[track_caller]
    pub fn new(min: usize, max: usize) -> Self {
        assert!(min >= 1 && min <= max, "need 1 <= min <= max");
        Aimd {
            min,
            max,
            initial: min,
            backoff: 0.9,
            timeout: None,
        }
    }

    /// The starting limit (clamped to the bounds).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.clamp(self.min, self.max);
        self
    }

    /// The factor applied on a window with drops.
    ///
    /// # Panics
    /// Unless `0.5 <= backoff < 1`.
    #[track_caller]
    pub fn backoff(mut self, backoff: f64) -> Self {
        assert!(
            (0.5..1.0).contains(&backoff),
            "backoff must be within 0.5..1"
        );
        self.backoff = backoff;
        self
    }

    /// A mean RTT above `timeout` counts as a drop.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> usize {
        self.initial
    }

    fn update(&mut self, limit: usize, w: &WindowSummary) -> usize {
        let slow = self.timeout.is_some_and(|t| w.mean_rtt > t);
        if w.drops > 0 || slow {
            return clamp((limit as f64 * self.backoff).floor(), self.min, self.max);
        }
        if w.max_in_flight * 2 >= limit {
            return (limit + 1).clamp(self.min, self.max);
        }
        limit
    }
}

/// Delay-based, after TCP Vegas. See the [module docs](super).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Vegas {
    min: usize,
    max: usize,
    initial: usize,
    base_rtt: Option<Duration>,
}

impl Vegas {
    /// Limits within `min..=max`, starting at `min`.
    ///
    /// # Panics
    /// If `min` is zero or greater than `max`.
    #[track_caller]
    pub fn new(min: usize, max: usize) -> Self {
        assert!(min >= 1 && min <= max, "need 1 <= min <= max");
        Vegas {
            min,
            max,
            initial: min,
            base_rtt: None,
        }
    }

    /// The starting limit (clamped to the bounds).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.clamp(self.min, self.max);
        self
    }
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> usize {
        self.initial
    }

    fn update(&mut self, limit: usize, w: &WindowSummary) -> usize {
        let l = log10(limit);
        if w.drops > 0 {
            return clamp(limit as f64 - l, self.min, self.max);
        }
        if w.min_rtt.is_zero() {
            return limit;
        }
        let base = match self.base_rtt {
            Some(b) if b <= w.min_rtt => b,
            _ => w.min_rtt,
        };
        self.base_rtt = Some(base);
        if w.max_in_flight * 2 < limit || w.mean_rtt.is_zero() {
            // Not using the limit: the samples say nothing about the downstream's capacity.
            return limit;
        }
        let queue = limit as f64 * (1.0 - base.as_secs_f64() / w.mean_rtt.as_secs_f64());
        let next = if queue <= l {
            limit as f64 + 6.0 * l
        } else if queue < 3.0 * l {
            limit as f64 + l
        } else if queue > 6.0 * l {
            limit as f64 - l
        } else {
            limit as f64
        };
        clamp(next, self.min, self.max)
    }
}

/// Delay-based, after Netflix's gradient2, reacting to drops. See the [module docs](super).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gradient2 {
    min: usize,
    max: usize,
    initial: usize,
    tolerance: f64,
    smoothing: f64,
    long_windows: f64,
    long_rtt: Option<f64>,
    /// The limit kept as a real number, so small smoothed steps accumulate.
    exact: Option<f64>,
}

impl Gradient2 {
    /// Limits within `min..=max`, starting at `min`; tolerance 1.5, smoothing 0.2, long RTT over
    /// 20 windows.
    ///
    /// # Panics
    /// If `min` is zero or greater than `max`.
    #[track_caller]
    pub fn new(min: usize, max: usize) -> Self {
        assert!(min >= 1 && min <= max, "need 1 <= min <= max");
        Gradient2 {
            min,
            max,
            initial: min,
            tolerance: 1.5,
            smoothing: 0.2,
            long_windows: 20.0,
            long_rtt: None,
            exact: None,
        }
    }

    /// The starting limit (clamped to the bounds).
    pub fn initial(mut self, initial: usize) -> Self {
        self.initial = initial.clamp(self.min, self.max);
        self
    }

    /// How much the short RTT may exceed the long one before the limit falls (default 1.5).
    ///
    /// # Panics
    /// If `tolerance < 1`.
    #[track_caller]
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        assert!(tolerance >= 1.0, "tolerance must be at least 1");
        self.tolerance = tolerance;
        self
    }
}

impl LimitAlgorithm for Gradient2 {
    fn initial_limit(&self) -> usize {
        self.initial
    }

    fn update(&mut self, limit: usize, w: &WindowSummary) -> usize {
        let short = w.mean_rtt.as_secs_f64();
        if short > 0.0 {
            let alpha = 2.0 / (self.long_windows + 1.0);
            let mut long = match self.long_rtt {
                None => short,
                Some(long) if short <= long => long + alpha * (short - long),
                // A sustained queue must not become the new normal: upward, the long RTT moves
                // ten times slower and takes at most 10% above itself as input.
                Some(long) => long + alpha / 10.0 * (short.min(long * 1.1) - long),
            };
            if long > 2.0 * short {
                long *= 0.9;
            }
            self.long_rtt = Some(long);
        }
        let long = self.long_rtt.unwrap_or(short);
        let current = match self.exact {
            Some(e) if e.round() as usize == limit => e,
            _ => limit as f64,
        };
        if w.drops == 0 && w.max_in_flight * 2 < limit {
            return limit;
        }
        let gradient = if w.drops > 0 {
            0.5
        } else if short <= 0.0 {
            return limit;
        } else {
            (self.tolerance * long / short).clamp(0.5, 1.0)
        };
        let target = current * gradient + current.sqrt();
        let next = ((1.0 - self.smoothing) * current + self.smoothing * target)
            .clamp(self.min as f64, self.max as f64);
        self.exact = Some(next);
        clamp(next, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(drops: u32, rtt_ms: u64, in_flight: usize) -> WindowSummary {
        let rtt = Duration::from_millis(rtt_ms);
        WindowSummary::new(10, drops, rtt, rtt, in_flight)
    }

    #[test]
    fn aimd_adds_one_and_multiplies_down() {
        let mut a = Aimd::new(1, 100).initial(20);
        assert_eq!(a.update(20, &window(0, 10, 20)), 21);
        assert_eq!(a.update(20, &window(1, 10, 20)), 18);
        // Idle windows do not grow the limit.
        assert_eq!(a.update(20, &window(0, 10, 5)), 20);
        let mut t = Aimd::new(1, 100).timeout(Duration::from_millis(50));
        assert_eq!(t.update(40, &window(0, 60, 40)), 36);
    }

    #[test]
    fn vegas_grows_without_queue_and_shrinks_with_one() {
        let mut v = Vegas::new(1, 1000);
        // Base RTT 10 ms; no queueing: grow by 6·log10.
        assert_eq!(v.update(100, &window(0, 10, 100)), 112);
        // RTT doubled: the estimated queue is half the limit, far above 6·log10: shrink by log10.
        let w = WindowSummary::new(
            10,
            0,
            Duration::from_millis(20),
            Duration::from_millis(20),
            100,
        );
        assert_eq!(v.update(100, &w), 98);
    }

    #[test]
    fn gradient2_shrinks_when_short_rtt_exceeds_tolerance() {
        let mut g = Gradient2::new(1, 1000);
        let first = g.update(100, &window(0, 10, 100));
        assert!(first > 100, "no queueing: grows ({first})");
        let slow = g.update(first, &window(0, 40, first));
        assert!(slow < first, "RTT x4: shrinks ({slow} < {first})");
        let dropped = g.update(100, &window(3, 10, 100));
        assert!(dropped < 100, "drops: shrinks ({dropped})");
    }
}
