use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::builder::QueueBuilder;
use super::{Admitted, BuildError, Meta, Overflow, PopError, PushError};
use crate::Priority;
use crate::clock::Epoch;
use crate::dead_letter::{DeadLetter, DeadLetterSink, DropCounts, DropReason};
use crate::observe::Reporter;
use crate::pressure::{DrainRate, RetryBounds};
use crate::shed::{CoDel, Verdict};

pub(super) type Weigher<T> = Box<dyn Fn(&T) -> u64 + Send + Sync>;

const CLASSES: usize = Priority::COUNT;

/// An item taken from the queue, with its class and how long it waited.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Popped<T> {
    /// The item.
    pub item: T,
    /// Its class.
    pub priority: Priority,
    /// How long it waited in the queue.
    pub sojourn: Duration,
    /// Its deadline, if it had one.
    pub deadline: Option<Instant>,
}

/// Items handed back to their callers, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// No room ([`PushError::Full`]).
    pub full: u64,
    /// Could never fit ([`PushError::TooLarge`]).
    pub too_large: u64,
    /// Deadline already past at push ([`PushError::Expired`]).
    pub expired: u64,
    /// Queue closed ([`PushError::Closed`]).
    pub closed: u64,
}

impl Refusals {
    /// All refusals.
    pub fn total(&self) -> u64 {
        self.full + self.too_large + self.expired + self.closed
    }

    fn count<T>(&mut self, err: &PushError<T>) {
        match err {
            PushError::Full { .. } => self.full += 1,
            PushError::TooLarge { .. } => self.too_large += 1,
            PushError::Expired { .. } => self.expired += 1,
            PushError::Closed { .. } => self.closed += 1,
        }
    }
}

/// A snapshot of a queue's counters and gauges.
///
/// The conservation law holds for every snapshot:
/// `offered == delivered + refused.total() + dead_lettered.total() + len`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Items queued now.
    pub len: usize,
    /// Bytes queued now.
    pub bytes: u64,
    /// The item bound.
    pub max_items: usize,
    /// The byte bound, if any.
    pub max_bytes: Option<u64>,
    /// Items ever offered.
    pub offered: u64,
    /// Items ever popped.
    pub delivered: u64,
    /// Items handed back to their callers, by reason.
    pub refused: Refusals,
    /// Items dead-lettered, by reason.
    pub dead_lettered: DropCounts,
    /// Measured departures per second.
    pub drain_per_second: f64,
    /// How long the oldest queued item has waited.
    pub oldest_sojourn: Duration,
    /// The sojourn of the last item served.
    pub last_sojourn: Duration,
    /// True while the CoDel shedder (if any) sees a standing queue.
    pub standing: bool,
    /// True once [`Queue::close`] was called.
    pub closed: bool,
}

struct Entry<T> {
    item: T,
    weight: u64,
    meta: Meta,
    enqueued: Instant,
    seq: u64,
}

impl<T> Entry<T> {
    fn expired(&self, now: Instant) -> bool {
        self.meta.deadline.is_some_and(|d| d <= now)
    }
}

struct State<T> {
    classes: [VecDeque<Entry<T>>; CLASSES],
    class_bytes: [u64; CLASSES],
    len: usize,
    bytes: u64,
    max_items: usize,
    max_bytes: u64,
    closed: bool,
    seq: u64,
    drain: DrainRate,
    codel: Option<CoDel>,
    offered: u64,
    delivered: u64,
    refused: Refusals,
    dead: DropCounts,
    push_waiters: usize,
    pop_waiters: usize,
    last_sojourn: Duration,
}

/// Dead letters collected under the lock and delivered after it is released.
type Graveyard<T> = Vec<DeadLetter<T>>;

impl<T> State<T> {
    fn fits(&self, weight: u64) -> bool {
        self.len < self.max_items && self.bytes.saturating_add(weight) <= self.max_bytes
    }

    fn insert(&mut self, item: T, weight: u64, meta: Meta, now: Instant) {
        let c = meta.priority.index();
        self.seq += 1;
        self.classes[c].push_back(Entry {
            item,
            weight,
            meta,
            enqueued: now,
            seq: self.seq,
        });
        self.class_bytes[c] += weight;
        self.len += 1;
        self.bytes += weight;
    }

