//! The distributed backend: every topic is a NATS JetStream stream shared by any number of
//! gateways.
//!
//! - Events: stream `FLOODWAY_E_<topic>` on subject `floodway.events.<topic>`, work-queue
//!   retention (an event leaves the stream when it is acked), "discard new" limits (a full stream
//!   refuses the publish rather than dropping old events), duplicate window = the idempotency
//!   window. A `202` is sent only after JetStream's publish ack.
//! - Delivery: one durable pull consumer `floodway` per topic, shared by every process that
//!   delivers. `max_ack_pending` starts at the topic's `concurrency.max` and follows the adaptive
//!   concurrency limit of the processes that deliver, so however many workers run, the sink sees
//!   one total limit; each process fetches only as many events as its own limit has room for.
//! - Dead letters: stream `FLOODWAY_D_<topic>` on `floodway.dead.<topic>`, limits retention.
//!
//! Stream and subject names keep the topic readable; a `.` in a topic becomes `~` in the stream
//! name (stream names cannot hold dots, and topic names cannot hold `~`, so the mapping is one to
//! one).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;

use crate::config::{NatsConfig, TopicConfig};
use crate::store::{
    Appended, Backlog, BoxFuture, DEDUP_WINDOW, DeadEvent, DeadPage, DeadSelection, Feed, Lease,
    Leased, NewEvent, Pager, Purged, Replayed, Settle, Store, StoreError, StoredEvent, TopicState,
    decode, decode_dead, encode, encode_dead,
};
use crate::{Locked, RwLocked};

const EVENTS_PREFIX: &str = "FLOODWAY_E_";
const DEAD_PREFIX: &str = "FLOODWAY_D_";
const CONSUMER: &str = "floodway";
/// How long a topic's streams may take to become available at startup.
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);
/// How often the dead-letter count is asked for. It only feeds a gauge; the backlog itself, which
/// decides refusals, is asked for at every poll.
const DEAD_COUNT_EVERY: Duration = Duration::from_secs(2);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn stream_name(prefix: &str, topic: &str) -> String {
    format!("{prefix}{}", topic.replace('.', "~"))
}

/// A topic's streams and consumer. Shared behind an `Arc`: a stream handle carries the stream's
/// whole cached info (its configuration's strings among it), too much to copy for every request.
struct Handles {
    subject: String,
    dead_subject: String,
    events: stream::Stream,
    dead: stream::Stream,
    consumer: consumer::PullConsumer,
    consumer_config: consumer::pull::Config,
    /// The dead stream's message count, and when it was read.
    dead_seen: std::sync::Mutex<Option<(tokio::time::Instant, (u64, u64))>>,
}

