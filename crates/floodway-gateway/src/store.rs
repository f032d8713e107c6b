//! The durable store behind the gateway, behind a trait so other backends can follow.
//!
//! The embedded backend is [redb](https://docs.rs/redb): a pure-Rust, crash-safe B-tree with ACID
//! transactions. One writer thread owns every write; requests that arrive while a commit is in
//! progress are gathered into the next transaction (group commit), so under load many producers
//! share one sync. Each group's new events are numbered and written as one record to a write-ahead
//! log ([`crate::wal`]) that is synced: one write and one `fdatasync` into preallocated space,
//! several times quicker than a synced B-tree commit. Once the group's callers are answered, its
//! events go into an open redb transaction (acks and dead letters go in as they come, and are also
//! kept until the next synced commit, so that a reload can apply them again). The
//! transaction is committed (unsynced) at most every few milliseconds, which makes what it holds
//! readable for delivery ([`Store::readable`] tells readers when), so an event is never readable
//! before it is logged; every 250 ms (or when the log is half full) it is committed synced and the
//! log starts afresh. On opening, logged events the
//! store lost in a crash are put back. A caller's future completes only after the log (or the
//! synced store) holds its events on disk, which is what lets the gateway answer `202` only for
//! events that are.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodway::Priority;
use redb::{Database, Durability, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::Locked;
use crate::config::{Fsync, TopicConfig};
use crate::wal::Wal;

/// A boxed future, so the store trait can be used as `Arc<dyn Store>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why the store did not do what was asked.
#[derive(Debug, Clone)]
pub enum StoreError {
    /// The store failed or cannot be reached; the request that needed it gets `503`.
    Unavailable(String),
    /// The store refused the write because it is at its own limits (a stream's `max_msgs` or
    /// `max_bytes`); the producer is told to slow down.
    Full(String),
    /// The write was sent but its outcome is not known (a JetStream publish whose ack did not
    /// come): the events may or may not be stored.
    Unknown(String),
    /// Part of a batch was stored before the store failed (only a backend without atomic batches
    /// can do this); `stored` lists what was.
    Partial {
        /// What was stored, in order from the first line.
        stored: Vec<Appended>,
        /// Why the rest was not.
        error: String,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Unavailable(e) => write!(f, "store unavailable: {e}"),
            StoreError::Full(e) => write!(f, "the store is at its limits: {e}"),
            StoreError::Unknown(e) => write!(f, "the store did not confirm the write ({e})"),
            StoreError::Partial { stored, error } => write!(
                f,
                "store unavailable after storing the first {} events: {error}",
                stored.len()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Milliseconds since the Unix epoch (stored times survive restarts, so they are wall-clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An event as accepted, before it has a sequence number.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// The producer's content type, kept to deliver the body as it came.
    pub content_type: String,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The event's class.
    pub priority: Priority,
    /// When it stops being worth delivering (Unix ms), if it has a TTL.
    pub deadline_ms: Option<u64>,
    /// The producer's idempotency key, if any (with a batch, suffixed by the line number).
    pub idempotency_key: Option<String>,
    /// When it was accepted (Unix ms).
    pub accepted_ms: u64,
}

/// A stored event.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredEvent {
    /// Its sequence number in its topic: its id.
    pub seq: u64,
    /// The event.
    pub event: NewEvent,
}

/// A dead letter put back for delivery.
#[derive(Clone, Debug, PartialEq)]
pub struct Replayed {
    /// The event, under its new id.
    pub stored: StoredEvent,
    /// The id it had as a dead letter.
    pub was: u64,
}

/// A dead-lettered event with why.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadEvent {
    /// The event.
    pub stored: StoredEvent,
    /// Why (`expired`, `shed`, `permanent`, `exhausted`).
    pub reason: String,
    /// The last delivery error, if any.
    pub error: String,
    /// Delivery attempts made.
    pub attempts: u32,
    /// When it was dead-lettered (Unix ms).
    pub dead_ms: u64,
}

/// Which of a topic's dead letters a listing, a replay or a purge takes: all of them (the
/// default), those of one reason, those with given ids, or those that are both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadSelection {
    /// Only letters of this reason (`expired`, `shed`, `permanent`, `exhausted`).
    pub reason: Option<String>,
    /// Only letters of these events (their ids as listed).
    pub ids: Option<BTreeSet<u64>>,
}

impl DeadSelection {
    /// The letters of `reason` only.
    #[cfg(test)]
    pub fn of_reason(reason: &str) -> Self {
        DeadSelection {
            reason: Some(reason.to_owned()),
            ids: None,
        }
    }

    /// The letters of the events `ids` only.
    #[cfg(test)]
    pub fn of_ids(ids: impl IntoIterator<Item = u64>) -> Self {
        DeadSelection {
            reason: None,
            ids: Some(ids.into_iter().collect()),
        }
    }

    /// True when every letter is taken.
    pub fn is_all(&self) -> bool {
        self.reason.is_none() && self.ids.is_none()
    }

    /// Whether the letter of event `id` with `reason` is taken.
    fn takes_id_reason(&self, id: u64, reason: &str) -> bool {
        self.ids.as_ref().is_none_or(|ids| ids.contains(&id))
            && self.reason.as_deref().is_none_or(|r| r == reason)
    }

    /// Whether `letter` is taken.
    fn takes(&self, letter: &DeadEvent) -> bool {
        self.takes_id_reason(letter.stored.seq, &letter.reason)
    }

    /// [`takes`](Self::takes) for a letter as stored ([`encode_dead`]), reading only its id and
    /// reason (and nothing when all are taken).
    ///
    /// # Errors
    /// A record too short to hold them.
    pub fn takes_record(&self, record: &[u8]) -> Result<bool, StoreError> {
        if self.is_all() {
            return Ok(true);
        }
        let (id, reason) = dead_id_reason(record)?;
        Ok(self.takes_id_reason(id, reason))
    }
}

/// One page of a topic's dead letters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeadPage {
    /// The dead letters, oldest first.
    pub letters: Vec<DeadEvent>,
    /// Where the next page starts (pass it as `after`), or `None` if this page is the last.
    /// A position in the backend's own order, not an event id: the nats backend counts its dead
    /// letter stream.
    pub next: Option<u64>,
}

/// Dead letters a page looks at, at most, when only some are wanted (of one reason, or of given
/// ids where a backend reads through rather than looks them up): a page of a rare reason stops
/// there, short or even empty, with a `next` to go on from, so that no one request reads a whole
/// large dead-letter store.
pub const PAGE_SCAN: usize = 10_000;

/// Event bodies a page holds, at most (but always one letter, however large): a page of a
/// thousand large events would otherwise be an answer of a gigabyte.
pub const PAGE_BYTES: usize = 4 << 20;

/// Builds one [`DeadPage`] from a topic's dead letters, offered in order.
#[derive(Debug)]
pub struct Pager<'a> {
    pick: &'a DeadSelection,
    max: usize,
    letters: Vec<DeadEvent>,
    /// Their bodies' bytes.
    bytes: usize,
    /// The position of the last letter looked at.
    last: Option<u64>,
    looked: usize,
    next: Option<u64>,
}

impl<'a> Pager<'a> {
    /// A page of up to `max` (at least 1) of the dead letters `pick` takes.
    pub fn new(pick: &'a DeadSelection, max: usize) -> Self {
        Pager {
            pick,
            max: max.max(1),
            letters: Vec::new(),
            bytes: 0,
            last: None,
            looked: 0,
            next: None,
        }
    }

    /// Offers the dead letter at position `pos`, the one after the last offered; false once the
    /// page is done (the caller offers no more, and the page's `next` is set if more may follow).
    pub fn offer(&mut self, pos: u64, letter: DeadEvent) -> bool {
        if self.pick.takes(&letter) {
            self.take(pos, letter)
        } else {
            self.pass(pos)
        }
    }

    /// [`offer`](Self::offer) for a letter as stored ([`encode_dead`]): decoded only if the page
    /// takes it, so that a page of one reason (or of some ids) does not decode the others' bodies.
    ///
    /// # Errors
    /// A record that does not decode.
    pub fn offer_record(&mut self, pos: u64, record: &[u8]) -> Result<bool, StoreError> {
        if self.pick.takes_record(record)? {
            Ok(self.take(pos, decode_dead(record)?))
        } else {
            Ok(self.pass(pos))
        }
    }

    fn take(&mut self, pos: u64, letter: DeadEvent) -> bool {
        let size = letter.stored.event.body.len();
        let full = self.letters.len() == self.max
            || (!self.letters.is_empty() && self.bytes + size > PAGE_BYTES);
        if full {
            // The next page starts after the last letter looked at.
            self.next = self.last;
            return false;
        }
        self.bytes += size;
        self.letters.push(letter);
        self.pass(pos)
    }

    /// Counts the letter at `pos` as looked at.
    fn pass(&mut self, pos: u64) -> bool {
        self.last = Some(pos);
        self.looked += 1;
        if !self.pick.is_all() && self.looked == PAGE_SCAN {
            self.next = Some(pos);
            return false;
        }
        true
    }

    /// The page.
    pub fn page(self) -> DeadPage {
        DeadPage {
            letters: self.letters,
            next: self.next,
        }
    }
}

/// The result of appending one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The event's id.
    pub seq: u64,
    /// True if an event with the same idempotency key was already stored: nothing new was stored.
    pub duplicate: bool,
}

/// What recovery found for a topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicState {
    /// Events waiting for delivery.
    pub backlog_events: u64,
    /// Their bytes.
    pub backlog_bytes: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
    /// Their bytes (of the events' bodies).
    pub dead_bytes: u64,
}

/// What a purge of dead letters removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Purged {
    /// Dead letters removed.
    pub events: u64,
    /// Their bodies' bytes (0 from a shared backend, whose counts are read with the backlog).
    pub bytes: u64,
}

