//! `floodway load`: an open-loop load generator.
//!
//! Requests are sent on schedule whether or not earlier ones have returned, and each latency is
//! measured from the moment the request was *due*, not from when a connection was free: a slow
//! server cannot hide its queueing by slowing the generator down (no coordinated omission).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodway::Priority;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::Locked;
use crate::sinksim::parse_schedule;

/// How arrivals are spaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arrival {
    /// Evenly.
    Constant,
    /// Exponential gaps (a Poisson process): bursts happen.
    Poisson,
}

/// `floodway load` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The ingest URL, e.g. http://127.0.0.1:7070/v1/topics/orders/events
    #[arg(long)]
    pub url: String,
    /// Requests per second (when no schedule is given).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long to send, e.g. "30s".
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Requests in flight at most (connections in the pool).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Arrival process.
    #[arg(long, value_enum, default_value = "constant")]
    pub arrival: Arrival,
    /// Rate changes over time: "0s:rate=500,20s:rate=2000,40s:rate=500".
    #[arg(long)]
    pub schedule: Option<String>,
    /// Bytes per event body (JSON, padded).
    #[arg(long, default_value_t = 128)]
    pub body_size: usize,
    /// Events per request: 1 sends application/json, more sends an NDJSON batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Share of requests per priority: "critical=5,high=15,normal=60,low=20".
    #[arg(long)]
    pub priority_mix: Option<String>,
    /// Behave like a well-mannered producer: on 429/503 with Retry-After, hold new sends and resend
    /// the refused request once the time has passed.
    #[arg(long)]
    pub honour_retry_after: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed for arrivals and priorities (reproducible runs).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// How many samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let ms = |v: u64| v as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50: ms(h.value_at_quantile(0.5)),
        p90: ms(h.value_at_quantile(0.9)),
        p99: ms(h.value_at_quantile(0.99)),
        p999: ms(h.value_at_quantile(0.999)),
        max: ms(h.max()),
    }
}

/// One second of the run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Second {
    /// Seconds since the start.
    pub t: u64,
    /// Requests due in this second.
    pub offered: u64,
    /// Requests answered 2xx in this second.
    pub accepted: u64,
    /// Requests refused in this second, by status.
    pub refused: BTreeMap<u16, u64>,
    /// Requests that failed without an answer.
    pub errors: u64,
    /// 99th percentile latency of accepted requests answered in this second (ms).
    pub accepted_p99_ms: f64,
}

/// The whole run.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Report {
    /// Requests due.
    pub offered: u64,
    /// Requests answered 2xx.
    pub accepted: u64,
    /// Requests refused, by status.
    pub refused: BTreeMap<u16, u64>,
    /// Requests that failed without an answer (connection errors, timeouts).
    pub errors: u64,
    /// Requests the generator could not even start because too many were outstanding.
    pub not_sent: u64,
    /// Refused requests sent again after their Retry-After (with --honour-retry-after).
    pub resent: u64,
    /// Events per request.
    pub batch: usize,
    /// Latency of accepted requests.
    pub accepted_latency: Percentiles,
    /// Latency of refused requests.
    pub refused_latency: Percentiles,
    /// Per-second series.
    pub seconds: Vec<Second>,
}

struct Tally {
    report: Report,
    accepted_h: Histogram<u64>,
    refused_h: Histogram<u64>,
    per_second_h: BTreeMap<u64, Histogram<u64>>,
}

fn histogram() -> Histogram<u64> {
    // Microseconds up to one hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

impl Tally {
    fn second(&mut self, t: u64) -> &mut Second {
        let s = &mut self.report.seconds;
        while s.len() as u64 <= t {
            let t = s.len() as u64;
            s.push(Second {
                t,
                ..Second::default()
            });
        }
        &mut s[t as usize]
    }

    /// The 99th percentile latency of the requests accepted in second `t`, in ms (0 when none
    /// were).
    fn accepted_p99_ms(&self, t: u64) -> f64 {
        self.per_second_h
            .get(&t)
            .map_or(0.0, |h| h.value_at_quantile(0.99) as f64 / 1000.0)
    }
}

/// Parses "critical=5,high=15,normal=60,low=20" into cumulative weights.
pub fn parse_mix(s: &str) -> Result<Vec<(Priority, u32)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("priority mix {part:?}: expected NAME=WEIGHT"))?;
        let p: Priority = name.parse().map_err(|e| format!("priority mix: {e}"))?;
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("priority mix {part:?}: weight must be a whole number"))?;
        out.push((p, w));
    }
    if out.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        return Err("priority mix: the weights add up to zero".into());
    }
    Ok(out)
}

