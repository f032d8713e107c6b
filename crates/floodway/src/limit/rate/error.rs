use std::fmt;
use std::time::Duration;

/// Refused for now: the same request passes after `retry_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    /// When the same request would pass, at the current quota.
    pub retry_after: Duration,
    /// The burst size of the quota that refused it.
    pub limit: u32,
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rate limited; retry after {} ms",
            self.retry_after.as_millis()
        )
    }
}

impl std::error::Error for RateLimited {}

/// The request asks for more cells than the burst: it can never pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InsufficientCapacity {
    /// Cells asked for.
    pub requested: u32,
    /// The burst size.
    pub burst: u32,
}

impl fmt::Display for InsufficientCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} cells requested but the burst is {}: this can never pass",
            self.requested, self.burst
        )
    }
}

impl std::error::Error for InsufficientCapacity {}

/// Why `check_n` refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// Not now; see the hint.
    Limited(RateLimited),
    /// Never.
    Insufficient(InsufficientCapacity),
}

impl fmt::Display for RateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateError::Limited(e) => e.fmt(f),
            RateError::Insufficient(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RateError {}

/// Why a keyed check refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyedRateError {
    /// This key's quota is spent for now.
    Limited(RateLimited),
    /// Never: more cells than the burst.
    Insufficient(InsufficientCapacity),
    /// The table of tracked keys is full and no key is idle yet: a new key cannot be tracked until
    /// `retry_after`.
    TooManyKeys {
        /// When the first tracked key becomes idle and can be forgotten.
        retry_after: Duration,
    },
}

impl KeyedRateError {
    /// The retry hint, when the refusal is not permanent.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            KeyedRateError::Limited(l) => Some(l.retry_after),
            KeyedRateError::TooManyKeys { retry_after } => Some(*retry_after),
            KeyedRateError::Insufficient(_) => None,
        }
    }
}

impl fmt::Display for KeyedRateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyedRateError::Limited(e) => e.fmt(f),
            KeyedRateError::Insufficient(e) => e.fmt(f),
            KeyedRateError::TooManyKeys { retry_after } => write!(
                f,
                "too many producer keys tracked; retry after {} ms",
                retry_after.as_millis()
            ),
        }
    }
}

impl std::error::Error for KeyedRateError {}
