//! The HTTP API: ingest, topic and dead-letter operations, metrics and health.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floodway::{Level, Priority};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::RwLocked;
use crate::config::{Backend, Config, Role, SinkConfig, Strategy, TopicConfig, valid_topic_name};
use crate::conn::{Connections, Limited};
use crate::problem::Problem;
use crate::sink::Sink;
use crate::store::{
    Appended, BoxFuture, DeadSelection, NewEvent, Store, StoreError, TopicState, now_ms,
};
use crate::topic::{DEAD_REASONS, Refusal, Reservation, Topic};

/// At most this many topics are created on first use; beyond it, new names are refused.
const MAX_AUTO_TOPICS: usize = 1024;
/// The largest NDJSON batch body.
const MAX_BATCH_BYTES: u64 = 64 << 20;
/// The longest idempotency key.
const MAX_KEY_LEN: usize = 256;
/// The `Retry-After` of a refusal for want of the store.
const STORE_RETRY: Duration = Duration::from_secs(5);

// The signal headers' names, built once: a `&str` name that `http` does not know is copied into
// a fresh allocation at every insert.
const PRESSURE: HeaderName = HeaderName::from_static("floodway-pressure");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The gateway's shared state.
pub struct Gateway {
    config: Config,
    store: Arc<dyn Store>,
    topics: std::sync::RwLock<HashMap<String, Arc<Topic>>>,
    creating: Mutex<()>,
    connections: Arc<Connections>,
    /// Ingest writes that timed out and that the store has not answered yet: while there are any,
    /// the store is taken to be stalled and new events are refused.
    stalled: Arc<AtomicUsize>,
}

impl Gateway {
    /// Recovers every topic the store knows and the declared ones, and starts their delivery.
    pub async fn start(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Arc<Gateway>> {
        let recovered = store.recover().await?;
        let gw = Arc::new(Gateway {
            connections: Connections::new(config.max_connections),
            config,
            store,
            topics: std::sync::RwLock::default(),
            creating: Mutex::new(()),
            stalled: Arc::default(),
        });
        let mut names: Vec<String> = gw.config.topics.keys().cloned().collect();
        if gw.config.topics.is_empty() {
            names.extend(recovered.keys().cloned());
        }
        for name in names {
            let state = recovered.get(&name).cloned().unwrap_or_default();
            gw.open_topic(&name, state).await?;
        }
        Ok(gw)
    }

    fn topic_config(&self, name: &str) -> TopicConfig {
        let mut c = self.config.topics.get(name).cloned().unwrap_or_default();
        if c.sink.is_none() {
            c.sink = Some(SinkConfig::File {
                path: self
                    .config
                    .data_dir
                    .join("out")
                    .join(format!("{name}.jsonl")),
                sync: true,
            });
        }
        if self.config.storage.backend == Backend::Nats {
            // The stream's limits are the backlog's bound: the watermarks are shares of them.
            let s = c.stream.or(self.config.storage.nats.stream);
            if let Some(m) = s.max_msgs {
                c.max_backlog_events = c.max_backlog_events.min(m);
            }
            if let Some(b) = s.max_bytes {
                c.max_backlog_bytes.0 = c.max_backlog_bytes.0.min(b.0);
            }
        }
        c
    }

    async fn open_topic(&self, name: &str, state: TopicState) -> anyhow::Result<Arc<Topic>> {
        let config = self.topic_config(name);
        let sink = Arc::new(Sink::open(config.sink.as_ref().expect("set above")).await?);
        self.store.open_topic(name, &config).await?;
        let topic = Arc::new(Topic::new(
            name.to_owned(),
            config,
            self.config.strategy,
            state,
            self.config.storage.backend == Backend::Nats,
        ));
        topic
            .start(self.store.clone(), sink, self.config.role != Role::Ingest)
            .await?;
        self.topics
            .write_locked()
            .insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    fn existing(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read_locked().get(name).cloned()
    }

    /// The topic, created on first use when no topics are declared.
    async fn topic(&self, name: &str) -> Result<Arc<Topic>, Problem> {
        if let Some(t) = self.existing(name) {
            return Ok(t);
        }
        if !valid_topic_name(name) {
            return Err(Problem::bad_request(format!(
                "invalid topic name {name:?}: use 1-128 letters, digits, '.', '_' or '-'"
            )));
        }
        if !self.config.topics.is_empty() {
            return Err(Problem::not_found(format!(
                "unknown topic {name:?}: this gateway declares its topics"
            )));
        }
        let _guard = self.creating.lock().await;
        if let Some(t) = self.existing(name) {
            return Ok(t);
        }
        if self.topics.read_locked().len() >= MAX_AUTO_TOPICS {
            return Err(Problem::unavailable(
                format!("the gateway already tracks {MAX_AUTO_TOPICS} topics"),
                Duration::from_secs(60),
            ));
        }
        self.open_topic(name, TopicState::default())
            .await
            .map_err(|e| {
                Problem::unavailable(
                    format!("cannot open topic {name:?}: {e}"),
                    Duration::from_secs(5),
                )
            })
    }

    /// Stops every topic's delivery within `grace`.
    pub async fn stop(&self, grace: Duration) {
        for t in self.all_topics() {
            t.stop(grace).await;
        }
        self.store.flush().await;
    }

    /// The client connections: how many may be open, and how many are.
    pub fn connections(&self) -> Arc<Connections> {
        self.connections.clone()
    }

    /// How long a client connection may stay idle.
    pub fn idle_timeout(&self) -> Duration {
        self.config.idle_timeout.0
    }

    /// Every topic, by name.
    fn all_topics(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.topics.read_locked().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

/// The router.
pub fn router(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/topics", get(list_topics))
        .route("/v1/topics/{topic}", get(show_topic))
        .route("/v1/topics/{topic}/events", post(ingest))
        .route(
            "/v1/topics/{topic}/dead-letters",
            get(dead_letters).delete(purge),
        )
        .route("/v1/topics/{topic}/dead-letters/replay", post(replay))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        // Routing errors are problems too: no bare status for a wrong path or method.
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(gw)
}

/// The `{topic}` of a route's path; a path that does not decode (say, invalid UTF-8) is a
/// problem like any other bad input, not axum's plain-text rejection.
struct TopicName(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TopicName {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(name)) => Ok(TopicName(name)),
            Err(e) => Err(Problem::bad_request(format!(
                "bad topic in the path: {}",
                e.body_text()
            ))),
        }
    }
}

/// A query string: one that does not parse is a `400` problem like any other bad input.
struct ProblemQuery<T>(T);

impl<S, T> axum::extract::FromRequestParts<S> for ProblemQuery<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(q)) => Ok(ProblemQuery(q)),
            Err(e) => Err(bad_query(e.body_text())),
        }
    }
}

fn bad_query(what: impl std::fmt::Display) -> Problem {
    Problem::bad_request(format!("bad query string: {what}"))
}

