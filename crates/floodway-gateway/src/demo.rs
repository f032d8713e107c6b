//! `floodway demo`: the whole story in one command. A gateway, a downstream whose capacity halves
//! mid-run and recovers, and producers offering a multiple of that capacity with a mix of
//! priorities; a live summary, a final table, and a self-contained HTML report of plots.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::load;

/// `floodway demo` arguments.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// How long producers send.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Offered load as a multiple of the downstream's capacity.
    #[arg(long, default_value_t = 4.0)]
    pub overload: f64,
    /// The downstream's capacity in events per second (it halves from 40% to 70% of the run).
    #[arg(long, default_value_t = 200)]
    pub capacity: u32,
    /// Where to write report.html and the plots.
    #[arg(long, default_value = "floodway-demo")]
    pub report: PathBuf,
}

/// A child process of this binary, killed when dropped.
pub(crate) struct Proc {
    _child: Child,
    /// Its base URL, from its first line of output.
    pub(crate) url: String,
    /// Its process id.
    pub(crate) pid: Option<u32>,
}

/// Starts this binary with `args` and waits for its first stdout line: its address.
pub(crate) async fn spawn(args: &[String]) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the child did not start in time")??
        .context("the child exited")?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let url = first
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_owned();
    let pid = child.id();
    Ok(Proc {
        _child: child,
        url,
        pid,
    })
}

/// One sample per second of what the gateway and the sink report.
#[derive(Clone, Debug, Default)]
struct Sample {
    t: f64,
    backlog: f64,
    pressure: f64,
    limit: f64,
    workers: f64,
    sink_delivered: f64,
    sink_capacity: f64,
}

/// Writes `config` into `dir` and starts a gateway on it, on a free loopback port.
pub(crate) async fn spawn_gateway(dir: &std::path::Path, config: &str) -> anyhow::Result<Proc> {
    let file = dir.join("floodway.toml");
    std::fs::write(&file, config)?;
    spawn(&[
        "serve".into(),
        "--config".into(),
        file.display().to_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--data-dir".into(),
        dir.join("data").display().to_string(),
    ])
    .await
}

