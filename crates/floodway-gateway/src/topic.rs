//! One topic at run time: admission (backlog watermarks, producer quotas), counters, the pressure
//! signal, and the delivery pipeline that drains the store into the sink.
//!
//! Delivery: a dispatcher reads stored events in order and pushes them into a bounded floodway
//! [`Queue`] (blocking: the store is the buffer, the queue only feeds the workers). An
//! [`ElasticPool`] of workers takes them, waits for the delivery rate limit and an adaptive
//! concurrency permit, and delivers, retrying with exponential backoff and jitter. An event leaves
//! the store only when it is delivered (ack) or dead-lettered.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodway::limit::concurrency::{Aimd, Fixed, Gradient2, Vegas};
use floodway::pressure::{DrainRate, RetryBounds};
use floodway::{
    ConcurrencyLimiter, ElasticPool, KeyedRateLimiter, Level, Pressure, Priority, Queue, Quota,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::Locked;
use crate::config::{Algorithm, Rate, Strategy, TopicConfig};
use crate::sink::{Attempt, Sink};
use crate::store::{
    DeadEvent, Feed, Lease, Purged, Replayed, Settle, Store, StoredEvent, TopicState, now_ms,
};

/// Why an event is dead-lettered: past its TTL, shed under overload, refused for good by the
/// sink (a `4xx` other than `429`), out of delivery attempts.
pub const DEAD_REASONS: [&str; 4] = ["expired", "shed", "permanent", "exhausted"];

/// An event on its way to a worker, with its lease when the backlog is shared.
#[derive(Debug)]
pub struct Job {
    event: StoredEvent,
    lease: Option<Box<dyn Lease>>,
    /// Attempts made before this hand-over (a retry waiting outside a worker comes back here).
    attempts: u32,
    last_error: String,
}

impl Job {
    /// An event handed over for its first attempt here.
    fn new(event: StoredEvent, lease: Option<Box<dyn Lease>>) -> Job {
        Job {
            event,
            lease,
            attempts: 0,
            last_error: String::new(),
        }
    }
}

/// At most this many refused events wait out their backoff outside a worker; beyond it, a worker
/// waits with its event (memory stays bounded however long the sink refuses).
const MAX_WAITING_RETRIES: usize = 256;

/// How often a topic on a shared backend reads the cluster's backlog.
const BACKLOG_POLL: Duration = Duration::from_millis(250);
/// How often, at most, the shared delivery limit is brought to this process's adaptive limit.
const SHARED_LIMIT_EVERY: Duration = Duration::from_secs(2);
/// How long a shared feed waits for an event before looking again.
const FEED_WAIT: Duration = Duration::from_secs(1);

/// The share of the backlog bound each class may fill before it is told to slow down (`429`).
/// Critical events may fill it all; past the bound they get `503`, the others still `429`.
pub fn watermark(p: Priority) -> f64 {
    match p {
        Priority::Low => 0.6,
        Priority::Normal => 0.8,
        Priority::High => 0.95,
        Priority::Critical => 1.0,
    }
}

/// Why an ingest request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The producer's quota is spent (`429`).
    Quota {
        retry_after: Duration,
        detail: String,
    },
    /// The backlog is over this class's watermark (`429`).
    Watermark {
        retry_after: Duration,
        detail: String,
    },
    /// The backlog is full and the event is critical (`503`).
    Full {
        retry_after: Duration,
        detail: String,
    },
    /// The request alone is more than its class may ever hold (`413`): waiting cannot help.
    TooLarge { detail: String },
}

/// Backlog capacity taken for a request, returned if the request does not store everything.
#[derive(Debug)]
pub struct Reservation {
    topic: Arc<Topic>,
    events: u64,
    bytes: u64,
}

impl Reservation {
    /// The topic the room is in.
    pub fn topic(&self) -> &Arc<Topic> {
        &self.topic
    }

