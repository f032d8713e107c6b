//! Simulation of the adaptive concurrency algorithms against a downstream whose capacity steps.
//!
//! Each scenario is a data file in `tests/data/concurrency/`: the downstream model, the algorithm and
//! its settings, and for every phase the band the limit must settle into and how many rounds it may
//! take. A round is one update interval: the client takes every permit the limiter grants (it always
//! has work), the simulated downstream answers each, and the round's samples close exactly one
//! window. Time is paused tokio time, so RTTs are exact and the test takes no wall time.
//!
//! The downstream serves `capacity` requests at once in `base_rtt_ms`; with more in flight it shares
//! itself among them (processor sharing: each takes `base · n / capacity`), up to
//! `capacity · (1 + queue_factor)` requests, and refuses the rest at once (1 ms, a drop).

use std::path::Path;
use std::time::Duration;

use floodway::limit::concurrency::{Aimd, Gradient2, LimitAlgorithm, Vegas};
use floodway::{ConcurrencyLimiter, Priority};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    base_rtt_ms: u64,
    queue_factor: f64,
    algorithm: AlgorithmSpec,
    phase: Vec<Phase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlgorithmSpec {
    name: String,
    min: usize,
    max: usize,
    initial: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Phase {
    capacity: usize,
    rounds: usize,
    settle_within: usize,
    band: [usize; 2],
}

fn algorithm(spec: &AlgorithmSpec) -> Box<dyn FnOnce() -> ConcurrencyLimiter> {
    fn build(a: impl LimitAlgorithm) -> ConcurrencyLimiter {
        ConcurrencyLimiter::builder(a)
            .max_window(Duration::from_secs(3600))
            .build()
            .unwrap()
    }
    let (min, max, initial) = (spec.min, spec.max, spec.initial);
    match spec.name.as_str() {
        "aimd" => Box::new(move || build(Aimd::new(min, max).initial(initial))),
        "vegas" => Box::new(move || build(Vegas::new(min, max).initial(initial))),
        "gradient2" => Box::new(move || build(Gradient2::new(min, max).initial(initial))),
        other => panic!("unknown algorithm {other}"),
    }
}

/// Runs one round; returns the limit after it.
async fn round(limiter: &ConcurrencyLimiter, capacity: usize, s: &Scenario) -> usize {
    let mut permits = Vec::new();
    while let Ok(p) = limiter.try_acquire(Priority::Normal) {
        permits.push(p);
    }
    let n = permits.len();
    let holds = ((capacity as f64) * (1.0 + s.queue_factor)).floor() as usize;
    let accepted = n.min(holds);
    let base = Duration::from_millis(s.base_rtt_ms);
    let rtt = base.mul_f64((accepted as f64 / capacity as f64).max(1.0));
    let refused: Vec<_> = permits.drain(accepted..).collect();
    tokio::time::advance(Duration::from_millis(1)).await;
    refused.into_iter().for_each(|p| p.dropped());
    tokio::time::advance(rtt - Duration::from_millis(1)).await;
    permits.into_iter().for_each(|p| p.success());
    limiter.limit()
}

async fn check(file: &Path) {
    let text = std::fs::read_to_string(file).unwrap();
    let s: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let limiter = algorithm(&s.algorithm)();
    let mut trace = Vec::new();
    for (i, phase) in s.phase.iter().enumerate() {
        let mut limits = Vec::new();
        for _ in 0..phase.rounds {
            limits.push(round(&limiter, phase.capacity, &s).await);
        }
        let settled = &limits[phase.settle_within..];
        let [low, high] = phase.band;
        let outside: Vec<_> = settled.iter().filter(|&&l| l < low || l > high).collect();
        trace.push(format!(
            "phase {i} (capacity {}): {limits:?}",
            phase.capacity
        ));
        assert!(
            outside.is_empty(),
            "{}: phase {i}: after {} rounds the limit must stay in {low}..={high}\n{}",
            file.display(),
            phase.settle_within,
            trace.join("\n")
        );
    }
    println!("{}\n{}", file.display(), trace.join("\n"));
}

macro_rules! scenario {
    ($name:ident, $file:literal) => {
        #[tokio::test(start_paused = true)]
        async fn $name() {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/concurrency");
            check(&dir.join($file)).await;
        }
    };
}

scenario!(aimd_follows_a_capacity_step, "aimd-step.toml");
scenario!(vegas_follows_a_capacity_step, "vegas-step.toml");
scenario!(gradient2_follows_a_capacity_step, "gradient2-step.toml");