/// GETs `url` as JSON, `None` on any failure.
pub(crate) async fn get(client: &reqwest::Client, url: &str) -> Option<Value> {
    let bytes = client.get(url).send().await.ok()?.bytes().await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Runs the demo; returns the report's path.
pub async fn run(args: Args) -> anyhow::Result<PathBuf> {
    let dir = tempfile_dir()?;
    let cap = args.capacity.max(2);
    let secs = args.duration.as_secs_f64();
    let schedule = format!(
        "0s:rate={cap},{}ms:rate={},{}ms:rate={cap}",
        (secs * 400.0) as u64,
        cap / 2,
        (secs * 700.0) as u64
    );
    let sink = spawn(&[
        "sink-sim".into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--rate".into(),
        cap.to_string(),
        "--schedule".into(),
        schedule,
    ])
    .await?;
    let gw = spawn_gateway(
        &dir,
        &format!(
            "[topics.demo]\nsink = {{ type = \"http\", url = \"{}/in\", timeout = \"5s\" }}\nmax_backlog_events = {}\nretry = {{ max_attempts = 100, base = \"50ms\", max = \"2s\" }}\nconcurrency = {{ algorithm = \"vegas\", min = 1, max = 64 }}\nworkers = {{ min = 4, max = 64 }}\n",
            sink.url,
            cap * 5
        ),
    )
    .await?;
    let load_args = load::Args {
        url: format!("{}/v1/topics/demo/events", gw.url),
        rate: f64::from(cap) * args.overload,
        duration: args.duration,
        connections: 128,
        arrival: load::Arrival::Poisson,
        schedule: None,
        body_size: 128,
        batch: 1,
        priority_mix: Some("critical=5,high=15,normal=60,low=20".into()),
        honour_retry_after: false,
        out: None,
        seed: 7,
    };
    println!(
        "floodway demo: {} producers' worth of load ({:.0} events/s, {}x) against a sink of {cap}/s that halves from {:.0}s to {:.0}s",
        128,
        f64::from(cap) * args.overload,
        args.overload,
        secs * 0.4,
        secs * 0.7
    );
    let client = reqwest::Client::new();
    let start = Instant::now();
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = {
        let (client, gw_url, sink_url) = (client.clone(), gw.url.clone(), sink.url.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return samples,
                }
                let topic = get(&client, &format!("{gw_url}/v1/topics/demo"))
                    .await
                    .unwrap_or_default();
                let sinks = get(&client, &format!("{sink_url}/stats"))
                    .await
                    .unwrap_or_default();
                let level = match topic["pressure"].as_str() {
                    Some("elevated") => 1.0,
                    Some("saturated") => 2.0,
                    Some("overloaded") => 3.0,
                    _ => 0.0,
                };
                let s = Sample {
                    t: start.elapsed().as_secs_f64(),
                    backlog: topic["backlog_events"].as_f64().unwrap_or(0.0),
                    pressure: level,
                    limit: topic["concurrency_limit"].as_f64().unwrap_or(0.0),
                    workers: topic["workers"].as_f64().unwrap_or(0.0),
                    sink_delivered: sinks["distinct"].as_f64().unwrap_or(0.0),
                    sink_capacity: sinks["rate"].as_f64().unwrap_or(0.0),
                };
                println!(
                    "t={:>4.0}s backlog {:>6.0}  pressure {:<10} pace {:>6.0}/s  limit {:>3.0}  workers {:>3.0}  delivered {:>7.0}",
                    s.t,
                    s.backlog,
                    topic["pressure"].as_str().unwrap_or("?"),
                    topic["delivery_rate_limit"].as_f64().unwrap_or(0.0),
                    s.limit,
                    s.workers,
                    s.sink_delivered
                );
                samples.push(s);
            }
        })
    };
    let report = load::run(load_args, true).await?;
    // Let the backlog drain (bounded), so "acknowledged but never delivered" is a real count.
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < drain_deadline {
        let sinks = get(&client, &format!("{}/stats", sink.url))
            .await
            .unwrap_or_default();
        if sinks["distinct"].as_u64().unwrap_or(0) >= report.accepted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.send_replace(true);
    let samples = sampler.await?;
    let sinks = get(&client, &format!("{}/stats", sink.url))
        .await
        .unwrap_or_default();
    let topic = get(&client, &format!("{}/v1/topics/demo", gw.url))
        .await
        .unwrap_or_default();
    println!();
    load::print_summary(&report);
    let undelivered = report.accepted as i64 - sinks["distinct"].as_i64().unwrap_or(0);
    println!(
        "delivered {:>10}  (distinct ids at the sink; {} duplicates)",
        sinks["distinct"], sinks["duplicates"]
    );
    println!("acknowledged but not delivered: {undelivered}");
    println!(
        "accept-to-delivery latency: p50 {} ms, p99 {} ms",
        sinks["end_to_end_ms"]["p50"], sinks["end_to_end_ms"]["p99"]
    );
    println!("dead letters: {}", topic["dead_letters"]);
    let steps = convergence(&samples);
    for c in &steps {
        match c.seconds {
            Some(secs) => println!(
                "capacity -> {:.0}/s at t={:.0}s: delivery within 5% of it after {secs:.1} s",
                c.capacity, c.at
            ),
            None => println!(
                "capacity -> {:.0}/s at t={:.0}s: delivery never came within 5% of it",
                c.capacity, c.at
            ),
        }
    }
    std::fs::create_dir_all(&args.report)?;
    let charts = charts(&report, &samples);
    for (name, svg) in &charts {
        std::fs::write(args.report.join(format!("{name}.svg")), svg)?;
    }
    let path = args.report.join("report.html");
    std::fs::write(&path, render(&args, &report, &charts, undelivered, &steps))?;
    println!("report: {}", path.display());
    let _ = std::fs::remove_dir_all(&dir);
    Ok(path)
}