    /// Keeps `events`/`bytes` of the reservation (they were stored) and returns the rest.
    pub fn commit(mut self, events: u64, bytes: u64) {
        if self.topic.shared {
            // Stored events stay counted here until the next read of the shared backlog
            // includes them.
            self.topic
                .unpolled_events
                .fetch_add(events, Ordering::AcqRel);
            self.topic.unpolled_bytes.fetch_add(bytes, Ordering::AcqRel);
        }
        self.topic
            .backlog_events
            .fetch_sub(self.events - events, Ordering::AcqRel);
        self.topic
            .backlog_bytes
            .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
        self.events = 0;
        self.bytes = 0;
        self.topic.appended.notify_one();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.topic
            .backlog_events
            .fetch_sub(self.events, Ordering::AcqRel);
        self.topic
            .backlog_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A topic's live state.
#[derive(Debug)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its configuration.
    pub config: TopicConfig,
    backlog_events: AtomicU64,
    backlog_bytes: AtomicU64,
    dead_letters: AtomicU64,
    dead_bytes: AtomicU64,
    /// Held while a worker checks for room in the dead-letter store and takes it.
    dead_room: Mutex<()>,
    /// Signalled when dead letters leave (a replay, a purge, a read of the shared count).
    dead_freed: Notify,
    /// Events due to be dead-lettered, waiting for room.
    waiting_for_dead_room: AtomicU64,
    /// Dead letters purged (counter).
    purged: AtomicU64,
    accepted: AtomicU64,
    unconfirmed: AtomicU64,
    delivered: AtomicU64,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    dead_by_reason: Mutex<BTreeMap<String, u64>>,
    arrivals: Mutex<DrainRate>,
    departures: Mutex<DrainRate>,
    oldest_ms: AtomicU64,
    pressure: Pressure,
    producers: Option<KeyedRateLimiter<String>>,
    /// The `RateLimit-Policy` header of a topic without a producer quota: its backlog bound.
    pub backlog_policy: axum::http::HeaderValue,
    /// The delivery concurrency limit.
    pub limiter: ConcurrencyLimiter,
    /// Adaptive delivery pacing.
    pub pacer: crate::pacer::Pacer,
    appended: Notify,
    /// On a shared backend, signalled whenever a worker finishes with an event: room for the
    /// shared feed to fetch.
    finished: Notify,
    pool: Mutex<Option<ElasticPool>>,
    /// The hand-over queue, kept for retries coming back to it and, with a shared feed, to give
    /// leases back at shutdown.
    handover: Mutex<Option<Queue<Job>>>,
    /// Refused events waiting out their backoff outside a worker.
    waiting_retries: std::sync::atomic::AtomicUsize,
    /// The shared feed's dispatcher, awaited at shutdown so no pull request is left open.
    dispatcher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    stopping: tokio::sync::watch::Sender<bool>,
    /// How overload is handled.
    pub strategy: Strategy,
    /// True when the backlog is shared with other processes (nats backend): its size comes from
    /// the store, and this process's own counters only cover what it stored since the last read.
    shared: bool,
    remote_events: AtomicU64,
    remote_bytes: AtomicU64,
    unpolled_events: AtomicU64,
    unpolled_bytes: AtomicU64,
}

fn quota(r: Rate) -> Quota {
    let per = NonZeroU32::new(r.per_second.max(1)).expect("at least 1");
    Quota::per_second(per)
        .allow_burst(NonZeroU32::new(r.burst.unwrap_or(r.per_second).max(1)).expect("at least 1"))
}

impl Topic {
    /// A topic with the backlog found in the store.
    pub fn new(
        name: String,
        config: TopicConfig,
        strategy: Strategy,
        found: TopicState,
        shared: bool,
    ) -> Topic {
        let c = config.concurrency;
        let algorithm = if strategy == Strategy::Floodway {
            c.algorithm
        } else {
            Algorithm::Fixed
        };
        let builder = match algorithm {
            Algorithm::Aimd => ConcurrencyLimiter::builder(
                Aimd::new(c.min, c.max).initial(c.min.max(4).min(c.max)),
            ),
            Algorithm::Vegas => ConcurrencyLimiter::builder(
                Vegas::new(c.min, c.max).initial(c.min.max(4).min(c.max)),
            ),
            Algorithm::Gradient2 => ConcurrencyLimiter::builder(
                Gradient2::new(c.min, c.max).initial(c.min.max(4).min(c.max)),
            ),
            Algorithm::Fixed => ConcurrencyLimiter::builder(Fixed(c.max)),
        };
        let limiter = builder
            // Workers wait for a permit rather than spin: one waiter per possible worker.
            .wait_queue(config.workers.max.max(1), Duration::from_secs(3600))
            .build()
            .expect("checked configuration");
        let now = Instant::now();
        Topic {
            backlog_policy: axum::http::HeaderValue::try_from(format!(
                "\"backlog\";q={}",
                config.max_backlog_events
            ))
            .expect("digits are a valid header value"),
            producers: config
                .producers
                .map(|r| KeyedRateLimiter::new(quota(r), 100_000)),
            pacer: {
                let max = config.rate_limit.map(|r| f64::from(r.per_second));
                if strategy == Strategy::Floodway {
                    crate::pacer::Pacer::new(max)
                } else {
                    crate::pacer::Pacer::fixed(max)
                }
            },
            strategy,
            name,
            backlog_events: AtomicU64::new(found.backlog_events),
            backlog_bytes: AtomicU64::new(found.backlog_bytes),
            dead_letters: AtomicU64::new(found.dead_letters),
            dead_bytes: AtomicU64::new(found.dead_bytes),
            dead_room: Mutex::new(()),
            dead_freed: Notify::new(),
            waiting_for_dead_room: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            unconfirmed: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            refused: Mutex::default(),
            dead_by_reason: Mutex::default(),
            arrivals: Mutex::new(DrainRate::new(
                Duration::from_millis(250),
                Duration::from_secs(2),
                now,
            )),
            departures: Mutex::new(DrainRate::new(
                Duration::from_millis(250),
                Duration::from_secs(2),
                now,
            )),
            oldest_ms: AtomicU64::new(0),
            pressure: Pressure::builder()
                .min_dwell(Duration::from_secs(1))
                .build()
                .expect("default marks"),
            limiter,
            appended: Notify::new(),
            finished: Notify::new(),
            pool: Mutex::new(None),
            handover: Mutex::new(None),
            waiting_retries: std::sync::atomic::AtomicUsize::new(0),
            dispatcher: Mutex::new(None),
            stopping: tokio::sync::watch::channel(false).0,
            config,
            shared,
            remote_events: AtomicU64::new(0),
            remote_bytes: AtomicU64::new(0),
            unpolled_events: AtomicU64::new(0),
            unpolled_bytes: AtomicU64::new(0),
        }
    }