/// Which dead letters a request acts on: `?reason=` (one of [`DEAD_REASONS`]) and `?ids=` (up to
/// [`DEAD_PAGE_MAX`] event ids, separated by commas), each optional; a `400` problem when either
/// is not understood.
struct DeadPick(DeadSelection);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for DeadPick {
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Problem> {
        #[derive(Deserialize)]
        struct PickQuery {
            reason: Option<String>,
            ids: Option<String>,
        }
        let ProblemQuery(q) = ProblemQuery::<PickQuery>::from_request_parts(parts, state).await?;
        if let Some(r) = q.reason.as_deref().filter(|r| !DEAD_REASONS.contains(r)) {
            return Err(bad_query(format!(
                "reason must be one of {}, not {r:?}",
                DEAD_REASONS.join(", ")
            )));
        }
        let ids = q.ids.as_deref().map(event_ids).transpose();
        let ids = ids.map_err(bad_query)?;
        Ok(DeadPick(DeadSelection {
            reason: q.reason,
            ids,
        }))
    }
}

/// The ids of `?ids=`: event ids separated by commas, at least one and at most [`DEAD_PAGE_MAX`];
/// else what is wrong with them.
fn event_ids(text: &str) -> Result<BTreeSet<u64>, String> {
    let mut ids = BTreeSet::new();
    for (n, id) in text.split(',').enumerate() {
        if n == DEAD_PAGE_MAX {
            return Err(format!(
                "ids names more than {DEAD_PAGE_MAX} ids; act on them in parts"
            ));
        }
        let id = id.parse().map_err(|_| {
            format!("ids must be event ids separated by commas (ids=3,17), and {id:?} is not an id")
        })?;
        ids.insert(id);
    }
    Ok(ids)
}

async fn no_route(uri: axum::http::Uri) -> Response {
    Problem::not_found(format!(
        "no resource at {}: the API is under /v1/topics (and /metrics, /healthz, /readyz)",
        uri.path()
    ))
    .into_response()
}

/// axum adds the `Allow` header listing the methods the path takes.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "https://floodway.dev/problems/method-not-allowed",
        "Method not allowed",
        format!(
            "{method} is not allowed on {}; see the Allow header",
            uri.path()
        ),
    )
    .into_response()
}

/// Serves the gateway on `listener` until `shutdown` completes (see [`crate::conn::serve`]):
/// connections bounded in number and idle time, request heads and bodies in time.
pub async fn serve(
    gw: &Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    let limited = Limited::new(listener, gw.connections(), gw.idle_timeout());
    let grace = Duration::from_secs(10);
    let header = gw.config.header_timeout.0;
    crate::conn::serve(limited, router(gw.clone()), header, shutdown, grace).await;
}

enum Kind {
    Json,
    Ndjson,
    Opaque,
}

/// The standard rate-limit headers and the pressure level, on every ingest response.
fn signal_headers(topic: &Topic, remaining: Option<(u32, Duration)>) -> HeaderMap {
    let mut h = HeaderMap::new();
    add_signal_headers(&mut h, topic, remaining);
    h
}

/// [`signal_headers`], added to a response's own headers.
fn add_signal_headers(h: &mut HeaderMap, topic: &Topic, remaining: Option<(u32, Duration)>) {
    let level: Level = topic.level();
    h.insert(PRESSURE, HeaderValue::from_static(level.as_str()));
    let (policy, state) = match (topic.quota_policy(), remaining) {
        (Some((q, w)), Some((r, reset))) => (
            formatted(format_args!("\"producer\";q={q};w={w}")),
            formatted(format_args!(
                "\"producer\";r={r};t={}",
                reset.as_secs_f64().ceil() as u64
            )),
        ),
        (Some((q, w)), None) => (
            formatted(format_args!("\"producer\";q={q};w={w}")),
            formatted(format_args!("\"producer\";r=0;t={w}")),
        ),
        _ => {
            // No producer quota: the policy in force is the backlog bound, fixed per topic.
            let max = topic.config.max_backlog_events;
            let used = (topic.utilisation() * max as f64) as u64;
            let left = max.saturating_sub(used);
            if let Some(s) = formatted(format_args!("\"backlog\";r={left}")) {
                h.insert(RATELIMIT_POLICY, topic.backlog_policy.clone());
                h.insert(RATELIMIT, s);
            }
            return;
        }
    };
    if let (Some(p), Some(s)) = (policy, state) {
        h.insert(RATELIMIT_POLICY, p);
        h.insert(RATELIMIT, s);
    }
}

/// A header value formatted from `args` without an intermediate `String` (see [`on_stack`]); `None`
/// if the text is no valid header value.
fn formatted(args: std::fmt::Arguments<'_>) -> Option<HeaderValue> {
    on_stack(|w| w.write_fmt(args), |b| HeaderValue::from_bytes(b).ok())
}

/// Writes a short text with `text` into a buffer on the stack and gives the bytes to `done`, which
/// copies them once into their owner: one allocation, where a `Vec` or `String` turned into
/// `Bytes` costs two. For what is built on every request (the `202` body, `RateLimit` values). A
/// text longer than the buffer is written into a `Vec` instead.
fn on_stack<T>(
    text: impl Fn(&mut dyn std::io::Write) -> std::io::Result<()>,
    done: impl FnOnce(&[u8]) -> T,
) -> T {
    const ROOM: usize = 256;
    let mut stack = [0u8; ROOM];
    let mut rest = &mut stack[..];
    if text(&mut rest).is_ok() {
        let len = ROOM - rest.len();
        return done(&stack[..len]);
    }
    let mut heap = Vec::new();
    // Writing to a `Vec` cannot fail.
    let _ = text(&mut heap);
    done(&heap)
}

fn producer_key(headers: &HeaderMap, addr: SocketAddr) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| format!("token:{}", t.trim()))
        .unwrap_or_else(|| format!("addr:{}", addr.ip()))
}

/// True if reading a body failed because it was longer than the limit.
fn over_limit(e: &axum::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// A problem detail for malformed JSON: `what` (`JSON`, or `NDJSON` and the batch's line), where
/// in it, and serde's message without its own position (which, for a batch, counts lines within
/// the one event). For example "malformed NDJSON at line 3, column 2: key must be a string".
fn malformed(what: &str, batch_line: Option<usize>, e: &serde_json::Error) -> Problem {
    let message = e.to_string();
    let message = message
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&message);
    let line = batch_line.unwrap_or(e.line());
    Problem::bad_request(format!(
        "malformed {what} at line {line}, column {}: {message}",
        e.column()
    ))
}

async fn ingest(
    State(gw): State<Arc<Gateway>>,
    TopicName(name): TopicName,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    // The request whole rather than a `HeaderMap` extractor, which clones the headers.
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    // Only the headers are kept: the rest of the head goes here (see `accept` for why).
    let headers = { parts }.headers;
    if gw.config.role == Role::Worker {
        return Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            "https://floodway.dev/problems/wrong-role",
            "This instance does not accept events",
            "this instance runs with --role worker: it only delivers; send events to an ingest instance",
        )
        .into_response();
    }
    let topic = match gw.topic(&name).await {
        Ok(t) => t,
        Err(p) => return p.into_response(),
    };
    match accept(&gw, &topic, addr, headers, body).await {
        Ok(r) => r,
        Err(p) => {
            let quota = topic.quota_policy().map(|_| (0, Duration::ZERO));
            p.headers(signal_headers(&topic, quota)).into_response()
        }
    }
}

