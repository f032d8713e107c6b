use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::PressureConfigError;
use crate::Observer;
use crate::observe::Reporter;
use std::sync::Arc;

/// How loaded a component is, from calm to refusing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Plenty of room: send at will.
    #[default]
    Normal = 0,
    /// Filling up: well-behaved producers should slow down.
    Elevated = 1,
    /// Nearly full: low-priority work is about to be refused.
    Saturated = 2,
    /// Full: work is being refused or shed.
    Overloaded = 3,
}

impl Level {
    /// Every level, from calm to overloaded.
    pub const ALL: [Level; 4] = [
        Level::Normal,
        Level::Elevated,
        Level::Saturated,
        Level::Overloaded,
    ];

    /// The lower-case name used in headers (`Floodway-Pressure: elevated`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Elevated => "elevated",
            Level::Saturated => "saturated",
            Level::Overloaded => "overloaded",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The utilisation at which a level is entered, and the lower one at which it is left.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Watermark {
    /// Utilisation at or above which the level is entered.
    pub enter: f64,
    /// Utilisation below which the level is left (after the dwell time).
    pub exit: f64,
}

impl Watermark {
    /// A watermark pair.
    pub const fn new(enter: f64, exit: f64) -> Self {
        Watermark { enter, exit }
    }
}

/// Builds a [`Pressure`]; see [`Pressure::builder`].
#[derive(Debug, Clone)]
pub struct PressureBuilder {
    marks: [Watermark; 3],
    min_dwell: Duration,
    observer: Option<Arc<dyn Observer>>,
    name: String,
}

impl Default for PressureBuilder {
    fn default() -> Self {
        PressureBuilder {
            marks: [
                Watermark::new(0.5, 0.4),
                Watermark::new(0.8, 0.7),
                Watermark::new(0.95, 0.85),
            ],
            min_dwell: Duration::from_secs(1),
            observer: None,
            name: "pressure".into(),
        }
    }
}

impl PressureBuilder {
    /// Sets the watermarks of one level above [`Level::Normal`]. Defaults: elevated 0.5/0.4,
    /// saturated 0.8/0.7, overloaded 0.95/0.85.
    ///
    /// # Panics
    /// If `level` is [`Level::Normal`], which is where every other level's band ends.
    #[track_caller]
    pub fn watermark(mut self, level: Level, mark: Watermark) -> Self {
        assert!(level != Level::Normal, "Level::Normal has no watermark");
        self.marks[level as usize - 1] = mark;
        self
    }

    /// The least time a level is held before it may fall (default 1 s). Rises are never delayed.
    pub fn min_dwell(mut self, dwell: Duration) -> Self {
        self.min_dwell = dwell;
        self
    }

    /// Reports the level as the gauge `level` under `name`.
    pub fn observer(mut self, name: &str, observer: Arc<dyn Observer>) -> Self {
        self.name = name.into();
        self.observer = Some(observer);
        self
    }

    /// Checks the watermarks and builds the signal, starting at [`Level::Normal`].
    ///
    /// # Errors
    /// [`PressureConfigError`] when a band is empty, the enter marks do not rise, or a value is not
    /// a finite non-negative number.
    pub fn build(self) -> Result<Pressure, PressureConfigError> {
        let mut previous = f64::NEG_INFINITY;
        for (i, mark) in self.marks.iter().enumerate() {
            let level = Level::ALL[i + 1];
            let finite = |v: f64| v.is_finite() && v >= 0.0;
            if !finite(mark.enter) || !finite(mark.exit) {
                return Err(PressureConfigError::NotFinite { level });
            }
            if mark.exit >= mark.enter {
                return Err(PressureConfigError::NoBand { level });
            }
            if mark.enter <= previous {
                return Err(PressureConfigError::NotIncreasing { level });
            }
            previous = mark.enter;
        }
        let (tx, _) = watch::channel(Level::Normal);
        Ok(Pressure {
            marks: self.marks,
            min_dwell: self.min_dwell,
            state: Mutex::new(State {
                level: Level::Normal,
                since: None,
                utilisation: 0.0,
            }),
            tx,
            reporter: Reporter::new(self.observer, &self.name),
        })
    }
}

#[derive(Debug)]
struct State {
    level: Level,
    since: Option<Instant>,
    utilisation: f64,
}

/// A pressure level with hysteresis, observable by subscription.
///
/// ```
/// use floodway::{Level, Pressure};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pressure = Pressure::builder().build().unwrap();
/// let mut watch = pressure.subscribe();
/// assert_eq!(pressure.update(0.9), Level::Saturated);
/// watch.changed().await.unwrap();
/// assert_eq!(*watch.borrow(), Level::Saturated);
/// // Still above saturated's exit mark (0.7): no change, however many samples arrive.
/// assert_eq!(pressure.update(0.75), Level::Saturated);
/// # }
/// ```
#[derive(Debug)]
pub struct Pressure {
    marks: [Watermark; 3],
    min_dwell: Duration,
    state: Mutex<State>,
    tx: watch::Sender<Level>,
    reporter: Reporter,
}

impl Pressure {
    /// Starts a builder with the default watermarks and a 1 s dwell.
    pub fn builder() -> PressureBuilder {
        PressureBuilder::default()
    }

