use std::time::Duration;

use tokio::time::Instant;

/// What a shedder decides for the item at the head of a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Serve,
    /// Shed one item (the queue picks which: its least important).
    Shed,
}

/// The CoDel sojourn-time controller (RFC 8289), usable with any queue.
///
/// Call [`on_dequeue`](CoDel::on_dequeue) with the sojourn time of each item you are about to serve.
/// Shedding starts once the sojourn has stayed at or above `target` for a full `interval`; while it
/// stays there, the next shed comes `interval / sqrt(count)` after the previous one. When shedding
/// resumes soon after it stopped, the count restarts near where it left off, as the RFC recommends.
///
/// ```
/// use std::time::Duration;
/// use floodway::shed::{CoDel, Verdict};
/// use tokio::time::Instant;
///
/// let ms = Duration::from_millis;
/// let mut codel = CoDel::new(ms(5), ms(100));
/// let t0 = Instant::now();
/// assert_eq!(codel.on_dequeue(ms(20), t0), Verdict::Serve); // above target: the clock starts
/// assert_eq!(codel.on_dequeue(ms(20), t0 + ms(50)), Verdict::Serve); // not yet a full interval
/// assert_eq!(codel.on_dequeue(ms(20), t0 + ms(100)), Verdict::Shed); // a standing queue
/// ```
#[derive(Clone, Debug)]
pub struct CoDel {
    target: Duration,
    interval: Duration,
    first_above: Option<Instant>,
    dropping: bool,
    drop_next: Option<Instant>,
    count: u32,
    last_count: u32,
    standing: bool,
}

impl CoDel {
    /// A controller with the given target sojourn and interval. Common values are a target of
    /// 5-10% of the interval, and an interval near the worst round trip you expect.
    ///
    /// # Panics
    /// If `interval` is zero.
    #[track_caller]
    pub fn new(target: Duration, interval: Duration) -> Self {
        assert!(!interval.is_zero(), "CoDel interval must be positive");
        CoDel {
            target,
            interval,
            first_above: None,
            dropping: false,
            drop_next: None,
            count: 0,
            last_count: 0,
            standing: false,
        }
    }

    /// The target sojourn time.
    pub fn target(&self) -> Duration {
        self.target
    }

    /// True while the sojourn has been above target for at least an interval (a standing queue).
    pub fn is_standing(&self) -> bool {
        self.standing
    }

    /// How many items the current shedding episode has shed (0 when not shedding).
    pub fn shed_count(&self) -> u32 {
        if self.dropping { self.count } else { 0 }
    }

    fn control_law(&self, from: Instant) -> Instant {
        let step = self.interval.as_secs_f64() / f64::from(self.count.max(1)).sqrt();
        from + Duration::from_secs_f64(step)
    }

    /// Decides for an item that waited `sojourn` and is about to be served at `now`.
    pub fn on_dequeue(&mut self, sojourn: Duration, now: Instant) -> Verdict {
        let ok_to_drop = if sojourn < self.target {
            self.first_above = None;
            false
        } else {
            match self.first_above {
                None => {
                    self.first_above = Some(now + self.interval);
                    false
                }
                Some(at) => now >= at,
            }
        };
        self.standing = ok_to_drop;

        if self.dropping {
            if !ok_to_drop {
                self.dropping = false;
                return Verdict::Serve;
            }
            let due = self.drop_next.is_none_or(|next| now >= next);
            if due {
                self.count = self.count.saturating_add(1);
                let from = self.drop_next.unwrap_or(now);
                self.drop_next = Some(self.control_law(from));
                return Verdict::Shed;
            }
            return Verdict::Serve;
        }
        if ok_to_drop {
            self.dropping = true;
            // Resume near the previous rate if the last episode ended recently (RFC 8289 §5.4).
            let delta = self.count.saturating_sub(self.last_count);
            let recent = self
                .drop_next
                .is_some_and(|next| now.saturating_duration_since(next) < self.interval * 16);
            self.count = if delta > 1 && recent { delta } else { 1 };
            self.drop_next = Some(self.control_law(now));
            self.last_count = self.count;
            return Verdict::Shed;
        }
        Verdict::Serve
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn sheds_at_shrinking_intervals_and_stops_below_target() {
        let mut c = CoDel::new(ms(5), ms(100));
        let t0 = Instant::now();
        let mut sheds = Vec::new();
        // A standing 50 ms sojourn, one dequeue per millisecond for one second.
        for i in 0..=1000 {
            let now = t0 + ms(i);
            if c.on_dequeue(ms(50), now) == Verdict::Shed {
                sheds.push(i);
            }
        }
        // First shed one interval after the sojourn first exceeded target.
        assert_eq!(sheds[0], 100);
        // Then interval/sqrt(count) after each other: 100, 71, 58, ... ms: gaps shrink.
        let gaps: Vec<u64> = sheds.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(&gaps[..3], &[100, 71, 58]);
        assert!(gaps.windows(2).all(|g| g[1] <= g[0]), "{gaps:?}");
        assert!(c.is_standing());
        // Below target: shedding stops at once.
        assert_eq!(c.on_dequeue(ms(1), t0 + ms(1001)), Verdict::Serve);
        assert!(!c.is_standing());
        assert_eq!(c.shed_count(), 0);
    }

    #[test]
    fn short_spikes_are_not_shed() {
        let mut c = CoDel::new(ms(5), ms(100));
        let t0 = Instant::now();
        for i in 0..1000u64 {
            // 90 ms above target, then 10 ms below: never a full interval above.
            let sojourn = if i % 100 < 90 { ms(30) } else { ms(1) };
            assert_eq!(c.on_dequeue(sojourn, t0 + ms(i)), Verdict::Serve, "at {i}");
        }
    }
}
