use std::time::Duration;

use tokio::time::Instant;

use crate::Priority;

/// What a full queue does with a new item.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Overflow {
    /// Wait for room: true back pressure, nothing lost; a slow consumer slows producers down.
    /// `try_push` on a full queue returns the item instead of waiting.
    #[default]
    Block,
    /// Give the item back at once with a retry hint; nothing lost, the caller decides.
    Reject,
    /// Dead-letter the new item ([`Full`](crate::DropReason::Full)); producers never wait, but the
    /// newest work is lost first.
    DropNewest,
    /// Evict the oldest items ([`Evicted`](crate::DropReason::Evicted)) to make room: freshest data
    /// wins, suited to telemetry-like streams where stale items are worthless.
    DropOldest,
    /// Evict the newest items of the lowest class below the new item's
    /// ([`Displaced`](crate::DropReason::Displaced)); if there is none, the new item itself is
    /// dead-lettered as [`Full`](crate::DropReason::Full). Important work survives overload.
    DropLowestPriority,
}

impl Overflow {
    /// True for the policies that dead-letter items to make room.
    pub const fn drops(self) -> bool {
        matches!(
            self,
            Overflow::DropNewest | Overflow::DropOldest | Overflow::DropLowestPriority
        )
    }
}

/// The per-item attributes given at push time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// The item's class (default [`Priority::Normal`]).
    pub priority: Priority,
    /// When the item stops being worth serving; past it, the item is dead-lettered as
    /// [`Expired`](crate::DropReason::Expired).
    pub deadline: Option<Instant>,
}

impl Meta {
    /// Attributes with the given priority and no deadline.
    pub fn priority(priority: Priority) -> Self {
        Meta {
            priority,
            deadline: None,
        }
    }

    /// Sets the deadline.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Sets the deadline to `ttl` from now.
    pub fn with_ttl(self, ttl: Duration) -> Self {
        self.with_deadline(Instant::now() + ttl)
    }
}

/// How a push ended when it did not hand the item back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admitted {
    /// The item is queued; `evicted` other items were dead-lettered to make room.
    Queued {
        /// How many items were evicted for this one.
        evicted: usize,
    },
    /// The queue was full and its policy dead-lettered this item.
    DeadLettered,
}
