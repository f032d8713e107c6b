use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Why the pool changed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleReason {
    /// The backlog needs more workers than are running.
    Backlog,
    /// The oldest item waited longer than the target sojourn.
    Sojourn,
    /// Fewer workers are needed than are running, for the whole stabilisation window.
    Idle,
}

/// One resize decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScaleEvent {
    /// When it was decided.
    pub at: Instant,
    /// Workers before.
    pub from: usize,
    /// Workers after.
    pub to: usize,
    /// Why.
    pub reason: ScaleReason,
    /// The backlog at the time.
    pub backlog: usize,
    /// How long the oldest queued item had waited.
    pub oldest_sojourn: Duration,
}

/// What the controller sees at a tick.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Observation {
    pub(crate) now: Instant,
    pub(crate) current: usize,
    pub(crate) busy: usize,
    pub(crate) backlog: usize,
    pub(crate) oldest_sojourn: Duration,
}

/// The sizing rule and its stabilisation windows; pure, tested beside the code.
#[derive(Debug)]
pub(crate) struct Sizer {
    pub(crate) min: usize,
    pub(crate) max: usize,
    pub(crate) backlog_per_worker: usize,
    pub(crate) target_sojourn: Option<Duration>,
    pub(crate) up_window: Duration,
    pub(crate) down_window: Duration,
    pub(crate) max_step_up: usize,
    pub(crate) max_step_down: usize,
    history: VecDeque<(Instant, usize)>,
}

impl Sizer {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        min: usize,
        max: usize,
        backlog_per_worker: usize,
        target_sojourn: Option<Duration>,
        up_window: Duration,
        down_window: Duration,
        max_step_up: usize,
        max_step_down: usize,
    ) -> Self {
        Sizer {
            min,
            max,
            backlog_per_worker,
            target_sojourn,
            up_window,
            down_window,
            max_step_up,
            max_step_down,
            history: VecDeque::new(),
        }
    }

    /// The desired size after this observation, and the reason if it differs from `current`.
    pub(crate) fn decide(&mut self, o: Observation) -> (usize, Option<ScaleReason>) {
        let mut raw = o.busy + o.backlog / self.backlog_per_worker;
        let late = self.target_sojourn.is_some_and(|t| o.oldest_sojourn > t);
        if late {
            raw = raw.max(o.current + 1);
        }
        let raw = raw.clamp(self.min, self.max);
        self.history.push_back((o.now, raw));
        let horizon = self.up_window.max(self.down_window);
        while self
            .history
            .front()
            .is_some_and(|&(t, _)| o.now.saturating_duration_since(t) > horizon)
        {
            self.history.pop_front();
        }
        let within = |w: Duration| {
            self.history
                .iter()
                .filter(move |&&(t, _)| o.now.saturating_duration_since(t) <= w)
                .map(|&(_, r)| r)
        };
        let up = within(self.up_window).min().unwrap_or(raw);
        let down = within(self.down_window).max().unwrap_or(raw);
        let current = o.current.clamp(self.min, self.max);
        if up > current {
            let to = up.min(current + self.max_step_up);
            let reason = if late && o.busy + o.backlog / self.backlog_per_worker <= current {
                ScaleReason::Sojourn
            } else {
                ScaleReason::Backlog
            };
            return (to, Some(reason));
        }
        if down < current {
            let to = down.max(current.saturating_sub(self.max_step_down));
            return (to, Some(ScaleReason::Idle));
        }
        if current != o.current {
            // Outside the bounds (e.g. after they changed): come back within them.
            let reason = if current > o.current {
                ScaleReason::Backlog
            } else {
                ScaleReason::Idle
            };
            return (current, Some(reason));
        }
        (current, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(now: Instant, current: usize, busy: usize, backlog: usize) -> Observation {
        Observation {
            now,
            current,
            busy,
            backlog,
            oldest_sojourn: Duration::ZERO,
        }
    }

    #[test]
    fn scales_up_at_once_in_bounded_steps_and_down_after_the_window() {
        let s = Duration::from_secs;
        let t0 = Instant::now();
        let mut z = Sizer::new(1, 10, 10, None, Duration::ZERO, s(30), 2, 1);
        // 2 busy, 100 queued: wants 12, capped at 10, moves 2 at a time.
        assert_eq!(
            z.decide(obs(t0, 2, 2, 100)),
            (4, Some(ScaleReason::Backlog))
        );
        // Idle at t0+1: the high recommendation at t0 is still in the 30 s window: hold.
        assert_eq!(z.decide(obs(t0 + s(1), 4, 0, 0)), (4, None));
        assert_eq!(z.decide(obs(t0 + s(30), 4, 0, 0)), (4, None));
        // Once t0 leaves the window, step down by one.
        assert_eq!(
            z.decide(obs(t0 + s(31), 4, 0, 0)),
            (3, Some(ScaleReason::Idle))
        );
    }

    #[test]
    fn late_items_add_a_worker() {
        let t0 = Instant::now();
        let mut z = Sizer::new(
            1,
            10,
            100,
            Some(Duration::from_millis(50)),
            Duration::ZERO,
            Duration::ZERO,
            4,
            1,
        );
        let mut o = obs(t0, 3, 2, 1); // the backlog alone asks for 3: no change
        o.oldest_sojourn = Duration::from_millis(200);
        assert_eq!(z.decide(o), (4, Some(ScaleReason::Sojourn)));
    }
}