/// A durable event store.
pub trait Store: Send + Sync + 'static {
    /// Stores `events` atomically (all or none); completes once they are durable per the sync
    /// policy.
    fn append(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>>;
    /// Up to `max` events of `topic` with sequence numbers from `from`, in order. Used only by a
    /// backend without a shared [`Feed`] (`feed` gives `None`).
    fn read_from(&self, topic: &str, from: u64, max: usize)
    -> Result<Vec<StoredEvent>, StoreError>;
    /// Removes delivered events (a backend with a shared [`Feed`] settles leases instead).
    /// Completes once the removal is queued for the next commit, not when it is durable: an ack
    /// lost in a crash only means the event is delivered again (at least once), so delivery need
    /// not wait for a sync.
    fn ack(&self, topic: &str, seqs: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Moves an event to the topic's dead letters.
    fn dead_letter(&self, topic: &str, dead: DeadEvent) -> BoxFuture<'_, Result<(), StoreError>>;
    /// A page of the dead letters of `topic` that `pick` takes, past position `after` (0: from
    /// the first), oldest first, as a [`Pager`] of `max` makes it.
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<DeadPage, StoreError>>;
    /// Moves every dead letter of `topic` that `pick` takes back for delivery, with new ids;
    /// returns them, oldest first.
    fn replay<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Vec<Replayed>, StoreError>>;
    /// Removes every dead letter of `topic` that `pick` takes for good (the operator's decision).
    fn purge_dead<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Purged, StoreError>>;
    /// Every topic with stored state, and what it holds.
    fn recover(&self) -> BoxFuture<'_, Result<HashMap<String, TopicState>, StoreError>>;
    /// True while the store accepts writes.
    fn healthy(&self) -> bool;
    /// Prepares the store for a topic (a backend with per-topic resources creates them here).
    fn open_topic<'a>(
        &'a self,
        _topic: &'a str,
        _config: &'a TopicConfig,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// A shared feed of the topic's events for a backend where several processes deliver from
    /// one backlog; `None` means this process owns the backlog and reads it with
    /// [`Store::read_from`] and [`Store::ack`].
    fn feed(&self, _topic: &str) -> BoxFuture<'_, Result<Option<Box<dyn Feed>>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }
    /// Sends whatever the store still buffers (a network backend's acks) before the process
    /// exits.
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    /// Sets how many events of the topic may be out for delivery at once across every process
    /// sharing its backlog (a shared backend follows the adaptive concurrency limit with it).
    fn set_shared_limit(
        &self,
        _topic: &str,
        _limit: usize,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    /// The backlog as the whole cluster sees it, for a backend shared by several processes;
    /// `None` means this process's own accounting is the whole truth.
    fn shared_backlog(&self, _topic: &str) -> BoxFuture<'_, Result<Option<Backlog>, StoreError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// For a backend that makes appended events readable a little after acknowledging them: a
    /// signal that changes whenever more become readable, so a reader that found nothing new waits
    /// for it. `None`: what is acknowledged is readable at once.
    fn readable(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// A topic's backlog as a shared backend reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events stored and not yet delivered or dead-lettered, by every process.
    pub events: u64,
    /// Their bytes as the backend counts them (with its own overhead).
    pub bytes: u64,
    /// When the oldest of them was stored (Unix ms), if any.
    pub oldest_ms: Option<u64>,
    /// Events that ever left the backlog (delivered or dead-lettered): its rate is the drain rate.
    pub removed: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// Their bytes as the backend counts them.
    pub dead_bytes: u64,
}

/// How a leased event leaves the shared backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Delivered: remove it.
    Ack,
    /// Not delivered this time: make it available again after this delay.
    Retry(Duration),
    /// Dead-lettered (already copied to the dead letters): remove it without delivering.
    Term,
}

/// An event taken from a shared backlog. Until it is settled no other process gets it; if this
/// process dies first, the backend hands it to another after its lease times out.
pub trait Lease: Send + Sync + 'static {
    /// Deliveries of this event that came before this one (in any process).
    fn earlier_attempts(&self) -> u32;
    /// Settles the event.
    fn settle(self: Box<Self>, how: Settle) -> BoxFuture<'static, Result<(), StoreError>>;
}

impl std::fmt::Debug for dyn Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease(earlier_attempts: {})", self.earlier_attempts())
    }
}

/// An event with its lease.
pub type Leased = (StoredEvent, Box<dyn Lease>);

/// A stream of leased events from a shared backlog.
pub trait Feed: Send + 'static {
    /// Asks for up to `max` events and hands each to `take` as it arrives, until `max` came or
    /// `wait` passed; returns how many came. Events are handed over one by one so the first are
    /// delivered while the rest are still on their way.
    fn next<'a>(
        &'a mut self,
        max: usize,
        wait: Duration,
        take: &'a mut (dyn FnMut(Leased) + Send),
    ) -> BoxFuture<'a, Result<usize, StoreError>>;
}

const EVENTS: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("events");
const DEAD: TableDefinition<'static, (&str, u64), &[u8]> = TableDefinition::new("dead");
const NEXT_SEQ: TableDefinition<'static, &str, u64> = TableDefinition::new("next_seq");
const IDEMPOTENCY: TableDefinition<'static, (&str, &str), (u64, u64)> =
    TableDefinition::new("idempotency");

/// How long an idempotency key is remembered.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(3600);

// Records are a small fixed binary layout rather than a serialization crate: five scalar fields
// and two strings, read back by this file only; the body stays byte-exact without base64.
pub fn encode(e: &NewEvent, out: &mut Vec<u8>) {
    let key = e.idempotency_key.as_deref().unwrap_or("");
    out.reserve(1 + 8 + 8 + 1 + 2 + e.content_type.len() + 2 + key.len() + e.body.len());
    out.push(1);
    out.extend_from_slice(&e.accepted_ms.to_le_bytes());
    out.extend_from_slice(&e.deadline_ms.unwrap_or(0).to_le_bytes());
    out.push(e.priority.index() as u8);
    for s in [e.content_type.as_str(), key] {
        out.extend_from_slice(&(s.len() as u16).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&e.body);
}

pub fn decode(b: &[u8]) -> Result<NewEvent, StoreError> {
    let bad = || StoreError::Unavailable("corrupt event record".into());
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], StoreError> {
        let s = b.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(s)
    };
    if take(1)? != [1] {
        return Err(bad());
    }
    let accepted_ms = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
    let deadline = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad())?);
    let priority = *Priority::ALL.get(take(1)?[0] as usize).ok_or_else(bad)?;
    let mut strings = Vec::with_capacity(2);
    for _ in 0..2 {
        let len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| bad())?) as usize;
        strings.push(String::from_utf8(take(len)?.to_vec()).map_err(|_| bad())?);
    }
    let body = b[at..].to_vec();
    let idem = strings.pop().unwrap_or_default();
    Ok(NewEvent {
        content_type: strings.pop().unwrap_or_default(),
        body,
        priority,
        deadline_ms: (deadline != 0).then_some(deadline),
        idempotency_key: (!idem.is_empty()).then_some(idem),
        accepted_ms,
    })
}

pub fn encode_dead(d: &DeadEvent) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&d.stored.seq.to_le_bytes());
    out.extend_from_slice(&d.attempts.to_le_bytes());
    out.extend_from_slice(&d.dead_ms.to_le_bytes());
    for s in [d.reason.as_str(), d.error.as_str()] {
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    encode(&d.stored.event, &mut out);
    out
}

/// The event id and the reason of a dead letter as stored ([`encode_dead`]), read without
/// decoding the rest.
///
/// # Errors
/// A record too short for them, or a reason that is not UTF-8.
fn dead_id_reason(b: &[u8]) -> Result<(u64, &str), StoreError> {
    let bad = || StoreError::Unavailable("corrupt dead-letter record".into());
    let id = b.get(..8).ok_or_else(bad)?;
    let id = u64::from_le_bytes(id.try_into().map_err(|_| bad())?);
    let len = b.get(20..24).ok_or_else(bad)?;
    let len = u32::from_le_bytes(len.try_into().map_err(|_| bad())?) as usize;
    let reason = b.get(24..24 + len).ok_or_else(bad)?;
    Ok((id, std::str::from_utf8(reason).map_err(|_| bad())?))
}

pub fn decode_dead(b: &[u8]) -> Result<DeadEvent, StoreError> {
    let bad = || StoreError::Unavailable("corrupt dead-letter record".into());
    let u64_at = |at: usize| -> Result<u64, StoreError> {
        Ok(u64::from_le_bytes(
            b.get(at..at + 8)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ))
    };
    let seq = u64_at(0)?;
    let attempts = u32::from_le_bytes(
        b.get(8..12)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let dead_ms = u64_at(12)?;
    let mut at = 20;
    let mut strings = Vec::new();
    for _ in 0..2 {
        let len = u32::from_le_bytes(
            b.get(at..at + 4)
                .ok_or_else(bad)?
                .try_into()
                .map_err(|_| bad())?,
        ) as usize;
        at += 4;
        strings.push(
            String::from_utf8(b.get(at..at + len).ok_or_else(bad)?.to_vec()).map_err(|_| bad())?,
        );
        at += len;
    }
    let error = strings.pop().unwrap_or_default();
    Ok(DeadEvent {
        stored: StoredEvent {
            seq,
            event: decode(&b[at..])?,
        },
        reason: strings.pop().unwrap_or_default(),
        error,
        attempts,
        dead_ms,
    })
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The write-ahead log's size. A batch whose entries do not fit in what is left is synced by a
/// checkpoint instead, so this bounds the log, not the batch.
const WAL_SIZE: u64 = 16 << 20;
/// redb's page cache, a tenth of it for writes (redb's default is 1 GiB, which unsynced commits
/// between checkpoints could fill with written pages).
const CACHE_BYTES: usize = 64 << 20;
/// How often the store is synced and the log started afresh (also whenever it is half full). redb
/// keeps what unsynced commits allocate until the next synced one: at 1 s the gateway's peak memory
/// under the 4x scenario was 24.8 MiB, at 250 ms 16.0 MiB (13.3 MiB with a synced commit per group).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// How long applied groups may wait, unsynced and unreadable, before they are committed for
/// readers: a commit per group cost redb about 30 µs per event at 32 connections, a sixth of it
/// per group now; delivery sees an event at most this much later than its `202`.
const COMMIT_EVERY: Duration = Duration::from_millis(5);
/// The most ops one group takes from the queue.
const MAX_GROUP: usize = 1024;

/// Appends one appended event to a log payload: `[topic len u16][topic][seq u64][len u32][event]`.
fn log_entry(log: &mut Vec<u8>, topic: &str, seq: u64, event: &[u8]) {
    log.reserve(2 + topic.len() + 8 + 4 + event.len());
    log.extend_from_slice(&(topic.len() as u16).to_le_bytes());
    log.extend_from_slice(topic.as_bytes());
    log.extend_from_slice(&seq.to_le_bytes());
    log.extend_from_slice(&(event.len() as u32).to_le_bytes());
    log.extend_from_slice(event);
}

/// One logged event: its topic, sequence number and encoded record.
type LogEntry<'a> = (String, u64, &'a [u8]);

/// The entries of one log payload.
fn log_entries(mut b: &[u8]) -> Result<Vec<LogEntry<'_>>, StoreError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], StoreError> {
        let (head, rest) = b.split_at_checked(n).ok_or_else(bad)?;
        *b = rest;
        Ok(head)
    }
    fn bad() -> StoreError {
        StoreError::Unavailable("corrupt write-ahead log entry".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let n = u16::from_le_bytes(take(&mut b, 2)?.try_into().map_err(|_| bad())?) as usize;
        let topic = String::from_utf8(take(&mut b, n)?.to_vec()).map_err(|_| bad())?;
        let seq = u64::from_le_bytes(take(&mut b, 8)?.try_into().map_err(|_| bad())?);
        let n = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| bad())?) as usize;
        let event = take(&mut b, n)?;
        out.push((topic, seq, event));
    }
    Ok(out)
}

/// The next sequence number of `topic`, taken (numbers start at 1); no allocation once the topic
/// is known.
fn take_seq(next: &mut HashMap<String, u64>, topic: &str) -> u64 {
    let n = match next.get_mut(topic) {
        Some(n) => n,
        None => next.entry(topic.to_owned()).or_insert(1),
    };
    let seq = *n;
    *n += 1;
    seq
}

enum Op {
    Append(String, Vec<NewEvent>, Reply<Vec<Appended>>),
    Ack(String, Vec<u64>, Reply<()>),
    Dead(String, DeadEvent, Reply<()>),
    Replay(String, DeadSelection, Reply<Vec<Replayed>>),
    Purge(String, DeadSelection, Reply<Purged>),
}

/// What an op will send back once its transaction commits.
enum Outcome {
    Appended(Reply<Vec<Appended>>, Vec<Appended>),
    Unit(Reply<()>),
    Replayed(Reply<Vec<Replayed>>, Vec<Replayed>),
    Purged(Reply<Purged>, Purged),
}

