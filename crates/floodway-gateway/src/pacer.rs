//! Delivery pacing: an adaptive rate limit in front of a sink.
//!
//! A concurrency limit cannot pace a sink whose capacity is a *rate* and whose answers are fast: one
//! request in flight at a 2 ms round trip is already 500 requests per second. So deliveries also
//! pass a GCRA rate limit whose rate adapts, AIMD style, once per window: a window in which the sink
//! refused anything sets the rate just below what the sink accepted in that window; a clean window
//! in which the pacer was the bottleneck raises it by 10% (at least one event per second), up to the
//! configured `rate_limit` if there is one. Between the first cut and the second, clean windows
//! double the rate instead (a slow start): the first cut comes from "unlimited", in a window where
//! refused deliveries were waiting out their `Retry-After`, and lands well below the sink's pace.
//! A window in which the sink refused everything is an outage, not a pace: the rate is held, so
//! delivery resumes at the known pace when the sink comes back.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use crate::Locked;
use floodway::{Quota, RateLimiter};
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_millis(250);
/// The rate used when none is configured: high enough to never be the bottleneck by default.
const UNLIMITED: f64 = 100_000.0;

#[derive(Debug)]
struct Window {
    start: Instant,
    accepted: u64,
    refused: u64,
    /// Deliveries that had to wait for the pacer in this window.
    waited: u64,
}

/// The pacer of one topic.
#[derive(Debug)]
pub struct Pacer {
    limiter: RateLimiter,
    max: f64,
    adaptive: bool,
    state: Mutex<(f64, Window)>,
    /// How many times the rate was cut; until the second cut the pacer doubles per clean window
    /// (slow start), since the first cut, from "unlimited", lands wherever the first refusals
    /// happened to leave the sink's acceptance.
    cuts: std::sync::atomic::AtomicU32,
}

fn quota(rate: f64) -> Quota {
    let r = rate.clamp(1.0, 1e9);
    let interval = Duration::from_secs_f64(1.0 / r);
    // A burst of a twentieth of a second: smooth enough for a rate-limited sink.
    let burst = NonZeroU32::new(((r / 20.0) as u32).max(1)).expect("at least 1");
    Quota::with_interval(interval)
        .expect("positive interval")
        .allow_burst(burst)
}

impl Pacer {
    /// A pacer that never exceeds `max` per second (none: effectively unlimited).
    pub fn new(max: Option<f64>) -> Pacer {
        Self::build(max, true)
    }

    /// A pacer that stays at `max` (none: unlimited) whatever the sink says.
    pub fn fixed(max: Option<f64>) -> Pacer {
        Self::build(max, false)
    }

    fn build(max: Option<f64>, adaptive: bool) -> Pacer {
        let max = max.unwrap_or(UNLIMITED);
        Pacer {
            limiter: RateLimiter::new(quota(max)),
            max,
            adaptive,
            cuts: std::sync::atomic::AtomicU32::new(0),
            state: Mutex::new((
                max,
                Window {
                    start: Instant::now(),
                    accepted: 0,
                    refused: 0,
                    waited: 0,
                },
            )),
        }
    }

    /// The current rate.
    pub fn rate(&self) -> f64 {
        self.state.locked().0
    }

    /// Waits for the next delivery slot.
    pub async fn ready(&self) {
        if self.limiter.check().is_err() {
            self.state.locked().1.waited += 1;
            self.limiter.until_ready().await;
        }
    }

    /// Records how a delivery went: `true` if the sink took it, `false` if it refused for load.
    pub fn record(&self, accepted: bool) {
        if !self.adaptive {
            return;
        }
        let now = Instant::now();
        let mut g = self.state.locked();
        let (rate, w) = &mut *g;
        if accepted {
            w.accepted += 1;
        } else {
            w.refused += 1;
        }
        let elapsed = now.saturating_duration_since(w.start);
        if elapsed < WINDOW {
            return;
        }
        let accepted_rate = w.accepted as f64 / elapsed.as_secs_f64();
        let cuts = self.cuts.load(std::sync::atomic::Ordering::Relaxed);
        let next = if w.refused > 0 && w.accepted == 0 && cuts > 0 {
            // Nothing got through: the sink is down, not slow. Pacing cannot help (retries back
            // off on their own), and cutting now would leave delivery crawling when it returns.
            *rate
        } else if w.refused > 0 {
            self.cuts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if cuts == 0 {
                // From "unlimited": the only estimate there is.
                (accepted_rate * 0.95).min(*rate).max(1.0)
            } else {
                // Deliveries waiting out a Retry-After make the accepted count understate the
                // sink's pace, so never cut by more than 15% at a time once paced.
                (*rate * 0.85).max(accepted_rate * 0.95).min(*rate).max(1.0)
            }
        } else if w.waited > 0 && cuts == 1 {
            (*rate * 2.0).min(self.max)
        } else if w.waited > 0 {
            (*rate * 1.1).max(*rate + 1.0).min(self.max)
        } else {
            *rate
        };
        if (next - *rate).abs() > f64::EPSILON {
            *rate = next;
            self.limiter.set_quota(quota(next));
        }
        *w = Window {
            start: now,
            accepted: 0,
            refused: 0,
            waited: 0,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn window(p: &Pacer, accepted: u32, refused: u32, waited: u32) {
        for _ in 0..waited {
            p.ready().await;
        }
        for _ in 0..accepted {
            p.record(true);
        }
        tokio::time::advance(WINDOW).await;
        for _ in 0..refused.max(1) {
            p.record(refused == 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_then_slow_start_then_gentle_steps() {
        let p = Pacer::new(Some(1000.0));
        // First refusals, from "unlimited": cut to 95% of what the sink accepted (25 in 250 ms).
        window(&p, 25, 1, 0).await;
        assert!((p.rate() - 95.0).abs() < 0.5, "{}", p.rate());
        // Slow start: a clean window in which deliveries waited for the pacer doubles the rate.
        window(&p, 0, 0, 300).await;
        assert!((p.rate() - 190.0).abs() < 0.5, "{}", p.rate());
        // Paced now: refusals cut by at most 15%, even if few deliveries got through.
        window(&p, 1, 1, 0).await;
        assert!((p.rate() - 190.0 * 0.85).abs() < 0.5, "{}", p.rate());
        // A window in which nothing got through (the sink is down) holds the rate.
        let held = p.rate();
        window(&p, 0, 1, 0).await;
        assert_eq!(p.rate(), held);
        // Then clean windows add 10%.
        let before = p.rate();
        window(&p, 0, 0, 300).await;
        assert!(
            (p.rate() - before * 1.1).abs() < 0.5,
            "{} vs {before}",
            p.rate()
        );
        // A fixed pacer never moves.
        let f = Pacer::fixed(Some(50.0));
        window(&f, 1, 1, 0).await;
        assert_eq!(f.rate(), 50.0);
    }
}
