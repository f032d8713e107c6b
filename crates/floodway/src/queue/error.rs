use std::fmt;
use std::time::Duration;

/// A push that handed the item back. "Not now" ([`Full`](PushError::Full), with a retry hint) is
/// distinct from "never" ([`TooLarge`](PushError::TooLarge), [`Expired`](PushError::Expired),
/// [`Closed`](PushError::Closed)).
#[derive(Clone, PartialEq, Eq)]
pub enum PushError<T> {
    /// No room now; room is expected after `retry_after` at the measured drain rate.
    Full {
        /// The item, given back.
        item: T,
        /// When to try again.
        retry_after: Duration,
    },
    /// The item weighs more than the queue's byte bound: it can never fit.
    TooLarge {
        /// The item, given back.
        item: T,
        /// Its weight.
        weight: u64,
        /// The queue's byte bound.
        max_bytes: u64,
    },
    /// The item's deadline had already passed.
    Expired {
        /// The item, given back.
        item: T,
    },
    /// The queue is closed.
    Closed {
        /// The item, given back.
        item: T,
    },
}

impl<T> PushError<T> {
    /// Takes the item back.
    pub fn into_item(self) -> T {
        match self {
            PushError::Full { item, .. }
            | PushError::TooLarge { item, .. }
            | PushError::Expired { item }
            | PushError::Closed { item } => item,
        }
    }

    /// The retry hint, for a refusal that may succeed later.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PushError::Full { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// A stable name for the refusal, used as a metric reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::Full { .. } => "full",
            PushError::TooLarge { .. } => "too_large",
            PushError::Expired { .. } => "expired",
            PushError::Closed { .. } => "closed",
        }
    }
}

impl<T> fmt::Debug for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full { retry_after, .. } => f
                .debug_struct("Full")
                .field("retry_after", retry_after)
                .finish_non_exhaustive(),
            PushError::TooLarge {
                weight, max_bytes, ..
            } => f
                .debug_struct("TooLarge")
                .field("weight", weight)
                .field("max_bytes", max_bytes)
                .finish_non_exhaustive(),
            PushError::Expired { .. } => f.write_str("Expired { .. }"),
            PushError::Closed { .. } => f.write_str("Closed { .. }"),
        }
    }
}

impl<T> fmt::Display for PushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PushError::Full { retry_after, .. } => {
                write!(f, "queue full; retry after {} ms", retry_after.as_millis())
            }
            PushError::TooLarge {
                weight, max_bytes, ..
            } => write!(
                f,
                "item of {weight} bytes can never fit a queue bounded to {max_bytes} bytes"
            ),
            PushError::Expired { .. } => f.write_str("item's deadline had already passed"),
            PushError::Closed { .. } => f.write_str("queue is closed"),
        }
    }
}

impl<T> std::error::Error for PushError<T> {}

/// Why `try_pop` returned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PopError {
    /// Nothing is queued now.
    Empty,
    /// Nothing is queued and the queue is closed: nothing ever will be.
    Closed,
}

impl fmt::Display for PopError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PopError::Empty => "queue is empty",
            PopError::Closed => "queue is closed and drained",
        })
    }
}

impl std::error::Error for PopError {}

/// A queue configuration that cannot work, refused when the queue is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildError {
    /// `max_items` or `max_bytes` is zero: nothing could ever be queued.
    ZeroCapacity,
    /// A byte bound without a weigher: every item would weigh nothing.
    BytesWithoutWeigher,
    /// No dead-letter hook: expired, shed and evicted items would have nowhere to go.
    NoDeadLetterHook,
    /// Adaptive LIFO needs a CoDel shedder to tell a standing queue from a burst.
    LifoWithoutCoDel,
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildError::ZeroCapacity => "max_items and max_bytes must be at least 1",
            BuildError::BytesWithoutWeigher => "max_bytes needs a weigher to size items",
            BuildError::NoDeadLetterHook => {
                "a dead-letter hook is required: expired, shed and evicted items must go somewhere"
            }
            BuildError::LifoWithoutCoDel => "adaptive_lifo needs a CoDel shedder (codel)",
        })
    }
}

impl std::error::Error for BuildError {}