impl Outcome {
    fn fail(self, e: &StoreError) {
        match self {
            Outcome::Appended(r, _) => drop(r.send(Err(e.clone()))),
            Outcome::Unit(r) => drop(r.send(Err(e.clone()))),
            Outcome::Replayed(r, _) => drop(r.send(Err(e.clone()))),
            Outcome::Purged(r, _) => drop(r.send(Err(e.clone()))),
        }
    }

    fn succeed(self) {
        match self {
            Outcome::Appended(r, v) => drop(r.send(Ok(v))),
            Outcome::Unit(r) => drop(r.send(Ok(()))),
            Outcome::Replayed(r, v) => drop(r.send(Ok(v))),
            Outcome::Purged(r, v) => drop(r.send(Ok(v))),
        }
    }
}

type EventsTable<'t> = redb::Table<'t, (&'static str, u64), &'static [u8]>;

/// `def` opened in `txn` the first time a group needs it. Opening a table costs redb a lookup and a
/// check of its key and value types (about 15 allocations; 6% of the writer's time when every group
/// opened six), so a group of appends without idempotency keys opens one table here and one to
/// insert.
fn opened<'s, 't, K: redb::Key + 'static, V: redb::Value + 'static>(
    slot: &'s mut Option<redb::Table<'t, K, V>>,
    txn: &'t redb::WriteTransaction,
    def: TableDefinition<'_, K, V>,
) -> Result<&'s mut redb::Table<'t, K, V>, StoreError> {
    if slot.is_none() {
        *slot = Some(txn.open_table(def).map_err(err)?);
    }
    Ok(slot.as_mut().expect("opened above"))
}

/// Removes delivered events (an ack).
fn remove_events(
    events: &mut EventsTable<'_>,
    topic: &str,
    seqs: &[u64],
) -> Result<(), StoreError> {
    for &seq in seqs {
        events.remove((topic, seq)).map_err(err)?;
    }
    Ok(())
}

/// Moves an event to its topic's dead letters.
fn move_to_dead(
    events: &mut EventsTable<'_>,
    dead: &mut EventsTable<'_>,
    topic: &str,
    d: &DeadEvent,
) -> Result<(), StoreError> {
    events.remove((topic, d.stored.seq)).map_err(err)?;
    dead.insert((topic, d.stored.seq), encode_dead(d).as_slice())
        .map_err(err)?;
    Ok(())
}

/// Reads `topic`'s dead letters from id `from` on, in order, giving each one's id and stored
/// record to `f` until it answers false: only those of the ids `pick` names, looked up one by one,
/// if it names any; else every one. `f` still decides whether `pick` takes a letter of the right
/// id (by its reason), so that a [`Pager`] can count the letters it looked at.
fn for_each_read(
    dead: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    topic: &str,
    pick: &DeadSelection,
    from: u64,
    mut f: impl FnMut(u64, &[u8]) -> Result<bool, StoreError>,
) -> Result<(), StoreError> {
    if let Some(ids) = &pick.ids {
        for &id in ids.range(from..) {
            if let Some(v) = dead.get((topic, id)).map_err(err)? {
                if !f(id, v.value())? {
                    break;
                }
            }
        }
        return Ok(());
    }
    for row in dead.range((topic, from)..=(topic, u64::MAX)).map_err(err)? {
        let (k, v) = row.map_err(err)?;
        if !f(k.value().1, v.value())? {
            break;
        }
    }
    Ok(())
}

/// How soon the writer opens the database again after a failure left it unusable, and how often
/// it tries again while that fails.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// The database, shared by the writer and the readers. After an I/O error redb refuses every
/// transaction until the database is opened again, so the writer can replace it ([`Db::reopen`]);
/// readers hold the lock for as long as they read, so none is inside a database that is dropped.
#[derive(Clone)]
struct Db {
    slot: Arc<RwLock<Option<Database>>>,
    opener: Arc<dyn Fn() -> Result<Database, StoreError> + Send + Sync>,
}

impl Db {
    fn open(
        opener: impl Fn() -> Result<Database, StoreError> + Send + Sync + 'static,
    ) -> Result<Db, StoreError> {
        let db = opener()?;
        Ok(Db {
            slot: Arc::new(RwLock::new(Some(db))),
            opener: Arc::new(opener),
        })
    }

    /// Runs `f` on a read transaction. Never waits for a reopen: the store is unavailable while
    /// one is under way.
    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self
            .slot
            .try_read()
            .map_err(|_| StoreError::Unavailable("the store is being opened again".into()))?;
        let db = slot.as_ref().ok_or_else(closed)?;
        f(&db.begin_read().map_err(err)?)
    }

    /// A page of `topic`'s dead letters (see [`Store::dead_letters`]).
    fn read_dead(
        &self,
        topic: &str,
        pick: &DeadSelection,
        after: u64,
        max: usize,
    ) -> Result<DeadPage, StoreError> {
        let Some(first) = after.checked_add(1) else {
            return Ok(DeadPage::default());
        };
        self.read(|txn| {
            let t = txn.open_table(DEAD).map_err(err)?;
            let mut pager = Pager::new(pick, max);
            for_each_read(&t, topic, pick, first, |pos, record| {
                pager.offer_record(pos, record)
            })?;
            Ok(pager.page())
        })
    }

    /// A write transaction. Only the writer thread writes (and the opening, before it starts), and
    /// only it reopens, so this lock is never waited for long.
    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let slot = self.slot.read().map_err(|_| closed())?;
        slot.as_ref().ok_or_else(closed)?.begin_write().map_err(err)
    }

    /// Drops the database and opens it again (redb repairs it if it must). The caller holds no
    /// transaction.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut slot = self.slot.write().map_err(|_| closed())?;
        // The old one goes first: it holds the file's lock.
        *slot = None;
        *slot = Some((self.opener)()?);
        Ok(())
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store could not be opened again after a failure".into())
}

/// The embedded redb backend.
pub struct RedbStore {
    db: Db,
    ops: Option<mpsc::Sender<Op>>,
    writer: Option<std::thread::JoinHandle<()>>,
    healthy: Arc<AtomicBool>,
    readable: tokio::sync::watch::Receiver<u64>,
}

impl Drop for RedbStore {
    /// Closes the writer's queue and waits for it, so the file is released when this returns.
    fn drop(&mut self) {
        self.ops.take();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store at `path` and starts its writer thread.
    /// The write-ahead log lives beside it (`path` with the extension `wal`); events it holds that
    /// the store lost in a crash are put back before anything else happens.
    pub fn open(path: &Path, fsync: Fsync) -> Result<RedbStore, StoreError> {
        let file = path.to_owned();
        let opener = move || {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&file)
                .map_err(err)
        };
        Self::open_with(path, fsync, WAL_SIZE, opener)
    }

    /// [`RedbStore::open`] with a log of `wal_size` bytes, on the database `opener` opens (it is
    /// called again to reopen the database after a failure).
    fn open_with(
        path: &Path,
        fsync: Fsync,
        wal_size: u64,
        opener: impl Fn() -> Result<Database, StoreError> + Send + Sync + 'static,
    ) -> Result<RedbStore, StoreError> {
        let db = Db::open(opener)?;
        let (mut wal, logged) = Wal::open(&path.with_extension("wal"), wal_size).map_err(err)?;
        let next;
        {
            let txn = db.begin_write()?;
            txn.open_table(EVENTS).map_err(err)?;
            txn.open_table(DEAD).map_err(err)?;
            txn.open_table(IDEMPOTENCY).map_err(err)?;
            let restored;
            (next, restored) = Self::restore(&txn, &logged)?;
            if restored > 0 {
                tracing::info!(
                    events = restored,
                    "restored events from the write-ahead log"
                );
            }
            txn.commit().map_err(err)?;
        }
        // Everything logged is now in the synced store.
        wal.reset().map_err(err)?;
        // Bounded: a producer burst beyond this waits for the writer instead of piling up memory.
        let (tx, rx) = mpsc::channel(4096);
        let healthy = Arc::new(AtomicBool::new(true));
        let (readable, readable_rx) = tokio::sync::watch::channel(0);
        let clock = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(err)?;
        let writer = Writer {
            db: db.clone(),
            next,
            fsync,
            healthy: healthy.clone(),
            wal,
            last_checkpoint: std::time::Instant::now(),
            reopen_at: None,
            open: None,
            staged: Staged::default(),
            unsynced: Unsynced::default(),
            readable,
            clock,
        };
        let handle = std::thread::Builder::new()
            .name("floodway-store".into())
            .spawn(move || writer.run(rx))
            .map_err(err)?;
        Ok(RedbStore {
            db,
            ops: Some(tx),
            writer: Some(handle),
            healthy,
            readable: readable_rx,
        })
    }

    /// Puts back the logged events the store does not have: those at or past a topic's next
    /// sequence number as the store holds it. (Events below it are in the store, or were delivered
    /// or dead-lettered since.) Returns every topic's next sequence number after that, and how many
    /// events were put back.
    fn restore(
        txn: &redb::WriteTransaction,
        logged: &[Vec<u8>],
    ) -> Result<(HashMap<String, u64>, usize), StoreError> {
        let mut next = HashMap::new();
        {
            let t = txn.open_table(NEXT_SEQ).map_err(err)?;
            for row in t.iter().map_err(err)? {
                let (k, v) = row.map_err(err)?;
                next.insert(k.value().to_owned(), v.value());
            }
        }
        let mut events = txn.open_table(EVENTS).map_err(err)?;
        let mut idem = txn.open_table(IDEMPOTENCY).map_err(err)?;
        let mut seqs = txn.open_table(NEXT_SEQ).map_err(err)?;
        let mut restored = 0;
        for record in logged {
            for (topic, seq, bytes) in log_entries(record)? {
                let n = next.entry(topic.clone()).or_insert(1);
                if seq < *n {
                    continue;
                }
                *n = seq + 1;
                events.insert((topic.as_str(), seq), bytes).map_err(err)?;
                let event = decode(bytes)?;
                if let Some(key) = &event.idempotency_key {
                    let expires = event.accepted_ms + DEDUP_WINDOW.as_millis() as u64;
                    idem.insert((topic.as_str(), key.as_str()), (seq, expires))
                        .map_err(err)?;
                }
                seqs.insert(topic.as_str(), seq + 1).map_err(err)?;
                restored += 1;
            }
        }
        Ok((next, restored))
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let ops = self
            .ops
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
        ops.send(op(tx))
            .await
            .map_err(|_| StoreError::Unavailable("writer stopped".into()))?;
        // Taken by the writer but never answered (it stopped): the op may have been applied.
        rx.await
            .map_err(|_| StoreError::Unknown("the writer stopped before answering".into()))?
    }
}

struct Writer {
    /// The transaction groups are applied to; committed (unsynced) every `COMMIT_EVERY` at most,
    /// since a redb commit costs far more than applying a group. The log makes each group durable
    /// before its callers are answered, so the commit only decides when readers see it. Declared
    /// before `db` so that it is dropped first: a database dropped while a write transaction is
    /// open waits for it forever.
    open: Option<OpenTxn>,
    db: Db,
    next: HashMap<String, u64>,
    fsync: Fsync,
    healthy: Arc<AtomicBool>,
    wal: Wal,
    last_checkpoint: std::time::Instant,
    /// When to open the database again, after a failure that a reload could not repair.
    reopen_at: Option<std::time::Instant>,
    /// The last group's appended events, logged but not yet in `open` (see [`Writer::apply`]).
    staged: Staged,
    unsynced: Unsynced,
    /// Bumped after each commit: readers that found nothing new wait for it.
    readable: tokio::sync::watch::Sender<u64>,
    /// Waits for the next op with a deadline (tokio's channel has no blocking receive with a
    /// timeout).
    clock: tokio::runtime::Runtime,
}