impl Handles {
    /// The first dead letter at sequence `seq` or after (up to `last`, if given), as stored, with
    /// its sequence.
    async fn dead_from(
        &self,
        seq: u64,
        last: Option<u64>,
    ) -> Result<Option<(u64, impl AsRef<[u8]> + use<>)>, StoreError> {
        match self
            .dead
            .get_first_raw_message_by_subject(&self.dead_subject, seq)
            .await
        {
            Ok(m) if last.is_none_or(|l| m.sequence <= l) => Ok(Some((m.sequence, m.payload))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The first dead letter at sequence `seq` or after, up to `last`, that `pick` takes, as
    /// stored, with its sequence (the others are passed over undecoded).
    async fn taken_from(
        &self,
        pick: &DeadSelection,
        mut seq: u64,
        last: u64,
    ) -> Result<Option<(u64, impl AsRef<[u8]> + use<>)>, StoreError> {
        while let Some((at, record)) = self.dead_from(seq, Some(last)).await? {
            if pick.takes_record(record.as_ref())? {
                return Ok(Some((at, record)));
            }
            seq = at + 1;
        }
        Ok(None)
    }

    /// The dead stream's last sequence now: an operation on the dead letters there takes only
    /// those, so that a replayed event that dies again (its TTL still past) waits for the next
    /// replay instead of looping.
    async fn dead_last(&self) -> Result<u64, StoreError> {
        let info = self.dead.get_info().await.map_err(unavailable)?;
        Ok(info.state.last_sequence)
    }
}

/// The NATS JetStream backend.
pub struct NatsStore {
    client: async_nats::Client,
    js: jetstream::Context,
    config: NatsConfig,
    topics: RwLock<HashMap<String, Arc<Handles>>>,
}

impl std::fmt::Debug for NatsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStore")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl NatsStore {
    /// Connects to the servers in `config.url`.
    pub async fn connect(config: &NatsConfig) -> Result<NatsStore, StoreError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("floodway")
            .connection_timeout(config.request_timeout.0);
        if let (Some(user), Some(password)) = (&config.user, &config.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let urls: Vec<String> = config.url.split(',').map(|u| u.trim().to_owned()).collect();
        let client = options
            .connect(urls)
            .await
            .map_err(|e| unavailable(format!("cannot connect to NATS at {}: {e}", config.url)))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout.0)
            .build(client.clone());
        Ok(NatsStore {
            client,
            js,
            config: config.clone(),
            topics: RwLock::default(),
        })
    }

    fn handles(&self, topic: &str) -> Result<Arc<Handles>, StoreError> {
        self.topics
            .read_locked()
            .get(topic)
            .cloned()
            .ok_or_else(|| unavailable(format!("topic {topic:?} has no stream yet")))
    }

    async fn create(&self, topic: &str, config: &TopicConfig) -> Result<Handles, StoreError> {
        let s = config.stream.or(self.config.stream);
        let max_age = s.max_age.map_or(Duration::ZERO, |d| d.0);
        let subject = format!("floodway.events.{topic}");
        let dead_subject = format!("floodway.dead.{topic}");
        let replicas = s.replicas.unwrap_or(1);
        let events = self
            .ensure_stream(stream::Config {
                name: stream_name(EVENTS_PREFIX, topic),
                subjects: vec![subject.clone()],
                retention: stream::RetentionPolicy::WorkQueue,
                discard: stream::DiscardPolicy::New,
                max_messages: s.max_msgs.unwrap_or(config.max_backlog_events) as i64,
                max_bytes: s.max_bytes.map_or(config.max_backlog_bytes.0, |b| b.0) as i64,
                max_age,
                num_replicas: replicas,
                duplicate_window: if max_age.is_zero() {
                    DEDUP_WINDOW
                } else {
                    DEDUP_WINDOW.min(max_age)
                },
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let dead = self
            .ensure_stream(stream::Config {
                name: stream_name(DEAD_PREFIX, topic),
                subjects: vec![dead_subject.clone()],
                retention: stream::RetentionPolicy::Limits,
                num_replicas: replicas,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let wanted = consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.config.ack_wait.0,
            // Attempts are counted by floodway, which dead-letters at retry.max_attempts;
            // JetStream's own limit would strand the event in the stream instead.
            max_deliver: -1,
            max_ack_pending: config.concurrency.max as i64,
            // No subject filter: the stream holds only this topic, and an unfiltered consumer is
            // JetStream's fast path.
            num_replicas: 0,
            ..Default::default()
        };
        let consumer = match events.create_consumer(wanted.clone()).await {
            Ok(c) => c,
            Err(e) => {
                // Another process may have created it with other settings; use it as it is.
                tracing::warn!(topic, error = %e, "using the existing consumer as configured");
                events
                    .get_consumer(CONSUMER)
                    .await
                    .map_err(|e| unavailable(format!("no consumer for {topic:?}: {e}")))?
            }
        };
        Ok(Handles {
            subject,
            dead_subject,
            events,
            dead,
            consumer,
            consumer_config: wanted,
            dead_seen: std::sync::Mutex::new(None),
        })
    }

    /// Creates the stream, or brings an existing one to this configuration.
    async fn ensure_stream(&self, config: stream::Config) -> Result<stream::Stream, StoreError> {
        let name = config.name.clone();
        let failed = |e: &dyn std::fmt::Display| unavailable(format!("stream {name}: {e}"));
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(|e| failed(&e))?;
        self.js.get_stream(&name).await.map_err(|e| failed(&e))
    }

    async fn publish(
        &self,
        subject: &str,
        payload: Vec<u8>,
        id: Option<&str>,
    ) -> Result<jetstream::context::PublishAckFuture, StoreError> {
        let mut message = jetstream::message::PublishMessage::build().payload(payload.into());
        if let Some(id) = id {
            message = message.message_id(id);
        }
        self.js
            .send_publish(subject.to_owned(), message)
            .await
            .map_err(publish_error)
    }

    /// The topic's dead letters and their bytes, as read at most [`DEAD_COUNT_EVERY`] ago.
    async fn dead_count(&self, h: &Handles) -> Result<(u64, u64), StoreError> {
        if let Some((at, n)) = *h.dead_seen.locked() {
            if at.elapsed() < DEAD_COUNT_EVERY {
                return Ok(n);
            }
        }
        let state = h.dead.get_info().await.map_err(unavailable)?.state;
        let n = (state.messages, state.bytes);
        *h.dead_seen.locked() = Some((tokio::time::Instant::now(), n));
        Ok(n)
    }
}

/// Runs a startup step until it succeeds, for at most [`STARTUP_PATIENCE`]: a cluster that is
/// still electing its leader refuses JetStream requests for a few seconds, and a gateway started
/// with it waits rather than failing.
async fn patiently<T, F, Fut>(mut step: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match step().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() < STARTUP_PATIENCE => {
                tracing::warn!(error = %e, "JetStream not ready; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// A refusal for the stream's limits (discard new) is the producer's signal to slow down; any
/// other failure means the store is unavailable.
fn publish_error(e: jetstream::context::PublishError) -> StoreError {
    use std::error::Error as _;
    let limits = e
        .source()
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|j| {
            let text = j.to_string();
            j.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED
                && (text.contains("maximum messages") || text.contains("maximum bytes"))
        });
    if limits {
        StoreError::Full(e.source().map_or_else(|| e.to_string(), |s| s.to_string()))
    } else {
        unavailable(e)
    }
}

/// A publish that was sent but not acknowledged: timed out, or the connection went while waiting.
/// JetStream may have stored it, so its outcome is unknown; other failures are [`publish_error`]'s.
fn ack_error(e: jetstream::context::PublishError) -> StoreError {
    use jetstream::context::PublishErrorKind as Kind;
    match e.kind() {
        Kind::TimedOut | Kind::BrokenPipe => StoreError::Unknown(e.to_string()),
        _ => publish_error(e),
    }
}

impl Store for NatsStore {
    fn append(
        &self,
        topic: &str,
        events: Vec<NewEvent>,
    ) -> BoxFuture<'_, Result<Vec<Appended>, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            // All publishes go out before the first ack is awaited: a batch costs one round trip.
            let mut pending = Vec::with_capacity(events.len());
            for e in &events {
                let mut payload = Vec::with_capacity(e.body.len() + 64);
                encode(e, &mut payload);
                pending.push(
                    self.publish(&h.subject, payload, e.idempotency_key.as_deref())
                        .await,
                );
            }
            let mut stored = Vec::with_capacity(pending.len());
            let mut failed: Vec<(usize, StoreError)> = Vec::new();
            for (line, p) in pending.into_iter().enumerate() {
                let ack = match p {
                    Ok(f) => f.await.map_err(ack_error),
                    Err(e) => Err(e),
                };
                match ack {
                    Ok(a) => stored.push(Appended {
                        seq: a.sequence,
                        duplicate: a.duplicate,
                    }),
                    Err(e) => failed.push((line + 1, e)),
                }
            }
            match failed.into_iter().next() {
                None => Ok(stored),
                Some((_, e)) if stored.is_empty() => Err(e),
                Some((line, e)) => Err(StoreError::Partial {
                    stored,
                    error: format!("line {line} and later: {e}"),
                }),
            }
        })
    }

    fn read_from(
        &self,
        _topic: &str,
        _from: u64,
        _max: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Err(unavailable(
            "the nats backend delivers through its shared feed",
        ))
    }

    fn ack(&self, _topic: &str, _seqs: Vec<u64>) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Err(unavailable(
            "the nats backend settles through leases",
        ))))
    }