    fn remove(&mut self, class: usize, from_back: bool) -> Entry<T> {
        let q = &mut self.classes[class];
        let e = if from_back {
            q.pop_back()
        } else {
            q.pop_front()
        };
        let e = e.expect("remove called on an empty class");
        self.class_bytes[class] -= e.weight;
        self.len -= 1;
        self.bytes -= e.weight;
        e
    }

    fn bury(&mut self, graves: &mut Graveyard<T>, e: Entry<T>, reason: DropReason, now: Instant) {
        self.dead.add(reason, 1);
        graves.push(DeadLetter {
            item: e.item,
            reason,
            priority: e.meta.priority,
            sojourn: now.saturating_duration_since(e.enqueued),
        });
    }

    fn highest_class(&self) -> Option<usize> {
        (0..CLASSES).rev().find(|&c| !self.classes[c].is_empty())
    }

    fn lowest_class(&self) -> Option<usize> {
        (0..CLASSES).find(|&c| !self.classes[c].is_empty())
    }

    fn oldest_class(&self) -> Option<usize> {
        (0..CLASSES)
            .filter_map(|c| self.classes[c].front().map(|e| (e.seq, c)))
            .min()
            .map(|(_, c)| c)
    }

    fn oldest_enqueued(&self) -> Option<Instant> {
        self.classes
            .iter()
            .filter_map(|q| q.front().map(|e| (e.seq, e.enqueued)))
            .min()
            .map(|(_, t)| t)
    }

    /// Whether blocked producers should be woken now. Waking them on every freed slot makes a
    /// producer and a consumer ping-pong one item at a time; instead they are woken once an eighth
    /// of the item bound is free (or the queue is empty), and push a batch. A byte-bound queue
    /// still wakes them on every departure, since the room a waiting item needs is unknown here.
    fn wake_producers(&self) -> bool {
        if self.push_waiters == 0 {
            return false;
        }
        let slack = (self.max_items / 8).max(1);
        self.len == 0 || self.len + slack <= self.max_items || self.max_bytes != u64::MAX
    }

    /// Dead-letters expired items at the front of each class (cheap: stops at the first live one).
    fn purge_expired_fronts(&mut self, now: Instant, graves: &mut Graveyard<T>) {
        for c in 0..CLASSES {
            while self.classes[c].front().is_some_and(|e| e.expired(now)) {
                let e = self.remove(c, false);
                self.bury(graves, e, DropReason::Expired, now);
            }
        }
    }

    /// How long until an item of `weight` would fit, from the measured drain rate.
    fn retry_hint(&self, weight: u64, now: Instant, bounds: RetryBounds) -> Duration {
        let by_count = (self.len + 1).saturating_sub(self.max_items) as u64;
        let over = self
            .bytes
            .saturating_add(weight)
            .saturating_sub(self.max_bytes);
        let by_bytes = if over == 0 || self.len == 0 {
            0
        } else {
            let mean = (self.bytes / self.len as u64).max(1);
            over.div_ceil(mean)
        };
        self.drain
            .time_to_drain(by_count.max(by_bytes).max(1), now, bounds)
    }
}

/// What one admission attempt came to.
enum Step<T> {
    Done(Result<Admitted, PushError<T>>),
    Wait(T),
}

struct Shared<T> {
    state: Mutex<State<T>>,
    not_empty: Notify,
    not_full: Notify,
    dead_letter: Arc<dyn DeadLetterSink<T>>,
    weigher: Option<Weigher<T>>,
    overflow: Overflow,
    lifo: bool,
    retry: RetryBounds,
    reporter: Reporter,
    epoch: Epoch,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic in a dead-letter hook never happens under this lock, so the state is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn weigh(&self, item: &T) -> u64 {
        self.weigher.as_ref().map_or(0, |w| w(item))
    }