struct OpenTxn {
    txn: redb::WriteTransaction,
    since: std::time::Instant,
}

/// What an applied batch still needs before its callers may be answered.
struct Applied {
    outcomes: Vec<Outcome>,
    /// True when the batch must be synced by the store itself (a replay, which the log does not
    /// describe).
    durable: bool,
}

/// A group's appended events: decided, numbered and written as log entries, waiting to be put in
/// the open transaction. Every commit ([`Writer::publish`], [`Writer::checkpoint`]) inserts them
/// first, and [`Writer::reload`] drops them (what was logged comes back from the log), so no path
/// can commit a transaction that lacks a logged event. The buffers are kept from group to group.
#[derive(Default)]
struct Staged {
    /// The events as write-ahead log entries (empty when there are none).
    log: Vec<u8>,
    events: Vec<StagedEvent>,
    /// The topics `events` refer to by index; also every topic whose numbers the group used.
    topics: Vec<String>,
}

impl Staged {
    fn clear(&mut self) {
        self.log.clear();
        self.events.clear();
        self.topics.clear();
    }
}

/// Deliveries acknowledged and events dead-lettered since the last synced commit. The log holds
/// appends only, so a reload (after a failed transaction, or with the database opened again, which
/// keeps only what was synced) would otherwise bring these events back to the backlog: stored
/// again, and delivered again only at the next start, a dead letter lost. The reload applies them
/// once more. Emptied by every synced commit; bounded by [`MAX_UNSYNCED`] beyond that (past it, an
/// event is delivered again after a restart, as after a crash).
#[derive(Default)]
struct Unsynced {
    acks: HashMap<String, Vec<u64>>,
    dead: Vec<(String, DeadEvent)>,
    len: usize,
}

/// The most entries [`Unsynced`] keeps (a quarter of a second at 4M deliveries/s).
const MAX_UNSYNCED: usize = 1 << 20;

impl Unsynced {
    /// Keeps acknowledged `seqs` of `topic`, unless full.
    fn ack(&mut self, topic: &str, seqs: &[u64]) {
        if self.len + seqs.len() > MAX_UNSYNCED {
            return;
        }
        self.len += seqs.len();
        match self.acks.get_mut(topic) {
            Some(kept) => kept.extend_from_slice(seqs),
            None => drop(self.acks.insert(topic.to_owned(), seqs.to_vec())),
        }
    }

    /// Keeps a dead letter of `topic`, unless full.
    fn dead(&mut self, topic: &str, d: &DeadEvent) {
        if self.len < MAX_UNSYNCED {
            self.len += 1;
            self.dead.push((topic.to_owned(), d.clone()));
        }
    }