async fn accept(
    gw: &Gateway,
    topic: &Arc<Topic>,
    addr: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let ct = match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => return Err(Problem::unsupported("a Content-Type header is required")),
        Some(Err(_)) => {
            return Err(Problem::unsupported(
                "the Content-Type header is not valid text",
            ));
        }
        Some(Ok(v)) => v.trim().to_owned(),
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    if !essence.contains('/') {
        return Err(Problem::unsupported(format!(
            "Content-Type {ct:?} is not a media type"
        )));
    }
    let kind = if essence.eq_ignore_ascii_case("application/json") {
        Kind::Json
    } else if essence.eq_ignore_ascii_case("application/x-ndjson") {
        Kind::Ndjson
    } else {
        Kind::Opaque
    };
    let max_event = topic.config.max_event_bytes.0;
    let limit = match kind {
        Kind::Ndjson => MAX_BATCH_BYTES.min(topic.config.max_backlog_bytes.0),
        _ => max_event,
    };
    let wait = gw.config.body_timeout.0;
    let bytes = match tokio::time::timeout(wait, to_bytes(body, limit as usize)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) if over_limit(&e) => {
            return Err(Problem::too_large(match kind {
                Kind::Ndjson => format!("the batch body is larger than {limit} bytes"),
                _ => format!(
                    "the event is larger than max_event_bytes ({max_event} bytes) for topic {:?}",
                    topic.name
                ),
            }));
        }
        Ok(Err(e)) => {
            return Err(Problem::bad_request(format!(
                "the body could not be read: {e}"
            )));
        }
        Err(_) => {
            return Err(Problem::timeout(format!(
                "the body did not arrive whole within {} (body_timeout); nothing was stored",
                humantime::format_duration(wait)
            )));
        }
    };
    let priority = match headers.get("floodway-priority").map(|v| v.to_str()) {
        None => Priority::Normal,
        Some(Ok(v)) => v.parse().map_err(|e: floodway::ParsePriorityError| {
            Problem::bad_request(format!("Floodway-Priority: {e}"))
        })?,
        Some(Err(_)) => return Err(Problem::bad_request("Floodway-Priority is not valid text")),
    };
    let now = now_ms();
    let deadline_ms = match headers.get("floodway-ttl").map(|v| v.to_str()) {
        None => None,
        Some(Ok(v)) => {
            let ttl = humantime::parse_duration(v.trim()).map_err(|e| {
                Problem::bad_request(format!(
                    "Floodway-TTL {v:?} is not a duration like \"30s\": {e}"
                ))
            })?;
            Some(now + ttl.as_millis() as u64)
        }
        Some(Err(_)) => return Err(Problem::bad_request("Floodway-TTL is not valid text")),
    };
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => None,
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_KEY_LEN => Some(k.to_owned()),
        Some(_) => {
            return Err(Problem::bad_request(format!(
                "Idempotency-Key must be 1-{MAX_KEY_LEN} characters of visible text"
            )));
        }
    };
    let event = |content_type: String, body: Vec<u8>, key: Option<String>| NewEvent {
        content_type,
        body,
        priority,
        deadline_ms,
        idempotency_key: key,
        accepted_ms: now,
    };
    let events: Vec<NewEvent> = match kind {
        Kind::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                .map_err(|e| malformed("JSON", None, &e))?;
            vec![event(ct, bytes.to_vec(), key)]
        }
        Kind::Opaque => vec![event(ct, bytes.to_vec(), key)],
        Kind::Ndjson => {
            let mut out = Vec::new();
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let n = i + 1;
                if line.len() as u64 > max_event {
                    return Err(Problem::too_large(format!(
                        "line {n} is {} bytes, over max_event_bytes ({max_event})",
                        line.len()
                    )));
                }
                serde_json::from_slice::<serde::de::IgnoredAny>(line)
                    .map_err(|e| malformed("NDJSON", Some(n), &e))?;
                let key = key.as_ref().map(|k| format!("{k}#{n}"));
                out.push(event("application/json".into(), line.to_vec(), key));
            }
            if out.is_empty() {
                return Err(Problem::bad_request("the NDJSON batch holds no events"));
            }
            out
        }
    };
    let n = events.len() as u64;
    let total: u64 = events.iter().map(|e| e.body.len() as u64).sum();
    let refused = |r: Refusal| match r {
        Refusal::Quota {
            retry_after,
            detail,
        }
        | Refusal::Watermark {
            retry_after,
            detail,
        } => Problem::slow_down(detail, retry_after),
        Refusal::Full {
            retry_after,
            detail,
        } => Problem::unavailable(detail, retry_after),
        Refusal::TooLarge { detail } => Problem::too_large(detail),
    };
    let allowed = topic
        .check_quota(|| producer_key(&headers, addr), n as u32)
        .map_err(refused)?;
    // Everything needed from the request is copied out by now. Its head and body are slices of
    // the connection's read buffer (hyper gives the connection a fresh one while the request is in
    // progress), so dropping them here frees that buffer now, on this thread and while it is
    // still in cache, instead of holding it across the wait for the store and freeing it after
    // the answer, maybe from the other worker thread. Measured: 3-5% more requests per second and
    // 0.5-0.9 µs less CPU per request at 32 and 128 connections (BENCHMARKS.md).
    drop(headers);
    drop(bytes);
    let reservation = match topic.reserve(n, total, priority) {
        Ok(r) => r,
        Err(_) if topic.strategy == Strategy::Drop => {
            // The comparison strategy that drops silently: a 202 for events it threw away.
            topic.count_refusal("dropped");
            let mut resp = (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "accepted": n, "ids": [] })),
            )
                .into_response();
            add_signal_headers(resp.headers_mut(), topic, None);
            return Ok(resp);
        }
        Err(r) => return Err(refused(r)),
    };
    if gw.stalled.load(Ordering::Acquire) > 0 {
        topic.count_refusal("store");
        return Err(Problem::unavailable(
            format!(
                "the store has not confirmed an earlier write within {}; nothing was stored",
                humantime::format_duration(gw.config.storage.write_timeout.0)
            ),
            STORE_RETRY,
        ));
    }
    if !gw.store.healthy() {
        topic.count_refusal("store");
        return Err(Problem::unavailable(
            "the store is unavailable",
            STORE_RETRY,
        ));
    }
    let sizes: Vec<u64> = events.iter().map(|e| e.body.len() as u64).collect();
    let (store, to) = (gw.store.clone(), topic.clone());
    let mut pending = Pending {
        write: Some(Box::pin(
            async move { store.append(&to.name, events).await },
        )),
        room: Some((reservation, sizes)),
        stalled: None,
    };
    let limit = gw.config.storage.write_timeout.0;
    let Some((result, kept)) = pending.wait(limit).await else {
        // `pending` finishes on its own task (see its Drop), and counts its events there.
        topic.count_unconfirmed();
        pending.count_in(gw.stalled.clone());
        return Err(unconfirmed(&format!(
            "the store did not confirm the write within {}",
            humantime::format_duration(limit)
        )));
    };
    let appended = match result {
        Ok(a) => a,
        Err(StoreError::Full(e)) => {
            // The shared store is at its limits (other gateways filled it since this one last
            // looked): the same answers as this gateway's own bound, `503` for critical events,
            // which may fill it all, and `429` for the rest, which are past their watermark.
            let detail = format!(
                "topic {:?} backlog is full ({e}); nothing was stored",
                topic.name
            );
            let after = topic.retry_hint(n);
            return Err(if priority == Priority::Critical {
                Problem::unavailable(detail, after)
            } else {
                Problem::slow_down(detail, after)
            });
        }
        Err(StoreError::Partial { stored, error }) => {
            let ids: Vec<String> = stored.iter().map(|a| a.seq.to_string()).collect();
            return Err(Problem::unavailable(
                format!(
                    "only the first {} events were stored ({error}); send the rest again, with \
                     the same Idempotency-Key to make a full resend safe",
                    stored.len()
                ),
                STORE_RETRY,
            )
            .stored_ids(ids));
        }
        Err(StoreError::Unknown(e)) => {
            topic.count_unconfirmed();
            return Err(unconfirmed(&format!(
                "the store did not confirm the write ({e})"
            )));
        }
        Err(e) => {
            return Err(Problem::unavailable(
                format!("{e}; nothing was stored"),
                STORE_RETRY,
            ));
        }
    };
    let remaining = allowed.map(|a| (a.remaining(), a.reset()));
    let mut resp = accepted_response(n, &appended, n - kept);
    add_signal_headers(resp.headers_mut(), topic, remaining);
    Ok(resp)
}

