//! `floodway sink-sim`: a downstream with a set capacity. It answers `503` + `Retry-After` beyond
//! its rate or concurrency (or makes the caller wait, with `--mode queue`), can inject latency and
//! errors, follows a capacity schedule, and counts the distinct event ids it received and the
//! duplicates, readable at `GET /stats` with the accept-to-delivery latency of first deliveries
//! (from the gateway's `Floodway-Accepted-At` header).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Locked;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floodway::{ConcurrencyLimiter, Priority, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::json;

/// What to do with requests beyond capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Answer `503` with `Retry-After`.
    Reject,
    /// Hold the request until there is capacity.
    Queue,
}

/// `floodway sink-sim` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (port 0 picks a free one; the first stdout line says which).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Events per second it can take.
    #[arg(long)]
    rate: u32,
    /// Requests it handles at once.
    #[arg(long, default_value_t = 10_000)]
    concurrency: usize,
    /// Time to handle each request, e.g. "20ms".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    latency: Duration,
    /// Fraction of requests answered with 500 (0.0-1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Capacity changes over time: "0s:rate=200,30s:rate=50,60s:rate=200" ("rate=0" is down).
    #[arg(long)]
    schedule: Option<String>,
    /// Beyond capacity: reject (503 + Retry-After) or queue.
    #[arg(long, value_enum, default_value = "reject")]
    mode: Mode,
}

/// One step of a schedule: at `at`, the rate becomes `rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// When, from the start.
    pub at: Duration,
    /// The rate from then on.
    pub rate: u32,
}

/// Parses `"0s:rate=200,30s:rate=50"`.
pub fn parse_schedule(s: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (at, setting) = part
            .split_once(':')
            .ok_or_else(|| format!("schedule step {part:?}: expected OFFSET:rate=N"))?;
        let at = humantime::parse_duration(at.trim())
            .map_err(|e| format!("schedule step {part:?}: {e}"))?;
        let rate = setting
            .trim()
            .strip_prefix("rate=")
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| format!("schedule step {part:?}: expected rate=N"))?;
        steps.push(Step { at, rate });
    }
    steps.sort_by_key(|s| s.at);
    Ok(steps)
}

struct Counts {
    requests: u64,
    delivered: u64,
    rejected: u64,
    errors: u64,
    duplicates: u64,
    seen: BTreeMap<String, HashSet<String>>,
    /// Accept-to-delivery time of first deliveries, in ms (from `Floodway-Accepted-At`).
    end_to_end: hdrhistogram::Histogram<u64>,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            requests: 0,
            delivered: 0,
            rejected: 0,
            errors: 0,
            duplicates: 0,
            seen: BTreeMap::new(),
            end_to_end: hdrhistogram::Histogram::new_with_bounds(1, 86_400_000, 3)
                .expect("valid bounds"),
        }
    }
}

struct Sim {
    rate: RateLimiter,
    /// The current rate; 0 means down.
    current: Mutex<u32>,
    limiter: ConcurrencyLimiter,
    latency: Duration,
    error_rate: f64,
    mode: Mode,
    counts: Mutex<Counts>,
    in_flight: std::sync::atomic::AtomicUsize,
    peak_in_flight: std::sync::atomic::AtomicUsize,
}

/// Counts a request as in flight while it lives, and keeps the peak.
struct InFlight<'a>(&'a Sim);

impl<'a> InFlight<'a> {
    fn new(sim: &'a Sim) -> Self {
        use std::sync::atomic::Ordering;
        let now = sim.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        sim.peak_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(sim)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

fn quota(rate: u32) -> Quota {
    let r = NonZeroU32::new(rate.max(1)).expect("at least 1");
    // A burst of a twentieth of a second keeps the delivered rate close to the set one.
    Quota::per_second(r).allow_burst(NonZeroU32::new((rate / 20).max(1)).expect("at least 1"))
}

/// Runs the simulated sink until the process is stopped.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let schedule = match &args.schedule {
        Some(s) => parse_schedule(s).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let sim = Arc::new(Sim {
        rate: RateLimiter::new(quota(args.rate)),
        current: Mutex::new(args.rate),
        limiter: ConcurrencyLimiter::fixed(args.concurrency.max(1)),
        latency: args.latency,
        error_rate: args.error_rate.clamp(0.0, 1.0),
        mode: args.mode,
        counts: Mutex::default(),
        in_flight: Default::default(),
        peak_in_flight: Default::default(),
    });
    let s = sim.clone();
    tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for step in schedule {
            tokio::time::sleep_until(start + step.at).await;
            *s.current.locked() = step.rate;
            s.rate.set_quota(quota(step.rate));
            tracing::info!(rate = step.rate, "sink-sim capacity changed");
        }
    });
    let app = Router::new()
        .route("/stats", get(stats))
        .route("/{*path}", post(receive))
        .route("/", post(receive))
        .with_state(sim);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("sink-sim listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

fn unavailable(after: Duration) -> Response {
    let secs = (after.as_secs_f64().ceil() as u64).max(1);
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, secs.to_string())],
        "over capacity\n",
    )
        .into_response()
}

