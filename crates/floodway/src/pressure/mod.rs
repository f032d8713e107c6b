//! The pressure signal: how loaded a component is, and when to try again.
//!
//! A [`Pressure`] turns a utilisation figure (backlog / capacity, in-flight / limit, anything where
//! `1.0` means "full") into a [`Level`]. Each level above [`Level::Normal`] has an *enter* and an
//! *exit* watermark ([`Watermark`]), with exit below enter, and a level is held for at least a
//! minimum dwell time before it may fall. So a load that oscillates around one watermark moves the
//! level once, not on every sample: producers see a steady signal they can act on. Escalation is
//! immediate, because being late to say "slow down" is what overflows buffers.
//!
//! Subscribe with [`Pressure::subscribe`] to get a [`tokio::sync::watch::Receiver`] that wakes only
//! on level changes.
//!
//! A [`DrainRate`] measures how fast a backlog is being worked off (an exponentially weighted
//! moving average over time, not over samples) and answers the honest retry hint: how long until
//! `n` items have drained, clamped to bounds you choose. Every refusal in floodway carries such a hint.

mod error;
mod level;
mod retry;

pub use error::PressureConfigError;
pub use level::{Level, Pressure, PressureBuilder, Watermark};
pub use retry::{DrainRate, RetryBounds};