/// A `202` whose body is `{"accepted": n, "ids": ["1", ...]}`, with `"duplicates": k` when some
/// events were already stored. The body is written straight into a buffer on the stack (ids are
/// decimal digits, so nothing needs escaping; see [`on_stack`]): no `String` per id, no serializer.
/// The response is built directly, so its content type is set once (a `Vec<u8>` body turned into a
/// response through axum would first get `application/octet-stream`, then be overwritten).
fn accepted_response(accepted: u64, appended: &[Appended], duplicates: u64) -> Response {
    let body = on_stack(
        |out| {
            write!(out, "{{\"accepted\":{accepted},\"ids\":[")?;
            for (i, a) in appended.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                write!(out, "{sep}\"{}\"", a.seq)?;
            }
            out.write_all(b"]")?;
            if duplicates > 0 {
                write!(out, ",\"duplicates\":{duplicates}")?;
            }
            out.write_all(b"}")
        },
        Bytes::copy_from_slice,
    );
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::ACCEPTED;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// `503` for a write whose outcome is not known (`why`): its events may yet be stored.
fn unconfirmed(why: &str) -> Problem {
    Problem::unavailable(
        format!(
            "{why}; the events may still be stored and delivered: send them again with the same \
             Idempotency-Key to make the resend safe"
        ),
        STORE_RETRY,
    )
}

type Write = BoxFuture<'static, Result<Vec<Appended>, StoreError>>;

/// An append on its way to the store, with the backlog room it holds. Its outcome is accounted
/// for exactly once, also when the request stops waiting for it (the client hung up, or the write
/// timed out): dropped unfinished, it finishes on a task of its own. So events the store does
/// take stay counted as accepted and in the backlog, which their delivery later takes them out
/// of. (Without this, a hang-up while the store worked gave the room back for events that were
/// stored, and their delivery then took the backlog count below zero.)
struct Pending {
    write: Option<Write>,
    room: Option<(Reservation, Vec<u64>)>,
    /// The gateway's count of writes that timed out and are not finished, once this one is.
    stalled: Option<Arc<AtomicUsize>>,
}

impl Pending {
    /// The store's answer and the events it kept (not duplicates), or `None` if it took longer
    /// than `limit`.
    async fn wait(&mut self, limit: Duration) -> Option<(Result<Vec<Appended>, StoreError>, u64)> {
        let write = self.write.as_mut()?;
        let result = tokio::time::timeout(limit, write).await.ok()?;
        self.write = None;
        let (reservation, sizes) = self.room.take()?;
        let kept = settle(reservation, &sizes, &result);
        Some((result, kept))
    }

    /// Counts this write in `stalled` until it finishes.
    fn count_in(&mut self, stalled: Arc<AtomicUsize>) {
        stalled.fetch_add(1, Ordering::AcqRel);
        self.stalled = Some(stalled);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let (Some(write), Some((reservation, sizes))) = (self.write.take(), self.room.take())
        else {
            return;
        };
        let stalled = self.stalled.take();
        let finish = async move {
            let result = write.await;
            settle(reservation, &sizes, &result);
            if let Some(s) = stalled {
                s.fetch_sub(1, Ordering::AcqRel);
            }
        };
        // Without a runtime the process is ending, and nothing is left to count for.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(finish);
        }
    }
}

/// Accounts for a finished append: the room of the events stored (duplicates aside) is kept and
/// they are counted as accepted, the rest of the room is given back, and a failed write is
/// counted as a refusal. Returns the events kept.
fn settle(
    reservation: Reservation,
    sizes: &[u64],
    result: &Result<Vec<Appended>, StoreError>,
) -> u64 {
    let stored: &[Appended] = match result {
        Ok(a) => a,
        Err(StoreError::Partial { stored, .. }) => stored,
        Err(_) => &[],
    };
    let (mut kept, mut kept_bytes) = (0u64, 0u64);
    for (a, size) in stored.iter().zip(sizes) {
        if !a.duplicate {
            kept += 1;
            kept_bytes += size;
        }
    }
    let topic = reservation.topic().clone();
    reservation.commit(kept, kept_bytes);
    topic.record_accepted(kept);
    match result {
        Ok(_) => {}
        Err(StoreError::Full(_)) => topic.count_refusal("full"),
        // Not a refusal: the events may be stored (the answer counts it as unconfirmed).
        Err(StoreError::Unknown(_)) => {}
        Err(_) => topic.count_refusal("store"),
    }
    kept
}

async fn list_topics(State(gw): State<Arc<Gateway>>) -> Response {
    let topics: Vec<_> = gw.all_topics().iter().map(|t| t.stats()).collect();
    axum::Json(json!({ "topics": topics })).into_response()
}

async fn show_topic(State(gw): State<Arc<Gateway>>, TopicName(name): TopicName) -> Response {
    match gw.existing(&name) {
        Some(t) => axum::Json(t.stats()).into_response(),
        None => Problem::not_found(format!("unknown topic {name:?}")).into_response(),
    }
}

/// Where a page of dead letters starts and how long it is (`?reason=` and `?ids=` are
/// [`DeadPick`]'s).
#[derive(Deserialize)]
struct PageQuery {
    limit: Option<usize>,
    after: Option<u64>,
}

