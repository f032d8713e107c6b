//! The HTTP API: ingest, topic and dead-letter operations, metrics and health.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floodway::{Level, Priority};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Mutex;

use crate::RwLocked;
use crate::config::{Backend, Config, Role, SinkConfig, Strategy, TopicConfig, valid_topic_name};
use crate::conn::Connections;
use crate::problem::Problem;
use crate::sink::Sink;
use crate::store::{Appended, NewEvent, Store, StoreError, now_ms};
use crate::topic::{Refusal, Reservation, Topic};

/// At most this many topics are created on first use; beyond it, new names are refused.
const MAX_AUTO_TOPICS: usize = 1024;
/// The largest NDJSON batch body.
const MAX_BATCH_BYTES: u64 = 64 << 20;
/// The longest idempotency key.
const MAX_KEY_LEN: usize = 256;

/// The gateway's shared state.
pub struct Gateway {
    config: Config,
    store: Arc<dyn Store>,
    topics: std::sync::RwLock<HashMap<String, Arc<Topic>>>,
    creating: Mutex<()>,
    connections: Arc<Connections>,
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
        });
        let mut names: Vec<String> = gw.config.topics.keys().cloned().collect();
        if gw.config.topics.is_empty() {
            names.extend(recovered.keys().cloned());
        }
        for name in names {
            let state = recovered.get(&name).cloned().unwrap_or_default();
            gw.open_topic(
                &name,
                state.backlog_events,
                state.backlog_bytes,
                state.dead_letters,
            )
            .await?;
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

    async fn open_topic(
        &self,
        name: &str,
        events: u64,
        bytes: u64,
        dead: u64,
    ) -> anyhow::Result<Arc<Topic>> {
        let config = self.topic_config(name);
        let sink = Arc::new(Sink::open(config.sink.as_ref().expect("set above")).await?);
        self.store.open_topic(name, &config).await?;
        let topic = Arc::new(Topic::new(
            name.to_owned(),
            config,
            self.config.strategy,
            events,
            bytes,
            dead,
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
        self.open_topic(name, 0, 0, 0).await.map_err(|e| {
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
        .route("/v1/topics/{topic}/dead-letters", get(dead_letters))
        .route("/v1/topics/{topic}/dead-letters/replay", post(replay))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(gw)
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
    h.insert(
        "floodway-pressure",
        HeaderValue::from_static(level.as_str()),
    );
    let (policy, state) = match (topic.quota_policy(), remaining) {
        (Some((q, w)), Some((r, reset))) => (
            format!("\"producer\";q={q};w={w}"),
            format!("\"producer\";r={r};t={}", reset.as_secs_f64().ceil() as u64),
        ),
        (Some((q, w)), None) => (
            format!("\"producer\";q={q};w={w}"),
            format!("\"producer\";r=0;t={w}"),
        ),
        _ => {
            // No producer quota: the policy in force is the backlog bound, fixed per topic.
            let max = topic.config.max_backlog_events;
            let used = (topic.utilisation() * max as f64) as u64;
            let state = format!("\"backlog\";r={}", max.saturating_sub(used));
            if let Ok(s) = HeaderValue::try_from(state) {
                h.insert("ratelimit-policy", topic.backlog_policy.clone());
                h.insert("ratelimit", s);
            }
            return;
        }
    };
    if let (Ok(p), Ok(s)) = (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
        h.insert("ratelimit-policy", p);
        h.insert("ratelimit", s);
    }
}

fn producer_key(headers: &HeaderMap, addr: SocketAddr) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| format!("token:{}", t.trim()))
        .unwrap_or_else(|| format!("addr:{}", addr.ip()))
}

fn json_error_detail(e: &serde_json::Error) -> String {
    format!("{e} (line {}, column {})", e.line(), e.column())
        .replace(&format!(" at line {} column {}", e.line(), e.column()), "")
}

async fn ingest(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
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
    match accept(&gw, &topic, addr, &headers, body).await {
        Ok(r) => r,
        Err(p) => {
            let quota = topic.quota_policy().map(|_| (0, Duration::ZERO));
            p.headers(signal_headers(&topic, quota)).into_response()
        }
    }
}

async fn accept(
    gw: &Gateway,
    topic: &Topic,
    addr: SocketAddr,
    headers: &HeaderMap,
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
    let bytes = to_bytes(body, limit as usize).await.map_err(|_| {
        Problem::too_large(match kind {
            Kind::Ndjson => format!("the batch body is larger than {limit} bytes"),
            _ => format!(
                "the event is larger than max_event_bytes ({max_event} bytes) for topic {:?}",
                topic.name
            ),
        })
    })?;
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
    let event = |body: Vec<u8>, key: Option<String>| NewEvent {
        content_type: ct.clone(),
        body,
        priority,
        deadline_ms,
        idempotency_key: key,
        accepted_ms: now,
    };
    let events: Vec<NewEvent> = match kind {
        Kind::Json => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
                Problem::bad_request(format!("malformed JSON: {}", json_error_detail(&e)))
            })?;
            vec![event(bytes.to_vec(), key)]
        }
        Kind::Opaque => vec![event(bytes.to_vec(), key)],
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
                serde_json::from_slice::<serde::de::IgnoredAny>(line).map_err(|e| {
                    Problem::bad_request(format!(
                        "malformed NDJSON at line {n}: {}",
                        json_error_detail(&e)
                    ))
                })?;
                let mut single = event(line.to_vec(), key.as_ref().map(|k| format!("{k}#{n}")));
                single.content_type = "application/json".into();
                out.push(single);
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
    };
    let allowed = topic
        .check_quota(|| producer_key(headers, addr), n as u32)
        .map_err(refused)?;
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
    if !gw.store.healthy() {
        topic.count_refusal("store");
        return Err(Problem::unavailable(
            "the store is unavailable",
            Duration::from_secs(5),
        ));
    }
    let sizes: Vec<u64> = events.iter().map(|e| e.body.len() as u64).collect();
    let commit = |appended: &[Appended], reservation: Reservation<'_>| {
        let (mut kept, mut kept_bytes) = (0u64, 0u64);
        for (a, size) in appended.iter().zip(&sizes) {
            if !a.duplicate {
                kept += 1;
                kept_bytes += size;
            }
        }
        reservation.commit(kept, kept_bytes);
        topic.record_accepted(kept);
        kept
    };
    let appended = match gw.store.append(&topic.name, events).await {
        Ok(a) => a,
        Err(StoreError::Full(e)) => {
            // The shared store is at its limits (other gateways filled it since this one last
            // looked): the same answers as this gateway's own bound, `503` for critical events,
            // which may fill it all, and `429` for the rest, which are past their watermark.
            topic.count_refusal("full");
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
            commit(&stored, reservation);
            topic.count_refusal("store");
            let ids: Vec<String> = stored.iter().map(|a| a.seq.to_string()).collect();
            return Err(Problem::unavailable(
                format!(
                    "only the first {} events were stored ({error}); send the rest again, with \
                     the same Idempotency-Key to make a full resend safe",
                    stored.len()
                ),
                Duration::from_secs(5),
            )
            .stored_ids(ids));
        }
        Err(e) => {
            topic.count_refusal("store");
            return Err(Problem::unavailable(
                format!("{e}; nothing was stored"),
                Duration::from_secs(5),
            ));
        }
    };
    let kept = commit(&appended, reservation);
    let body = AcceptedBody {
        accepted: n,
        ids: appended.iter().map(|a| a.seq.to_string()).collect(),
        duplicates: n - kept,
    };
    let remaining = allowed.map(|a| (a.remaining(), a.reset()));
    let mut resp = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    add_signal_headers(resp.headers_mut(), topic, remaining);
    Ok(resp)
}

