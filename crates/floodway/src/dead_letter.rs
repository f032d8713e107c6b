//! Dead letters: items a primitive had accepted and then gave up on.
//!
//! Nothing leaves a floodway queue silently. An item is either delivered (popped), given back to the
//! caller that offered it (inside the error), still queued, or handed to the dead-letter hook as a
//! [`DeadLetter`] with the [`DropReason`]. The hook decides what happens next: store it, count it,
//! replay it later.

use std::fmt;
use std::time::Duration;

use crate::Priority;

/// Why an item was dead-lettered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The queue was full and its policy drops the newest item: this one.
    Full,
    /// Evicted to make room for a newer item ([`Overflow::DropOldest`](crate::Overflow::DropOldest)).
    Evicted,
    /// Evicted to make room for a more important item
    /// ([`Overflow::DropLowestPriority`](crate::Overflow::DropLowestPriority)).
    Displaced,
    /// Its deadline passed while it waited.
    Expired,
    /// Shed by the sojourn-time controller ([`CoDel`](crate::CoDel)) under a standing queue.
    Shed,
    /// Its producer abandoned the push (the push future was dropped before the item was queued).
    Cancelled,
}

impl DropReason {
    /// Every reason, for tables indexed by reason.
    pub const ALL: [DropReason; 6] = [
        DropReason::Full,
        DropReason::Evicted,
        DropReason::Displaced,
        DropReason::Expired,
        DropReason::Shed,
        DropReason::Cancelled,
    ];

    /// A stable lower-case name, used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Full => "full",
            DropReason::Evicted => "evicted",
            DropReason::Displaced => "displaced",
            DropReason::Expired => "expired",
            DropReason::Shed => "shed",
            DropReason::Cancelled => "cancelled",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            DropReason::Full => 0,
            DropReason::Evicted => 1,
            DropReason::Displaced => 2,
            DropReason::Expired => 3,
            DropReason::Shed => 4,
            DropReason::Cancelled => 5,
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An item given up on, with why and how long it waited.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadLetter<T> {
    /// The item itself.
    pub item: T,
    /// Why it was given up on.
    pub reason: DropReason,
    /// Its class.
    pub priority: Priority,
    /// How long it had waited in the queue (zero if it never entered).
    pub sojourn: Duration,
}

/// Where dead letters go. Implemented for every `Fn(DeadLetter<T>)`.
///
/// The hook is called outside the queue's lock, so it may block briefly or push elsewhere; it must not
/// wait on the queue that called it.
pub trait DeadLetterSink<T>: Send + Sync {
    /// Takes ownership of one dead letter.
    fn dead_letter(&self, letter: DeadLetter<T>);
}

impl<T, F> DeadLetterSink<T> for F
where
    F: Fn(DeadLetter<T>) + Send + Sync,
{
    fn dead_letter(&self, letter: DeadLetter<T>) {
        self(letter)
    }
}

/// Counts per [`DropReason`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounts([u64; DropReason::ALL.len()]);

impl DropCounts {
    /// The count for one reason.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason.index()]
    }

    /// The sum over all reasons.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(reason, count)` pairs, every reason included.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    pub(crate) fn add(&mut self, reason: DropReason, n: u64) {
        self.0[reason.index()] += n;
    }
}