/// Dead letters per page when the query names no `limit`, and the most it may name.
const DEAD_PAGE: usize = 100;
const DEAD_PAGE_MAX: usize = 1000;

async fn dead_letters(
    State(gw): State<Arc<Gateway>>,
    TopicName(name): TopicName,
    ProblemQuery(q): ProblemQuery<PageQuery>,
    DeadPick(pick): DeadPick,
) -> Response {
    if gw.existing(&name).is_none() {
        return Problem::not_found(format!("unknown topic {name:?}")).into_response();
    }
    let limit = q.limit.unwrap_or(DEAD_PAGE);
    if limit == 0 {
        return bad_query(format!(
            "limit must be 1 to {DEAD_PAGE_MAX}, not 0 (a larger one is taken as {DEAD_PAGE_MAX})"
        ))
        .into_response();
    }
    let limit = limit.min(DEAD_PAGE_MAX);
    let after = q.after.unwrap_or(0);
    match gw.store.dead_letters(&name, &pick, after, limit).await {
        Ok(page) => {
            let items: Vec<_> = page
                .letters
                .iter()
                .map(|d| {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&crate::sink::json_line(&name, &d.stored))
                            .unwrap_or_default();
                    v["reason"] = json!(d.reason);
                    // `null`, not an empty text, when no delivery failed (shed or expired
                    // before any attempt).
                    v["error"] = json!((!d.error.is_empty()).then_some(&d.error));
                    v["attempts"] = json!(d.attempts);
                    v["dead_ms"] = json!(d.dead_ms);
                    v
                })
                .collect();
            axum::Json(json!({ "topic": name, "dead_letters": items, "next": page.next }))
                .into_response()
        }
        Err(e) => Problem::unavailable(e.to_string(), STORE_RETRY).into_response(),
    }
}

async fn replay(
    State(gw): State<Arc<Gateway>>,
    TopicName(name): TopicName,
    DeadPick(pick): DeadPick,
) -> Response {
    let replay = |store: Arc<dyn Store>, topic: Arc<Topic>, pick: DeadSelection| async move {
        let events = store.replay(&topic.name, &pick).await?;
        topic.record_replayed(&events);
        Ok(events)
    };
    match on_dead_letters(&gw, &name, pick, replay).await {
        Ok(events) => {
            let ids: Vec<String> = events.iter().map(|e| e.stored.seq.to_string()).collect();
            let dead_ids: Vec<String> = events.iter().map(|e| e.was.to_string()).collect();
            axum::Json(json!({ "replayed": events.len(), "ids": ids, "dead_ids": dead_ids }))
                .into_response()
        }
        Err(r) => r,
    }
}

async fn purge(
    State(gw): State<Arc<Gateway>>,
    TopicName(name): TopicName,
    DeadPick(pick): DeadPick,
) -> Response {
    let purge = |store: Arc<dyn Store>, topic: Arc<Topic>, pick: DeadSelection| async move {
        let purged = store.purge_dead(&topic.name, &pick).await?;
        topic.record_purged(purged);
        Ok(purged)
    };
    match on_dead_letters(&gw, &name, pick, purge).await {
        Ok(p) => axum::Json(json!({ "purged": p.events })).into_response(),
        Err(r) => r,
    }
}

/// A replay or a purge of the dead letters of topic `name` that `pick` takes: `op` is given the
/// store, the topic and `pick`, and runs to the end.
async fn on_dead_letters<T, F>(
    gw: &Gateway,
    name: &str,
    pick: DeadSelection,
    op: impl FnOnce(Arc<dyn Store>, Arc<Topic>, DeadSelection) -> F,
) -> Result<T, Response>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let Some(topic) = gw.existing(name) else {
        return Err(Problem::not_found(format!("unknown topic {name:?}")).into_response());
    };
    let work = op(gw.store.clone(), topic, pick);
    to_the_end(work).await.map_err(IntoResponse::into_response)
}