/// The body of a `202`: serialised straight from this struct (no intermediate JSON value).
#[derive(serde::Serialize)]
struct AcceptedBody {
    accepted: u64,
    ids: Vec<String>,
    #[serde(skip_serializing_if = "is_zero")]
    duplicates: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

async fn list_topics(State(gw): State<Arc<Gateway>>) -> Response {
    let topics: Vec<_> = gw.all_topics().iter().map(|t| t.stats()).collect();
    axum::Json(json!({ "topics": topics })).into_response()
}

async fn show_topic(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    match gw.existing(&name) {
        Some(t) => axum::Json(t.stats()).into_response(),
        None => Problem::not_found(format!("unknown topic {name:?}")).into_response(),
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn dead_letters(
    State(gw): State<Arc<Gateway>>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if gw.existing(&name).is_none() {
        return Problem::not_found(format!("unknown topic {name:?}")).into_response();
    }
    let limit = q.limit.unwrap_or(100).min(1000);
    match gw.store.dead_letters(&name, limit).await {
        Ok(list) => {
            let items: Vec<_> = list
                .iter()
                .map(|d| {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&crate::sink::json_line(&name, &d.stored))
                            .unwrap_or_default();
                    v["reason"] = json!(d.reason);
                    v["error"] = json!(d.error);
                    v["attempts"] = json!(d.attempts);
                    v["dead_ms"] = json!(d.dead_ms);
                    v
                })
                .collect();
            axum::Json(json!({ "topic": name, "dead_letters": items })).into_response()
        }
        Err(e) => Problem::unavailable(e.to_string(), Duration::from_secs(5)).into_response(),
    }
}

async fn replay(State(gw): State<Arc<Gateway>>, Path(name): Path<String>) -> Response {
    let Some(topic) = gw.existing(&name) else {
        return Problem::not_found(format!("unknown topic {name:?}")).into_response();
    };
    match gw.store.replay(&name).await {
        Ok(events) => {
            topic.record_replayed(&events);
            let ids: Vec<String> = events.iter().map(|e| e.seq.to_string()).collect();
            axum::Json(json!({ "replayed": events.len(), "ids": ids })).into_response()
        }
        Err(e) => Problem::unavailable(e.to_string(), Duration::from_secs(5)).into_response(),
    }
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.store.healthy() {
        "ready\n".into_response()
    } else {
        Problem::unavailable("the store is unavailable", Duration::from_secs(5)).into_response()
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    use std::fmt::Write;
    let mut out = String::new();
    let gauges = [
        (
            "backlog_events",
            "Events stored and not yet delivered or dead-lettered.",
        ),
        ("backlog_bytes", "Bytes of those events."),
        (
            "oldest_age_seconds",
            "Age of the oldest event in the backlog.",
        ),
        (
            "rate_in_per_second",
            "Accepted events per second (moving average).",
        ),
        (
            "rate_out_per_second",
            "Delivered or dead-lettered events per second (moving average).",
        ),
        ("accepted", "Events accepted (counter)."),
        ("delivered", "Events delivered (counter)."),
        ("dead_letters", "Dead letters kept."),
        ("concurrency_limit", "Delivery concurrency limit."),
        ("in_flight", "Deliveries in progress."),
        ("workers", "Delivery workers."),
        (
            "desired_workers",
            "Delivery workers wanted: the autoscaling signal.",
        ),
    ];
    let stats: Vec<_> = gw.all_topics().iter().map(|t| t.stats()).collect();
    for (name, help) in gauges {
        family(&mut out, name, "gauge", help);
        for s in &stats {
            let _ = writeln!(
                out,
                "floodway_{name}{{topic=\"{}\"}} {}",
                s["topic"].as_str().unwrap_or(""),
                s[name]
            );
        }
    }
    family(&mut out, "connections", "gauge", "Client connections open.");
    let _ = writeln!(out, "floodway_connections {}", gw.connections.open());
    let help = "Client connections allowed at once.";
    family(&mut out, "connections_max", "gauge", help);
    let _ = writeln!(out, "floodway_connections_max {}", gw.connections.max());
    let help = "Ingest requests refused, by reason.";
    family(&mut out, "refused_total", "counter", help);
    for s in &stats {
        if let Some(m) = s["refused"].as_object() {
            for (reason, v) in m {
                let _ = writeln!(
                    out,
                    "floodway_refused_total{{topic=\"{}\",reason=\"{reason}\"}} {v}",
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