    /// Applies what is kept to `txn`.
    fn apply(&self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut events = txn.open_table(EVENTS).map_err(err)?;
        let mut dead = txn.open_table(DEAD).map_err(err)?;
        for (topic, seqs) in &self.acks {
            remove_events(&mut events, topic, seqs)?;
        }
        for (topic, d) in &self.dead {
            move_to_dead(&mut events, &mut dead, topic, d)?;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.acks.clear();
        self.dead.clear();
        self.len = 0;
    }
}

/// One staged event: where its record lies in the group's log.
struct StagedEvent {
    topic: usize,
    seq: u64,
    record: std::ops::Range<usize>,
    /// Its idempotency key and when the key expires.
    key: Option<(String, u64)>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        // Kept from group to group: grown one push at a time, a fresh batch cost the writer about
        // 7% of its time in reallocations at 32 connections.
        let mut batch = Vec::with_capacity(MAX_GROUP);
        loop {
            if self
                .reopen_at
                .is_some_and(|t| t <= std::time::Instant::now())
            {
                self.recover();
            }
            let commit_due = self.open.as_ref().map(|o| o.since + COMMIT_EVERY);
            let first = match commit_due.into_iter().chain(self.reopen_at).min() {
                None => rx.blocking_recv(),
                Some(due) => {
                    let left = due.saturating_duration_since(std::time::Instant::now());
                    match self
                        .clock
                        .block_on(async { tokio::time::timeout(left, rx.recv()).await })
                    {
                        Ok(op) => op,
                        Err(_) => {
                            // Quiet for a moment: make what was applied readable (and, at the
                            // top of the loop, open the database again if that is due).
                            self.publish();
                            continue;
                        }
                    }
                }
            };
            let Some(first) = first else { break };
            batch.push(first);
            if self.fsync != Fsync::Always {
                // Group commit: everything that queued up during the last sync shares the next.
                while batch.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
            }
            self.group(&mut batch);
            if self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY || self.wal.fill_ratio() > 0.5 {
                if let Err(e) = self.checkpoint() {
                    tracing::error!(error = %e, "store checkpoint failed");
                }
            }
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "store checkpoint at shutdown failed");
        }
    }

    /// One group: applied, made durable (logged, or a synced commit), answered, then inserted.
    /// `batch` is left empty, its room kept for the next group.
    fn group(&mut self, batch: &mut Vec<Op>) {
        match self.apply(batch) {
            Ok(done) => {
                let logged = if done.durable {
                    self.checkpoint()
                } else {
                    self.log()
                };
                match logged {
                    Ok(()) => {
                        self.healthy.store(true, Ordering::Relaxed);
                        done.outcomes.into_iter().for_each(Outcome::succeed);
                        // Answered: now the inserts, off the callers' wait. A failure reloads
                        // (see `insert_staged`), which puts these logged events back.
                        if let Err(e) = self.insert_staged() {
                            tracing::error!(error = %e, "store insert failed");
                            self.healthy.store(false, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        // Only a failed synced commit gets here, and it reloaded: the group's
                        // events are not stored (their numbers are skipped).
                        tracing::error!(error = %e, "store: neither the log nor a synced commit succeeded");
                        self.healthy.store(false, Ordering::Relaxed);
                        done.outcomes.into_iter().for_each(|o| o.fail(&e));
                    }
                }
                if self
                    .open
                    .as_ref()
                    .is_some_and(|o| o.since.elapsed() >= COMMIT_EVERY)
                {
                    self.publish();
                }
            }
            Err((e, outcomes)) => {
                tracing::error!(error = %e, "store commit failed");
                self.healthy.store(false, Ordering::Relaxed);
                outcomes.into_iter().for_each(|o| o.fail(&e));
                // Groups answered earlier may be in the transaction that was just dropped:
                // they are in the log, so put them back from it. That also resets `next`;
                // should it fail, `next` keeps counting past the dropped numbers (a gap,
                // never a number used twice).
                self.reload();
            }
        }
    }

    /// Commits the open transaction without a sync, so readers see it.
    fn publish(&mut self) {
        if let Err(e) = self.insert_staged() {
            tracing::error!(error = %e, "store insert failed");
            self.healthy.store(false, Ordering::Relaxed);
            return;
        }
        let Some(open) = self.open.take() else {
            return;
        };
        match open.txn.commit() {
            Ok(()) => {
                self.readable.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed");
                self.healthy.store(false, Ordering::Relaxed);
                self.reload();
            }
        }
    }

    /// After a failed transaction: the store as last committed, plus what the log holds that it
    /// lacks, synced; the log starts afresh. (Nothing acknowledged is lost either way: the log is
    /// on disk and is read again at the next start.)
    ///
    /// Should that fail too, the database is opened again ([`Writer::recover`]) at once and then
    /// every [`REOPEN_EVERY`] until it works; until then every write is refused.
    fn reload(&mut self) {
        if let Err(e) = self.try_reload() {
            tracing::error!(error = %e, "store reload failed; opening the store again");
            self.healthy.store(false, Ordering::Relaxed);
            self.reopen_at.get_or_insert_with(std::time::Instant::now);
        }
    }

    fn try_reload(&mut self) -> Result<(), StoreError> {
        self.open = None;
        self.staged.clear();
        let logged = self.wal.records().map_err(err)?;
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        let (next, _) = RedbStore::restore(&txn, &logged)?;
        self.unsynced.apply(&txn)?;
        txn.commit().map_err(err)?;
        self.unsynced.clear();
        self.reset_log();
        self.next = next;
        self.last_checkpoint = std::time::Instant::now();
        self.readable.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Opens the database again and reloads it from the log; on success the store takes writes
    /// again.
    fn recover(&mut self) {
        // No transaction may be open while its database is dropped (see `Writer::open`).
        self.open = None;
        match self.db.reopen().and_then(|()| self.try_reload()) {
            Ok(()) => {
                tracing::info!("store opened again after a failure");
                self.reopen_at = None;
                self.healthy.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "opening the store again failed; trying again later");
                self.reopen_at = Some(std::time::Instant::now() + REOPEN_EVERY);
            }
        }
    }

    /// Makes an applied batch durable: one write to the log, synced per the policy. A batch too
    /// large for what is left of the log, or a log that fails, is made durable by a checkpoint
    /// instead.
    fn log(&mut self) -> Result<(), StoreError> {
        let log = &self.staged.log;
        if log.is_empty() {
            return Ok(());
        }
        if self.wal.fits(log.len()) {
            match self.wal.append(log, self.fsync != Fsync::Never) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "write-ahead log failed; syncing the store instead")
                }
            }
        }
        self.checkpoint()
    }

    /// Inserts the staged events (and their idempotency keys) into the open transaction. On a
    /// failure the transaction is unusable: it is dropped and what it held is put back from the log
    /// ([`Writer::reload`]).
    fn insert_staged(&mut self) -> Result<(), StoreError> {
        if self.staged.events.is_empty() {
            self.staged.clear();
            return Ok(());
        }
        let result = (|| -> Result<(), StoreError> {
            let txn = &self
                .open
                .as_ref()
                .ok_or_else(|| {
                    StoreError::Unavailable(
                        "staged events but no open transaction to insert them into".into(),
                    )
                })?
                .txn;
            let mut events = txn.open_table(EVENTS).map_err(err)?;
            let mut idem = None;
            let st = &self.staged;
            for e in &st.events {
                let topic = st.topics[e.topic].as_str();
                events
                    .insert((topic, e.seq), &st.log[e.record.clone()])
                    .map_err(err)?;
                if let Some((key, expires)) = &e.key {
                    opened(&mut idem, txn, IDEMPOTENCY)?
                        .insert((topic, key.as_str()), (e.seq, *expires))
                        .map_err(err)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => self.staged.clear(),
            Err(_) => self.reload(),
        }
        result
    }

    /// Commits the open transaction (or an empty one) synced, then starts a new log generation:
    /// everything logged so far is in the synced store.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.insert_staged()?;
        let mut txn = match self.open.take() {
            Some(open) => open.txn,
            None => self.db.begin_write()?,
        };
        txn.set_durability(Durability::Immediate);
        if let Err(e) = txn.commit() {
            self.reload();
            return Err(err(e));
        }
        self.readable.send_modify(|n| *n += 1);
        self.unsynced.clear();
        self.reset_log();
        self.last_checkpoint = std::time::Instant::now();
        Ok(())
    }

    /// Starts a new log generation after a synced commit. A failure is no failure of that commit
    /// (what was logged is in the synced store either way), and the log completes the reset with
    /// its next record ([`Wal::reset`]).
    fn reset_log(&mut self) {
        if let Err(e) = self.wal.reset() {
            tracing::warn!(error = %e, "write-ahead log reset failed; it is completed with the next record");
        }
    }

    /// Applies a batch to the open transaction (opening one if needed); nothing is committed here.
    ///
    /// Appended events are decided (duplicates found, numbers taken) and written as log entries
    /// here, but staged ([`Staged`]) rather than inserted: the B-tree inserts are most of a group's
    /// work, and making them after the callers have their answer takes them off every request's
    /// wait. The log is what makes an event durable, so nothing about durability changes; readers
    /// see an event once the transaction holding it is committed, which is after the insert either
    /// way.
    fn apply(&mut self, batch: &mut Vec<Op>) -> Result<Applied, (StoreError, Vec<Outcome>)> {
        debug_assert!(
            self.staged.events.is_empty() && self.staged.log.is_empty(),
            "the previous group's events were inserted or dropped"
        );
        let mut outcomes = Vec::with_capacity(batch.len());
        // A replay moves events between tables under new sequence numbers, which the log does not
        // describe: such a batch is synced by redb itself. Every other batch is logged.
        let durable = batch
            .iter()
            .any(|op| matches!(op, Op::Replay(..) | Op::Purge(..)));
        let mut pending = batch.drain(..);
        let result = (|| -> Result<(), StoreError> {
            if self.open.is_none() {
                let mut txn = self.db.begin_write()?;
                txn.set_durability(Durability::None);
                self.open = Some(OpenTxn {
                    txn,
                    since: std::time::Instant::now(),
                });
            }
            let txn = &self.open.as_ref().expect("opened above").txn;
            {
                let (mut events, mut dead, mut idem) = (None, None, None);
                let now = now_ms();
                let st = &mut self.staged;
                // Keys first seen in this batch, per topic index: staged, so not yet in the table.
                let mut fresh_keys: HashMap<usize, HashMap<String, u64>> = HashMap::new();
                let mut buf = Vec::new();
                for op in pending.by_ref() {
                    match op {
                        Op::Append(topic, new, reply) => {
                            let t = match st.topics.iter().position(|x| *x == topic) {
                                Some(t) => t,
                                None => {
                                    st.topics.push(topic);
                                    st.topics.len() - 1
                                }
                            };
                            let topic = &st.topics[t];
                            let mut out = Vec::with_capacity(new.len());
                            for e in new {
                                if let Some(key) = &e.idempotency_key {
                                    let fresh = fresh_keys.get(&t).and_then(|m| m.get(key));
                                    let earlier = match fresh {
                                        Some(&seq) => Some(seq),
                                        None => opened(&mut idem, txn, IDEMPOTENCY)?
                                            .get((topic.as_str(), key.as_str()))
                                            .map_err(err)?
                                            .map(|v| v.value())
                                            .and_then(|(seq, expires)| {
                                                (expires > now).then_some(seq)
                                            }),
                                    };
                                    if let Some(seq) = earlier {
                                        out.push(Appended {
                                            seq,
                                            duplicate: true,
                                        });
                                        continue;
                                    }
                                }
                                let seq = take_seq(&mut self.next, topic);
                                buf.clear();
                                encode(&e, &mut buf);
                                log_entry(&mut st.log, topic, seq, &buf);
                                let key = e.idempotency_key.map(|key| {
                                    fresh_keys.entry(t).or_default().insert(key.clone(), seq);
                                    (key, now + DEDUP_WINDOW.as_millis() as u64)
                                });
                                st.events.push(StagedEvent {
                                    topic: t,
                                    seq,
                                    record: st.log.len() - buf.len()..st.log.len(),
                                    key,
                                });
                                out.push(Appended {
                                    seq,
                                    duplicate: false,
                                });
                            }
                            outcomes.push(Outcome::Appended(reply, out));
                        }
                        Op::Ack(topic, acked, reply) => {
                            // Kept first: should a removal fail, the reload applies them.
                            self.unsynced.ack(&topic, &acked);
                            remove_events(opened(&mut events, txn, EVENTS)?, &topic, &acked)?;
                            outcomes.push(Outcome::Unit(reply));
                        }
                        Op::Dead(topic, d, reply) => {
                            self.unsynced.dead(&topic, &d);
                            move_to_dead(
                                opened(&mut events, txn, EVENTS)?,
                                opened(&mut dead, txn, DEAD)?,
                                &topic,
                                &d,
                            )?;
                            outcomes.push(Outcome::Unit(reply));
                        }
                        Op::Replay(topic, pick, reply) => {
                            let dead = opened(&mut dead, txn, DEAD)?;
                            let events = opened(&mut events, txn, EVENTS)?;
                            let mut moved = Vec::new();
                            let mut rows = Vec::new();
                            for_each_read(dead, &topic, &pick, 0, |old, record| {
                                if pick.takes_record(record)? {
                                    rows.push((old, record.to_vec()));
                                }
                                Ok(true)
                            })?;
                            for (old, bytes) in rows {
                                let d = decode_dead(&bytes)?;
                                dead.remove((topic.as_str(), old)).map_err(err)?;
                                let seq = take_seq(&mut self.next, &topic);
                                let mut event = d.stored.event;
                                // A replayed event gets a fresh chance: its TTL no longer applies.
                                event.deadline_ms = None;
                                buf.clear();
                                encode(&event, &mut buf);
                                events
                                    .insert((topic.as_str(), seq), buf.as_slice())
                                    .map_err(err)?;
                                moved.push(Replayed {
                                    stored: StoredEvent { seq, event },
                                    was: old,
                                });
                            }
                            if !st.topics.contains(&topic) {
                                st.topics.push(topic);
                            }
                            outcomes.push(Outcome::Replayed(reply, moved));
                        }
                        Op::Purge(topic, pick, reply) => {
                            let dead = opened(&mut dead, txn, DEAD)?;
                            let mut purged = Purged::default();
                            let mut rows: Vec<(u64, u64)> = Vec::new();
                            for_each_read(dead, &topic, &pick, 0, |id, record| {
                                if pick.takes_record(record)? {
                                    let body = decode_dead(record)?.stored.event.body.len();
                                    rows.push((id, body as u64));
                                }
                                Ok(true)
                            })?;
                            for (seq, bytes) in rows {
                                dead.remove((topic.as_str(), seq)).map_err(err)?;
                                purged.events += 1;
                                purged.bytes += bytes;
                            }
                            outcomes.push(Outcome::Purged(reply, purged));
                        }
                    }
                }
                // Each topic's next sequence number once per batch, not once per request. Written
                // before the batch's events are: a number is never used twice, even if they are
                // not inserted after all.
                if !st.topics.is_empty() {
                    let mut seqs = txn.open_table(NEXT_SEQ).map_err(err)?;
                    for topic in &st.topics {
                        let next = self.next.get(topic).copied().unwrap_or(1);
                        seqs.insert(topic.as_str(), next).map_err(err)?;
                    }
                }
                // Forget expired idempotency keys now and then, so the table stays bounded by the
                // keys seen within the window.
                if fastrand::u32(..1000) == 0 {
                    opened(&mut idem, txn, IDEMPOTENCY)?
                        .retain(|_, (_, expires)| expires > now)
                        .map_err(err)?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => Ok(Applied { outcomes, durable }),
            Err(e) => {
                // The transaction is dropped (by the caller's reload), so none of the batch is
                // stored. Ops not reached also fail.
                self.open = None;
                self.staged.clear();
                for op in pending {
                    match op {
                        Op::Append(_, _, r) => drop(r.send(Err(e.clone()))),
                        Op::Ack(topic, acked, r) => {
                            // Removed by the reload.
                            self.unsynced.ack(&topic, &acked);
                            drop(r.send(Err(e.clone())));
                        }
                        Op::Dead(_, _, r) => drop(r.send(Err(e.clone()))),
                        Op::Replay(_, _, r) => drop(r.send(Err(e.clone()))),
                        Op::Purge(_, _, r) => drop(r.send(Err(e.clone()))),
                    }
                }
                Err((e, outcomes))
            }
        }
    }
}

impl RedbStore {
    fn read_state(&self) -> Result<HashMap<String, TopicState>, StoreError> {
        self.db.read(Self::read_state_in)
    }

    fn read_state_in(
        txn: &redb::ReadTransaction,
    ) -> Result<HashMap<String, TopicState>, StoreError> {
        let mut out: HashMap<String, TopicState> = HashMap::new();
        let seqs = txn.open_table(NEXT_SEQ).map_err(err)?;
        for row in seqs.iter().map_err(err)? {
            let (k, _) = row.map_err(err)?;
            out.entry(k.value().to_owned()).or_default();
        }
        let events = txn.open_table(EVENTS).map_err(err)?;
        for row in events.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let e = decode(v.value())?;
            let s = out.entry(k.value().0.to_owned()).or_default();
            s.backlog_events += 1;
            s.backlog_bytes += e.body.len() as u64;
        }
        let dead = txn.open_table(DEAD).map_err(err)?;
        for row in dead.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            let d = decode_dead(v.value())?;
            let s = out.entry(k.value().0.to_owned()).or_default();
            s.dead_letters += 1;
            s.dead_bytes += d.stored.event.body.len() as u64;
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    fn append(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        let topic = topic.to_owned();
        Box::pin(self.call(move |r| Op::Append(topic, events, r)))
    }

    fn read_from(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.db.read(|txn| {
            let t = txn.open_table(EVENTS).map_err(err)?;
            let mut out = Vec::new();
            for row in t
                .range((topic, from)..=(topic, u64::MAX))
                .map_err(err)?
                .take(max)
            {
                let (k, v) = row.map_err(err)?;
                out.push(StoredEvent {
                    seq: k.value().1,
                    event: decode(v.value())?,
                });
            }
            Ok(out)
        })
    }

    fn ack(&self, topic: &str, seqs: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        let topic = topic.to_owned();
        Box::pin(async move {
            let ops = self
                .ops
                .as_ref()
                .ok_or_else(|| StoreError::Unavailable("store closed".into()))?;
            // Nobody waits for the reply; a failed commit is logged by the writer.
            let (tx, _) = oneshot::channel();
            ops.send(Op::Ack(topic, seqs, tx))
                .await
                .map_err(|_| StoreError::Unavailable("writer stopped".into()))
        })
    }

    fn dead_letter(&self, topic: &str, dead: DeadEvent) -> BoxFuture<'_, Result<(), StoreError>> {
        let topic = topic.to_owned();
        Box::pin(self.call(move |r| Op::Dead(topic, dead, r)))
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<DeadPage, StoreError>> {
        // A page of one reason may read thousands of rows: off the runtime's workers.
        let (db, topic, pick) = (self.db.clone(), topic.to_owned(), pick.clone());
        let read = tokio::task::spawn_blocking(move || db.read_dead(&topic, &pick, after, max));
        Box::pin(async move { read.await.map_err(err)? })
    }

    fn replay<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Vec<Replayed>, StoreError>> {
        let (topic, pick) = (topic.to_owned(), pick.clone());
        Box::pin(self.call(move |r| Op::Replay(topic, pick, r)))
    }

    fn purge_dead<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Purged, StoreError>> {
        let (topic, pick) = (topic.to_owned(), pick.clone());
        Box::pin(self.call(move |r| Op::Purge(topic, pick, r)))
    }

    fn recover(&self) -> BoxFuture<'_, Result<HashMap<String, TopicState>, StoreError>> {
        Box::pin(std::future::ready(self.read_state()))
    }

    fn readable(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.readable.clone())
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.ops.as_ref().is_some_and(|o| !o.is_closed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str, key: Option<&str>) -> NewEvent {
        NewEvent {
            content_type: "application/json".into(),
            body: body.as_bytes().to_vec(),
            priority: Priority::High,
            deadline_ms: Some(42),
            idempotency_key: key.map(str::to_owned),
            accepted_ms: 7,
        }
    }

    /// A writer on a fresh store in `dir`, with an open transaction that is not due to be
    /// committed (so a test decides when it is).
    fn writer(dir: &std::path::Path) -> Writer {
        let path = dir.join("s.redb");
        let db = Db::open(move || Database::create(&path).map_err(err)).unwrap();
        {
            let txn = db.begin_write().unwrap();
            txn.open_table(NEXT_SEQ).unwrap();
            txn.open_table(EVENTS).unwrap();
            txn.commit().unwrap();
        }
        let (mut wal, _) = Wal::open(&dir.join("s.wal"), WAL_SIZE).unwrap();
        wal.reset().unwrap();
        let open = not_due(&db);
        Writer {
            db,
            next: HashMap::new(),
            fsync: Fsync::Batch,
            healthy: Arc::default(),
            wal,
            last_checkpoint: std::time::Instant::now(),
            reopen_at: None,
            open: Some(open),
            staged: Staged::default(),
            unsynced: Unsynced::default(),
            readable: tokio::sync::watch::channel(0).0,
            clock: tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap(),
        }
    }

    /// An open transaction that is not due to be committed, so a test decides when it is.
    fn not_due(db: &Db) -> OpenTxn {
        let mut txn = db.begin_write().unwrap();
        txn.set_durability(Durability::None);
        OpenTxn {
            txn,
            since: std::time::Instant::now() + Duration::from_secs(3600),
        }
    }

    /// The sequence numbers of topic "t"'s events, as committed.
    fn committed_seqs(db: &Db) -> Vec<u64> {
        db.read(|txn| {
            let t = txn.open_table(EVENTS).unwrap();
            Ok(t.range(("t", 0)..=("t", u64::MAX))
                .unwrap()
                .map(|r| r.unwrap().0.value().1)
                .collect())
        })
        .unwrap()
    }

    /// Two requests with the same idempotency key in one group: the second is the first's
    /// duplicate, although the first is only staged (not yet in the table) when the second is
    /// decided; once answered, the group's events and keys are in the transaction.
    #[test]
    fn a_key_repeated_within_one_group_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let (tx3, mut rx3) = oneshot::channel();
        w.group(&mut vec![
            Op::Append("t".into(), vec![event("a", Some("k"))], tx1),
            Op::Append("t".into(), vec![event("b", None)], tx2),
            Op::Append("t".into(), vec![event("a", Some("k"))], tx3),
        ]);
        let first = rx1.try_recv().unwrap().unwrap();
        assert_eq!(
            first,
            vec![Appended {
                seq: 1,
                duplicate: false
            }]
        );
        assert_eq!(rx2.try_recv().unwrap().unwrap()[0].seq, 2);
        assert_eq!(
            rx3.try_recv().unwrap().unwrap(),
            vec![Appended {
                seq: 1,
                duplicate: true
            }]
        );
        w.publish();
        assert_eq!(committed_seqs(&w.db), vec![1, 2]);
        // The key is in the table now: a later group finds it there.
        let (tx, mut rx) = oneshot::channel();
        w.group(&mut vec![Op::Append(
            "t".into(),
            vec![event("a", Some("k"))],
            tx,
        )]);
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            vec![Appended {
                seq: 1,
                duplicate: true
            }]
        );
    }

    /// A transaction that fails after some of its groups were acknowledged: dropping it and
    /// reloading puts those groups back from the log, synced, and numbering goes on after them.
    #[test]
    fn a_dropped_transaction_is_reloaded_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let mut answers = Vec::new();
        for body in ["a", "b"] {
            let (tx, rx) = oneshot::channel();
            answers.push(rx);
            w.group(&mut vec![Op::Append(
                "t".into(),
                vec![event(body, None)],
                tx,
            )]);
        }
        assert!(w.open.is_some(), "both groups wait in the open transaction");
        assert!(committed_seqs(&w.db).is_empty());
        // The transaction fails: it is dropped, and the acknowledged groups come back from the log.
        w.reload();
        assert!(w.open.is_none());
        assert_eq!(committed_seqs(&w.db), vec![1, 2]);
        assert_eq!(w.next["t"], 3);
        assert!(w.wal.records().unwrap().is_empty(), "the log starts afresh");
        for mut rx in answers {
            assert!(rx.try_recv().unwrap().is_ok());
        }
    }

    /// A redb file whose writes and syncs fail while `broken` is set, like a disk that went bad.
    #[derive(Debug)]
    struct Failing {
        file: redb::backends::FileBackend,
        broken: Arc<AtomicBool>,
    }

    impl Failing {
        fn check(&self) -> std::io::Result<()> {
            match self.broken.load(Ordering::Relaxed) {
                true => Err(std::io::Error::other("the disk failed")),
                false => Ok(()),
            }
        }
    }

    impl redb::StorageBackend for Failing {
        fn len(&self) -> std::io::Result<u64> {
            self.file.len()
        }
        fn read(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
            self.file.read(offset, len)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.check()?;
            self.file.set_len(len)
        }
        fn sync_data(&self, eventual: bool) -> std::io::Result<()> {
            self.check()?;
            self.file.sync_data(eventual)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.check()?;
            self.file.write(offset, data)
        }
    }

    /// A group that neither the log nor a synced commit can make durable (too large for what is
    /// left of the log, and the store's disk fails) is refused and the store is not ready. Once
    /// the disk works again the store opens its database again by itself, with no request to
    /// prompt it, and takes writes; the refused event is not there, the one acknowledged before
    /// it is, here and after a restart.
    #[tokio::test]
    async fn a_store_whose_disk_fails_refuses_then_recovers_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let broken = Arc::new(AtomicBool::new(false));
        let (file, flag) = (path.clone(), broken.clone());
        let opener = move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&file)
                .map_err(err)?;
            let backend = Failing {
                file: redb::backends::FileBackend::new(f).map_err(err)?,
                broken: flag.clone(),
            };
            Database::builder()
                .create_with_backend(backend)
                .map_err(err)
        };
        // The smallest log: two header pages and two pages for records.
        let s = RedbStore::open_with(&path, Fsync::Batch, 0, opener).unwrap();
        let mut commits = s.readable().unwrap();
        assert_eq!(
            s.append("t", vec![event("a", None)]).await.unwrap()[0].seq,
            1
        );
        broken.store(true, Ordering::Relaxed);
        let big = "b".repeat(3 * 4096);
        assert!(s.append("t", vec![event(&big, None)]).await.is_err());
        assert!(!s.healthy());
        commits.borrow_and_update();
        broken.store(false, Ordering::Relaxed);
        // The writer's next try (at once, or a second later) reloads the store: a commit.
        tokio::time::timeout(Duration::from_secs(10), commits.changed())
            .await
            .expect("the store was opened again")
            .unwrap();
        assert_eq!(
            s.append("t", vec![event("c", None)]).await.unwrap()[0].seq,
            2
        );
        assert!(s.healthy());
        let bodies = |events: Vec<StoredEvent>| -> Vec<Vec<u8>> {
            events.into_iter().map(|e| e.event.body).collect()
        };
        let want = vec![b"a".to_vec(), b"c".to_vec()];
        assert_eq!(bodies(readable_events(&s, 2).await), want);
        drop(s);
        let s = RedbStore::open(&path, Fsync::Batch).unwrap();
        assert_eq!(bodies(s.read_from("t", 0, 10).unwrap()), want);
    }

    /// A delivery acknowledged, and an event dead-lettered, in a transaction that then fails stay
    /// so: the reload, which brings back what the log holds, applies them again instead of putting
    /// the events back in the backlog.
    #[test]
    fn acks_and_dead_letters_in_a_dropped_transaction_survive_the_reload() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path());
        let (tx, _) = oneshot::channel();
        w.group(&mut vec![Op::Append(
            "t".into(),
            vec![event("a", None), event("b", None), event("c", None)],
            tx,
        )]);
        w.publish();
        assert_eq!(committed_seqs(&w.db), vec![1, 2, 3]);
        // The next transaction, not due for a commit, takes the acknowledgement of event 1.
        w.open = Some(not_due(&w.db));
        let (tx, mut acked) = oneshot::channel();
        let (dtx, mut buried) = oneshot::channel();
        let dead = DeadEvent {
            stored: StoredEvent {
                seq: 3,
                event: event("c", None),
            },
            reason: "permanent".into(),
            error: "sink answered 400".into(),
            attempts: 1,
            dead_ms: 9,
        };
        w.group(&mut vec![
            Op::Ack("t".into(), vec![1], tx),
            Op::Dead("t".into(), dead.clone(), dtx),
        ]);
        assert!(acked.try_recv().unwrap().is_ok());
        assert!(buried.try_recv().unwrap().is_ok());
        // That transaction fails and is dropped.
        w.reload();
        assert_eq!(committed_seqs(&w.db), vec![2]);
        assert_eq!(
            w.db.read_dead("t", &DeadSelection::default(), 0, 10)
                .unwrap()
                .letters,
            vec![dead]
        );
        // A synced commit forgets what it made durable.
        w.checkpoint().unwrap();
        assert_eq!(w.unsynced.len, 0);
    }

    /// A crash after the log was synced but before the store was: the logged events come back,
    /// once each, with their idempotency keys, and numbering goes on after them.
    #[tokio::test]
    async fn the_log_puts_back_what_the_store_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let fresh = |body: &str, key: Option<&str>| NewEvent {
            accepted_ms: now_ms(),
            ..event(body, key)
        };
        {
            let s = RedbStore::open(&path, Fsync::Batch).unwrap();
            s.append("t", vec![fresh("1", None)]).await.unwrap();
        }
        {
            // What the log holds when the store synced only seq 1.
            let (mut wal, old) = Wal::open(&path.with_extension("wal"), WAL_SIZE).unwrap();
            assert!(old.is_empty(), "a clean shutdown leaves nothing to restore");
            wal.reset().unwrap();
            let mut payload = Vec::new();
            let mut buf = Vec::new();
            for (seq, e) in [
                (1, fresh("1", None)),
                (2, fresh("2", Some("k"))),
                (3, fresh("3", None)),
            ] {
                buf.clear();
                encode(&e, &mut buf);
                log_entry(&mut payload, "t", seq, &buf);
            }
            wal.append(&payload, true).unwrap();
        }
        let s = RedbStore::open(&path, Fsync::Batch).unwrap();
        let stored = s.read_from("t", 0, 10).unwrap();
        let got: Vec<(u64, &[u8])> = stored
            .iter()
            .map(|e| (e.seq, e.event.body.as_slice()))
            .collect();
        assert_eq!(got, vec![(1, &b"1"[..]), (2, &b"2"[..]), (3, &b"3"[..])]);
        let again = s.append("t", vec![fresh("2", Some("k"))]).await.unwrap();
        assert_eq!(
            again,
            vec![Appended {
                seq: 2,
                duplicate: true
            }]
        );
        let new = s.append("t", vec![fresh("4", None)]).await.unwrap();
        assert_eq!(new[0].seq, 4);
        drop(s);
        // Restored once: a second reopen finds the log empty and the same events.
        let s = RedbStore::open(&path, Fsync::Batch).unwrap();
        assert_eq!(s.read_from("t", 0, 10).unwrap().len(), 4);
    }

    /// Topic "t"'s events once there are `n` readable, waiting for the writer's commits (bounded).
    async fn readable_events(s: &RedbStore, n: usize) -> Vec<StoredEvent> {
        let mut commits = s.readable().expect("the embedded store signals commits");
        for _ in 0..50 {
            commits.borrow_and_update();
            let got = s.read_from("t", 0, 10).unwrap();
            if got.len() == n {
                return got;
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), commits.changed()).await;
        }
        panic!("{n} events never became readable");
    }

    /// Appends five events to `t` and dead-letters each: the odd ids shed, the even ones expired.
    async fn bury_five(s: &dyn Store) {
        let events: Vec<_> = (0..5).map(|i| event(&i.to_string(), None)).collect();
        let appended = s.append("t", events.clone()).await.unwrap();
        for (a, e) in appended.iter().zip(events) {
            let stored = StoredEvent {
                seq: a.seq,
                event: e,
            };
            let dead = DeadEvent {
                stored,
                reason: if a.seq % 2 == 1 { "shed" } else { "expired" }.into(),
                error: String::new(),
                attempts: 0,
                dead_ms: 1,
            };
            s.dead_letter("t", dead).await.unwrap();
        }
    }

    /// The ids of a page of `t`'s dead letters, and its `next`.
    async fn page(s: &dyn Store, pick: &DeadSelection, after: u64, max: usize) -> PageIds {
        let p = s.dead_letters("t", pick, after, max).await.unwrap();
        (p.letters.iter().map(|d| d.stored.seq).collect(), p.next)
    }

    /// The ids replayed events had as dead letters, and their bodies; each must have had its TTL
    /// lifted (the events of [`bury_five`] have one).
    fn bodies(replayed: &[Replayed]) -> Vec<(u64, &[u8])> {
        assert!(
            replayed
                .iter()
                .all(|e| e.stored.event.deadline_ms.is_none())
        );
        replayed
            .iter()
            .map(|e| (e.was, &e.stored.event.body[..]))
            .collect()
    }

    type PageIds = (Vec<u64>, Option<u64>);

    /// The five of [`bury_five`], a page at a time: each page starts past the cursor it was
    /// given and gives the next one only if more follow; then by reason and by id, replayed and
    /// purged.
    async fn pages_through_five(s: &dyn Store) {
        let all = &DeadSelection::default();
        assert_eq!(page(s, all, 0, 2).await, (vec![1, 2], Some(2)));
        assert_eq!(page(s, all, 2, 2).await, (vec![3, 4], Some(4)));
        assert_eq!(page(s, all, 4, 2).await, (vec![5], None));
        assert_eq!(page(s, all, 0, 5).await, (vec![1, 2, 3, 4, 5], None));
        assert_eq!(page(s, all, 1, 3).await, (vec![2, 3, 4], Some(4)));
        assert_eq!(page(s, all, 5, 10).await, (vec![], None));
        assert_eq!(page(s, all, u64::MAX, 10).await, (vec![], None));
        // One reason: the next page starts after the last letter looked at.
        let shed = &DeadSelection::of_reason("shed");
        let expired = &DeadSelection::of_reason("expired");
        assert_eq!(page(s, shed, 0, 2).await, (vec![1, 3], Some(4)));
        assert_eq!(page(s, shed, 4, 2).await, (vec![5], None));
        assert_eq!(page(s, expired, 0, 5).await, (vec![2, 4], None));
        // Some ids, and some ids of one reason.
        let two_five = DeadSelection::of_ids([2, 5]);
        assert_eq!(page(s, &two_five, 0, 5).await, (vec![2, 5], None));
        let shed_of_two_five = DeadSelection {
            reason: Some("shed".into()),
            ..two_five
        };
        assert_eq!(page(s, &shed_of_two_five, 0, 5).await, (vec![5], None));

        // Letter 4 is not shed, and there is no letter 99.
        let four = DeadSelection::of_ids([4, 99]);
        let shed_four = DeadSelection {
            reason: Some("shed".into()),
            ..four.clone()
        };
        assert!(s.replay("t", &shed_four).await.unwrap().is_empty());
        let three: &[u8] = b"3";
        assert_eq!(bodies(&s.replay("t", &four).await.unwrap()), [(4, three)]);
        assert_eq!(page(s, all, 0, 10).await, (vec![1, 2, 3, 5], None));
        let one: &[u8] = b"1";
        assert_eq!(bodies(&s.replay("t", expired).await.unwrap()), [(2, one)]);
        assert_eq!(page(s, all, 0, 10).await, (vec![1, 3, 5], None));
        let purged = s.purge_dead("t", expired).await.unwrap();
        assert_eq!(purged.events, 0);
        let purged = s
            .purge_dead("t", &DeadSelection::of_ids([3]))
            .await
            .unwrap();
        assert_eq!((purged.events, purged.bytes), (1, 1));
        assert_eq!(page(s, all, 0, 10).await, (vec![1, 5], None));
        let purged = s.purge_dead("t", shed).await.unwrap();
        assert_eq!((purged.events, purged.bytes), (2, 2));
        assert_eq!(page(s, all, 0, 10).await, (vec![], None));
    }

    #[tokio::test]
    async fn dead_letters_are_read_a_page_at_a_time_and_taken_by_reason_and_id() {
        let m = MemoryStore::default();
        bury_five(&m).await;
        pages_through_five(&m).await;
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("s.redb"), Fsync::Batch).unwrap();
        bury_five(&s).await;
        // Readable once committed: a commit that shows a later event shows them too.
        s.append("t", vec![event("later", None)]).await.unwrap();
        readable_events(&s, 1).await;
        pages_through_five(&s).await;
    }

    /// On the embedded store a page of some ids looks those ids up, however deep in the dead
    /// letters they lie; a page of one reason reads through and stops after `PAGE_SCAN`.
    #[test]
    fn a_page_of_ids_is_looked_up_not_read_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let db = Db::open(move || Database::create(&path).map_err(err)).unwrap();
        let last = PAGE_SCAN as u64 + 5;
        {
            let txn = db.begin_write().unwrap();
            let mut dead = txn.open_table(DEAD).unwrap();
            for id in 1..=last {
                let mut l = letter("shed", 1);
                l.stored.seq = id;
                dead.insert(("t", id), encode_dead(&l).as_slice()).unwrap();
            }
            drop(dead);
            txn.commit().unwrap();
        }
        let ids = |page: &DeadPage| {
            page.letters
                .iter()
                .map(|l| l.stored.seq)
                .collect::<Vec<_>>()
        };
        let deep = DeadSelection::of_ids([2, last, last + 1]);
        let page = db.read_dead("t", &deep, 0, 10).unwrap();
        assert_eq!((ids(&page), page.next), (vec![2, last], None));
        let page = db.read_dead("t", &deep, 0, 1).unwrap();
        assert_eq!((ids(&page), page.next), (vec![2], Some(2)));
        let page = db.read_dead("t", &deep, 2, 1).unwrap();
        assert_eq!((ids(&page), page.next), (vec![last], None));
        let rare = db.read_dead("t", &DeadSelection::of_reason("expired"), 0, 10);
        let rare = rare.unwrap();
        assert_eq!((ids(&rare), rare.next), (vec![], Some(PAGE_SCAN as u64)));
    }

    /// A dead letter of `reason` whose body is `size` bytes.
    fn letter(reason: &str, size: usize) -> DeadEvent {
        DeadEvent {
            stored: StoredEvent {
                seq: 0,
                event: NewEvent {
                    body: vec![b'x'; size],
                    ..event("", None)
                },
            },
            reason: reason.into(),
            error: String::new(),
            attempts: 0,
            dead_ms: 0,
        }
    }

    /// A page holds no more than `PAGE_BYTES` of bodies, but always one letter; a stored letter
    /// of another reason is passed over without being decoded.
    #[test]
    fn a_page_is_bounded_in_bytes_and_decodes_only_what_it_takes() {
        let half = PAGE_BYTES / 2;
        let all = &DeadSelection::default();
        let mut pager = Pager::new(all, 10);
        assert!(pager.offer(1, letter("shed", half)));
        assert!(pager.offer(2, letter("shed", half)));
        assert!(!pager.offer(3, letter("shed", 1)));
        let page = pager.page();
        assert_eq!((page.letters.len(), page.next), (2, Some(2)));
        // One letter larger than the budget still makes a page of its own.
        let mut pager = Pager::new(all, 10);
        assert!(pager.offer(1, letter("shed", PAGE_BYTES + 1)));
        assert!(!pager.offer(2, letter("shed", 1)));
        assert_eq!(pager.page().next, Some(1));

        // Stored letters: the other reason's record is cut short after its reason, so decoding it
        // would fail; passed over, it is not decoded. The same for a letter of another id.
        let mut other = encode_dead(&letter("shed", 10));
        other.truncate(24 + "shed".len());
        let wanted = encode_dead(&letter("expired", 10));
        let expired = &DeadSelection::of_reason("expired");
        let mut pager = Pager::new(expired, 10);
        assert!(pager.offer_record(1, &other).unwrap());
        assert!(pager.offer_record(2, &wanted).unwrap());
        let page = pager.page();
        assert_eq!(page.letters.len(), 1);
        assert_eq!(page.letters[0].reason, "expired");
        assert!(Pager::new(all, 10).offer_record(1, &other).is_err());
        let mut id_seven = letter("shed", 10);
        id_seven.stored.seq = 7;
        let seven = &DeadSelection::of_ids([7]);
        let mut pager = Pager::new(seven, 10);
        assert!(pager.offer_record(1, &other).unwrap());
        assert!(pager.offer_record(2, &encode_dead(&id_seven)).unwrap());
        assert_eq!(pager.page().letters, [id_seven]);
    }

    /// A page of one reason looks at no more than `PAGE_SCAN` letters, and then says where to go
    /// on; a page of all of them is not cut short.
    #[test]
    fn a_page_of_a_rare_reason_stops_after_page_scan_letters() {
        let letter = |reason: &str| letter(reason, 1);
        let (permanent, every) = (
            DeadSelection::of_reason("permanent"),
            DeadSelection::default(),
        );
        let mut rare = Pager::new(&permanent, 10);
        let mut all = Pager::new(&every, 10);
        for pos in 1..PAGE_SCAN as u64 {
            assert!(rare.offer(pos, letter("shed")));
        }
        assert!(!rare.offer(PAGE_SCAN as u64, letter("permanent")));
        let page = rare.page();
        assert_eq!((page.letters.len(), page.next), (1, Some(PAGE_SCAN as u64)));
        for pos in 1..=10 {
            assert!(all.offer(pos, letter("shed")));
        }
        assert!(!all.offer(11, letter("shed")));
        assert_eq!(all.page().next, Some(10));
    }

    /// An op the writer took and never answered may have been applied: its outcome is unknown.
    /// One it never took was not.
    #[tokio::test]
    async fn an_op_the_writer_took_without_answering_has_an_unknown_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RedbStore::open(&dir.path().join("store.redb"), Fsync::Batch).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let writer = s.ops.replace(tx);
        let taker = tokio::spawn(async move { drop(rx.recv().await) });
        let taken = s.append("t", vec![event("1", None)]).await;
        assert!(matches!(taken, Err(StoreError::Unknown(_))), "{taken:?}");
        taker.await.unwrap();
        let never_taken = s.append("t", vec![event("2", None)]).await;
        assert!(
            matches!(never_taken, Err(StoreError::Unavailable(_))),
            "{never_taken:?}"
        );
        s.ops = writer;
    }

    #[test]
    fn records_round_trip() {
        let e = event("{\"a\":1}", Some("k"));
        let mut b = Vec::new();
        encode(&e, &mut b);
        assert_eq!(decode(&b).unwrap(), e);
        let d = DeadEvent {
            stored: StoredEvent { seq: 9, event: e },
            reason: "expired".into(),
            error: "boom".into(),
            attempts: 3,
            dead_ms: 11,
        };
        assert_eq!(decode_dead(&encode_dead(&d)).unwrap(), d);
        assert!(decode(&b[..5]).is_err());
    }

    #[tokio::test]
    async fn append_read_ack_dead_replay_purge_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = RedbStore::open(&path, Fsync::Batch).unwrap();
            let a = s
                .append("t", vec![event("1", Some("x")), event("2", None)])
                .await
                .unwrap();
            assert_eq!(
                a,
                vec![
                    Appended {
                        seq: 1,
                        duplicate: false
                    },
                    Appended {
                        seq: 2,
                        duplicate: false
                    }
                ]
            );
            // The same idempotency key again: acknowledged, not stored twice.
            let again = s.append("t", vec![event("1", Some("x"))]).await.unwrap();
            assert_eq!(
                again,
                vec![Appended {
                    seq: 1,
                    duplicate: true
                }]
            );
            // Acknowledged events become readable at the writer's next commit.
            let stored = readable_events(&s, 2).await;
            // An ack completes once queued; the next awaited write commits after it.
            s.ack("t", vec![1]).await.unwrap();
            let left = [stored[1].clone()];
            s.dead_letter(
                "t",
                DeadEvent {
                    stored: left[0].clone(),
                    reason: "expired".into(),
                    error: String::new(),
                    attempts: 1,
                    dead_ms: 5,
                },
            )
            .await
            .unwrap();
            readable_events(&s, 0).await;
            assert_eq!(
                s.dead_letters("t", &DeadSelection::default(), 0, 10)
                    .await
                    .unwrap()
                    .letters
                    .len(),
                1
            );
        }
        // Reopen: state survives, sequence numbers keep rising.
        let s = RedbStore::open(&path, Fsync::Batch).unwrap();
        let r = s.recover().await.unwrap();
        assert_eq!(
            r["t"],
            TopicState {
                backlog_events: 0,
                backlog_bytes: 0,
                dead_letters: 1,
                dead_bytes: 1,
            }
        );
        let replayed = s.replay("t", &DeadSelection::default()).await.unwrap();
        assert_eq!(replayed.len(), 1);
        assert_eq!((replayed[0].stored.seq, replayed[0].was), (3, 2));
        assert_eq!(replayed[0].stored.event.deadline_ms, None);
        assert_eq!(
            page(&s, &DeadSelection::default(), 0, 10).await,
            (vec![], None)
        );
        assert_eq!(s.recover().await.unwrap()["t"].backlog_events, 1);
        // Dead again, then purged: gone for good, also after a restart.
        let dead = |stored: StoredEvent| DeadEvent {
            stored,
            reason: "permanent".into(),
            error: "400".into(),
            attempts: 1,
            dead_ms: 6,
        };
        s.dead_letter("t", dead(replayed[0].stored.clone()))
            .await
            .unwrap();
        let purged = s.purge_dead("t", &DeadSelection::default()).await.unwrap();
        assert_eq!(
            purged,
            Purged {
                events: 1,
                bytes: 1
            }
        );
        drop(s);
        let s = RedbStore::open(&path, Fsync::Batch).unwrap();
        assert_eq!(
            page(&s, &DeadSelection::default(), 0, 10).await,
            (vec![], None)
        );
        assert_eq!(s.recover().await.unwrap()["t"], TopicState::default());
    }
}