    /// How full the backlog is (the larger of events and bytes), 0..=1 and beyond.
    pub fn utilisation(&self) -> f64 {
        let e = self.backlog_events() as f64 / self.config.max_backlog_events as f64;
        let b = self.backlog_bytes() as f64 / self.config.max_backlog_bytes.0 as f64;
        e.max(b)
    }

    /// Events in the backlog: this process's, or the whole cluster's on a shared backend.
    pub fn backlog_events(&self) -> u64 {
        self.backlog_events.load(Ordering::Acquire) + self.remote_events.load(Ordering::Acquire)
    }

    fn backlog_bytes(&self) -> u64 {
        self.backlog_bytes.load(Ordering::Acquire) + self.remote_bytes.load(Ordering::Acquire)
    }

    /// The pressure level after a fresh utilisation sample.
    pub fn level(&self) -> Level {
        self.pressure.update(self.utilisation())
    }

    /// How long until `events` would have drained at the current rate (within 1-60 s).
    pub fn retry_hint(&self, events: u64) -> Duration {
        let bounds = RetryBounds {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        self.departures
            .locked()
            .time_to_drain(events.max(1), Instant::now(), bounds)
    }

    /// Counts an ingest request answered before the store confirmed its write (its events are
    /// counted as accepted or refused once the store answers).
    pub fn count_unconfirmed(&self) {
        self.unconfirmed.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refusal by reason.
    pub fn count_refusal(&self, reason: &'static str) {
        *self.refused.locked().entry(reason).or_default() += 1;
    }

    /// Checks the producer's quota for `n` events.
    pub fn check_quota(
        &self,
        producer: impl FnOnce() -> String,
        n: u32,
    ) -> Result<Option<floodway::limit::rate::Allowed>, Refusal> {
        let Some(limiter) = &self.producers else {
            return Ok(None);
        };
        let n = NonZeroU32::new(n.max(1)).expect("at least 1");
        match limiter.check_n(&producer(), n) {
            Ok(a) => Ok(Some(a)),
            Err(e) => {
                let detail = match e {
                    floodway::limit::rate::KeyedRateError::Insufficient(i) => {
                        // More than the burst can never pass: no Retry-After would come true.
                        self.count_refusal("too_large");
                        return Err(Refusal::TooLarge {
                            detail: format!(
                                "a batch of {} events can never pass the producer quota of topic \
                                 {:?}, whose burst is {}; send smaller batches",
                                i.requested, self.name, i.burst
                            ),
                        });
                    }
                    floodway::limit::rate::KeyedRateError::TooManyKeys { .. } => {
                        "too many producers are active; try again shortly".to_owned()
                    }
                    floodway::limit::rate::KeyedRateError::Limited(_) => {
                        format!("producer quota for topic {:?} is spent", self.name)
                    }
                };
                self.count_refusal("quota");
                Err(Refusal::Quota {
                    retry_after: e.retry_after().unwrap_or(Duration::from_secs(60)),
                    detail,
                })
            }
        }
    }

    /// Takes backlog room for `events`/`bytes` of class `priority`, or says why not.
    pub fn reserve(
        self: &Arc<Self>,
        events: u64,
        bytes: u64,
        priority: Priority,
    ) -> Result<Reservation, Refusal> {
        let e_after = self.backlog_events.fetch_add(events, Ordering::AcqRel)
            + events
            + self.remote_events.load(Ordering::Acquire);
        let b_after = self.backlog_bytes.fetch_add(bytes, Ordering::AcqRel)
            + bytes
            + self.remote_bytes.load(Ordering::Acquire);
        let reservation = Reservation {
            topic: self.clone(),
            events,
            bytes,
        };
        if self.strategy == Strategy::Unbounded {
            return Ok(reservation);
        }
        let (max_e, max_b) = (
            self.config.max_backlog_events,
            self.config.max_backlog_bytes.0,
        );
        // The drop strategy has no watermarks: it fills up, then drops.
        let mark = match self.strategy {
            Strategy::Drop => 1.0,
            _ => watermark(priority),
        };
        let (lim_e, lim_b) = ((max_e as f64 * mark) as u64, (max_b as f64 * mark) as u64);
        if events > lim_e || bytes > lim_b {
            // Larger than the class may hold even in an empty backlog: a Retry-After would
            // promise room that never comes.
            self.count_refusal("too_large");
            return Err(Refusal::TooLarge {
                detail: format!(
                    "{events} {priority} events ({bytes} bytes) can never be admitted at once: \
                     topic {:?} holds at most {lim_e} {priority} events and {lim_b} bytes \
                     ({}% of max_backlog_events and max_backlog_bytes); send smaller batches",
                    self.name,
                    (mark * 100.0).round() as u32,
                ),
            });
        }
        if e_after > max_e || b_after > max_b {
            self.count_refusal("full");
            let over = e_after.saturating_sub(max_e).max(1);
            let (retry_after, detail) = (
                self.retry_hint(over),
                format!(
                    "topic {:?} backlog is full ({} of {} events, {} of {} bytes)",
                    self.name,
                    e_after - events,
                    max_e,
                    b_after - bytes,
                    max_b
                ),
            );
            // Critical events may fill the backlog, so for them full means unavailable (`503`);
            // every other class is past its watermark, and its answer stays "slow down" (`429`).
            return Err(if priority == Priority::Critical {
                Refusal::Full {
                    retry_after,
                    detail,
                }
            } else {
                Refusal::Watermark {
                    retry_after,
                    detail,
                }
            });
        }
        if self.strategy == Strategy::Drop {
            return Ok(reservation);
        }
        if e_after > lim_e || b_after > lim_b {
            self.count_refusal("watermark");
            let over = e_after.saturating_sub(lim_e).max(1);
            return Err(Refusal::Watermark {
                retry_after: self.retry_hint(over),
                detail: format!(
                    "topic {:?} backlog would pass the {}% watermark for {priority} events \
                     ({} events and {} bytes with this request, of at most {lim_e} and {lim_b}); \
                     slow down",
                    self.name,
                    (mark * 100.0).round() as u32,
                    e_after,
                    b_after,
                ),
            });
        }
        Ok(reservation)
    }

    /// Records accepted events.
    pub fn record_accepted(&self, n: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
        if self.shared {
            return; // the arrival rate is the cluster's, read with the backlog
        }
        self.arrivals.locked().record(n, Instant::now());
    }

    fn record_departure(&self, bytes: u64) {
        if self.shared {
            return; // the backlog and its drain rate are read from the store
        }
        self.backlog_events.fetch_sub(1, Ordering::AcqRel);
        self.backlog_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.departures.locked().record(1, Instant::now());
    }

    /// Events added back to the backlog by a replay.
    pub fn record_replayed(&self, events: &[Replayed]) {
        if self.shared {
            return; // the next read of the shared backlog counts them
        }
        let bytes: u64 = events
            .iter()
            .map(|e| e.stored.event.body.len() as u64)
            .sum();
        self.backlog_events
            .fetch_add(events.len() as u64, Ordering::AcqRel);
        self.backlog_bytes.fetch_add(bytes, Ordering::AcqRel);
        self.dead_left(events.len() as u64, bytes);
        self.appended.notify_one();
    }

    /// Records a purge of dead letters.
    pub fn record_purged(&self, purged: Purged) {
        self.purged.fetch_add(purged.events, Ordering::Relaxed);
        if !self.shared {
            self.dead_left(purged.events, purged.bytes);
        }
    }

    /// Dead letters left the store: room for the events waiting for it.
    fn dead_left(&self, events: u64, bytes: u64) {
        let _room = self.dead_room.locked();
        self.dead_letters.fetch_sub(events, Ordering::AcqRel);
        self.dead_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.dead_freed.notify_waiters();
    }

    /// Waits until the dead-letter store has room for an event of `bytes` and takes it, or
    /// returns false if the topic stops first.
    async fn take_dead_room(&self, bytes: u64) -> bool {
        let mut stopping = self.stopping.subscribe();
        let mut waiting = false;
        let took = loop {
            let freed = self.dead_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let _room = self.dead_room.locked();
                let (n, b) = (
                    self.dead_letters.load(Ordering::Acquire),
                    self.dead_bytes.load(Ordering::Acquire),
                );
                if n < self.config.max_dead_letters
                    && b + bytes <= self.config.max_dead_letter_bytes.0
                {
                    self.dead_letters.fetch_add(1, Ordering::AcqRel);
                    self.dead_bytes.fetch_add(bytes, Ordering::AcqRel);
                    break true;
                }
            }
            if !waiting {
                waiting = true;
                if self.waiting_for_dead_room.fetch_add(1, Ordering::AcqRel) == 0 {
                    tracing::warn!(topic = %self.name, max_dead_letters = self.config.max_dead_letters,
                        "the dead-letter store is full: events due to be dead-lettered wait in the backlog; replay or purge the dead letters");
                }
            }
            tokio::select! {
                () = &mut freed => {}
                // A shared count changes with other processes' replays and purges too: look again
                // at each read of it.
                () = tokio::time::sleep(BACKLOG_POLL), if self.shared => {}
                _ = stopping.wait_for(|s| *s) => break false,
            }
        };
        if waiting {
            self.waiting_for_dead_room.fetch_sub(1, Ordering::AcqRel);
        }
        took
    }

    /// The producer quota's `RateLimit-Policy` parameters `(burst, window seconds)`, if any.
    pub fn quota_policy(&self) -> Option<(u32, u64)> {
        self.producers.as_ref().map(|p| {
            let q = p.quota();
            let window = (q.interval() * q.burst().get()).as_secs().max(1);
            (q.burst().get(), window)
        })
    }

    /// Figures for `GET /v1/topics/{topic}` and `/metrics`.
    pub fn stats(&self) -> serde_json::Value {
        let now = Instant::now();
        let limiter = self.limiter.stats();
        let pool = self.pool.locked().as_ref().map(ElasticPool::stats);
        let oldest = self.oldest_ms.load(Ordering::Acquire);
        serde_json::json!({
            "topic": self.name,
            "backlog_events": self.backlog_events(),
            "backlog_bytes": self.backlog_bytes(),
            "backlog_scope": if self.shared { "cluster" } else { "process" },
            "oldest_age_seconds": if oldest == 0 || self.backlog_events() == 0 { 0.0 } else { now_ms().saturating_sub(oldest) as f64 / 1000.0 },
            "rate_in_per_second": self.arrivals.locked().per_second(now),
            "rate_out_per_second": self.departures.locked().per_second(now),
            "accepted": self.accepted.load(Ordering::Relaxed),
            "unconfirmed": self.unconfirmed.load(Ordering::Relaxed),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "refused": *self.refused.locked(),
            "dead_letters": self.dead_letters.load(Ordering::Acquire),
            "dead_letter_bytes": self.dead_bytes.load(Ordering::Acquire),
            "waiting_for_dead_letter_room": self.waiting_for_dead_room.load(Ordering::Acquire),
            "purged": self.purged.load(Ordering::Relaxed),
            "dead_lettered": *self.dead_by_reason.locked(),
            "concurrency_limit": limiter.limit,
            "delivery_rate_limit": self.pacer.rate(),
            "in_flight": limiter.in_flight,
            "workers": pool.map_or(0, |p| p.workers),
            "desired_workers": pool.map_or(0, |p| p.desired),
            "pressure": self.level().as_str(),
        })
    }

    /// Starts reading the shared backlog (on a shared backend) and, when `deliver` is true,
    /// the dispatcher and the worker pool.
    pub async fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        sink: Arc<Sink>,
        deliver: bool,
    ) -> Result<(), crate::store::StoreError> {
        if self.shared {
            tokio::spawn(self.clone().watch_backlog(store.clone(), deliver));
        }
        if !deliver {
            return Ok(());
        }
        let feed = store.feed(&self.name).await?;
        let queue: Queue<Job> = Queue::builder()
            .max_items(256)
            .dead_letter(|l: floodway::DeadLetter<Job>| {
                // Only a cancelled hand-over at shutdown lands here. The event is still stored:
                // read again on the next start, or, leased from a shared backlog, handed back at
                // once for another process to take.
                tracing::debug!(seq = l.item.event.seq, reason = %l.reason, "hand-over cancelled");
                if let Some(lease) = l.item.lease {
                    tokio::spawn(lease.settle(Settle::Retry(Duration::ZERO)));
                }
            })
            .build()
            .expect("valid queue");
        let w = self.config.workers;
        let topic = self.clone();
        let st = store.clone();
        let pool = ElasticPool::builder()
            .workers(w.min.max(1), w.max.max(1))
            .backlog_per_worker(4)
            .tick(Duration::from_millis(250))
            .stabilization(Duration::ZERO, Duration::from_secs(10))
            .spawn(queue.clone(), move |job| {
                let (topic, store, sink) = (topic.clone(), st.clone(), sink.clone());
                async move {
                    topic.deliver(job.item, &*store, &sink).await;
                    if topic.shared {
                        topic.finished.notify_one();
                    }
                }
            })
            .expect("valid pool");
        *self.pool.locked() = Some(pool);
        *self.handover.locked() = Some(queue.clone());
        match feed {
            Some(feed) => {
                let task = tokio::spawn(self.clone().dispatch_shared(feed, queue));
                *self.dispatcher.locked() = Some(task);
            }
            None => drop(tokio::spawn(self.clone().dispatch(store, queue))),
        }
        Ok(())
    }