fn body(seq: u64, size: usize, batch: usize) -> (Vec<u8>, &'static str) {
    let one = |i: u64| {
        let head = format!("{{\"seq\":{i},\"pad\":\"");
        let pad = size.saturating_sub(head.len() + 2);
        format!("{head}{}\"}}", "x".repeat(pad))
    };
    if batch <= 1 {
        (one(seq).into_bytes(), "application/json")
    } else {
        let lines: Vec<String> = (0..batch as u64)
            .map(|i| one(seq * batch as u64 + i))
            .collect();
        (
            (lines.join("\n") + "\n").into_bytes(),
            "application/x-ndjson",
        )
    }
}

/// Runs the load and returns the report (also printed as it goes, and written to `--out`).
pub async fn run(args: Args, quiet: bool) -> anyhow::Result<Report> {
    let steps = match &args.schedule {
        Some(s) => parse_schedule(s).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let mix = match &args.priority_mix {
        Some(m) => Some(parse_mix(m).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tally = Arc::new(Mutex::new(Tally {
        report: Report::default(),
        accepted_h: histogram(),
        refused_h: histogram(),
        per_second_h: BTreeMap::new(),
    }));
    tally.locked().report.batch = args.batch.max(1);
    let slots = Arc::new(Semaphore::new(args.connections.max(1)));
    // Bounded: past this many requests waiting for a connection, new ones are counted as not sent.
    let outstanding_cap = args.connections.max(1) * 64;
    let outstanding = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let paused_until: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let start = Instant::now();
    let end = args.duration.as_secs_f64();
    let rate_at = |t: f64| {
        steps
            .iter()
            .rev()
            .find(|s| s.at.as_secs_f64() <= t)
            .map_or(args.rate, |s| f64::from(s.rate))
    };
    let progress = {
        let tally = tally.clone();
        let tty = std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                // The tick's own instant, not the time now: a late tick (ticks missed under load
                // come in a burst) still reports the second it stands for.
                let at = tick.tick().await;
                if quiet {
                    continue;
                }
                let t = at
                    .saturating_duration_since(start)
                    .as_secs()
                    .saturating_sub(1);
                let line = {
                    let mut g = tally.locked();
                    let p99 = g.accepted_p99_ms(t);
                    let s = g.second(t).clone();
                    format!(
                        "t={:>3}s offered {:>6}/s accepted {:>6}/s refused {:>6}/s errors {:>4}/s p99 {:>7.1} ms",
                        s.t,
                        s.offered,
                        s.accepted,
                        s.refused.values().sum::<u64>(),
                        s.errors,
                        p99
                    )
                };
                if tty {
                    eprint!("\r{line}");
                } else {
                    eprintln!("{line}");
                }
            }
        })
    };
    let mut t = 0.0f64;
    let mut seq = 0u64;
    let mut tasks = Vec::new();
    loop {
        let rate = rate_at(t).max(0.0);
        if rate <= 0.0 {
            // Nothing due until the schedule's next step.
            match steps.iter().find(|s| s.at.as_secs_f64() > t) {
                Some(next) => {
                    t = next.at.as_secs_f64();
                    continue;
                }
                None => break,
            }
        }
        let gap = match args.arrival {
            Arrival::Constant => 1.0 / rate,
            Arrival::Poisson => -(1.0 - rng.f64()).ln() / rate,
        };
        if seq > 0 || args.arrival == Arrival::Poisson {
            t += gap;
        }
        // The tolerance keeps float accumulation from adding an arrival at the very end.
        if t >= end - 1e-9 {
            break;
        }
        let mut due = start + Duration::from_secs_f64(t);
        tokio::time::sleep_until(due).await;
        if args.honour_retry_after {
            let pause = *paused_until.locked();
            if let Some(p) = pause.filter(|p| *p > Instant::now()) {
                // A well-mannered producer holds back while told to; what was due is sent after.
                tokio::time::sleep_until(p).await;
                due = p;
            }
        }
        seq += 1;
        let second = due.saturating_duration_since(start).as_secs();
        tally.locked().second(second).offered += 1;
        tally.locked().report.offered += 1;
        if outstanding.load(std::sync::atomic::Ordering::Relaxed) >= outstanding_cap {
            tally.locked().report.not_sent += 1;
            continue;
        }
        let priority = mix.as_ref().map(|m| {
            let total: u32 = m.iter().map(|(_, w)| w).sum();
            let mut pick = rng.u32(..total);
            m.iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map_or(Priority::Normal, |(p, _)| *p)
        });
        let (payload, content_type) = body(seq, args.body_size, args.batch);
        let request = Request {
            client: client.clone(),
            url: args.url.clone(),
            payload,
            content_type,
            priority,
        };
        let (tally, slots, outstanding, paused) = (
            tally.clone(),
            slots.clone(),
            outstanding.clone(),
            paused_until.clone(),
        );
        let honour = args.honour_retry_after;
        outstanding.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tasks.push(tokio::spawn(async move {
            let mut due = due;
            let mut resend = false;
            loop {
                let permit = slots.acquire().await.expect("never closed");
                let outcome = request.send().await;
                drop(permit);
                let now = Instant::now();
                let latency = now.saturating_duration_since(due).as_micros().max(1) as u64;
                let second = now.saturating_duration_since(start).as_secs();
                // Tally under the lock; decide whether to wait and resend after it is released.
                let wait = {
                    let mut g = tally.locked();
                    if resend {
                        g.report.resent += 1;
                    }
                    match outcome {
                        Ok((status, _)) if (200..300).contains(&status) => {
                            g.report.accepted += 1;
                            g.second(second).accepted += 1;
                            let _ = g.accepted_h.record(latency);
                            let _ = g
                                .per_second_h
                                .entry(second)
                                .or_insert_with(histogram)
                                .record(latency);
                            None
                        }
                        Ok((status, retry_after)) => {
                            *g.report.refused.entry(status).or_default() += 1;
                            *g.second(second).refused.entry(status).or_default() += 1;
                            let _ = g.refused_h.record(latency);
                            retry_after.filter(|_| honour && (status == 429 || status == 503))
                        }
                        Err(_) => {
                            g.report.errors += 1;
                            g.second(second).errors += 1;
                            None
                        }
                    }
                };
                let Some(after) = wait else { break };
                let until = now + after;
                {
                    let mut p = paused.locked();
                    *p = Some(p.map_or(until, |q| q.max(until)));
                }
                tokio::time::sleep_until(until).await;
                due = until;
                resend = true;
            }
            outstanding.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    progress.abort();
    if !quiet && std::io::stderr().is_terminal() {
        eprintln!();
    }
    let report = {
        let mut g = tally.locked();
        let seconds: Vec<u64> = g.per_second_h.keys().copied().collect();
        for t in seconds {
            g.second(t).accepted_p99_ms = g.accepted_p99_ms(t);
        }
        g.report.accepted_latency = percentiles(&g.accepted_h);
        g.report.refused_latency = percentiles(&g.refused_h);
        g.report.clone()
    };
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

struct Request {
    client: reqwest::Client,
    url: String,
    payload: Vec<u8>,
    content_type: &'static str,
    priority: Option<Priority>,
}

impl Request {
    /// Sends once; the status and the Retry-After it carried.
    async fn send(&self) -> Result<(u16, Option<Duration>), reqwest::Error> {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", self.content_type)
            .body(self.payload.clone());
        if let Some(p) = self.priority {
            req = req.header("floodway-priority", p.as_str());
        }
        let resp = req.send().await?;
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let status = resp.status().as_u16();
        // Read the body so the connection can be reused.
        let _ = resp.bytes().await;
        Ok((status, retry_after))
    }
}

/// Prints the final table.
pub fn print_summary(r: &Report) {
    println!(
        "offered   {:>10} requests ({} events each)",
        r.offered, r.batch
    );
    println!("accepted  {:>10}", r.accepted);
    for (status, n) in &r.refused {
        println!("refused   {n:>10}  (HTTP {status})");
    }
    println!("errors    {:>10}", r.errors);
    if r.not_sent > 0 {
        println!("not sent  {:>10}  (generator backlog full)", r.not_sent);
    }
    if r.resent > 0 {
        println!("resent    {:>10}  (after Retry-After)", r.resent);
    }
    for (name, p) in [
        ("accepted", &r.accepted_latency),
        ("refused", &r.refused_latency),
    ] {
        println!(
            "{name:9} latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}  (n={})",
            p.p50, p.p90, p.p99, p.p999, p.max, p.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_mixes() {
        let (b, ct) = body(7, 64, 1);
        assert_eq!((b.len(), ct), (64, "application/json"));
        serde_json::from_slice::<serde_json::Value>(&b).unwrap();
        let (b, ct) = body(1, 40, 3);
        assert_eq!(ct, "application/x-ndjson");
        assert_eq!(
            b.split(|c| *c == b'\n').filter(|l| !l.is_empty()).count(),
            3
        );
        let m = parse_mix("critical=5, low=20").unwrap();
        assert_eq!(m, vec![(Priority::Critical, 5), (Priority::Low, 20)]);
        assert!(parse_mix("urgent=3").is_err());
    }
}