    /// One admission attempt under the lock. Refusals are counted here, once per answer.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        st: &mut State<T>,
        item: T,
        weight: u64,
        meta: Meta,
        now: Instant,
        graves: &mut Graveyard<T>,
        may_wait: bool,
    ) -> Step<T> {
        let refuse = |st: &mut State<T>, err: PushError<T>| {
            st.refused.count(&err);
            Step::Done(Err(err))
        };
        if st.closed {
            return refuse(st, PushError::Closed { item });
        }
        if weight > st.max_bytes {
            let max_bytes = st.max_bytes;
            return refuse(
                st,
                PushError::TooLarge {
                    item,
                    weight,
                    max_bytes,
                },
            );
        }
        if meta.deadline.is_some_and(|d| d <= now) {
            return refuse(st, PushError::Expired { item });
        }
        if !st.fits(weight) {
            st.purge_expired_fronts(now, graves);
        }
        if st.fits(weight) {
            st.insert(item, weight, meta, now);
            return Step::Done(Ok(Admitted::Queued { evicted: 0 }));
        }
        match self.overflow {
            Overflow::Block if may_wait => Step::Wait(item),
            Overflow::Block | Overflow::Reject => {
                let retry_after = st.retry_hint(weight, now, self.retry);
                refuse(st, PushError::Full { item, retry_after })
            }
            Overflow::DropNewest => self.bury_new(st, item, meta, graves, now),
            Overflow::DropOldest => {
                let mut evicted = 0;
                while !st.fits(weight) {
                    let c = st
                        .oldest_class()
                        .expect("an item that fits alone fits an empty queue");
                    let e = st.remove(c, false);
                    st.bury(graves, e, DropReason::Evicted, now);
                    evicted += 1;
                }
                st.insert(item, weight, meta, now);
                Step::Done(Ok(Admitted::Queued { evicted }))
            }
            Overflow::DropLowestPriority => {
                let below = 0..meta.priority.index();
                let spare_items: usize = below.clone().map(|c| st.classes[c].len()).sum();
                let spare_bytes: u64 = below.map(|c| st.class_bytes[c]).sum();
                let feasible = st.len - spare_items < st.max_items
                    && (st.bytes - spare_bytes).saturating_add(weight) <= st.max_bytes;
                if !feasible {
                    return self.bury_new(st, item, meta, graves, now);
                }
                let mut evicted = 0;
                while !st.fits(weight) {
                    let c = st.lowest_class().expect("feasibility was checked");
                    let e = st.remove(c, true);
                    st.bury(graves, e, DropReason::Displaced, now);
                    evicted += 1;
                }
                st.insert(item, weight, meta, now);
                Step::Done(Ok(Admitted::Queued { evicted }))
            }
        }
    }

    fn bury_new(
        &self,
        st: &mut State<T>,
        item: T,
        meta: Meta,
        graves: &mut Graveyard<T>,
        now: Instant,
    ) -> Step<T> {
        let entry = Entry {
            item,
            weight: 0,
            meta,
            enqueued: now,
            seq: 0,
        };
        st.bury(graves, entry, DropReason::Full, now);
        Step::Done(Ok(Admitted::DeadLettered))
    }

    /// Takes the next item to serve, shedding and expiring on the way.
    fn take(
        &self,
        st: &mut State<T>,
        now: Instant,
        graves: &mut Graveyard<T>,
    ) -> Option<Popped<T>> {
        loop {
            let c = st.highest_class()?;
            let front = st.classes[c].front().expect("class is not empty");
            if front.expired(now) {
                let e = st.remove(c, false);
                st.bury(graves, e, DropReason::Expired, now);
                continue;
            }
            let mut from_back = false;
            if st.codel.is_some() {
                // The queue's delay is the age of its oldest item, whatever its class: with strict
                // priority, the items served may be fresh while lower classes pile up behind them.
                let oldest = st.oldest_enqueued().expect("queue is not empty");
                let delay = now.saturating_duration_since(oldest);
                let codel = st.codel.as_mut().expect("checked above");
                if codel.on_dequeue(delay, now) == Verdict::Shed {
                    // Shed the least important work first: the oldest item of the lowest class.
                    let victim = st.lowest_class().expect("queue is not empty");
                    let e = st.remove(victim, false);
                    st.bury(graves, e, DropReason::Shed, now);
                    continue;
                }
                from_back = self.lifo && codel.is_standing();
            }
            let e = st.remove(c, from_back);
            if e.expired(now) {
                st.bury(graves, e, DropReason::Expired, now);
                continue;
            }
            let sojourn = now.saturating_duration_since(e.enqueued);
            st.delivered += 1;
            st.last_sojourn = sojourn;
            st.drain.record(1, now);
            return Some(Popped {
                item: e.item,
                priority: e.meta.priority,
                sojourn,
                deadline: e.meta.deadline,
            });
        }
    }

    /// Work that must happen after the lock is released: wake-ups, reports, dead-letter hooks.
    fn settle(&self, graves: Graveyard<T>, wake_consumer: bool, wake_producers: bool) {
        if wake_consumer {
            self.not_empty.notify_one();
        }
        if wake_producers {
            self.not_full.notify_waiters();
        }
        for letter in graves {
            self.reporter
                .counter("dead_lettered", letter.reason.as_str(), 1);
            self.dead_letter.dead_letter(letter);
        }
    }

    fn report_push(&self, result: &Result<Admitted, PushError<T>>, len: usize, bytes: u64) {
        self.reporter.counter("offered", "", 1);
        match result {
            Ok(Admitted::Queued { .. }) => self.reporter.counter("accepted", "", 1),
            Ok(Admitted::DeadLettered) => {}
            Err(e) => self.reporter.counter("refused", e.reason(), 1),
        }
        self.reporter.gauge("depth", len as f64);
        self.reporter.gauge("bytes", bytes as f64);
    }
}