/// A fresh directory under the system temp dir.
pub(crate) fn tempfile_dir() -> anyhow::Result<PathBuf> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("floodway-run-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A series: its name, colour and points.
type Series = (&'static str, &'static str, Vec<(f64, f64)>);

/// A line chart as a standalone SVG (no scripts, no fonts to fetch).
fn line_chart(title: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 260.0, 60.0, 150.0, 30.0, 35.0);
    let pts = series.iter().flat_map(|s| s.2.iter());
    let x_max = pts.clone().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = pts.map(|p| p.1).fold(1.0f64, f64::max) * 1.1;
    let x = |v: f64| left + v / x_max * (w - left - right);
    let y = |v: f64| top + (1.0 - v / y_max) * (h - top - bottom);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="#fff"/><text x="{left}" y="18" font-size="13" font-weight="bold">{title}</text>"##
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            w - right,
            left - 4.0,
            y(v) + 4.0,
            yy = y(v)
        );
    }
    for i in 0..=5 {
        let v = x_max * f64::from(i) / 5.0;
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{v:.0}</text>"##,
            x(v),
            h - bottom + 14.0
        );
    }
    let _ = write!(
        svg,
        r##"<text x="{:.1}" y="{}" text-anchor="middle">seconds</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{y_label}</text>"##,
        (left + w - right) / 2.0,
        h - 5.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="1.8" points="{}"/><rect x="{}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{}">{name}</text>"##,
            path.join(" "),
            w - right + 10.0,
            top + 16.0 * i as f64,
            w - right + 24.0,
            top + 9.0 + 16.0 * i as f64
        );
    }
    svg.push_str("</svg>");
    svg
}

fn charts(r: &load::Report, samples: &[Sample]) -> Vec<(&'static str, String)> {
    let per_second = |f: &dyn Fn(&load::Second) -> f64| -> Vec<(f64, f64)> {
        r.seconds.iter().map(|s| (s.t as f64 + 0.5, f(s))).collect()
    };
    let sampled = |f: &dyn Fn(&Sample) -> f64| -> Vec<(f64, f64)> {
        samples.iter().map(|s| (s.t, f(s))).collect()
    };
    let delivered_rate: Vec<(f64, f64)> = samples
        .windows(2)
        .map(|w| {
            (
                w[1].t,
                (w[1].sink_delivered - w[0].sink_delivered) / (w[1].t - w[0].t).max(1e-3),
            )
        })
        .collect();
    vec![
        (
            "rates",
            line_chart(
                "Offered vs accepted vs delivered",
                "events per second",
                &[
                    ("offered", "#888", per_second(&|s| s.offered as f64)),
                    ("accepted", "#1f77b4", per_second(&|s| s.accepted as f64)),
                    ("delivered", "#2ca02c", delivered_rate),
                    ("sink capacity", "#d62728", sampled(&|s| s.sink_capacity)),
                ],
            ),
        ),
        (
            "backlog",
            line_chart(
                "Backlog",
                "events",
                &[("backlog", "#9467bd", sampled(&|s| s.backlog))],
            ),
        ),
        (
            "pressure",
            line_chart(
                "Pressure level (0 normal .. 3 overloaded)",
                "level",
                &[("pressure", "#ff7f0e", sampled(&|s| s.pressure))],
            ),
        ),
        (
            "concurrency",
            line_chart(
                "Delivery concurrency limit and workers",
                "count",
                &[
                    ("limit", "#17becf", sampled(&|s| s.limit)),
                    ("workers", "#bcbd22", sampled(&|s| s.workers)),
                ],
            ),
        ),
        (
            "refusals",
            line_chart(
                "Refusals by status",
                "requests per second",
                &[
                    (
                        "429",
                        "#e377c2",
                        per_second(&|s| *s.refused.get(&429).unwrap_or(&0) as f64),
                    ),
                    (
                        "503",
                        "#d62728",
                        per_second(&|s| *s.refused.get(&503).unwrap_or(&0) as f64),
                    ),
                ],
            ),
        ),
        (
            "latency",
            line_chart(
                "Accepted ingest latency, p99 per second",
                "milliseconds",
                &[("p99", "#1f77b4", per_second(&|s| s.accepted_p99_ms))],
            ),
        ),
    ]
}

/// How the delivered rate followed one change of the sink's capacity.
#[derive(Clone, Debug, PartialEq)]
struct Convergence {
    /// When the capacity changed (seconds into the run).
    at: f64,
    /// The new capacity (events/s).
    capacity: f64,
    /// Seconds until the delivered rate, over a 2 s window that starts after the change, was
    /// first within 5% of the new capacity; `None` if it never was before the next change.
    seconds: Option<f64>,
}