/// Runs `work` (a store operation and the topic's count of it) on a task of its own: should the
/// client hang up, which drops the handler, the store still does it, and so the count must
/// happen too.
async fn to_the_end<T: Send + 'static>(
    work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
) -> Result<T, Problem> {
    match tokio::spawn(work).await {
        Ok(done) => done.map_err(|e| Problem::unavailable(e.to_string(), STORE_RETRY)),
        Err(e) => Err(Problem::unavailable(
            format!("the store operation failed: {e}"),
            STORE_RETRY,
        )),
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if !gw.store.healthy() {
        Problem::unavailable("the store is unavailable", STORE_RETRY).into_response()
    } else if gw.stalled.load(Ordering::Acquire) > 0 {
        Problem::unavailable(
            "the store has not confirmed a write within storage.write_timeout",
            STORE_RETRY,
        )
        .into_response()
    } else {
        "ready\n".into_response()
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    // Per topic: (figure, Prometheus type, help). The figures that only ever grow are counters, so
    // that `rate()` and reset detection treat them as such, named with the `_total` suffix the
    // Prometheus conventions give counters.
    let per_topic = [
        (
            "backlog_events",
            "gauge",
            "Events stored and not yet delivered or dead-lettered.",
        ),
        ("backlog_bytes", "gauge", "Bytes of those events."),
        (
            "oldest_age_seconds",
            "gauge",
            "Age of the oldest event in the backlog.",
        ),
        (
            "rate_in_per_second",
            "gauge",
            "Accepted events per second (moving average).",
        ),
        (
            "rate_out_per_second",
            "gauge",
            "Delivered or dead-lettered events per second (moving average).",
        ),
        ("accepted", "counter", "Events accepted."),
        (
            "unconfirmed",
            "counter",
            "Ingest requests answered 503 before the store confirmed their write; their events \
             are counted as accepted or refused once it does.",
        ),
        ("delivered", "counter", "Events delivered."),
        ("dead_letters", "gauge", "Dead letters kept."),
        (
            "dead_letter_bytes",
            "gauge",
            "Bytes of the dead letters kept.",
        ),
        (
            "waiting_for_dead_letter_room",
            "gauge",
            "Events due to be dead-lettered, waiting for room in the full dead-letter store.",
        ),
        ("purged", "counter", "Dead letters purged."),
        ("concurrency_limit", "gauge", "Delivery concurrency limit."),
        ("in_flight", "gauge", "Deliveries in progress."),
        ("workers", "gauge", "Delivery workers."),
        (
            "desired_workers",
            "gauge",
            "Delivery workers wanted: the autoscaling signal.",
        ),
    ];
    let stats: Vec<_> = gw.all_topics().iter().map(|t| t.stats()).collect();
    for (figure, kind, help) in per_topic {
        let name = match kind {
            "counter" => format!("{figure}_total"),
            _ => figure.to_owned(),
        };
        family(&mut out, &name, kind, help);
        for s in &stats {
            let _ = writeln!(
                out,
                "floodway_{name}{{topic=\"{}\"}} {}",
                s["topic"].as_str().unwrap_or(""),
                s[figure]
            );
        }
    }
    let help = "Writes past storage.write_timeout the store has not answered yet; while any \
                are, new events are refused and /readyz says not ready.";
    family(&mut out, "stalled_writes", "gauge", help);
    let stalled = gw.stalled.load(Ordering::Acquire);
    let _ = writeln!(out, "floodway_stalled_writes {stalled}");
    family(&mut out, "connections", "gauge", "Client connections open.");
    let _ = writeln!(out, "floodway_connections {}", gw.connections.open());
    let help = "Client connections allowed at once.";
    family(&mut out, "connections_max", "gauge", help);
    let _ = writeln!(out, "floodway_connections_max {}", gw.connections.max());
    // Per topic and reason: (figure, help).
    let by_reason = [
        ("refused", "Ingest requests refused, by reason."),
        (
            "dead_lettered",
            "Events dead-lettered, by reason (expired, shed, permanent, exhausted).",
        ),
    ];
    for (figure, help) in by_reason {
        family(&mut out, &format!("{figure}_total"), "counter", help);
        for s in &stats {
            for (reason, v) in s[figure].as_object().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "floodway_{figure}_total{{topic=\"{}\",reason=\"{reason}\"}} {v}",
                    s["topic"].as_str().unwrap_or("")
                );
            }
        }
    }
    let help = "Pressure level: 0 normal, 1 elevated, 2 saturated, 3 overloaded.";
    family(&mut out, "pressure_level", "gauge", help);
    for s in &stats {
        let level = match s["pressure"].as_str() {
            Some("elevated") => 1,
            Some("saturated") => 2,
            Some("overloaded") => 3,
            _ => 0,
        };
        let _ = writeln!(
            out,
            "floodway_pressure_level{{topic=\"{}\"}} {level}",
            s["topic"].as_str().unwrap_or("")
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// The `# HELP` and `# TYPE` lines of the metric `floodway_{name}`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP floodway_{name} {help}\n# TYPE floodway_{name} {kind}"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::store::testing::Hooked;

    /// A gateway on `store`, served on a loopback port as `floodway serve` serves it.
    pub(super) async fn serve(store: Arc<Hooked>, config: Config) -> (Arc<Gateway>, SocketAddr) {
        let gw = Gateway::start(config, store).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = gw.clone();
        tokio::spawn(async move { super::serve(&served, listener, std::future::pending()).await });
        (gw, addr)
    }

    /// A gateway whose store takes an append or a replay only when given a permit, configured
    /// by `toml` (topics made on first use if it declares none).
    pub(super) async fn gated_with(
        dir: &std::path::Path,
        toml: &str,
    ) -> (Arc<Gateway>, SocketAddr, Arc<Hooked>) {
        let store = Arc::new(Hooked {
            gate: Some(Arc::new(tokio::sync::Semaphore::new(0))),
            ..Hooked::default()
        });
        let mut config: Config = toml::from_str(toml).unwrap();
        config.data_dir = dir.to_path_buf();
        let (gw, addr) = serve(store.clone(), config).await;
        (gw, addr, store)
    }

    /// [`gated_with`] on the defaults.
    pub(super) async fn gated(dir: &std::path::Path) -> (Arc<Gateway>, SocketAddr, Arc<Hooked>) {
        gated_with(dir, "").await
    }

    /// Sends `head` (a request line and headers, without the blank line ending them) and a
    /// `body` on a new connection and returns the connection, response unread.
    pub(super) async fn send(addr: SocketAddr, head: &str, body: &str) -> TcpStream {
        let mut c = TcpStream::connect(addr).await.unwrap();
        let req = format!("{head}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
        c.write_all(req.as_bytes()).await.unwrap();
        c
    }

    /// Sends one event on a new connection and returns the connection, response unread.
    pub(super) async fn post(addr: SocketAddr) -> TcpStream {
        let head = "POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json";
        send(addr, head, r#"{"n":1}"#).await
    }

    /// The response on `c`, head and body (failing after 120 s of paused time without one).
    pub(super) async fn response(c: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.trim().parse().unwrap());
                if body.len() >= len {
                    return text;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(120), c.read(&mut buf))
                .await
                .expect("a response within 120 s")
                .unwrap();
            assert!(
                n > 0,
                "the connection closed before the response was whole: {text}"
            );
            got.extend_from_slice(&buf[..n]);
        }
    }

    /// Waits (on paused time, so at no cost) until `f` holds, for at most a minute of it.
    pub(super) async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..60_000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting until {what}");
    }

    pub(super) fn stat(gw: &Gateway, key: &str) -> serde_json::Value {
        gw.existing("t").expect("topic t exists").stats()[key].clone()
    }

    /// Closes `c` once its request has reached the store (`calls` is 1), waits until the
    /// gateway has let go of the connection (and so of the request's handler), then lets the
    /// store go ahead.
    async fn hang_up(gw: &Gateway, store: &Hooked, c: TcpStream, calls: &AtomicUsize) {
        until("the request reached the store", || {
            calls.load(Ordering::Acquire) == 1
        })
        .await;
        drop(c);
        until("the gateway closed the connection", || {
            gw.connections.open() == 0
        })
        .await;
        store.gate.as_ref().unwrap().add_permits(1);
    }

    /// A producer that hangs up while its event is being stored: the event is stored all the
    /// same, so it stays counted as accepted and in the backlog until delivered, and the counts
    /// still add up afterwards.
    #[tokio::test(start_paused = true)]
    async fn an_event_whose_producer_hangs_up_while_it_is_stored_is_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, addr, store) = gated(dir.path()).await;
        hang_up(&gw, &store, post(addr).await, &store.appends).await;
        until("the event was delivered", || stat(&gw, "delivered") == 1).await;
        let counts = ["accepted", "backlog_events", "backlog_bytes"].map(|k| stat(&gw, k));
        assert_eq!(counts, [1, 0, 0].map(serde_json::Value::from));
        let out = std::fs::read_to_string(dir.path().join("out/t.jsonl")).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
    }

    /// Topic `t`, delivered to a sink that fails every event: nothing listens on port 1, so each
    /// attempt fails at once, and one is all there is.
    const FAILING: &str = r#"[topics.t]
