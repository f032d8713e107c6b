//! Resizing: an elastic pool of workers over a [`Queue`](crate::Queue).
//!
//! The pool runs between `min` and `max` workers. Every `tick` it computes a *recommendation*:
//! the workers busy now, plus one for every full `backlog_per_worker` items queued (a smaller
//! backlog is absorbed by the workers there are), plus one more whenever the oldest item has waited
//! longer than `target_sojourn`. As Kubernetes' HPA
//! does, it then stabilises: it scales up to the *lowest* recommendation of the last
//! `scale_up_window` (default: the latest one, so bursts are met at once), and down to the
//! *highest* recommendation of the last `scale_down_window` (default 30 s, so a lull does not shrink
//! the pool just before the next wave), moving at most `max_step_up` / `max_step_down` workers a
//! tick.
//!
//! Scaling down never cancels work: a retiring worker finishes the item it holds, then exits.
//!
//! The size the pool wants is published on a watch channel ([`ElasticPool::desired`]) and in
//! [`PoolStats`], so an external autoscaler (Kubernetes HPA on a custom metric, KEDA on a metrics
//! scaler) can scale *processes* on the same signal. Each decision is also published as a
//! [`ScaleEvent`].

mod controller;
mod pool;

pub use controller::{ScaleEvent, ScaleReason};
pub use pool::{ElasticBuilder, ElasticConfigError, ElasticPool, PoolStats};