/// An in-memory store with no durability and no bound of its own: only for the `unbounded` and
/// `drop` comparison strategies of `floodway bench`, which show what happens without a durable,
/// bounded buffer. Never the default.
#[derive(Debug, Default)]
pub struct MemoryStore {
    topics: std::sync::Mutex<HashMap<String, MemoryTopic>>,
}

#[derive(Debug, Default)]
struct MemoryTopic {
    next: u64,
    events: std::collections::BTreeMap<u64, NewEvent>,
    dead: std::collections::BTreeMap<u64, DeadEvent>,
}

impl MemoryStore {
    fn with<T>(&self, topic: &str, f: impl FnOnce(&mut MemoryTopic) -> T) -> T {
        let mut g = self.topics.locked();
        f(g.entry(topic.to_owned()).or_default())
    }
}

impl Store for MemoryStore {
    fn append(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        let out = self.with(topic, |t| {
            events
                .into_iter()
                .map(|e| {
                    t.next += 1;
                    t.events.insert(t.next, e);
                    Appended {
                        seq: t.next,
                        duplicate: false,
                    }
                })
                .collect()
        });
        Box::pin(std::future::ready(Ok(out)))
    }

    fn read_from(
        &self,
        topic: &str,
        from: u64,
        max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(self.with(topic, |t| {
            t.events
                .range(from..)
                .take(max)
                .map(|(seq, e)| StoredEvent {
                    seq: *seq,
                    event: e.clone(),
                })
                .collect()
        }))
    }