sink = { type = "http", url = "http://127.0.0.1:1/", timeout = "1s" }
retry = { max_attempts = 1 }
"#;

    /// The same for a replay of dead letters: the store replays them all the same, so the topic
    /// counts them back into its backlog.
    #[tokio::test(start_paused = true)]
    async fn a_replay_whose_caller_hangs_up_is_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, addr, store) = gated_with(dir.path(), FAILING).await;
        store.gate.as_ref().unwrap().add_permits(1);
        let r = response(&mut post(addr).await).await;
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        until("the event was dead-lettered", || {
            stat(&gw, "dead_letters") == 1
        })
        .await;

        let head = "POST /v1/topics/t/dead-letters/replay HTTP/1.1\r\nhost: x";
        hang_up(&gw, &store, send(addr, head, "").await, &store.replays).await;
        until("the replayed event failed again", || {
            stat(&gw, "dead_lettered")["exhausted"] == 2
        })
        .await;
        let counts = ["backlog_events", "backlog_bytes", "dead_letters"].map(|k| stat(&gw, k));
        assert_eq!(counts, [0, 0, 1].map(serde_json::Value::from));
    }

    /// A request larger than its class may ever hold gets `413` with no `Retry-After` (waiting
    /// cannot help), whether it is over the backlog's watermark for its class or over the producer
    /// burst; one that fits an emptier backlog gets `429` and a `Retry-After`. Nothing refused
    /// reaches the store, and each refusal is counted by its reason.
    #[tokio::test(start_paused = true)]
    async fn a_batch_that_can_never_fit_is_too_large_not_told_to_wait() {
        let dir = tempfile::tempdir().unwrap();
        let config = "[topics.t]\nsink = { type = \"stdout\" }\nmax_backlog_events = 10\n\
                      [topics.q]\nsink = { type = \"stdout\" }\n\
                      producers = { per_second = 1, burst = 6 }\n";
        let (gw, addr, store) = gated_with(dir.path(), config).await;
        let batch = |topic: &str, n: usize, priority: &str| {
            let head = format!(
                "POST /v1/topics/{topic}/events HTTP/1.1\r\nhost: x\r\n\
                 content-type: application/x-ndjson\r\nfloodway-priority: {priority}"
            );
            (head, "{}\n".repeat(n))
        };
        // 9 normal events: over the 80% watermark (8) of an empty backlog.
        let (head, body) = batch("t", 9, "normal");
        let r = response(&mut send(addr, &head, &body).await).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert!(!r.contains("retry-after"), "{r}");
        assert!(
            r.contains("9 normal events (18 bytes) can never be admitted at once")
                && r.contains("holds at most 8 normal events"),
            "{r}"
        );
        // 7 events fit the backlog of topic q, and not its producer burst of 6.
        let (head, body) = batch("q", 7, "critical");
        let r = response(&mut send(addr, &head, &body).await).await;
        assert!(r.starts_with("HTTP/1.1 413"), "{r}");
        assert!(!r.contains("retry-after"), "{r}");
        assert!(
            r.contains("a batch of 7 events can never pass the producer quota")
                && r.contains("whose burst is 6"),
            "{r}"
        );
        let q = gw.existing("q").unwrap().stats();
        assert_eq!(q["refused"]["too_large"], 1, "{q}");
        // 6 normal events fit an empty backlog; with 3 in it (held here as a reservation, as a
        // request waiting for its store write holds them) they would make 9 of 8: 429, wait.
        let held = gw
            .existing("t")
            .unwrap()
            .reserve(3, 6, floodway::Priority::Normal)
            .unwrap();
        let (head, body) = batch("t", 6, "normal");
        let r = response(&mut send(addr, &head, &body).await).await;
        assert!(r.starts_with("HTTP/1.1 429"), "{r}");
        assert!(r.contains("retry-after: "), "{r}");
        assert!(
            r.contains("would pass the 80% watermark for normal events (9 events"),
            "{r}"
        );
        drop(held);
        assert_eq!(store.appends.load(Ordering::Acquire), 0, "nothing stored");
        assert_eq!(stat(&gw, "backlog_events"), 0);
        let refused = stat(&gw, "refused");
        assert_eq!(refused["too_large"], 1, "{refused}");
        assert_eq!(refused["watermark"], 1, "{refused}");
    }

    /// With the dead-letter store full, an event due to be dead-lettered waits in the backlog
    /// (still counted, still stored) until a purge makes room; then the counts add up: 2
    /// accepted = 1 dead letter + 1 purged.
    #[tokio::test(start_paused = true)]
    async fn a_full_dead_letter_store_holds_events_back_until_a_purge() {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("{FAILING}max_dead_letters = 1\n");
        let (gw, addr, store) = gated_with(dir.path(), &config).await;
        store.gate.as_ref().unwrap().add_permits(2);
        for _ in 0..2 {
            let r = response(&mut post(addr).await).await;
            assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        }
        until("one is dead and one waits for room", || {
            stat(&gw, "dead_letters") == 1 && stat(&gw, "waiting_for_dead_letter_room") == 1
        })
        .await;
        assert_eq!(stat(&gw, "backlog_events"), 1);
        assert_eq!(stat(&gw, "dead_lettered")["exhausted"], 1);

        let head = "DELETE /v1/topics/t/dead-letters HTTP/1.1\r\nhost: x";
        let r = response(&mut send(addr, head, "").await).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with(r#"{"purged":1}"#), "{r}");
        until("the second is dead-lettered", || {
            stat(&gw, "dead_lettered")["exhausted"] == 2
        })
        .await;
        let keys = ["accepted", "backlog_events", "dead_letters", "purged"];
        let counts = keys.map(|k| stat(&gw, k));
        assert_eq!(counts, [2, 0, 1, 1].map(serde_json::Value::from));
        assert_eq!(stat(&gw, "waiting_for_dead_letter_room"), 0);
        // The same figures in /metrics: counters with their `_total` suffix, the dead letters
        // by reason beside the refusals.
        let metrics = "GET /metrics HTTP/1.1\r\nhost: x";
        let r = response(&mut send(addr, metrics, "").await).await;
        for line in [
            "# TYPE floodway_dead_lettered_total counter\n",
            "\nfloodway_dead_lettered_total{topic=\"t\",reason=\"exhausted\"} 2\n",
            "# TYPE floodway_purged_total counter\n",
            "\nfloodway_purged_total{topic=\"t\"} 1\n",
            "\nfloodway_accepted_total{topic=\"t\"} 2\n",
            "\nfloodway_dead_letters{topic=\"t\"} 1\n",
        ] {
            assert!(r.contains(line), "{line:?} in {r}");
        }
        let kept = gw
            .store
            .dead_letters("t", &DeadSelection::default(), 0, 10)
            .await
            .unwrap()
            .letters;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].stored.seq, 2);
    }

    /// The hand-written `202` is the JSON it stands for (ids as strings, `duplicates` only when
    /// there are some), with one content type.
    #[tokio::test]
    async fn the_accepted_body_is_the_json_it_stands_for() {
        let appended = |seqs: &[(u64, bool)]| -> Vec<Appended> {
            seqs.iter()
                .map(|&(seq, duplicate)| Appended { seq, duplicate })
                .collect()
        };
        let many: Vec<Appended> = (0..40)
            .map(|i| Appended {
                seq: u64::MAX - i,
                duplicate: false,
            })
            .collect();
        let many_ids: Vec<String> = many.iter().map(|a| a.seq.to_string()).collect();
        let cases = [
            (
                accepted_response(1, &appended(&[(7, false)]), 0),
                json!({"accepted": 1, "ids": ["7"]}),
            ),
            (
                accepted_response(
                    3,
                    &appended(&[(12, false), (5, true), (u64::MAX, false)]),
                    1,
                ),
                json!({"accepted": 3, "ids": ["12", "5", u64::MAX.to_string()], "duplicates": 1}),
            ),
            // Longer than the stack buffer: written into a `Vec` instead.
            (
                accepted_response(40, &many, 0),
                json!({"accepted": 40, "ids": many_ids}),
            ),
        ];
        for (resp, want) in cases {
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let types: Vec<_> = resp
                .headers()
                .get_all(header::CONTENT_TYPE)
                .iter()
                .collect();
            assert_eq!(types, ["application/json"]);
            let body = to_bytes(resp.into_body(), usize::MAX).await.unwrap();
            let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(got, want, "{}", String::from_utf8_lossy(&body));
        }
    }

    /// A formatted header value is the text it was given, short or longer than the stack
    /// buffer, and `None` when that text is no header value.
    #[test]
    fn formatted_header_values_are_their_text() {
        let n = 42;
        assert_eq!(
            formatted(format_args!("\"backlog\";r={n}")).unwrap(),
            "\"backlog\";r=42"
        );
        let long = "x".repeat(300);
        assert_eq!(
            formatted(format_args!("{long};r={n}")).unwrap(),
            format!("{long};r=42")
        );
        assert_eq!(formatted(format_args!("a\nb")), None);
    }
}