    /// Stops the workers, letting each finish the delivery it holds, within `grace`.
    pub async fn stop(&self, grace: Duration) {
        // Deliveries waiting (for the rate limit, a permit, or a retry) give up at once; their
        // events stay stored and are delivered after the next start.
        self.stopping.send_replace(true);
        // A shared feed first finishes the pull request it has open (at most its wait) and
        // hands back what that brought: a request abandoned mid-way would leave events leased to
        // this process until the ack wait.
        let dispatcher = self.dispatcher.locked().take();
        if let Some(task) = dispatcher {
            let _ = tokio::time::timeout(grace, task).await;
        }
        let pool = self.pool.locked().take();
        if let Some(pool) = pool {
            if tokio::time::timeout(grace, pool.shutdown()).await.is_err() {
                tracing::warn!(topic = %self.name, "deliveries still running at shutdown; they will be redelivered");
            }
        }
        // Leased events not yet taken by a worker go back at once, for another process to take
        // now rather than after the ack wait.
        let handover = self.handover.locked().take();
        if let Some(queue) = handover {
            queue.close();
            let mut returned = 0;
            while let Ok(job) = queue.try_pop() {
                if let Some(lease) = job.item.lease {
                    returned += 1;
                    let _ = lease.settle(Settle::Retry(Duration::ZERO)).await;
                }
            }
            tracing::debug!(topic = %self.name, returned, "leased events handed back");
        }
    }

