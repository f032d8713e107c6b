use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use crossbeam_utils::CachePadded;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

use super::builder::QueueBuilder;
use super::sleepers::Sleepers;
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
}

/// A snapshot of a queue's counters and gauges.
///
/// The conservation law holds for every snapshot taken while no push is half-way in (see the
/// [module documentation](crate::queue)): `offered == delivered + refused.total() +
/// dead_lettered.total() + len`.
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

/// What producers claim without the lock: the items and bytes queued or being queued. Producers
/// reserve here before they stage an item, consumers release when an item leaves, so the bounds
/// hold without a lock on the way in.
struct Room {
    len: AtomicUsize,
    bytes: AtomicU64,
}

/// The bounds, read on every push, written only by [`Queue::set_capacity`].
struct Limits {
    max_items: AtomicUsize,
    max_bytes: AtomicU64,
    closed: AtomicBool,
    /// Set for good by the first item with a deadline: from then on a full queue looks for expired
    /// items before it refuses or evicts.
    deadlines: AtomicBool,
}

/// Refusals counted by producers without the lock.
#[derive(Default)]
struct RefusalCounters([AtomicU64; 4]);

impl RefusalCounters {
    fn count<T>(&self, err: &PushError<T>) {
        let i = match err {
            PushError::Full { .. } => 0,
            PushError::TooLarge { .. } => 1,
            PushError::Expired { .. } => 2,
            PushError::Closed { .. } => 3,
        };
        self.0[i].fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> Refusals {
        let [full, too_large, expired, closed] = [0, 1, 2, 3].map(|i| self.0[i].load(Relaxed));
        Refusals {
            full,
            too_large,
            expired,
            closed,
        }
    }
}

/// What only the lock holder touches: the classes in service order, and the consumer's counters.
struct State<T> {
    classes: [VecDeque<Entry<T>>; CLASSES],
    class_bytes: [u64; CLASSES],
    drain: DrainRate,
    codel: Option<CoDel>,
    delivered: u64,
    dead: DropCounts,
    last_sojourn: Duration,
}

/// Dead letters collected under the lock and delivered after it is released.
type Graveyard<T> = Vec<DeadLetter<T>>;

impl<T> State<T> {
    fn push_entry(&mut self, e: Entry<T>) {
        let c = e.meta.priority.index();
        self.class_bytes[c] += e.weight;
        self.classes[c].push_back(e);
    }

    fn remove(&mut self, room: &Room, class: usize, from_back: bool) -> Entry<T> {
        let e = self.unlink(class, from_back);
        room.release(e.weight);
        e
    }

    /// Takes an entry out of its class without giving its room back (the caller does).
    fn unlink(&mut self, class: usize, from_back: bool) -> Entry<T> {
        let q = &mut self.classes[class];
        let e = if from_back {
            q.pop_back()
        } else {
            q.pop_front()
        };
        let e = e.expect("unlink called on an empty class");
        self.class_bytes[class] -= e.weight;
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

    /// Dead-letters expired items at the front of each class (cheap: stops at the first live one).
    fn purge_expired_fronts(&mut self, room: &Room, now: Instant, graves: &mut Graveyard<T>) {
        for c in 0..CLASSES {
            while self.classes[c].front().is_some_and(|e| e.expired(now)) {
                let e = self.remove(room, c, false);
                self.bury(graves, e, DropReason::Expired, now);
            }
        }
    }
}

impl Room {
    fn release(&self, weight: u64) {
        self.len.fetch_sub(1, SeqCst);
        if weight > 0 {
            self.bytes.fetch_sub(weight, SeqCst);
        }
    }
}

/// What one admission attempt came to.
enum Step<T> {
    Done(Result<Admitted, PushError<T>>),
    Wait(T),
}

// Layout: what producers write, what consumers write, and what both only read sit on separate cache
// lines, so a producer and a consumer on two cores do not pull one line back and forth per item.
struct Shared<T> {
    /// Items and bytes held: reserved by producers, released by consumers.
    room: CachePadded<Room>,
    /// Items admitted so far; also the sequence number of the next one (producers).
    admitted: CachePadded<AtomicU64>,
    /// Items taken by consumers whose room is not yet given back to `room.len` (written only
    /// under the lock). See [`Shared::give_back`].
    owed: CachePadded<AtomicUsize>,
    /// Producers waiting for room, and consumers waiting for items: written when one goes to sleep,
    /// read on every push and pop.
    push_waiters: CachePadded<Sleepers>,
    pop_waiters: CachePadded<Sleepers>,
    refused: RefusalCounters,
    limits: CachePadded<Limits>,
    /// Entries admitted without the lock, per class, until a lock holder moves them into `state`.
    /// Unbounded on its own: what it holds is bounded by `room`, which every entry reserved first.
    inbox: [SegQueue<Entry<T>>; CLASSES],
    state: CachePadded<Mutex<State<T>>>,
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
    /// Takes the lock and moves every staged entry into the classes, so the holder sees everything
    /// admitted (but for pushes between their reservation and their staging).
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        let mut st = self.lock_state();
        self.absorb(&mut st);
        st
    }

