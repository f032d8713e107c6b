use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::queue::{Queue, Weigher};
use super::{BuildError, Overflow};
use crate::dead_letter::DeadLetterSink;
use crate::observe::Reporter;
use crate::pressure::RetryBounds;
use crate::shed::CoDel;
use crate::{Clock, Observer};

/// Builds a [`Queue`]; see [`Queue::builder`].
pub struct QueueBuilder<T> {
    pub(super) max_items: usize,
    pub(super) max_bytes: Option<u64>,
    pub(super) weigher: Option<Weigher<T>>,
    pub(super) overflow: Overflow,
    pub(super) dead_letter: Option<Arc<dyn DeadLetterSink<T>>>,
    pub(super) codel: Option<CoDel>,
    pub(super) lifo: bool,
    pub(super) retry: RetryBounds,
    pub(super) drain_window: Duration,
    pub(super) drain_time_constant: Duration,
    pub(super) observer: Option<Arc<dyn Observer>>,
    pub(super) name: String,
    pub(super) clock: Clock,
}

impl<T> fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("max_items", &self.max_items)
            .field("max_bytes", &self.max_bytes)
            .field("overflow", &self.overflow)
            .field("codel", &self.codel)
            .field("lifo", &self.lifo)
            .finish_non_exhaustive()
    }
}

impl<T> QueueBuilder<T> {
    pub(super) fn new() -> Self {
        QueueBuilder {
            max_items: 1024,
            max_bytes: None,
            weigher: None,
            overflow: Overflow::Block,
            dead_letter: None,
            codel: None,
            lifo: false,
            retry: RetryBounds::default(),
            drain_window: Duration::from_millis(100),
            drain_time_constant: Duration::from_secs(2),
            observer: None,
            name: "queue".into(),
            clock: Clock::tokio(),
        }
    }

    /// Where the queue reads the time for sojourn, deadlines and its drain rate (default
    /// [`Clock::tokio`]). [`Clock::tsc`] takes the clock off the hot path; deadlines are still
    /// compared with `tokio::time::Instant`s, anchored when the queue is built.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The most items held at once (default 1024).
    pub fn max_items(mut self, max: usize) -> Self {
        self.max_items = max;
        self
    }

    /// The most bytes held at once, as measured by the [`weigher`](Self::weigher) (default: no byte
    /// bound).
    pub fn max_bytes(mut self, max: u64) -> Self {
        self.max_bytes = Some(max);
        self
    }

    /// How many bytes an item weighs. Called once per push.
    pub fn weigher(mut self, weigher: impl Fn(&T) -> u64 + Send + Sync + 'static) -> Self {
        self.weigher = Some(Box::new(weigher));
        self
    }

    /// The overflow policy (default [`Overflow::Block`]).
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Where dead letters go (required).
    pub fn dead_letter(mut self, sink: impl DeadLetterSink<T> + 'static) -> Self {
        self.dead_letter = Some(Arc::new(sink));
        self
    }

    /// Sheds by sojourn time with this controller (see [`crate::shed`]).
    pub fn codel(mut self, codel: CoDel) -> Self {
        self.codel = Some(codel);
        self
    }

    /// Serves newest-first within a class while CoDel sees a standing queue.
    pub fn adaptive_lifo(mut self, on: bool) -> Self {
        self.lifo = on;
        self
    }

    /// Bounds for the retry hints in [`PushError::Full`](super::PushError::Full).
    pub fn retry_bounds(mut self, bounds: RetryBounds) -> Self {
        self.retry = bounds;
        self
    }

    /// How the drain rate behind retry hints is averaged: folded every `window`, forgetting with
    /// `time_constant` (defaults 100 ms and 2 s).
    pub fn drain_averaging(mut self, window: Duration, time_constant: Duration) -> Self {
        self.drain_window = window;
        self.drain_time_constant = time_constant;
        self
    }

    /// Reports counters and gauges to `observer` under `name`.
    pub fn observer(mut self, name: &str, observer: Arc<dyn Observer>) -> Self {
        self.name = name.into();
        self.observer = Some(observer);
        self
    }

    /// Checks the configuration and builds the queue.
    ///
    /// # Errors
    /// A [`BuildError`] names the combination that cannot work.
    pub fn build(self) -> Result<Queue<T>, BuildError> {
        if self.max_items == 0 || self.max_bytes == Some(0) {
            return Err(BuildError::ZeroCapacity);
        }
        if self.max_bytes.is_some() && self.weigher.is_none() {
            return Err(BuildError::BytesWithoutWeigher);
        }
        if self.lifo && self.codel.is_none() {
            return Err(BuildError::LifoWithoutCoDel);
        }
        let Some(dead_letter) = self.dead_letter.clone() else {
            return Err(BuildError::NoDeadLetterHook);
        };
        let reporter = Reporter::new(self.observer.clone(), &self.name);
        Ok(Queue::from_builder(self, dead_letter, reporter))
    }
}