    fn dead_letter(&self, topic: &str, dead: DeadEvent) -> BoxFuture<'_, Result<(), StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            // The event's id de-duplicates: a worker that dies between this and settling its
            // lease leaves the event to another, whose dead letter is then not stored twice.
            let id = format!("dead-{}", dead.stored.seq);
            self.publish(&h.dead_subject, encode_dead(&dead), Some(&id))
                .await?
                .await
                .map_err(publish_error)?;
            Ok(())
        })
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
        after: u64,
        max: usize,
    ) -> BoxFuture<'a, Result<DeadPage, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            // A letter's position is its sequence in the dead stream.
            let mut pager = Pager::new(pick, max);
            let mut seq = after.checked_add(1);
            while let Some(from) = seq {
                let Some((at, record)) = h.dead_from(from, None).await? else {
                    break;
                };
                if !pager.offer_record(at, record.as_ref())? {
                    break;
                }
                seq = at.checked_add(1);
            }
            Ok(pager.page())
        })
    }

    fn replay<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Vec<Replayed>, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            let last = h.dead_last().await?;
            let mut out = Vec::new();
            let mut seq = 1;
            while let Some((at, record)) = h.taken_from(pick, seq, last).await? {
                seq = at + 1;
                let letter = decode_dead(record.as_ref())?;
                let mut event = letter.stored.event;
                // A replay is a decision to deliver: a TTL that had passed no longer applies.
                event.deadline_ms = None;
                let mut payload = Vec::new();
                encode(&event, &mut payload);
                // Keyed by the dead letter: a replay interrupted between publishing and deleting
                // and then repeated does not store the event twice.
                let id = format!("replay-{at}");
                let ack = self
                    .publish(&h.subject, payload, Some(&id))
                    .await?
                    .await
                    .map_err(publish_error)?;
                h.dead.delete_message(at).await.map_err(unavailable)?;
                out.push(Replayed {
                    stored: StoredEvent {
                        seq: ack.sequence,
                        event,
                    },
                    was: letter.stored.seq,
                });
            }
            Ok(out)
        })
    }

    fn purge_dead<'a>(
        &'a self,
        topic: &'a str,
        pick: &'a DeadSelection,
    ) -> BoxFuture<'a, Result<Purged, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            let events = if pick.is_all() {
                // All of them: the stream drops the subject's messages at once.
                let r = h.dead.purge().filter(h.dead_subject.clone()).await;
                r.map_err(unavailable)?.purged
            } else {
                let last = h.dead_last().await?;
                let (mut purged, mut seq) = (0, 1);
                while let Some((at, _)) = h.taken_from(pick, seq, last).await? {
                    seq = at + 1;
                    h.dead.delete_message(at).await.map_err(unavailable)?;
                    purged += 1;
                }
                purged
            };
            // The next backlog read asks the stream again rather than report the old count.
            *h.dead_seen.locked() = None;
            Ok(Purged { events, bytes: 0 })
        })
    }

    fn recover(&self) -> BoxFuture<'_, Result<HashMap<String, TopicState>, StoreError>> {
        Box::pin(patiently(|| async {
            let mut names = self.js.stream_names();
            let mut out = HashMap::new();
            while let Some(name) = names.next().await {
                let name = name.map_err(unavailable)?;
                if let Some(topic) = name.strip_prefix(EVENTS_PREFIX) {
                    // The backlog is read from the stream as it runs; only the topic is needed.
                    out.insert(topic.replace('~', "."), TopicState::default());
                }
            }
            Ok(out)
        }))
    }

    fn healthy(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn open_topic<'a>(
        &'a self,
        topic: &'a str,
        config: &'a TopicConfig,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let h = patiently(|| self.create(topic, config)).await?;
            self.topics
                .write_locked()
                .insert(topic.to_owned(), Arc::new(h));
            Ok(())
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.client.flush().await {
                tracing::warn!(error = %e, "could not flush to NATS; unsettled events return after the ack wait");
            }
        })
    }

    fn set_shared_limit(&self, topic: &str, limit: usize) -> BoxFuture<'_, Result<(), StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            let config = consumer::pull::Config {
                max_ack_pending: limit as i64,
                ..h.consumer_config.clone()
            };
            // Creating a durable consumer that exists with only editable fields changed updates
            // it (what servers before 2.10 offer for an update).
            h.events
                .create_consumer(config)
                .await
                .map_err(unavailable)?;
            Ok(())
        })
    }

    fn feed(&self, topic: &str) -> BoxFuture<'_, Result<Option<Box<dyn Feed>>, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            Ok(Some(Box::new(NatsFeed {
                consumer: h.consumer.clone(),
            }) as Box<dyn Feed>))
        })
    }

    fn shared_backlog(&self, topic: &str) -> BoxFuture<'_, Result<Option<Backlog>, StoreError>> {
        let handles = self.handles(topic);
        Box::pin(async move {
            let h = handles?;
            let info = h.events.get_info().await.map_err(unavailable)?;
            let (dead, dead_bytes) = self.dead_count(&h).await?;
            let s = info.state;
            let oldest_ms = (s.messages > 0)
                .then(|| (s.first_timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64);
            Ok(Some(Backlog {
                events: s.messages,
                bytes: s.bytes,
                oldest_ms,
                // Work-queue retention: every sequence ever used and no longer stored was acked
                // or terminated, that is delivered or dead-lettered.
                removed: s.last_sequence.saturating_sub(s.messages),
                dead,
                dead_bytes,
            }))
        })
    }
}