    fn ack(&self, topic: &str, seqs: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(topic, |t| {
            seqs.iter().for_each(|s| drop(t.events.remove(s)))
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letter(&self, topic: &str, dead: DeadEvent) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(topic, |t| {
            t.events.remove(&dead.stored.seq);
            t.dead.insert(dead.stored.seq, dead);
        });
        Box::pin(std::future::ready(Ok(())))
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<DeadPage, StoreError>> {
        let page = self.with(topic, |t| {
            let mut pager = Pager::new(pick, max);
            for (k, d) in t.dead.range(after.saturating_add(1)..) {
                if !pager.offer(*k, d.clone()) {
                    break;
                }
            }
            pager.page()
        });
        Box::pin(std::future::ready(Ok(page)))
    }

    fn replay<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Vec<Replayed>, StoreError>> {
        let out = self.with(topic, |t| {
            let (dead, kept): (std::collections::BTreeMap<_, _>, _) = std::mem::take(&mut t.dead)
                .into_iter()
                .partition(|(_, d)| pick.takes(d));
            t.dead = kept;
            dead.into_values()
                .map(|d| {
                    t.next += 1;
                    let mut event = d.stored.event;
                    // As on the other backends: a replayed event's TTL no longer applies.
                    event.deadline_ms = None;
                    t.events.insert(t.next, event.clone());
                    Replayed {
                        stored: StoredEvent { seq: t.next, event },
                        was: d.stored.seq,
                    }
                })
                .collect()
        });
        Box::pin(std::future::ready(Ok(out)))
    }

    fn purge_dead<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Purged, StoreError>> {
        let purged = self.with(topic, |t| {
            let mut purged = Purged::default();
            t.dead.retain(|_, d| {
                let gone = pick.takes(d);
                if gone {
                    purged.events += 1;
                    purged.bytes += d.stored.event.body.len() as u64;
                }
                !gone
            });
            purged
        });
        Box::pin(std::future::ready(Ok(purged)))
    }

    fn recover(&self) -> BoxFuture<'_, Result<HashMap<String, TopicState>, StoreError>> {
        Box::pin(std::future::ready(Ok(HashMap::new())))
    }

    fn healthy(&self) -> bool {
        true
    }
}

/// Stores for tests of the layers above the store: the memory store, with hooks.
#[cfg(test)]
pub mod testing {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// The memory store, counting reads; its events become readable only when `readable` says so
    /// (as the embedded store's do, with each commit) if it is set, and its appends and replays
    /// wait for a permit of `gate` if that is set.
    #[derive(Default)]
    pub struct Hooked {
        /// Where the events are.
        pub inner: Arc<MemoryStore>,
        /// Reads made.
        pub reads: AtomicUsize,
        /// The signal of newly readable events, if the store has one.
        pub readable: Option<tokio::sync::watch::Sender<u64>>,
        /// Appends and replays take one permit each before they happen, if set.
        pub gate: Option<Arc<tokio::sync::Semaphore>>,
        /// Appends asked for (waiting at the gate or done).
        pub appends: AtomicUsize,
        /// Replays asked for.
        pub replays: AtomicUsize,
        /// The answer to the next append instead of storing it, if set.
        pub fail_next: std::sync::Mutex<Option<StoreError>>,
    }

    impl Hooked {
        /// `op` once a permit of the gate is had (at once without a gate). Like the embedded
        /// store's writer, it goes ahead once asked for, whether or not its caller still waits
        /// for the answer.
        fn after_gate<T: Send + 'static>(
            &self,
            op: impl Future<Output = Result<T, StoreError>> + Send + 'static,
        ) -> BoxFuture<'static, Result<T, StoreError>> {
            let Some(gate) = self.gate.clone() else {
                return Box::pin(op);
            };
            let (tx, rx) = oneshot::channel();
            tokio::spawn(async move {
                gate.acquire().await.expect("the gate stays open").forget();
                let _ = tx.send(op.await);
            });
            Box::pin(async move { rx.await.map_err(err)? })
        }
    }

