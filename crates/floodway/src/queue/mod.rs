//! A bounded buffer: multi-producer, multi-consumer, bounded by item count *and* bytes.
//!
//! Every item carries a [`Priority`](crate::Priority), an optional deadline, and a weight (its size
//! in bytes, from the weigher you give the builder). Consumers are served from the highest
//! non-empty class, oldest first within a class. The time each item spent queued (its *sojourn*)
//! is measured and returned with it.
//!
//! ## What happens when it is full
//! The [`Overflow`] policy says, and it is chosen once, when the queue is built:
//!
//! | policy | the producer | what is lost |
//! |---|---|---|
//! | [`Block`](Overflow::Block) | waits for room (true back pressure) | nothing |
//! | [`Reject`](Overflow::Reject) | gets the item back with a retry hint | nothing |
//! | [`DropNewest`](Overflow::DropNewest) | is told the item was dead-lettered | the new item |
//! | [`DropOldest`](Overflow::DropOldest) | succeeds | the oldest items, to the dead-letter hook |
//! | [`DropLowestPriority`](Overflow::DropLowestPriority) | succeeds if something less important can go | the least important items |
//!
//! ### A note on choosing a bound
//! Bound by bytes when items vary in size: a count bound alone lets a few large items take all your
//! memory. Keep the count bound near what your consumers clear in the sojourn time you can accept
//! (Little's law: items = drain rate × wait), not "as large as memory allows": a deep queue only
//! turns overload into latency. Prefer `Reject` at the edge of a system (the caller can retry
//! elsewhere or later) and `Block` between stages inside it.
//!
//! ## Conservation
//! Every item offered ends in exactly one place: delivered (popped), returned to the caller in a
//! [`PushError`], dead-lettered (with a [`DropReason`](crate::DropReason)), or still queued.
//! [`QueueStats`] counts each, so `offered == delivered + returned + dead_lettered + len` holds in
//! every snapshot taken while no push is half-way in (a push counts in `len` from the moment it
//! claims its room, and in `offered` once it is staged: nanoseconds apart).
//!
//! ## How it is built
//! A push that finds room does not take the queue's lock: it claims its room (item count and bytes)
//! on an atomic counter and stages the item in a lock-free list for its class. Consumers serve from
//! those lists directly, highest class first, under a lock that producers leave alone; so a
//! producer and a consumer on two cores share little more than the room counter, and consumers
//! give the count back in batches (up to 1/32 of the item bound), so even that line moves between
//! them once per batch rather than once per item. Room still owed is room: a producer that would
//! wait or be refused for it takes the lock, which settles the debt first. Everything that
//! must see the whole queue at once (a full queue's overflow policy, CoDel, adaptive LIFO,
//! [`Queue::expire`], [`Queue::stats`]) first moves the staged items into per-class deques under the
//! lock, oldest first, and works there.
//!
//! ## Cancel safety
//! Dropping a [`Queue::push`] future before it finished hands its item to the dead-letter hook as
//! [`Cancelled`](crate::DropReason::Cancelled) (it is never lost, never queued twice) and releases any
//! wait it held. [`Queue::pop`] is cancel safe: an item is either returned or stays queued.

mod builder;
mod error;
mod policy;
#[allow(clippy::module_inception)]
mod queue;
mod sleepers;

pub use builder::QueueBuilder;
pub use error::{BuildError, PopError, PushError};
pub use policy::{Admitted, Meta, Overflow};
pub use queue::{Popped, Queue, QueueStats, Refusals};