#[cfg(test)]
mod timeouts {
    use std::sync::atomic::Ordering;

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::tests::{gated, post, response, send, stat, until};

    /// A write the store does not confirm within `write_timeout` gets `503` saying the events may
    /// yet be stored; while it is unanswered new events are refused without going to the store;
    /// once the store answers, the event is counted as accepted and delivered, and the counts add
    /// up: 3 offered = 2 accepted + 1 refused, and 1 answered unconfirmed.
    #[tokio::test(start_paused = true)]
    async fn a_write_the_store_does_not_confirm_in_time_is_answered_and_counted_later() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, addr, store) = gated(dir.path()).await;
        let start = Instant::now();
        let r = response(&mut post(addr).await).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.contains("retry-after: 5\r\n"), "{r}");
        assert!(
            r.contains("did not confirm the write within 10s; the events may still be stored"),
            "{r}"
        );
        assert_eq!(start.elapsed().as_secs(), 10);
        assert_eq!(stat(&gw, "unconfirmed"), 1);
        assert_eq!(stat(&gw, "accepted"), 0);

        let r = response(&mut post(addr).await).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains("has not confirmed an earlier write within 10s; nothing was stored"),
            "{r}"
        );
        assert_eq!(
            store.appends.load(Ordering::Acquire),
            1,
            "not sent to the store"
        );
        let readyz = "GET /readyz HTTP/1.1\r\nhost: x";
        let r = response(&mut send(addr, readyz, "").await).await;
        assert!(r.starts_with("HTTP/1.1 503"), "not ready meanwhile: {r}");
        let metrics = "GET /metrics HTTP/1.1\r\nhost: x";
        let r = response(&mut send(addr, metrics, "").await).await;
        assert!(r.contains("\nfloodway_stalled_writes 1\n"), "{r}");

        store.gate.as_ref().unwrap().add_permits(2);
        until("the late write was counted", || stat(&gw, "accepted") == 1).await;
        until("the store counts as answering", || {
            gw.stalled.load(Ordering::Acquire) == 0
        })
        .await;
        let r = response(&mut send(addr, readyz, "").await).await;
        assert!(r.starts_with("HTTP/1.1 200"), "ready again: {r}");
        let r = response(&mut post(addr).await).await;
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        until("both were delivered", || stat(&gw, "delivered") == 2).await;
        let counts = ["accepted", "unconfirmed", "backlog_events"].map(|k| stat(&gw, k));
        assert_eq!(counts, [2, 1, 0].map(serde_json::Value::from));
        assert_eq!(stat(&gw, "refused"), serde_json::json!({ "store": 1 }));
        let out = std::fs::read_to_string(dir.path().join("out/t.jsonl")).unwrap();
        assert_eq!(out.lines().count(), 2, "{out}");
    }

    /// A request head that is not whole within `header_timeout` (30 s) closes the connection,
    /// although its bytes keep it inside the idle timeout (60 s); so does waiting that long for
    /// the next request on a kept-alive connection.
    #[tokio::test(start_paused = true)]
    async fn a_request_head_slower_than_header_timeout_closes_the_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (_gw, addr, _store) = gated(dir.path()).await;
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        let start = Instant::now();
        slow.write_all(b"POST /v1/topics/t/events HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        for lines in 0.. {
            // One more header line every 20 s: never idle for the idle timeout.
            assert!(lines < 10, "still open after {lines} header lines");
            match tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await {
                Err(_) => slow.write_all(b"x-slow: 1\r\n").await.unwrap(),
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(_)) => {}
            }
        }
        assert_eq!(
            start.elapsed().as_secs(),
            30,
            "closed at the header timeout"
        );

        let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
        let get = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n";
        waiting.write_all(get).await.unwrap();
        assert!(response(&mut waiting).await.starts_with("HTTP/1.1 200"));
        let answered = Instant::now();
        tokio::time::sleep(Duration::from_secs(29)).await;
        waiting.write_all(get).await.unwrap();
        assert!(response(&mut waiting).await.starts_with("HTTP/1.1 200"));
        let answered_again = Instant::now();
        assert_eq!(answered_again - answered, Duration::from_secs(29));
        let n = waiting.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "closed");
        assert_eq!(answered_again.elapsed().as_secs(), 30);
    }

    /// A write whose outcome the store does not know (a JetStream publish with no ack) gets `503`
    /// saying the events may be stored, and is counted as unconfirmed, not as a refusal.
    #[tokio::test(start_paused = true)]
    async fn a_write_of_unknown_outcome_is_unconfirmed_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, addr, store) = gated(dir.path()).await;
        let ack_lost = crate::store::StoreError::Unknown("no ack within 5s".into());
        *store.fail_next.lock().unwrap() = Some(ack_lost);
        let r = response(&mut post(addr).await).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(
            r.contains(
                "did not confirm the write (no ack within 5s); the events may still be stored"
            ),
            "{r}"
        );
        let counts = ["accepted", "unconfirmed", "backlog_events"].map(|k| stat(&gw, k));
        assert_eq!(counts, [0, 1, 0].map(serde_json::Value::from));
        assert_eq!(stat(&gw, "refused"), serde_json::json!({}));
    }

    /// A body that does not arrive whole within `body_timeout` gets `408` and stores nothing.
    #[tokio::test(start_paused = true)]
    async fn a_body_slower_than_body_timeout_gets_408() {
        let dir = tempfile::tempdir().unwrap();
        let (gw, addr, store) = gated(dir.path()).await;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(
            b"POST /v1/topics/t/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 10\r\n\r\n{\"n\"",
        )
        .await
        .unwrap();
        let start = Instant::now();
        let r = response(&mut c).await;
        assert!(r.starts_with("HTTP/1.1 408"), "{r}");
        assert!(r.contains("application/problem+json"), "{r}");
        assert!(
            r.contains(
                "the body did not arrive whole within 30s (body_timeout); nothing was stored"
            ),
            "{r}"
        );
        assert_eq!(start.elapsed().as_secs(), 30);
        assert_eq!(store.appends.load(Ordering::Acquire), 0);
        assert_eq!(stat(&gw, "backlog_events"), 0);
    }
}