/// A bounded, prioritised, multi-producer multi-consumer queue. Clones share the same queue.
///
/// See the [module documentation](crate::queue) for policies, shedding and conservation.
///
/// ```
/// use floodway::{DropReason, Overflow, Priority, Queue};
/// use floodway::queue::{Admitted, Meta};
/// use std::sync::{Arc, Mutex};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dead = Arc::new(Mutex::new(Vec::new()));
/// let sink = dead.clone();
/// let queue = Queue::builder()
///     .max_items(2)
///     .overflow(Overflow::DropLowestPriority)
///     .dead_letter(move |l: floodway::DeadLetter<&'static str>| sink.lock().unwrap().push((l.item, l.reason)))
///     .build()
///     .unwrap();
/// queue.try_push_with("report", Meta::priority(Priority::Low)).unwrap();
/// queue.try_push_with("email", Meta::priority(Priority::Normal)).unwrap();
/// // Full: the critical item displaces the low one, which goes to the dead-letter hook.
/// let admitted = queue.try_push_with("payment", Meta::priority(Priority::Critical)).unwrap();
/// assert_eq!(admitted, Admitted::Queued { evicted: 1 });
/// assert_eq!(dead.lock().unwrap()[0], ("report", DropReason::Displaced));
/// assert_eq!(queue.pop().await.unwrap().item, "payment");
/// # }
/// ```
pub struct Queue<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("Queue")
            .field("len", &st.len)
            .field("bytes", &st.bytes)
            .field("max_items", &st.max_items)
            .field("overflow", &self.shared.overflow)
            .finish_non_exhaustive()
    }
}