async fn receive(State(sim): State<Arc<Sim>>, headers: HeaderMap) -> Response {
    let _in_flight = InFlight::new(&sim);
    sim.counts.locked().requests += 1;
    let reject = |sim: &Sim, after| {
        sim.counts.locked().rejected += 1;
        unavailable(after)
    };
    if *sim.current.locked() == 0 {
        return reject(&sim, Duration::from_secs(1));
    }
    let permit = match sim.mode {
        Mode::Reject => match sim.limiter.try_acquire(Priority::Normal) {
            Ok(p) => p,
            Err(e) => return reject(&sim, e.retry_after()),
        },
        Mode::Queue => loop {
            match sim.limiter.try_acquire(Priority::Normal) {
                Ok(p) => break p,
                Err(e) => tokio::time::sleep(e.retry_after()).await,
            }
        },
    };
    match sim.mode {
        Mode::Reject => {
            if let Err(l) = sim.rate.check() {
                return reject(&sim, l.retry_after);
            }
        }
        Mode::Queue => {
            sim.rate.until_ready().await;
        }
    }
    if !sim.latency.is_zero() {
        tokio::time::sleep(sim.latency).await;
    }
    drop(permit);
    if sim.error_rate > 0.0 && fastrand::f64() < sim.error_rate {
        sim.counts.locked().errors += 1;
        return (StatusCode::INTERNAL_SERVER_ERROR, "injected error\n").into_response();
    }
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (topic, id) = (text("floodway-topic"), text("floodway-event-id"));
    let mut c = sim.counts.locked();
    c.delivered += 1;
    if !id.is_empty() && !c.seen.entry(topic).or_default().insert(id) {
        c.duplicates += 1;
    } else if let Ok(accepted) = text("floodway-accepted-at").parse::<u64>() {
        let _ = c
            .end_to_end
            .record(crate::store::now_ms().saturating_sub(accepted).max(1));
    }
    StatusCode::OK.into_response()
}

#[derive(Deserialize)]
struct StatsQuery {
    ids: Option<bool>,
}

async fn stats(State(sim): State<Arc<Sim>>, Query(q): Query<StatsQuery>) -> Response {
    let c = sim.counts.locked();
    let distinct: usize = c.seen.values().map(HashSet::len).sum();
    let mut body = json!({
        "requests": c.requests,
        "delivered": c.delivered,
        "rejected": c.rejected,
        "errors": c.errors,
        "distinct": distinct,
        "duplicates": c.duplicates,
        "end_to_end_ms": {
            "count": c.end_to_end.len(),
            "p50": c.end_to_end.value_at_quantile(0.5),
            "p99": c.end_to_end.value_at_quantile(0.99),
            "max": c.end_to_end.max(),
        },
        // The most requests this sink held at once: what the senders' total concurrency was.
        "peak_in_flight": sim.peak_in_flight.load(std::sync::atomic::Ordering::Acquire),
        "rate": *sim.current.locked(),
    });
    if q.ids.unwrap_or(false) {
        let ids: BTreeMap<_, Vec<_>> = c
            .seen
            .iter()
            .map(|(t, s)| (t.clone(), s.iter().cloned().collect()))
            .collect();
        body["ids"] = json!(ids);
    }
    axum::Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_and_sort() {
        let s = parse_schedule("30s:rate=50, 0s:rate=200,1m:rate=0").unwrap();
        assert_eq!(
            s.iter()
                .map(|x| (x.at.as_secs(), x.rate))
                .collect::<Vec<_>>(),
            vec![(0, 200), (30, 50), (60, 0)]
        );
        assert!(
            parse_schedule("30s:speed=5")
                .unwrap_err()
                .contains("rate=N")
        );
    }
}
