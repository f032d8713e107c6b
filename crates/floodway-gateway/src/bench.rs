//! `floodway bench --scenario FILE`: one scenario, several gateway strategies, one report.
//!
//! For each strategy it starts a fresh `sink-sim` (with the scenario's capacity schedule) and a
//! fresh gateway, offers the scenario's load with `floodway load`, samples the gateway's memory,
//! lets the backlog drain for a bounded time, and measures: goodput as a fraction of the sink's
//! capacity, accepted-ingest p99, accept-to-delivery p99, events acknowledged but never delivered,
//! events dropped or dead-lettered, and peak RSS.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio::time::Instant;

use crate::config::Strategy;
use crate::demo::{get, spawn, spawn_gateway, tempfile_dir};
use crate::load;
use crate::sinksim::parse_schedule;

/// `floodway bench` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The scenario file (TOML; see benches/scenarios/).
    #[arg(long)]
    pub scenario: PathBuf,
    /// Where to write the report (`<scenario name>.md`).
    #[arg(long, default_value = "floodway-bench")]
    pub report: PathBuf,
    /// Exit with an error if the floodway strategy misses the scenario's expectations.
    #[arg(long)]
    pub check: bool,
}

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used for the report file.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// How long producers send, e.g. "30s".
    pub duration: String,
    /// The sink's capacity in events per second at the start.
    pub capacity: u32,
    /// The sink's capacity over time, as for `sink-sim --schedule`.
    pub capacity_schedule: Option<String>,
    /// Offered requests per second (when there is no load schedule).
    #[serde(default)]
    pub load_rate: f64,
    /// Offered load over time, as for `load --schedule`.
    pub load_schedule: Option<String>,
    /// Priority mix, as for `load --priority-mix`.
    pub priority_mix: Option<String>,
    /// Whether producers honour Retry-After.
    #[serde(default)]
    pub honour_retry_after: bool,
    /// Bytes per event body (default 128); large bodies make memory growth visible.
    pub body_size: Option<usize>,
    /// The topic's backlog bound (default: ten seconds of capacity).
    pub max_backlog_events: Option<u64>,
    /// The strategies to compare (default: all four).
    pub strategies: Option<Vec<Strategy>>,
    /// What the floodway strategy must achieve.
    #[serde(default)]
    pub expect: Expect,
}

/// Bands for the floodway strategy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The least goodput, as a fraction of the sink's capacity over the run.
    pub min_goodput: Option<f64>,
    /// The most events acknowledged but never delivered (normally 0).
    pub max_undelivered: Option<u64>,
}

/// What one strategy achieved.
#[derive(Debug, Clone)]
pub struct Outcome {
    strategy: Strategy,
    offered: u64,
    accepted: u64,
    refused: u64,
    goodput: f64,
    ingest_p99_ms: f64,
    e2e_p99_ms: f64,
    undelivered: i64,
    dropped: u64,
    dead: u64,
    peak_rss_mb: f64,
}

/// Integrates the schedule's rate over `[0, duration]`.
fn capacity_integral(
    capacity: u32,
    schedule: Option<&str>,
    duration: Duration,
) -> anyhow::Result<f64> {
    let steps = match schedule {
        Some(s) => parse_schedule(s).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    let end = duration.as_secs_f64();
    let mut total = 0.0;
    let mut rate = f64::from(capacity);
    let mut at = 0.0;
    for s in steps {
        let t = s.at.as_secs_f64().min(end);
        total += rate * (t - at).max(0.0);
        at = t.max(at);
        rate = f64::from(s.rate);
    }
    total += rate * (end - at).max(0.0);
    Ok(total)
}

fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

async fn run_one(s: &Scenario, strategy: Strategy) -> anyhow::Result<Outcome> {
    let duration = humantime::parse_duration(&s.duration).context("scenario duration")?;
    let dir = tempfile_dir()?;
    let mut sink_args = vec![
        "sink-sim".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--rate".into(),
        s.capacity.to_string(),
    ];
    if let Some(sched) = &s.capacity_schedule {
        sink_args.extend(["--schedule".into(), sched.clone()]);
    }
    let sink = spawn(&sink_args).await?;
    let strategy_name = format!("{strategy:?}").to_lowercase();
    let gw = spawn_gateway(
        &dir,
        &format!(
            "strategy = \"{strategy_name}\"\n[topics.bench]\nsink = {{ type = \"http\", url = \"{}/in\", timeout = \"5s\" }}\nmax_backlog_events = {}\nretry = {{ max_attempts = 1000, base = \"50ms\", max = \"2s\" }}\nconcurrency = {{ min = 1, max = 32 }}\nworkers = {{ min = 4, max = 64 }}\n",
            sink.url,
            s.max_backlog_events.unwrap_or(u64::from(s.capacity) * 10)
        ),
    )
    .await?;
    let pid = gw.pid.context("gateway pid")?;
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let rss = tokio::spawn(async move {
        let mut peak = 0.0f64;
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = tick.tick() => peak = peak.max(rss_mb(pid).unwrap_or(0.0)),
                _ = stopped.changed() => return peak,
            }
        }
    });
    // Goodput is what the sink took while producers were sending: read it when the run's time is
    // up, whatever the load generator is still finishing (polite producers resend after that).
    let client = reqwest::Client::new();
    let stats_url = format!("{}/stats", sink.url);
    let at_end = {
        let (client, url) = (client.clone(), stats_url.clone());
        tokio::spawn(async move {
            tokio::time::sleep(duration).await;
            get(&client, &url)
                .await
                .and_then(|v| v["distinct"].as_u64())
                .unwrap_or(0)
        })
    };
    let report = load::run(
        load::Args {
            url: format!("{}/v1/topics/bench/events", gw.url),
            rate: s.load_rate,
            duration,
            connections: 128,
            arrival: load::Arrival::Poisson,
            schedule: s.load_schedule.clone(),
            body_size: s.body_size.unwrap_or(128),
            batch: 1,
            priority_mix: s.priority_mix.clone(),
            honour_retry_after: s.honour_retry_after,
            out: None,
            seed: 11,
        },
        true,
    )
    .await?;
    let delivered_in_run = at_end.await?;
    // A bounded drain: enough for a bounded backlog, not for an unbounded one (that is the point).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let d = get(&client, &stats_url)
            .await
            .and_then(|v| v["distinct"].as_u64())
            .unwrap_or(0);
        if d >= report.accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.send_replace(true);
    let peak_rss_mb = rss.await?;
    let sinks = get(&client, &stats_url).await.unwrap_or_default();
    let topic = get(&client, &format!("{}/v1/topics/bench", gw.url))
        .await
        .unwrap_or_default();
    let capacity = capacity_integral(s.capacity, s.capacity_schedule.as_deref(), duration)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Outcome {
        strategy,
        offered: report.offered,
        accepted: report.accepted,
        refused: report.refused.values().sum(),
        goodput: delivered_in_run as f64 / capacity.max(1.0),
        ingest_p99_ms: report.accepted_latency.p99,
        e2e_p99_ms: sinks["end_to_end_ms"]["p99"].as_f64().unwrap_or(0.0),
        undelivered: report.accepted as i64 - sinks["distinct"].as_i64().unwrap_or(0),
        dropped: topic["refused"]["dropped"].as_u64().unwrap_or(0),
        dead: topic["dead_letters"].as_u64().unwrap_or(0),
        peak_rss_mb,
    })
}

