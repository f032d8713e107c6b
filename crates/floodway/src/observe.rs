//! Observation: how primitives report what they do, without depending on an exporter.
//!
//! Every primitive keeps its own counters and answers `stats()` with a snapshot; that is the cheap,
//! pull-based path a scraper uses. For push-based export, give a primitive an [`Observer`]: it is
//! called with counter increments and gauge readings, named by a stable metric name, a reason
//! where the metric is counted by reason, and the scope (the name you gave the primitive).
//!
//! Metric names used by the library:
//!
//! | name | kind | reason |
//! |---|---|---|
//! | `offered` | counter | |
//! | `accepted` | counter | |
//! | `delivered` | counter | |
//! | `refused` | counter | why the caller was told no (`full`, `too_large`, `closed`, `expired`, `rate`, `concurrency`, `keys`, ...) |
//! | `dead_lettered` | counter | a [`DropReason`](crate::DropReason) name |
//! | `depth` / `bytes` | gauge | |
//! | `sojourn_seconds` | gauge | the sojourn of the item just served |
//! | `limit` / `in_flight` | gauge | |
//! | `workers` / `desired_workers` | gauge | |
//! | `level` | gauge | the [`Level`](crate::Level) as 0..=3 |

use std::fmt;
use std::sync::Arc;

/// Receives counters and gauges from floodway primitives. Both methods default to doing nothing.
///
/// Implementations must be cheap and must not call back into the primitive that reports.
pub trait Observer: Send + Sync + 'static {
    /// The counter `name` (with `reason`, or `""`) of `scope` grew by `delta`.
    fn counter(&self, scope: &str, name: &'static str, reason: &'static str, delta: u64) {
        let _ = (scope, name, reason, delta);
    }

    /// The gauge `name` of `scope` now reads `value`.
    fn gauge(&self, scope: &str, name: &'static str, value: f64) {
        let _ = (scope, name, value);
    }
}

impl fmt::Debug for dyn Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}

/// An optional observer with the scope it reports under; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Reporter {
    observer: Option<Arc<dyn Observer>>,
    scope: Arc<str>,
}

impl Reporter {
    pub(crate) fn new(observer: Option<Arc<dyn Observer>>, scope: &str) -> Self {
        Reporter {
            observer,
            scope: scope.into(),
        }
    }

    /// True when someone listens (so figures worth computing only for them can be skipped).
    #[inline]
    pub(crate) fn is_enabled(&self) -> bool {
        self.observer.is_some()
    }

    #[inline]
    pub(crate) fn counter(&self, name: &'static str, reason: &'static str, delta: u64) {
        if let Some(o) = &self.observer {
            o.counter(&self.scope, name, reason, delta);
        }
    }

    #[inline]
    pub(crate) fn gauge(&self, name: &'static str, value: f64) {
        if let Some(o) = &self.observer {
            o.gauge(&self.scope, name, value);
        }
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("scope", &self.scope)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}