    /// Takes the lock without looking at the inboxes: [`take`](Self::take) serves from them
    /// directly when it can, and admission moves staged entries only when it must look at them.
    fn lock_state(&self) -> MutexGuard<'_, State<T>> {
        // A panic in a dead-letter hook never happens under this lock, so the state is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn absorb(&self, st: &mut State<T>) {
        for inbox in &self.inbox {
            while let Some(e) = inbox.pop() {
                st.push_entry(e);
            }
        }
    }

    fn weigh(&self, item: &T) -> u64 {
        self.weigher.as_ref().map_or(0, |w| w(item))
    }

    /// Items queued: the room claimed less what consumers owe back. Exact under the lock; without
    /// it, a moment's estimate that the debt never makes read low: the claim is read first, so a
    /// debt settled in between is subtracted from a claim that still holds it, or not at all.
    fn len(&self) -> usize {
        let claimed = self.room.len.load(SeqCst);
        claimed.saturating_sub(self.owed.load(SeqCst))
    }

    /// Gives back the room of an item a consumer took (under the lock). Its bytes go back at
    /// once; its count is owed and given back in batches. Every producer claims room on the line
    /// `room.len` lives on, so a consumer that wrote it for every item would pull that line away
    /// from the producers once per item; in batches, once per batch.
    ///
    /// Nothing waits for what is owed: producers only ever see less room than there is, and
    ///
    /// - the locked paths (admission, capacity, stats) settle the debt first;
    /// - a consumer that finds the queue empty settles it;
    /// - a producer about to sleep for room and a consumer that owes it use the handshake of
    ///   [`Sleepers`]: the consumer records its debt, then looks for sleeping producers (and
    ///   settles if there are any); the producer says it sleeps, then looks for a debt (and takes
    ///   the locked path if there is one). One of the two sees the other: it is the
    ///   store-buffering handshake the loom model in `sleepers.rs` checks, with the debt in the
    ///   place of the staged item. So nothing is owed while a producer sleeps, and the room a
    ///   sleeper waits for comes back through the usual release and wake-up.
    #[inline]
    fn give_back(&self, weight: u64) {
        if weight > 0 {
            self.room.bytes.fetch_sub(weight, SeqCst);
        }
        let owed = self.owed.load(Relaxed) + 1;
        self.owed.store(owed, Relaxed);
        // Batches of at most 1/32 of the item bound (and 64), so what is owed never keeps a
        // producer from more than a sliver of the queue; a small queue gives back every item.
        let batch = (self.max_items() / 32).min(64);
        if owed >= batch || self.push_waiters.after_publish() {
            self.settle_owed();
        }
    }

    /// Gives back all the room consumers owe (under the lock).
    fn settle_owed(&self) {
        let owed = self.owed.load(Relaxed);
        if owed > 0 {
            self.room.len.fetch_sub(owed, SeqCst);
            self.owed.store(0, Relaxed);
        }
    }

    fn bytes(&self) -> u64 {
        self.room.bytes.load(SeqCst)
    }

    fn max_items(&self) -> usize {
        self.limits.max_items.load(Acquire)
    }