    /// Keeps the cluster-wide backlog, its age, and the arrival and drain rates current; when
    /// this process `delivers`, also the cluster-wide delivery limit.
    async fn watch_backlog(self: Arc<Self>, store: Arc<dyn Store>, delivers: bool) {
        let mut stopping = self.stopping.subscribe();
        let mut shared_limit = self.config.concurrency.max;
        // The shared backlog's (removed, ever stored) counters at the last read.
        let mut last_totals: Option<(u64, u64)> = None;
        let mut last_set = Instant::now();
        loop {
            // The cluster-wide limit (the consumer's max_ack_pending) follows this process's
            // adaptive limit, when it delivers: every few seconds, and only on a real change.
            let limit = self.limiter.stats().limit;
            let moved = limit.abs_diff(shared_limit) > shared_limit / 10;
            if delivers && moved && last_set.elapsed() >= SHARED_LIMIT_EVERY {
                match store.set_shared_limit(&self.name, limit).await {
                    Ok(()) => shared_limit = limit,
                    Err(e) => {
                        tracing::warn!(topic = %self.name, error = %e, "cannot update the shared delivery limit");
                    }
                }
                last_set = Instant::now();
            }
            // What this process stored before the read is in the read; later stores are
            // counted twice until the next one, which errs on the side of refusing.
            let (e, b) = (
                self.unpolled_events.swap(0, Ordering::AcqRel),
                self.unpolled_bytes.swap(0, Ordering::AcqRel),
            );
            match store.shared_backlog(&self.name).await {
                Ok(Some(backlog)) => {
                    self.backlog_events.fetch_sub(e, Ordering::AcqRel);
                    self.backlog_bytes.fetch_sub(b, Ordering::AcqRel);
                    self.remote_events.store(backlog.events, Ordering::Release);
                    self.remote_bytes.store(backlog.bytes, Ordering::Release);
                    self.oldest_ms
                        .store(backlog.oldest_ms.unwrap_or(0), Ordering::Release);
                    {
                        let _room = self.dead_room.locked();
                        self.dead_letters.store(backlog.dead, Ordering::Release);
                        self.dead_bytes.store(backlog.dead_bytes, Ordering::Release);
                    }
                    let totals = (backlog.removed, backlog.removed + backlog.events);
                    if let Some((removed, stored)) = last_totals.replace(totals) {
                        let now = Instant::now();
                        self.departures
                            .locked()
                            .record(totals.0.saturating_sub(removed), now);
                        self.arrivals
                            .locked()
                            .record(totals.1.saturating_sub(stored), now);
                    }
                }
                Ok(None) => return,
                Err(err) => {
                    self.unpolled_events.fetch_add(e, Ordering::AcqRel);
                    self.unpolled_bytes.fetch_add(b, Ordering::AcqRel);
                    tracing::warn!(topic = %self.name, error = %err, "cannot read the shared backlog");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(BACKLOG_POLL) => {}
                _ = stopping.wait_for(|s| *s) => return,
            }
        }
    }

    async fn dispatch(self: Arc<Self>, store: Arc<dyn Store>, queue: Queue<Job>) {
        let mut cursor = 0u64;
        let mut readable = store.readable();
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = readable.as_mut() {
                r.borrow_and_update();
            }
            let batch = match store.read_from(&self.name, cursor, 256) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(topic = %self.name, error = %e, "cannot read the store");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Woken when the store makes more events readable, or, for a store whose
                // acknowledged events are readable at once, by an append or a replay. (A store
                // that signals would be woken by every append for nothing: what was just appended
                // becomes readable only with its commit, a few ms after its `202`.) The timeout
                // only guards against a missed wake.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    match readable.as_mut() {
                        Some(r) => {
                            if r.changed().await.is_err() {
                                // The store stopped signalling: the append wake-up is left.
                                notified.await;
                            }
                        }
                        None => notified.await,
                    }
                })
                .await;
                continue;
            }
            if let Some(first) = batch.first() {
                self.oldest_ms
                    .store(first.event.accepted_ms, Ordering::Release);
            }
            for e in batch {
                cursor = e.seq + 1;
                // Delivery keeps the topic's order: priority decides admission (watermarks), not
                // the order of delivery, which would starve low-priority events behind a steady
                // stream of higher ones.
                if queue.push(Job::new(e, None)).await.is_err() {
                    return; // closed at shutdown
                }
            }
        }
    }

    /// Takes events from the shared backlog, only as many as this process's concurrency limit
    /// has room for (and one batch ahead): what a process holds, no other can deliver.
    async fn dispatch_shared(self: Arc<Self>, mut feed: Box<dyn Feed>, queue: Queue<Job>) {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            // Room for the deliveries the limit allows plus one batch more, fetched while they
            // run: a fetch is a round trip, and without the spare batch the workers would wait
            // for it after every batch.
            let l = self.limiter.stats();
            let room = (2 * l.limit).saturating_sub(l.in_flight + queue.len());
            if room == 0 {
                // Full: look again when a worker finishes (the timeout only guards against a
                // limit that grew with nothing finishing).
                let wait = tokio::time::timeout(Duration::from_millis(50), finished);
                if self.unless_stopping(wait).await.is_none() {
                    return;
                }
                continue;
            }
            // Each event goes to the workers as it arrives. Once stopping, a worker hands it
            // straight back, as does `stop` for any left in the queue.
            let mut take = |(event, lease): crate::store::Leased| {
                let job = Job::new(event, Some(lease));
                // Never full: at most twice the concurrency limit is asked for, and the queue
                // holds more than that; closed only at shutdown.
                if let Err(refused) = queue.try_push(job) {
                    if let Some(lease) = refused.into_item().lease {
                        tokio::spawn(lease.settle(Settle::Retry(Duration::ZERO)));
                    }
                }
            };
            // Not cancelled by a stop, which would abandon a pull request the server is still
            // filling: it ends within FEED_WAIT (see `stop`).
            match feed.next(room.min(256), FEED_WAIT, &mut take).await {
                Ok(_) if *self.stopping.borrow() => return,
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(topic = %self.name, error = %e, "cannot read the shared backlog");
                    if self
                        .unless_stopping(tokio::time::sleep(Duration::from_secs(1)))
                        .await
                        .is_none()
                    {
                        return;
                    }
                }
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let r = self.config.retry;
        let exp = r.base.0.saturating_mul(1u32 << attempt.min(20));
        let capped = exp.min(r.max.0);
        // Full jitter in [capped/2, capped]: retries from many events do not arrive in waves.
        capped.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    async fn deliver(self: &Arc<Self>, job: Job, store: &dyn Store, sink: &Sink) {
        let Job {
            event: e,
            mut lease,
            attempts,
            mut last_error,
        } = job;
        let bytes = e.event.body.len() as u64;
        let mut attempt = lease.as_ref().map_or(attempts, |l| l.earlier_attempts());
        loop {
            let now = now_ms();
            if e.event.deadline_ms.is_some_and(|d| d <= now) {
                return self
                    .bury(store, e, "expired", last_error, attempt, bytes, lease)
                    .await;
            }
            if let Some(max_age) = self.config.shed.max_age {
                if now.saturating_sub(e.event.accepted_ms) > max_age.0.as_millis() as u64 {
                    return self
                        .bury(store, e, "shed", last_error, attempt, bytes, lease)
                        .await;
                }
            }
            let ready = async {
                self.pacer.ready().await;
                self.limiter.acquire(e.event.priority).await
            };
            let Some(acquired) = self.unless_stopping(ready).await else {
                // Stopping: a leased event goes back at once for another process.
                if let Some(l) = lease {
                    let _ = l.settle(Settle::Retry(Duration::ZERO)).await;
                }
                return;
            };
            let Ok(permit) = acquired else {
                continue;
            };
            attempt += 1;
            let (after, error) = match sink.deliver(&self.name, &e, attempt).await {
                Attempt::Delivered => {
                    permit.success();
                    self.pacer.record(true);
                    match sink.durable().await {
                        Ok(()) => {
                            // An ack that never lands (crash, store failure) only means the event
                            // is delivered again: at least once, never lost.
                            let acked = match lease {
                                Some(l) => l.settle(Settle::Ack).await,
                                None => store.ack(&self.name, vec![e.seq]).await,
                            };
                            if let Err(err) = acked {
                                tracing::error!(topic = %self.name, error = %err, "ack not recorded; the event will be redelivered");
                            }
                            self.delivered.fetch_add(1, Ordering::Relaxed);
                            self.record_departure(bytes);
                            return;
                        }
                        Err(err) => {
                            tracing::warn!(topic = %self.name, seq = e.seq, error = %err, "the sink could not make the event durable; delivering it again");
                            (None, format!("sync failed: {err}"))
                        }
                    }
                }
                Attempt::Permanent { error } => {
                    permit.success();
                    return self
                        .bury(store, e, "permanent", error, attempt, bytes, lease)
                        .await;
                }
                Attempt::Retry { after, error } => {
                    permit.dropped();
                    self.pacer.record(false);
                    (after, error)
                }
            };
            tracing::debug!(topic = %self.name, seq = e.seq, attempt, %error, "delivery failed");
            if attempt >= self.config.retry.max_attempts {
                return self
                    .bury(store, e, "exhausted", error, attempt, bytes, lease)
                    .await;
            }
            last_error = error;
            // The backoff is already capped at retry.max; a sink's Retry-After can only
            // lengthen it.
            let wait = self.backoff(attempt).max(after.unwrap_or_default());
            if let Some(l) = lease.take() {
                // Shared backlog: the event goes back and returns after `wait`, to whichever
                // process has room then.
                if let Err(err) = l.settle(Settle::Retry(wait)).await {
                    tracing::warn!(topic = %self.name, error = %err, "nak not recorded; the event returns after the ack wait");
                }
                return;
            }
            // Embedded: the event waits outside the worker, which goes on with others (a burst of
            // refusals must not idle the pool for a whole Retry-After), and comes back through the
            // queue. The event stays stored meanwhile. Beyond MAX_WAITING_RETRIES, this worker
            // waits with its event.
            if let Some(queue) = self.retry_slot() {
                let topic = self.clone();
                let job = Job {
                    event: e,
                    lease: None,
                    attempts: attempt,
                    last_error,
                };
                tokio::spawn(async move {
                    let waited = topic.unless_stopping(tokio::time::sleep(wait)).await;
                    topic.waiting_retries.fetch_sub(1, Ordering::AcqRel);
                    if waited.is_some() {
                        // Closed only at shutdown: the event is read again at the next start.
                        let _ = queue.push(job).await;
                    }
                });
                return;
            }
            if self
                .unless_stopping(tokio::time::sleep(wait))
                .await
                .is_none()
            {
                return;
            }
        }
    }

    /// The hand-over queue, with a place counted for one more retry waiting outside a worker, or
    /// `None` when there is no queue or MAX_WAITING_RETRIES already wait.
    fn retry_slot(&self) -> Option<Queue<Job>> {
        let queue = self.handover.locked().clone()?;
        self.waiting_retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_WAITING_RETRIES).then_some(n + 1)
            })
            .ok()
            .map(|_| queue)
    }

    /// Runs `f` unless the topic is stopping first (`None`).
    async fn unless_stopping<F: std::future::Future>(&self, f: F) -> Option<F::Output> {
        let mut stopping = self.stopping.subscribe();
        tokio::select! {
            out = f => Some(out),
            _ = stopping.wait_for(|s| *s) => None,
        }
    }

    #[allow(clippy::too_many_arguments)] // one call site per reason; a struct would only rename them
    async fn bury(
        &self,
        store: &dyn Store,
        e: StoredEvent,
        reason: &str,
        error: String,
        attempts: u32,
        bytes: u64,
        lease: Option<Box<dyn Lease>>,
    ) {
        debug_assert!(DEAD_REASONS.contains(&reason), "{reason} is not listed");
        if !self.take_dead_room(bytes).await {
            // Stopping with the dead-letter store full: the event stays stored (a leased one goes
            // back at once for another process).
            if let Some(l) = lease {
                let _ = l.settle(Settle::Retry(Duration::ZERO)).await;
            }
            return;
        }
        let dead = DeadEvent {
            stored: e,
            reason: reason.to_owned(),
            error,
            attempts,
            dead_ms: now_ms(),
        };
        while let Err(err) = store.dead_letter(&self.name, dead.clone()).await {
            tracing::error!(topic = %self.name, error = %err, "dead-lettering failed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if let Some(l) = lease {
            // The copy is stored; now the event leaves the shared backlog. If this is lost, the
            // event comes back and its second dead letter is de-duplicated by its id.
            if let Err(err) = l.settle(Settle::Term).await {
                tracing::warn!(topic = %self.name, error = %err, "terminate not recorded");
            }
        }
        *self
            .dead_by_reason
            .locked()
            .entry(reason.to_owned())
            .or_default() += 1;
        self.record_departure(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SinkConfig;
    use crate::store::testing::Hooked;

    /// Lets every task that is ready run (the runtime has one thread and paused time, so nothing
    /// else moves meanwhile).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// A line whose sync failed may be lost (the kernel may have dropped it), so its event is
    /// delivered again, then acknowledged once: two copies of the line, one delivery counted, and
    /// nothing left in the store.
    #[tokio::test(start_paused = true)]
    async fn an_event_whose_line_failed_to_sync_is_delivered_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Hooked::default());
        let path = dir.path().join("out.jsonl");
        let config = SinkConfig::File {
            path: path.clone(),
            sync: true,
        };
        let sink = Arc::new(Sink::open(&config).await.unwrap());
        sink.fail_next_sync();
        let topic = Arc::new(Topic::new(
            "t".into(),
            TopicConfig::default(),
            Strategy::Floodway,
            TopicState::default(),
            false,
        ));
        topic.start(store.clone(), sink, true).await.unwrap();
        let event = crate::store::NewEvent {
            content_type: "application/json".into(),
            body: b"{}".to_vec(),
            priority: floodway::Priority::Normal,
            deadline_ms: None,
            idempotency_key: None,
            accepted_ms: 1,
        };
        store.append("t", vec![event]).await.unwrap();
        topic
            .reserve(1, 2, floodway::Priority::Normal)
            .unwrap()
            .commit(1, 2);
        for _ in 0..600 {
            if topic.delivered.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(topic.delivered.load(Ordering::Relaxed), 1);
        let out = std::fs::read_to_string(&path).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(
            store.read_from("t", 0, 10).unwrap().is_empty(),
            "acknowledged"
        );
        assert_eq!(topic.backlog_events(), 0);
        topic.stop(Duration::from_secs(1)).await;
    }

    /// With a store that signals when events become readable, the dispatcher reads on that
    /// signal only: an append alone (not yet readable) does not wake it to read for nothing.
    #[tokio::test(start_paused = true)]
    async fn the_dispatcher_reads_when_the_store_says_more_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Hooked {
            readable: Some(tokio::sync::watch::channel(0).0),
            ..Hooked::default()
        });
        let sink = SinkConfig::File {
            path: dir.path().join("out.jsonl"),
            sync: false,
        };
        let sink = Arc::new(Sink::open(&sink).await.unwrap());
        let config = TopicConfig::default();
        let topic = Arc::new(Topic::new(
            "t".into(),
            config,
            Strategy::Floodway,
            TopicState::default(),
            false,
        ));
        topic.start(store.clone(), sink, true).await.unwrap();
        settle().await;
        let idle = store.reads.load(Ordering::Relaxed);
        assert!(idle >= 1, "the dispatcher looked once at the start");
        for _ in 0..100 {
            topic
                .reserve(1, 10, floodway::Priority::Normal)
                .unwrap()
                .commit(1, 10);
            settle().await;
        }
        assert_eq!(
            store.reads.load(Ordering::Relaxed),
            idle,
            "no read per append"
        );
        store.readable.as_ref().unwrap().send_modify(|n| *n += 1);
        settle().await;
        assert_eq!(store.reads.load(Ordering::Relaxed), idle + 1);
        topic.stop(Duration::from_secs(1)).await;
    }
}