/// Reads, from the per-second samples, how long delivery took to settle at each new capacity.
fn convergence(samples: &[Sample]) -> Vec<Convergence> {
    const WINDOW: f64 = 2.0;
    let mut out = Vec::new();
    for i in 1..samples.len() {
        let cap = samples[i].sink_capacity;
        if cap == samples[i - 1].sink_capacity || cap <= 0.0 {
            continue;
        }
        // The change happened between samples i-1 and i; count from i-1 (the last sample at the
        // old capacity), so the figure is never flattered.
        let start = i - 1;
        let end = (i..samples.len())
            .find(|&k| samples[k].sink_capacity != cap)
            .unwrap_or(samples.len());
        let seconds = (start..end).find_map(|j| {
            let k = (start..=j)
                .rev()
                .find(|&k| samples[j].t - samples[k].t >= WINDOW)?;
            let rate = (samples[j].sink_delivered - samples[k].sink_delivered)
                / (samples[j].t - samples[k].t);
            ((rate - cap).abs() <= 0.05 * cap).then(|| samples[j].t - samples[start].t)
        });
        out.push(Convergence {
            at: samples[start].t,
            capacity: cap,
            seconds,
        });
    }
    out
}

fn render(
    args: &Args,
    r: &load::Report,
    charts: &[(&'static str, String)],
    undelivered: i64,
    steps: &[Convergence],
) -> String {
    let refused: u64 = r.refused.values().sum();
    let mut html = String::new();
    let _ = write!(
        html,
        r#"<!doctype html><html><head><meta charset="utf-8"><title>floodway demo</title><style>body{{font-family:sans-serif;max-width:760px;margin:2em auto}}td{{padding:2px 10px}}</style></head><body><h1>floodway demo</h1><p>{:.0}s of load at {}x a sink of {}/s whose capacity halves from 40% to 70% of the run.</p><table><tr><td>offered</td><td>{}</td></tr><tr><td>accepted (202, durable)</td><td>{}</td></tr><tr><td>refused with Retry-After</td><td>{refused}</td></tr><tr><td>acknowledged but not delivered</td><td>{undelivered}</td></tr><tr><td>accepted p99 latency</td><td>{:.1} ms</td></tr></table>"#,
        args.duration.as_secs_f64(),
        args.overload,
        args.capacity,
        r.offered,
        r.accepted,
        r.accepted_latency.p99
    );
    html.push_str("<table>");
    for c in steps {
        let _ = write!(
            html,
            "<tr><td>capacity to {:.0}/s at {:.0} s</td><td>{}</td></tr>",
            c.capacity,
            c.at,
            c.seconds.map_or_else(
                || "delivery never within 5% of it".to_owned(),
                |s| format!("delivery within 5% of it after {s:.1} s")
            )
        );
    }
    html.push_str("</table>");
    for (_, svg) in charts {
        html.push_str("<div>");
        html.push_str(svg);
        html.push_str("</div>");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples one per second: the sink's capacity and the delivered rate in each second.
    fn samples(seconds: &[(f64, f64)]) -> Vec<Sample> {
        let mut delivered = 0.0;
        seconds
            .iter()
            .enumerate()
            .map(|(t, &(capacity, rate))| {
                delivered += rate;
                Sample {
                    t: t as f64,
                    sink_delivered: delivered,
                    sink_capacity: capacity,
                    ..Sample::default()
                }
            })
            .collect()
    }

    #[test]
    fn convergence_is_read_per_capacity_change() {
        // 200/s, then 100/s from t=3 (delivery overshoots for two seconds), then 200/s from t=9
        // (delivery reaches it after climbing for three seconds), then it never settles.
        let s = samples(&[
            (200.0, 200.0),
            (200.0, 200.0),
            (200.0, 200.0),
            (100.0, 180.0),
            (100.0, 140.0),
            (100.0, 100.0),
            (100.0, 100.0),
            (100.0, 100.0),
            (100.0, 100.0),
            (200.0, 120.0),
            (200.0, 160.0),
            (200.0, 200.0),
            (200.0, 200.0),
            (200.0, 200.0),
            (50.0, 200.0),
            (50.0, 200.0),
            (50.0, 200.0),
        ]);
        let c = convergence(&s);
        assert_eq!(c.len(), 3);
        // Window (k, j]: the first 2 s window starting at t=2 whose rate is 100 ± 5 ends at t=6.
        assert_eq!(
            (c[0].at, c[0].capacity, c[0].seconds),
            (2.0, 100.0, Some(4.0))
        );
        assert_eq!(
            (c[1].at, c[1].capacity, c[1].seconds),
            (8.0, 200.0, Some(4.0))
        );
        assert_eq!((c[2].at, c[2].capacity, c[2].seconds), (13.0, 50.0, None));
    }
}