    impl Store for Hooked {
        fn append(
            &self,
            topic: &str,
            events: Vec<NewEvent>,
        ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
            self.appends.fetch_add(1, Ordering::AcqRel);
            if let Some(e) = self.fail_next.locked().take() {
                return Box::pin(std::future::ready(Err(e)));
            }
            let (inner, topic) = (self.inner.clone(), topic.to_owned());
            self.after_gate(async move { inner.append(&topic, events).await })
        }
        fn read_from(
            &self,
            topic: &str,
            from: u64,
            max: usize,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            self.inner.read_from(topic, from, max)
        }
        fn ack(&self, topic: &str, seqs: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.ack(topic, seqs)
        }
        fn dead_letter(
            &self,
            topic: &str,
            dead: DeadEvent,
        ) -> BoxFuture<'_, Result<(), StoreError>> {
            self.inner.dead_letter(topic, dead)
        }
        fn dead_letters<'a>(
            &'a self,
            topic: &'a str,
            pick: &'a DeadSelection,
            after: u64,
            max: usize,
        ) -> BoxFuture<'a, Result<DeadPage, StoreError>> {
            self.inner.dead_letters(topic, pick, after, max)
        }
        fn replay<'a>(
            &'a self,
            topic: &'a str,
            pick: &'a DeadSelection,
        ) -> BoxFuture<'a, Result<Vec<Replayed>, StoreError>> {
            self.replays.fetch_add(1, Ordering::AcqRel);
            let (inner, topic, pick) = (self.inner.clone(), topic.to_owned(), pick.clone());
            self.after_gate(async move { inner.replay(&topic, &pick).await })
        }
        fn purge_dead<'a>(
            &'a self,
            topic: &'a str,
            pick: &'a DeadSelection,
        ) -> BoxFuture<'a, Result<Purged, StoreError>> {
            self.inner.purge_dead(topic, pick)
        }
        fn recover(&self) -> BoxFuture<'_, Result<HashMap<String, TopicState>, StoreError>> {
            self.inner.recover()
        }
        fn healthy(&self) -> bool {
            true
        }
        fn readable(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
            self.readable.as_ref().map(|r| r.subscribe())
        }
    }
}
