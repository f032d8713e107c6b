use std::fmt;
use std::time::Duration;

/// Why a permit was not granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireError {
    /// The limit is reached (and the wait queue, if any, is full): retry after the hint.
    Saturated {
        /// Estimated time until a permit frees up, from recent round-trip times.
        retry_after: Duration,
    },
    /// Waited in the queue for the whole timeout.
    Timeout {
        /// Estimated time until a permit frees up.
        retry_after: Duration,
    },
}

impl AcquireError {
    /// The retry hint.
    pub fn retry_after(&self) -> Duration {
        match self {
            AcquireError::Saturated { retry_after } | AcquireError::Timeout { retry_after } => {
                *retry_after
            }
        }
    }
}

impl fmt::Display for AcquireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AcquireError::Saturated { retry_after } => write!(
                f,
                "concurrency limit reached; retry after {} ms",
                retry_after.as_millis()
            ),
            AcquireError::Timeout { retry_after } => write!(
                f,
                "timed out waiting for a concurrency permit; retry after {} ms",
                retry_after.as_millis()
            ),
        }
    }
}

impl std::error::Error for AcquireError {}

/// A concurrency configuration that cannot work.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum ConcurrencyConfigError {
    /// Partition shares must be in `0..=1` and sum to at most 1.
    BadShares {
        /// The sum of the shares given.
        sum: f64,
    },
    /// A wait queue of zero waiters, or a zero timeout: use no wait queue instead.
    EmptyWaitQueue,
}

impl fmt::Display for ConcurrencyConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConcurrencyConfigError::BadShares { sum } => write!(
                f,
                "partition shares must each be within 0..=1 and sum to at most 1 (sum is {sum})"
            ),
            ConcurrencyConfigError::EmptyWaitQueue => {
                f.write_str("a wait queue needs at least one waiter and a positive timeout")
            }
        }
    }
}

impl std::error::Error for ConcurrencyConfigError {}