/// The shared pull consumer of one topic.
struct NatsFeed {
    consumer: consumer::PullConsumer,
}

impl NatsFeed {
    fn lease(m: jetstream::Message) -> Option<Leased> {
        let info = match m.info() {
            Ok(i) => (i.stream_sequence, i.delivered),
            Err(e) => {
                tracing::error!(error = %e, "a message without JetStream metadata; skipped");
                return None;
            }
        };
        let (message, acker) = m.split();
        let event = match decode(&message.payload) {
            Ok(e) => e,
            Err(e) => {
                // Not written by floodway (someone published to its subject by hand). It stays
                // in the stream, visible to operators, and comes back after the ack wait.
                tracing::error!(seq = info.0, error = %e, "an undecodable event in the stream; left for an operator");
                return None;
            }
        };
        Some((
            StoredEvent { seq: info.0, event },
            Box::new(NatsLease {
                acker,
                earlier: u32::try_from(info.1.saturating_sub(1)).unwrap_or(u32::MAX),
            }),
        ))
    }
}

impl Feed for NatsFeed {
    fn next<'a>(
        &'a mut self,
        max: usize,
        wait: Duration,
        take: &'a mut (dyn FnMut(Leased) + Send),
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(async move {
            // One long poll: the server sends what it has (and what the consumer's
            // max_ack_pending allows) at once, more as it comes, and ends the request at `max`
            // events or after `wait`.
            let mut batch = self
                .consumer
                .batch()
                .max_messages(max.max(1))
                .expires(wait)
                .messages()
                .await
                .map_err(unavailable)?;
            let mut n = 0;
            while let Some(m) = batch.next().await {
                match m {
                    Ok(m) => {
                        if let Some(leased) = NatsFeed::lease(m) {
                            n += 1;
                            take(leased);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "pull request ended");
                        break;
                    }
                }
            }
            Ok(n)
        })
    }
}