    fn max_bytes(&self) -> u64 {
        self.limits.max_bytes.load(Acquire)
    }

    fn closed(&self) -> bool {
        self.limits.closed.load(SeqCst)
    }

    /// Claims room for one item of `weight`, or leaves everything as it was.
    fn reserve(&self, weight: u64) -> bool {
        let max_bytes = self.max_bytes();
        if self.bytes().saturating_add(weight) > max_bytes {
            // Checked first, so that only a race with another push makes the count below undone.
            return false;
        }
        let max_items = self.max_items();
        let mut n = self.room.len.load(Relaxed);
        loop {
            if n >= max_items {
                return false;
            }
            match self
                .room
                .len
                .compare_exchange_weak(n, n + 1, SeqCst, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => n = seen,
            }
        }
        let mut b = self.room.bytes.load(Relaxed);
        loop {
            if b.saturating_add(weight) > max_bytes {
                self.unreserve(0);
                return false;
            }
            if weight == 0 {
                return true;
            }
            match self
                .room
                .bytes
                .compare_exchange_weak(b, b + weight, SeqCst, Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => b = seen,
            }
        }
    }

    /// Gives back a reservation that was not used. Someone may have been refused, or gone to sleep,
    /// while it was held: waiters of both kinds look again.
    fn unreserve(&self, weight: u64) {
        self.room.release(weight);
        if self.push_waiters.after_publish() {
            self.not_full.notify_waiters();
        }
        if self.pop_waiters.after_publish() {
            self.not_empty.notify_waiters();
        }
    }

    /// The way in without the lock: when there is room, claim it and stage the entry. Gives the item
    /// back when the push needs the lock (no room, a past deadline, a closed queue).
    fn push_fast(&self, item: T, weight: u64, meta: Meta, now: Instant) -> Result<(), T> {
        if meta.deadline.is_some_and(|d| d <= now) || !self.reserve(weight) {
            return Err(item);
        }
        self.stage_reserved(item, weight, meta, now)
    }

    /// Stages an item whose room this caller has just reserved without the lock, and wakes a
    /// consumer; gives the item back (and the room) when the queue was closed meanwhile.
    #[inline]
    fn stage_reserved(&self, item: T, weight: u64, meta: Meta, now: Instant) -> Result<(), T> {
        // After the reservation: `close` sets the flag first and consumers stop only when nothing is
        // reserved, so either this push sees the flag or a consumer waits for its item.
        if self.closed() {
            self.unreserve(weight);
            return Err(item);
        }
        self.insert(item, weight, meta, now);
        self.wake_consumer();
        Ok(())
    }

    fn entry(&self, item: T, weight: u64, meta: Meta, now: Instant) -> Entry<T> {
        if meta.deadline.is_some() && !self.limits.deadlines.load(Relaxed) {
            self.limits.deadlines.store(true, Relaxed);
        }
        Entry {
            item,
            weight,
            meta,
            enqueued: now,
            seq: self.admitted.fetch_add(1, Relaxed),
        }
    }

    /// Wakes one sleeping consumer, if any (the handshake is [`Sleepers`]'s: a consumer saying it
    /// sleeps and this push's staged item cannot miss each other).
    fn wake_consumer(&self) {
        if self.pop_waiters.after_publish() {
            self.not_empty.notify_one();
        }
    }

    /// Whether blocked producers should be woken now. Waking them on every freed slot makes a
    /// producer and a consumer ping-pong one item at a time; instead they are woken once an eighth
    /// of the item bound is free (or the queue is empty), and push a batch. A byte-bound queue
    /// still wakes them on every departure, since the room a waiting item needs is unknown here.
    fn wake_producers(&self) -> bool {
        if !self.push_waiters.any() {
            return false;
        }
        let (len, max_items) = (self.len(), self.max_items());
        let slack = (max_items / 8).max(1);
        len == 0 || len + slack <= max_items || self.max_bytes() != u64::MAX
    }