impl<T> Queue<T> {
    /// Starts a builder: 1024 items, no byte bound, [`Overflow::Block`]. A dead-letter hook is
    /// required.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder::new()
    }

    pub(super) fn from_builder(
        b: QueueBuilder<T>,
        dead_letter: Arc<dyn DeadLetterSink<T>>,
        reporter: Reporter,
    ) -> Self {
        let epoch = b.clock.epoch();
        let now = epoch.now();
        let state = State {
            classes: Default::default(),
            class_bytes: [0; CLASSES],
            len: 0,
            bytes: 0,
            max_items: b.max_items,
            max_bytes: b.max_bytes.unwrap_or(u64::MAX),
            closed: false,
            seq: 0,
            drain: DrainRate::new(b.drain_window, b.drain_time_constant, now),
            codel: b.codel,
            offered: 0,
            delivered: 0,
            refused: Refusals::default(),
            dead: DropCounts::default(),
            push_waiters: 0,
            pop_waiters: 0,
            last_sojourn: Duration::ZERO,
        };
        Queue {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                not_empty: Notify::new(),
                not_full: Notify::new(),
                dead_letter,
                weigher: b.weigher,
                overflow: b.overflow,
                lifo: b.lifo,
                retry: b.retry,
                reporter,
                epoch,
            }),
        }
    }

    /// Pushes with default attributes without waiting; see [`try_push_with`](Self::try_push_with).
    ///
    /// # Errors
    /// As [`try_push_with`](Self::try_push_with).
    pub fn try_push(&self, item: T) -> Result<Admitted, PushError<T>> {
        self.try_push_with(item, Meta::default())
    }

    /// Pushes without waiting. When the queue is full, the overflow policy decides; a
    /// [`Block`](Overflow::Block) queue answers [`PushError::Full`] instead of waiting.
    ///
    /// # Errors
    /// The item comes back in a [`PushError`]: `Full` (with a retry hint), `TooLarge`, `Expired` or
    /// `Closed`.
    pub fn try_push_with(&self, item: T, meta: Meta) -> Result<Admitted, PushError<T>> {
        let weight = self.shared.weigh(&item);
        let now = self.shared.epoch.now();
        let mut graves = Vec::new();
        let (result, len, bytes, consumers) = {
            let mut st = self.shared.lock();
            st.offered += 1;
            let step = self
                .shared
                .admit(&mut st, item, weight, meta, now, &mut graves, false);
            let Step::Done(result) = step else {
                unreachable!("admit never asks to wait when waiting is not allowed")
            };
            let consumers = st.pop_waiters > 0;
            (result, st.len, st.bytes, consumers)
        };
        self.shared.report_push(&result, len, bytes);
        let queued = matches!(result, Ok(Admitted::Queued { .. }));
        self.shared.settle(graves, queued && consumers, false);
        result
    }

    /// Pushes with default attributes; see [`push_with`](Self::push_with).
    pub fn push(&self, item: T) -> impl Future<Output = Result<Admitted, PushError<T>>> + Send + '_
    where
        T: Send,
    {
        self.push_with(item, Meta::default())
    }

    /// Pushes, waiting for room if the policy is [`Overflow::Block`]; other policies answer at once,
    /// as [`try_push_with`](Self::try_push_with) does.
    ///
    /// # Errors
    /// As [`try_push_with`](Self::try_push_with); a blocked push that sees the queue close gets
    /// [`PushError::Closed`].
    ///
    /// # Cancel safety
    /// The item is taken when this method is called. If the returned future is dropped before it
    /// completes, the item was not queued and goes to the dead-letter hook as
    /// [`DropReason::Cancelled`]; no capacity is held.
    pub fn push_with(
        &self,
        item: T,
        meta: Meta,
    ) -> impl Future<Output = Result<Admitted, PushError<T>>> + Send + '_
    where
        T: Send,
    {
        let mut pending = PendingPush {
            weight: self.shared.weigh(&item),
            shared: &self.shared,
            item: Some(item),
            meta,
            counted: false,
            waiting: false,
        };
        async move { pending.run().await }
    }

    /// Takes the next item without waiting.
    ///
    /// # Errors
    /// [`PopError::Empty`] when nothing is queued, [`PopError::Closed`] when nothing is queued and the
    /// queue is closed.
    pub fn try_pop(&self) -> Result<Popped<T>, PopError> {
        let now = self.shared.epoch.now();
        let mut graves = Vec::new();
        let (popped, closed, wake) = {
            let mut st = self.shared.lock();
            let popped = self.shared.take(&mut st, now, &mut graves);
            (popped, st.closed, st.wake_producers())
        };
        let freed = popped.is_some() || !graves.is_empty();
        self.shared.settle(graves, false, freed && wake);
        self.report_pop(&popped);
        match popped {
            Some(p) => Ok(p),
            None if closed => Err(PopError::Closed),
            None => Err(PopError::Empty),
        }
    }

    /// Takes the next item, waiting until there is one. Returns `None` once the queue is closed and
    /// empty.
    ///
    /// # Cancel safety
    /// Cancel safe: an item is removed from the queue only in the poll that returns it.
    pub async fn pop(&self) -> Option<Popped<T>> {
        let mut wait = PopWait {
            shared: &self.shared,
            registered: false,
        };
        loop {
            let notified = self.shared.not_empty.notified();
            tokio::pin!(notified);
            let now = self.shared.epoch.now();
            let mut graves = Vec::new();
            let (popped, closed, wake) = {
                let mut st = self.shared.lock();
                if wait.registered {
                    st.pop_waiters -= 1;
                    wait.registered = false;
                }
                let popped = self.shared.take(&mut st, now, &mut graves);
                if popped.is_none() && !st.closed {
                    // Register before the lock is released, so a push in between cannot be missed.
                    notified.as_mut().enable();
                    st.pop_waiters += 1;
                    wait.registered = true;
                }
                (popped, st.closed, st.wake_producers())
            };
            let freed = popped.is_some() || !graves.is_empty();
            self.shared.settle(graves, false, freed && wake);
            if popped.is_some() {
                self.report_pop(&popped);
                return popped;
            }
            if closed {
                return None;
            }
            notified.await;
        }
    }

    /// Takes up to `max` items under one lock, waiting until there is at least one; returns how
    /// many were appended to `buf` (0 once the queue is closed and empty, or if `max` is 0).
    /// Batching amortises the lock and the wake-ups when a consumer handles items in groups.
    ///
    /// # Cancel safety
    /// Cancel safe, as [`pop`](Self::pop).
    pub async fn pop_many(&self, buf: &mut Vec<Popped<T>>, max: usize) -> usize {
        if max == 0 {
            return 0;
        }
        let Some(first) = self.pop().await else {
            return 0;
        };
        let start = buf.len();
        buf.push(first);
        let now = self.shared.epoch.now();
        let mut graves = Vec::new();
        let wake = {
            let mut st = self.shared.lock();
            while buf.len() - start < max {
                match self.shared.take(&mut st, now, &mut graves) {
                    Some(p) => buf.push(p),
                    None => break,
                }
            }
            st.wake_producers()
        };
        let n = buf.len() - start;
        self.shared.settle(graves, false, wake);
        for p in buf.iter().skip(start + 1) {
            self.shared.reporter.counter("delivered", "", 1);
            self.shared
                .reporter
                .gauge("sojourn_seconds", p.sojourn.as_secs_f64());
        }
        n
    }

    fn report_pop(&self, popped: &Option<Popped<T>>) {
        if let Some(p) = popped {
            self.shared.reporter.counter("delivered", "", 1);
            self.shared
                .reporter
                .gauge("sojourn_seconds", p.sojourn.as_secs_f64());
        }
    }

    /// Dead-letters every queued item whose deadline has passed; returns how many.
    pub fn expire(&self) -> usize {
        let now = self.shared.epoch.now();
        let mut graves = Vec::new();
        let waiters = {
            let mut st = self.shared.lock();
            for c in 0..CLASSES {
                let mut i = 0;
                while i < st.classes[c].len() {
                    if st.classes[c][i].expired(now) {
                        let e = st.classes[c].remove(i).expect("index is in range");
                        st.class_bytes[c] -= e.weight;
                        st.len -= 1;
                        st.bytes -= e.weight;
                        st.bury(&mut graves, e, DropReason::Expired, now);
                    } else {
                        i += 1;
                    }
                }
            }
            st.wake_producers()
        };
        let n = graves.len();
        self.shared.settle(graves, false, n > 0 && waiters);
        n
    }

    /// Changes the bounds at run time. Items already queued are kept even if they exceed the new
    /// bounds; new pushes wait or are refused until the queue drains below them.
    ///
    /// # Errors
    /// [`BuildError::ZeroCapacity`] for a zero bound, [`BuildError::BytesWithoutWeigher`] for a byte
    /// bound on a queue built without a weigher.
    pub fn set_capacity(&self, max_items: usize, max_bytes: Option<u64>) -> Result<(), BuildError> {
        if max_items == 0 || max_bytes == Some(0) {
            return Err(BuildError::ZeroCapacity);
        }
        if max_bytes.is_some() && self.shared.weigher.is_none() {
            return Err(BuildError::BytesWithoutWeigher);
        }
        {
            let mut st = self.shared.lock();
            st.max_items = max_items;
            st.max_bytes = max_bytes.unwrap_or(u64::MAX);
        }
        self.shared.not_full.notify_waiters();
        Ok(())
    }

    /// Closes the queue: pushes are refused with [`PushError::Closed`] (blocked ones too), and pops
    /// drain what is left, then return `None`.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.not_full.notify_waiters();
        self.shared.not_empty.notify_waiters();
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.shared.lock().len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How full the queue is: the larger of `len / max_items` and `bytes / max_bytes`. Feed this to a
    /// [`Pressure`](crate::Pressure).
    pub fn utilisation(&self) -> f64 {
        let st = self.shared.lock();
        let by_items = st.len as f64 / st.max_items as f64;
        let by_bytes = if st.max_bytes == u64::MAX {
            0.0
        } else {
            st.bytes as f64 / st.max_bytes as f64
        };
        by_items.max(by_bytes)
    }

    /// The retry hint a refused caller would get now: how long until `items` more have drained.
    pub fn retry_after(&self, items: u64) -> Duration {
        let st = self.shared.lock();
        st.drain
            .time_to_drain(items.max(1), self.shared.epoch.now(), self.shared.retry)
    }

    /// A snapshot of the counters and gauges.
    pub fn stats(&self) -> QueueStats {
        let now = self.shared.epoch.now();
        let st = self.shared.lock();
        QueueStats {
            len: st.len,
            bytes: st.bytes,
            max_items: st.max_items,
            max_bytes: (st.max_bytes != u64::MAX).then_some(st.max_bytes),
            offered: st.offered,
            delivered: st.delivered,
            refused: st.refused,
            dead_lettered: st.dead,
            drain_per_second: st.drain.per_second(now),
            oldest_sojourn: st
                .oldest_enqueued()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            last_sojourn: st.last_sojourn,
            standing: st.codel.as_ref().is_some_and(CoDel::is_standing),
            closed: st.closed,
        }
    }
}

