//! Load shedding: giving up on work early, on purpose, and saying so.
//!
//! - **By sojourn time** ([`CoDel`]): when the time items spend waiting stays above a *target* for a
//!   whole *interval*, the queue has a standing backlog that more buffering will not absorb. CoDel
//!   then sheds one item, and sheds again at intervals that shrink with the square root of the number
//!   of sheds, until the sojourn falls back under the target. Give a [`Queue`](crate::Queue) a CoDel
//!   with [`QueueBuilder::codel`](crate::queue::QueueBuilder::codel); the queue feeds it the age of
//!   its *oldest* item at each dequeue (not the age of the item served: with strict priority the
//!   items served can be fresh while a lower class piles up behind them).
//! - **By priority**: a queue sheds from its lowest non-empty class first; the highest class is shed
//!   only when nothing else is queued.
//! - **By deadline**: an item whose deadline has passed is dead-lettered as
//!   [`Expired`](crate::DropReason::Expired) instead of being served late.
//! - **Adaptive LIFO**: while CoDel sees a standing queue, a queue built with
//!   [`adaptive_lifo`](crate::queue::QueueBuilder::adaptive_lifo) serves the newest item of a class
//!   first (it still has a chance to be useful); the old ones are shed. In calm periods it is FIFO.
//! - **At the client** ([`AdaptiveThrottle`]): a caller of an overloaded service rejects some requests
//!   locally, with probability `max(0, (requests - K * accepts) / (requests + 1))` over a sliding
//!   window, so the service spends no effort refusing them.
//!
//! Every shed item goes to the queue's dead-letter hook with [`DropReason::Shed`](crate::DropReason::Shed)
//! and is counted.

mod codel;
mod throttle;

pub use codel::{CoDel, Verdict};
pub use throttle::{AdaptiveThrottle, Throttled};
