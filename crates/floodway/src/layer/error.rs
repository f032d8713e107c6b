use std::fmt;
use std::time::Duration;

use crate::DropReason;

/// The error type of layered services, as in the rest of tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a layer refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The rate limit is spent for now.
    Rate,
    /// Too many keys are tracked by a keyed rate limit.
    Keys,
    /// The concurrency limit is reached.
    Concurrency,
    /// Waited for a concurrency permit for the whole timeout.
    Timeout,
    /// The queue is full.
    Full,
    /// The request waited in the queue and was then given up on (shed, expired, evicted).
    Shed(DropReason),
    /// The queue is closed, or its worker stopped because the inner service failed.
    Closed,
    /// The request can never pass (more than the burst, or too large for the queue).
    Never,
}

impl Reason {
    /// A stable lower-case name, used as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::Keys => "keys",
            Reason::Concurrency => "concurrency",
            Reason::Timeout => "timeout",
            Reason::Full => "full",
            Reason::Shed(r) => r.as_str(),
            Reason::Closed => "closed",
            Reason::Never => "never",
        }
    }
}

/// A request refused by a floodway layer, with the reason and (when it may pass later) a hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    reason: Reason,
    retry_after: Option<Duration>,
}

impl Refused {
    pub(crate) fn new(reason: Reason, retry_after: Option<Duration>) -> Self {
        Refused {
            reason,
            retry_after,
        }
    }

    /// Why.
    pub fn reason(&self) -> Reason {
        self.reason
    }

    /// When to try again; `None` when the same request can never pass.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refused ({})", self.reason.as_str())?;
        if let Some(d) = self.retry_after {
            write!(f, "; retry after {} ms", d.as_millis())?;
        }
        Ok(())
    }
}

impl std::error::Error for Refused {}