/// Keeps `pop_waiters` right when a waiting `pop` is cancelled.
struct PopWait<'a, T> {
    shared: &'a Shared<T>,
    registered: bool,
}

impl<T> Drop for PopWait<'_, T> {
    fn drop(&mut self) {
        if self.registered {
            self.shared.lock().pop_waiters -= 1;
        }
    }
}

/// A push in progress. Owns the item until it is queued, refused, or (on drop) dead-lettered.
struct PendingPush<'a, T> {
    shared: &'a Shared<T>,
    item: Option<T>,
    weight: u64,
    meta: Meta,
    /// Whether `offered` was counted for this item.
    counted: bool,
    /// Whether this push is counted in `push_waiters`.
    waiting: bool,
}

impl<T> PendingPush<'_, T> {
    async fn run(&mut self) -> Result<Admitted, PushError<T>> {
        let shared = self.shared;
        loop {
            let notified = shared.not_full.notified();
            tokio::pin!(notified);
            let now = self.shared.epoch.now();
            let mut graves = Vec::new();
            let item = self
                .item
                .take()
                .expect("a pending push holds its item until it ends");
            let (outcome, len, bytes, consumers) = {
                let mut st = shared.lock();
                if !self.counted {
                    st.offered += 1;
                    self.counted = true;
                }
                if self.waiting {
                    st.push_waiters -= 1;
                    self.waiting = false;
                }
                let step = shared.admit(
                    &mut st,
                    item,
                    self.weight,
                    self.meta,
                    now,
                    &mut graves,
                    true,
                );
                let outcome = match step {
                    Step::Done(result) => Some(result),
                    Step::Wait(item) => {
                        self.item = Some(item);
                        st.push_waiters += 1;
                        self.waiting = true;
                        notified.as_mut().enable();
                        None
                    }
                };
                (outcome, st.len, st.bytes, st.pop_waiters > 0)
            };
            match outcome {
                Some(result) => {
                    shared.report_push(&result, len, bytes);
                    let queued = matches!(result, Ok(Admitted::Queued { .. }));
                    shared.settle(graves, queued && consumers, false);
                    return result;
                }
                None => {
                    shared.settle(graves, false, false);
                    notified.await;
                }
            }
        }
    }
}

impl<T> Drop for PendingPush<'_, T> {
    fn drop(&mut self) {
        let Some(item) = self.item.take() else {
            return;
        };
        {
            let mut st = self.shared.lock();
            if !self.counted {
                st.offered += 1;
            }
            if self.waiting {
                st.push_waiters -= 1;
            }
            st.dead.add(DropReason::Cancelled, 1);
        }
        let letter = DeadLetter {
            item,
            reason: DropReason::Cancelled,
            priority: self.meta.priority,
            sojourn: Duration::ZERO,
        };
        self.shared.settle(vec![letter], false, false);
    }
}