    /// Feeds a utilisation sample taken now; returns the level after it.
    pub fn update(&self, utilisation: f64) -> Level {
        self.update_at(utilisation, Instant::now())
    }

    /// Feeds a utilisation sample taken at `now`; returns the level after it.
    pub fn update_at(&self, utilisation: f64, now: Instant) -> Level {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.utilisation = utilisation;
        let next = self.next_level(state.level, utilisation);
        let may_fall = state
            .since
            .is_none_or(|since| now.saturating_duration_since(since) >= self.min_dwell);
        if next > state.level || (next < state.level && may_fall) {
            state.level = next;
            state.since = Some(now);
            self.tx.send_replace(next);
            self.reporter.gauge("level", next as u8 as f64);
        }
        state.level
    }

    /// The level to move to from `current` given `u`, before dwell is considered.
    fn next_level(&self, current: Level, u: f64) -> Level {
        // Rise to the highest level whose enter mark is reached.
        let risen = (1..=3)
            .rev()
            .find(|&i| u >= self.marks[i - 1].enter)
            .map_or(Level::Normal, |i| Level::ALL[i]);
        if risen >= current {
            return risen;
        }
        // Fall only as far as the exit marks allow: keep the highest level at or below the
        // current one whose exit mark is still reached.
        (1..=current as usize)
            .rev()
            .find(|&i| u >= self.marks[i - 1].exit)
            .map_or(Level::Normal, |i| Level::ALL[i])
    }

    /// The current level.
    pub fn level(&self) -> Level {
        *self.tx.borrow()
    }

    /// The last utilisation sample.
    pub fn utilisation(&self) -> f64 {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .utilisation
    }

    /// A receiver that wakes whenever the level changes.
    pub fn subscribe(&self) -> watch::Receiver<Level> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_marks() {
        let e = Pressure::builder()
            .watermark(Level::Elevated, Watermark::new(0.5, 0.5))
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            PressureConfigError::NoBand {
                level: Level::Elevated
            }
        );
        let e = Pressure::builder()
            .watermark(Level::Saturated, Watermark::new(0.4, 0.3))
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            PressureConfigError::NotIncreasing {
                level: Level::Saturated
            }
        );
        let e = Pressure::builder()
            .watermark(Level::Overloaded, Watermark::new(f64::NAN, 0.3))
            .build()
            .unwrap_err();
        assert_eq!(
            e,
            PressureConfigError::NotFinite {
                level: Level::Overloaded
            }
        );
    }

    #[test]
    fn next_level_uses_exit_marks_on_the_way_down() {
        let p = Pressure::builder().build().unwrap();
        assert_eq!(p.next_level(Level::Normal, 0.96), Level::Overloaded);
        assert_eq!(p.next_level(Level::Overloaded, 0.9), Level::Overloaded);
        assert_eq!(p.next_level(Level::Overloaded, 0.75), Level::Saturated);
        assert_eq!(p.next_level(Level::Overloaded, 0.1), Level::Normal);
        assert_eq!(p.next_level(Level::Elevated, 0.45), Level::Elevated);
    }
}