/// Runs every strategy of the scenario and writes the report; returns whether the floodway
/// strategy met the scenario's expectations.
pub async fn run(args: Args) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&args.scenario)
        .with_context(|| format!("cannot read {}", args.scenario.display()))?;
    let s: Scenario =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", args.scenario.display()))?;
    let strategies = s.strategies.clone().unwrap_or_else(|| {
        vec![
            Strategy::Floodway,
            Strategy::Fixed,
            Strategy::Unbounded,
            Strategy::Drop,
        ]
    });
    let mut outcomes = Vec::new();
    for strategy in strategies {
        eprintln!("scenario {}: running strategy {strategy:?}", s.name);
        outcomes.push(run_one(&s, strategy).await?);
    }
    let mut md = String::new();
    let _ = writeln!(md, "## Scenario `{}`\n\n{}\n", s.name, s.description.trim());
    let _ = writeln!(
        md,
        "| strategy | offered | accepted | refused | goodput / capacity | ingest p99 ms | accept-to-delivery p99 ms | acknowledged, undelivered | dropped | dead letters | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for o in &outcomes {
        let _ = writeln!(
            md,
            "| {:?} | {} | {} | {} | {:.3} | {:.1} | {:.0} | {} | {} | {} | {:.1} |",
            o.strategy,
            o.offered,
            o.accepted,
            o.refused,
            o.goodput,
            o.ingest_p99_ms,
            o.e2e_p99_ms,
            o.undelivered,
            o.dropped,
            o.dead,
            o.peak_rss_mb
        );
    }
    let mut ok = true;
    if let Some(f) = outcomes.iter().find(|o| o.strategy == Strategy::Floodway) {
        if let Some(min) = s.expect.min_goodput {
            let met = f.goodput >= min;
            ok &= met;
            let _ = writeln!(
                md,
                "\nfloodway goodput {:.3} (expected >= {min}): {}",
                f.goodput,
                if met { "met" } else { "MISSED" }
            );
        }
        if let Some(max) = s.expect.max_undelivered {
            let met = f.undelivered <= max as i64;
            ok &= met;
            let _ = writeln!(
                md,
                "floodway acknowledged-but-undelivered {} (expected <= {max}): {}",
                f.undelivered,
                if met { "met" } else { "MISSED" }
            );
        }
    }
    std::fs::create_dir_all(&args.report)?;
    let path = args.report.join(format!("{}.md", s.name));
    std::fs::write(&path, &md)?;
    println!("{md}");
    println!("report: {}", path.display());
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_integrates_the_schedule() {
        let d = Duration::from_secs(60);
        assert_eq!(capacity_integral(200, None, d).unwrap(), 12_000.0);
        let halved =
            capacity_integral(200, Some("0s:rate=200,24s:rate=100,42s:rate=200"), d).unwrap();
        assert_eq!(halved, 200.0 * 24.0 + 100.0 * 18.0 + 200.0 * 18.0);
        let down = capacity_integral(
            100,
            Some("10s:rate=0,25s:rate=100"),
            Duration::from_secs(40),
        )
        .unwrap();
        assert_eq!(down, 100.0 * 10.0 + 100.0 * 15.0);
    }
}