    /// How long until an item of `weight` would fit, from the measured drain rate.
    fn retry_hint(&self, st: &State<T>, weight: u64, now: Instant) -> Duration {
        let (len, bytes, max_bytes) = (self.len(), self.bytes(), self.max_bytes());
        let by_count = (len + 1).saturating_sub(self.max_items()) as u64;
        let over = bytes.saturating_add(weight).saturating_sub(max_bytes);
        let by_bytes = if over == 0 || len == 0 {
            0
        } else {
            let mean = (bytes / len as u64).max(1);
            over.div_ceil(mean)
        };
        st.drain
            .time_to_drain(by_count.max(by_bytes).max(1), now, self.retry)
    }

    /// Queues an item whose room is reserved. It is staged like any other, so that what the classes
    /// hold is always older than what is staged.
    #[inline]
    fn insert(&self, item: T, weight: u64, meta: Meta, now: Instant) {
        let e = self.entry(item, weight, meta, now);
        self.inbox[meta.priority.index()].push(e);
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
        // Room the consumers owe is room: give it back before deciding there is none.
        self.settle_owed();
        let refuse = |err: PushError<T>| {
            self.refused.count(&err);
            Step::Done(Err(err))
        };
        let queued = |evicted| Step::Done(Ok(Admitted::Queued { evicted }));
        if self.closed() {
            return refuse(PushError::Closed { item });
        }
        let max_bytes = self.max_bytes();
        if weight > max_bytes {
            return refuse(PushError::TooLarge {
                item,
                weight,
                max_bytes,
            });
        }
        if meta.deadline.is_some_and(|d| d <= now) {
            return refuse(PushError::Expired { item });
        }
        let mut reserved = self.reserve(weight);
        if !reserved && self.limits.deadlines.load(Relaxed) {
            self.absorb(st);
            let before = graves.len();
            st.purge_expired_fronts(&self.room, now, graves);
            reserved = graves.len() > before && self.reserve(weight);
        }
        if reserved {
            self.insert(item, weight, meta, now);
            return queued(0);
        }
        match self.overflow {
            Overflow::Block if may_wait => Step::Wait(item),
            Overflow::Block | Overflow::Reject => {
                let retry_after = self.retry_hint(st, weight, now);
                refuse(PushError::Full { item, retry_after })
            }
            Overflow::DropNewest => self.bury_new(st, item, meta, graves, now),
            Overflow::DropOldest => {
                self.absorb(st);
                let mut evicted = 0;
                while !self.reserve(weight) {
                    // Nothing to evict means the room is held by pushes still on their way in.
                    let Some(c) = st.oldest_class() else {
                        return self.bury_new(st, item, meta, graves, now);
                    };
                    let e = st.remove(&self.room, c, false);
                    st.bury(graves, e, DropReason::Evicted, now);
                    evicted += 1;
                }
                self.insert(item, weight, meta, now);
                queued(evicted)
            }
            Overflow::DropLowestPriority => {
                self.absorb(st);
                let below = 0..meta.priority.index();
                let spare_items: usize = below.clone().map(|c| st.classes[c].len()).sum();
                let spare_bytes: u64 = below.map(|c| st.class_bytes[c]).sum();
                let feasible = self.len().saturating_sub(spare_items) < self.max_items()
                    && (self.bytes().saturating_sub(spare_bytes)).saturating_add(weight)
                        <= max_bytes;
                if !feasible {
                    return self.bury_new(st, item, meta, graves, now);
                }
                let mut evicted = 0;
                while !self.reserve(weight) {
                    let victim = st.lowest_class().filter(|&c| c < meta.priority.index());
                    let Some(c) = victim else {
                        return self.bury_new(st, item, meta, graves, now);
                    };
                    let e = st.remove(&self.room, c, true);
                    st.bury(graves, e, DropReason::Displaced, now);
                    evicted += 1;
                }
                self.insert(item, weight, meta, now);
                queued(evicted)
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
        if st.codel.is_none() && st.classes.iter().all(VecDeque::is_empty) {
            // The common case: everything queued is still staged. Serve it from there, highest
            // class first, without moving it twice.
            for c in (0..CLASSES).rev() {
                while let Some(e) = self.inbox[c].pop() {
                    self.give_back(e.weight);
                    if e.expired(now) {
                        st.bury(graves, e, DropReason::Expired, now);
                        continue;
                    }
                    return Some(Self::serve(st, e, now));
                }
            }
            self.settle_owed();
            return None;
        }
        self.absorb(st);
        loop {
            let Some(c) = st.highest_class() else {
                self.settle_owed();
                return None;
            };
            let front = st.classes[c].front().expect("class is not empty");
            if front.expired(now) {
                let e = st.unlink(c, false);
                self.give_back(e.weight);
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
                    let e = st.unlink(victim, false);
                    self.give_back(e.weight);
                    st.bury(graves, e, DropReason::Shed, now);
                    continue;
                }
                from_back = self.lifo && codel.is_standing();
            }
            let e = st.unlink(c, from_back);
            self.give_back(e.weight);
            if e.expired(now) {
                st.bury(graves, e, DropReason::Expired, now);
                continue;
            }
            return Some(Self::serve(st, e, now));
        }
    }

    fn serve(st: &mut State<T>, e: Entry<T>, now: Instant) -> Popped<T> {
        let sojourn = now.saturating_duration_since(e.enqueued);
        st.delivered += 1;
        st.last_sojourn = sojourn;
        st.drain.record(1, now);
        Popped {
            item: e.item,
            priority: e.meta.priority,
            sojourn,
            deadline: e.meta.deadline,
        }
    }

    /// True when a consumer may stop: closed, and nothing queued or on its way in.
    fn finished(&self) -> bool {
        self.closed() && self.len() == 0
    }

    /// Work that must happen after the lock is released: wake-ups, reports, dead-letter hooks.
    fn settle(&self, graves: Graveyard<T>, wake_consumer: bool, wake_producers: bool) {
        if wake_consumer {
            self.wake_consumer();
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

    fn report_push(&self, result: &Result<Admitted, PushError<T>>) {
        if !self.reporter.is_enabled() {
            return;
        }
        self.reporter.counter("offered", "", 1);
        match result {
            Ok(Admitted::Queued { .. }) => self.reporter.counter("accepted", "", 1),
            Ok(Admitted::DeadLettered) => {}
            Err(e) => self.reporter.counter("refused", e.reason(), 1),
        }
        self.reporter.gauge("depth", self.len() as f64);
        self.reporter.gauge("bytes", self.bytes() as f64);
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
        f.debug_struct("Queue")
            .field("len", &self.shared.len())
            .field("bytes", &self.shared.bytes())
            .field("max_items", &self.shared.max_items())
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
            drain: DrainRate::new(b.drain_window, b.drain_time_constant, now),
            codel: b.codel,
            delivered: 0,
            dead: DropCounts::default(),
            last_sojourn: Duration::ZERO,
        };
        Queue {
            shared: Arc::new(Shared {
                room: CachePadded::new(Room {
                    len: AtomicUsize::new(0),
                    bytes: AtomicU64::new(0),
                }),
                admitted: CachePadded::new(AtomicU64::new(0)),
                owed: CachePadded::new(AtomicUsize::new(0)),
                push_waiters: CachePadded::default(),
                pop_waiters: CachePadded::default(),
                refused: RefusalCounters::default(),
                limits: CachePadded::new(Limits {
                    max_items: AtomicUsize::new(b.max_items),
                    max_bytes: AtomicU64::new(b.max_bytes.unwrap_or(u64::MAX)),
                    closed: AtomicBool::new(false),
                    deadlines: AtomicBool::new(false),
                }),
                inbox: Default::default(),
                state: CachePadded::new(Mutex::new(state)),
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
        let shared = &*self.shared;
        let weight = shared.weigh(&item);
        let now = shared.epoch.now();
        let item = match shared.push_fast(item, weight, meta, now) {
            Ok(()) => {
                let result = Ok(Admitted::Queued { evicted: 0 });
                shared.report_push(&result);
                return result;
            }
            Err(item) => item,
        };
        let mut graves = Vec::new();
        let result = {
            let mut st = shared.lock_state();
            let step = shared.admit(&mut st, item, weight, meta, now, &mut graves, false);
            let Step::Done(result) = step else {
                unreachable!("admit never asks to wait when waiting is not allowed")
            };
            result
        };
        shared.report_push(&result);
        let queued = matches!(result, Ok(Admitted::Queued { .. }));
        shared.settle(graves, queued, false);
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
        let (popped, wake) = {
            let mut st = self.shared.lock_state();
            let popped = self.shared.take(&mut st, now, &mut graves);
            (popped, self.shared.wake_producers())
        };
        let freed = popped.is_some() || !graves.is_empty();
        self.shared.settle(graves, false, freed && wake);
        self.report_pop(&popped);
        match popped {
            Some(p) => Ok(p),
            None if self.shared.finished() => Err(PopError::Closed),
            None => Err(PopError::Empty),
        }
    }

    /// Takes the next item, waiting until there is one. Returns `None` once the queue is closed and
    /// empty.
    ///
    /// # Cancel safety
    /// Cancel safe: an item is removed from the queue only in the poll that returns it.
    pub async fn pop(&self) -> Option<Popped<T>> {
        let shared = &*self.shared;
        let mut wait = PopWait {
            shared,
            registered: false,
        };
        loop {
            // Made only when this pop may sleep: making one reads the `Notify`'s state, a line that
            // every push that wakes a consumer writes.
            let mut notified = std::pin::pin!(None::<Notified<'_>>);
            let now = shared.epoch.now();
            let mut graves = Vec::new();
            let (popped, wake) = {
                let mut st = shared.lock_state();
                wait.unregister();
                let mut popped = shared.take(&mut st, now, &mut graves);
                if popped.is_none() && !shared.finished() {
                    // Say we sleep, then look once more: a push staged in between either sees us
                    // (and wakes us) or is seen here.
                    notified.set(Some(shared.not_empty.notified()));
                    if let Some(n) = notified.as_mut().as_pin_mut() {
                        n.enable();
                    }
                    wait.register();
                    popped = shared.take(&mut st, now, &mut graves);
                    if popped.is_some() {
                        wait.unregister();
                    }
                }
                (popped, shared.wake_producers())
            };
            let freed = popped.is_some() || !graves.is_empty();
            shared.settle(graves, false, freed && wake);
            if popped.is_some() {
                self.report_pop(&popped);
                return popped;
            }
            if !wait.registered {
                return None;
            }
            if let Some(n) = notified.as_mut().as_pin_mut() {
                n.await;
            }
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
            let mut st = self.shared.lock_state();
            while buf.len() - start < max {
                match self.shared.take(&mut st, now, &mut graves) {
                    Some(p) => buf.push(p),
                    None => break,
                }
            }
            self.shared.wake_producers()
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
        let shared = &*self.shared;
        let now = shared.epoch.now();
        let mut graves = Vec::new();
        let waiters = {
            let mut st = shared.lock();
            for c in 0..CLASSES {
                let mut i = 0;
                while i < st.classes[c].len() {
                    if st.classes[c][i].expired(now) {
                        let e = st.classes[c].remove(i).expect("index is in range");
                        st.class_bytes[c] -= e.weight;
                        shared.room.release(e.weight);
                        st.bury(&mut graves, e, DropReason::Expired, now);
                    } else {
                        i += 1;
                    }
                }
            }
            shared.wake_producers()
        };
        let n = graves.len();
        shared.settle(graves, false, n > 0 && waiters);
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
            let _st = self.shared.lock();
            self.shared.settle_owed();
            let limits = &self.shared.limits;
            limits.max_items.store(max_items, Release);
            limits
                .max_bytes
                .store(max_bytes.unwrap_or(u64::MAX), Release);
        }
        self.shared.not_full.notify_waiters();
        Ok(())
    }

    /// Closes the queue: pushes are refused with [`PushError::Closed`] (blocked ones too), and pops
    /// drain what is left, then return `None`.
    pub fn close(&self) {
        {
            let _st = self.shared.lock();
            self.shared.limits.closed.store(true, SeqCst);
        }
        self.shared.not_full.notify_waiters();
        self.shared.not_empty.notify_waiters();
    }

    /// True once [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed()
    }

    /// Items queued now.
    ///
    /// Pushes on their way in are counted from the moment they claimed their room.
    pub fn len(&self) -> usize {
        self.shared.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How full the queue is: the larger of `len / max_items` and `bytes / max_bytes`. Feed this to a
    /// [`Pressure`](crate::Pressure).
    pub fn utilisation(&self) -> f64 {
        let shared = &*self.shared;
        let by_items = shared.len() as f64 / shared.max_items() as f64;
        let max_bytes = shared.max_bytes();
        let by_bytes = if max_bytes == u64::MAX {
            0.0
        } else {
            shared.bytes() as f64 / max_bytes as f64
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
        let shared = &*self.shared;
        let now = shared.epoch.now();
        let st = shared.lock();
        shared.settle_owed();
        let refused = shared.refused.snapshot();
        // Every push ends admitted, refused, dead-lettered at the door, or cancelled; `offered` is
        // their sum, so the law below checks what became of what was admitted.
        let offered = shared.admitted.load(SeqCst)
            + refused.total()
            + st.dead.get(DropReason::Full)
            + st.dead.get(DropReason::Cancelled);
        let max_bytes = shared.max_bytes();
        QueueStats {
            len: shared.len(),
            bytes: shared.bytes(),
            max_items: shared.max_items(),
            max_bytes: (max_bytes != u64::MAX).then_some(max_bytes),
            offered,
            delivered: st.delivered,
            refused,
            dead_lettered: st.dead,
            drain_per_second: st.drain.per_second(now),
            oldest_sojourn: st
                .oldest_enqueued()
                .map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            last_sojourn: st.last_sojourn,
            standing: st.codel.as_ref().is_some_and(CoDel::is_standing),
            closed: shared.closed(),
        }
    }
}

/// Keeps `pop_waiters` right when a waiting `pop` is cancelled.
struct PopWait<'a, T> {
    shared: &'a Shared<T>,
    registered: bool,
}

impl<T> PopWait<'_, T> {
    fn register(&mut self) {
        self.shared.pop_waiters.enter();
        self.registered = true;
    }

    fn unregister(&mut self) {
        if self.registered {
            self.shared.pop_waiters.leave();
            self.registered = false;
        }
    }
}

impl<T> Drop for PopWait<'_, T> {
    fn drop(&mut self) {
        self.unregister();
    }
}

/// A push in progress. Owns the item until it is queued, refused, or (on drop) dead-lettered.
struct PendingPush<'a, T> {
    shared: &'a Shared<T>,
    item: Option<T>,
    weight: u64,
    meta: Meta,
    /// Whether this push is counted in `push_waiters`.
    waiting: bool,
}

impl<T> PendingPush<'_, T> {
    fn unregister(&mut self) {
        if self.waiting {
            self.shared.push_waiters.leave();
            self.waiting = false;
        }
    }

    async fn run(&mut self) -> Result<Admitted, PushError<T>> {
        let shared = self.shared;
        loop {
            let now = shared.epoch.now();
            let item = self
                .item
                .take()
                .expect("a pending push holds its item until it ends");
            let item = match shared.push_fast(item, self.weight, self.meta, now) {
                Ok(()) => {
                    self.unregister();
                    let result = Ok(Admitted::Queued { evicted: 0 });
                    shared.report_push(&result);
                    return result;
                }
                Err(item) => item,
            };
            let notified = shared.not_full.notified();
            tokio::pin!(notified);
            let item = match self.wait_unlocked(item, notified.as_mut(), now) {
                Unlocked::Done(result) => return result,
                Unlocked::Waiting => {
                    notified.await;
                    // Awake: no longer counted, so consumers stop waking us while we retry.
                    self.unregister();
                    continue;
                }
                Unlocked::NeedsLock(item) => item,
            };
            let mut graves = Vec::new();
            let outcome = {
                let mut st = shared.lock_state();
                self.unregister();
                let step = shared.admit(
                    &mut st,
                    item,
                    self.weight,
                    self.meta,
                    now,
                    &mut graves,
                    true,
                );
                match step {
                    Step::Done(result) => Some(result),
                    Step::Wait(item) => {
                        // Room given back without the lock (a reservation undone) either is seen
                        // here or wakes us. Nothing is owed: `admit` settled it, and consumers
                        // owe only under this lock.
                        match self.wait_or_reserve(notified.as_mut()) {
                            Reserved::Yes => {
                                shared.insert(item, self.weight, self.meta, now);
                                Some(Ok(Admitted::Queued { evicted: 0 }))
                            }
                            Reserved::Waiting => {
                                self.item = Some(item);
                                None
                            }
                            Reserved::Owed => {
                                unreachable!("nothing is owed under the lock after admit")
                            }
                        }
                    }
                }
            };
            match outcome {
                Some(result) => {
                    shared.report_push(&result);
                    let queued = matches!(result, Ok(Admitted::Queued { .. }));
                    shared.settle(graves, queued, false);
                    return result;
                }
                None => {
                    shared.settle(graves, false, false);
                    notified.await;
                    self.unregister();
                }
            }
        }
    }

    /// The wait of a blocking queue without deadlines, which has nothing to decide under the lock:
    /// say we wait, then look for room once more. Taking the lock here made a full queue's producer
    /// and consumer meet on it for every item (the producer's last look often finds the one slot
    /// the consumer just freed). Anything else (another policy, deadlines to purge, a closed queue,
    /// an item too large for the byte bound) goes to the locked path.
    fn wait_unlocked(
        &mut self,
        item: T,
        notified: Pin<&mut Notified<'_>>,
        now: Instant,
    ) -> Unlocked<T> {
        let shared = self.shared;
        if shared.overflow != Overflow::Block
            || shared.limits.deadlines.load(Relaxed)
            || shared.closed()
            || self.weight > shared.max_bytes()
        {
            return Unlocked::NeedsLock(item);
        }
        match self.wait_or_reserve(notified) {
            Reserved::Yes => {}
            Reserved::Owed => return Unlocked::NeedsLock(item),
            Reserved::Waiting => {
                self.item = Some(item);
                return Unlocked::Waiting;
            }
        }
        match shared.stage_reserved(item, self.weight, self.meta, now) {
            Ok(()) => {
                let result = Ok(Admitted::Queued { evicted: 0 });
                shared.report_push(&result);
                Unlocked::Done(result)
            }
            // Closed since the look above: the locked path refuses it, as after a fast push.
            Err(item) => Unlocked::NeedsLock(item),
        }
    }

    /// Says this push waits (its wake-up armed first), then looks for room once more, and for
    /// room the consumers owe (see [`Shared::give_back`]). When it waits, it is counted among
    /// the sleepers until `notified` fires.
    #[inline]
    fn wait_or_reserve(&mut self, notified: Pin<&mut Notified<'_>>) -> Reserved {
        notified.enable();
        self.shared.push_waiters.enter();
        self.waiting = true;
        if self.shared.reserve(self.weight) {
            self.unregister();
            Reserved::Yes
        } else if self.shared.owed.load(Relaxed) > 0 {
            self.unregister();
            Reserved::Owed
        } else {
            Reserved::Waiting
        }
    }
}

/// What [`PendingPush::wait_or_reserve`] found.
enum Reserved {
    /// Room, now reserved.
    Yes,
    /// No room, but consumers owe some: the locked path settles it (not waiting).
    Owed,
    /// No room: waiting for a wake-up.
    Waiting,
}

/// Where [`PendingPush::wait_unlocked`] left a push.
enum Unlocked<T> {
    Done(Result<Admitted, PushError<T>>),
    /// Counted as waiting, its item kept, its wake-up armed.
    Waiting,
    NeedsLock(T),
}

impl<T> Drop for PendingPush<'_, T> {
    fn drop(&mut self) {
        self.unregister();
        let Some(item) = self.item.take() else {
            return;
        };
        self.shared.lock_state().dead.add(DropReason::Cancelled, 1);
        let letter = DeadLetter {
            item,
            reason: DropReason::Cancelled,
            priority: self.meta.priority,
            sojourn: Duration::ZERO,
        };
        self.shared.settle(vec![letter], false, false);
    }
}