/// One leased message: settled by acking, nak-ing with a delay, or terminating.
struct NatsLease {
    acker: jetstream::message::Acker,
    earlier: u32,
}

impl Lease for NatsLease {
    fn earlier_attempts(&self) -> u32 {
        self.earlier
    }

    fn settle(self: Box<Self>, how: Settle) -> BoxFuture<'static, Result<(), StoreError>> {
        Box::pin(async move {
            let kind = match how {
                Settle::Ack => jetstream::AckKind::Ack,
                // A zero delay is sent as a plain nak: "now", whatever the server's defaults.
                Settle::Retry(after) if after.is_zero() => jetstream::AckKind::Nak(None),
                Settle::Retry(after) => jetstream::AckKind::Nak(Some(after)),
                Settle::Term => jetstream::AckKind::Term,
            };
            self.acker.ack_with(kind).await.map_err(unavailable)
        })
    }
}

#[cfg(test)]
mod tests {
    use jetstream::context::{PublishError, PublishErrorKind};

    use super::*;

    /// A publish sent but not acknowledged may be stored: its outcome is unknown, not a failure.
    #[test]
    fn an_unacknowledged_publish_is_an_unknown_outcome() {
        for kind in [PublishErrorKind::TimedOut, PublishErrorKind::BrokenPipe] {
            let e = ack_error(PublishError::new(kind));
            assert!(matches!(e, StoreError::Unknown(_)), "{kind:?}: {e:?}");
        }
        let e = ack_error(PublishError::new(PublishErrorKind::StreamNotFound));
        assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    }
}
