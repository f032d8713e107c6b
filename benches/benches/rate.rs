//! GCRA `check` beside governor's, in the same run, each on both of its clocks: floodway on
//! `tokio::time::Instant` (its default) and on the CPU counter (`Clock::tsc`), governor on the
//! monotonic clock (`MonotonicClock`) and on its default counter clock (`QuantaClock`). The quota
//! never runs out, so every check is an allowed one: the common path.
//!
//! `FLOODWAY_PAIRED=ROUNDS` runs paired rounds instead of criterion (see `common/paired.rs`):
//! governor and floodway take turns, each doing `CHECKS` checks per round, on the same clock kind,
//! with each result kept whole and as a decision only, and once more against governor returning
//! its state on success (what floodway's `Allowed` holds: the figures of the RateLimit headers).

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group};

#[path = "common/paired.rs"]
mod paired;

/// Checks per round of a paired run: a few milliseconds.
const CHECKS: u32 = 100_000;

fn big() -> NonZeroU32 {
    NonZeroU32::new(1_000_000_000).unwrap()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_check");
    g.throughput(Throughput::Elements(1));

    let ours = floodway::RateLimiter::new(floodway::Quota::per_second(big()));
    g.bench_function("floodway", |b| b.iter(|| black_box(ours.check()).is_ok()));

    let tsc = floodway::RateLimiter::with_clock(
        floodway::Quota::per_second(big()),
        floodway::Clock::tsc(),
    );
    g.bench_function("floodway_tsc", |b| {
        b.iter(|| black_box(tsc.check()).is_ok())
    });

    let quota = governor::Quota::per_second(big());
    let mono = governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock);
    g.bench_function("governor_monotonic", |b| {
        b.iter(|| black_box(mono.check()).is_ok())
    });

    let quanta =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::QuantaClock::default());
    g.bench_function("governor_quanta", |b| {
        b.iter(|| black_box(quanta.check()).is_ok())
    });
    // The clock read alone, to separate it from the limiter's arithmetic.
    g.bench_function("clock_read_tokio_instant", |b| {
        b.iter(tokio::time::Instant::now)
    });
    g.finish();
}

/// `CHECKS` checks on `limiter`, each result kept whole (`black_box` of the `Result`, as in the
/// criterion benches), or only its yes or no (what a caller that asks "may I?" pays, since the
/// figures of floodway's `Allowed` are then never materialized).
macro_rules! checks {
    ($limiter:expr, whole) => {
        || (0..CHECKS).for_each(|_| _ = black_box($limiter.check()).is_ok())
    };
    ($limiter:expr, decision) => {
        || (0..CHECKS).for_each(|_| _ = black_box($limiter.check().is_ok()))
    };
}

/// Paired rounds of `CHECKS` checks each: governor's time over floodway's, on each clock kind,
/// with the results kept whole and as a decision only, then whole against governor returning its
/// state.
fn run_paired(rounds: usize) {
    let quota = governor::Quota::per_second(big());
    let ours = floodway::RateLimiter::new(floodway::Quota::per_second(big()));
    let tsc = floodway::RateLimiter::with_clock(
        floodway::Quota::per_second(big()),
        floodway::Clock::tsc(),
    );
    let mono = governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock);
    let quanta =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::QuantaClock::default());
    // governor returning its state on success, as floodway's `Allowed` carries the figures of
    // the RateLimit headers: the same information on both sides.
    let mono_info =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock)
            .with_middleware::<governor::middleware::StateInformationMiddleware>();
    let quanta_info =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::QuantaClock::default())
            .with_middleware::<governor::middleware::StateInformationMiddleware>();
    let mono_clocks = "monotonic clocks (floodway's default)";
    let counter_clocks = "counter clocks (Clock::tsc, governor's default)";
    for (label, kept, r) in [
        (
            mono_clocks,
            "whole result",
            paired::ratios(rounds, &checks!(mono, whole), &checks!(ours, whole)),
        ),
        (
            mono_clocks,
            "decision only",
            paired::ratios(rounds, &checks!(mono, decision), &checks!(ours, decision)),
        ),
        (
            counter_clocks,
            "whole result",
            paired::ratios(rounds, &checks!(quanta, whole), &checks!(tsc, whole)),
        ),
        (
            counter_clocks,
            "decision only",
            paired::ratios(rounds, &checks!(quanta, decision), &checks!(tsc, decision)),
        ),
        (
            mono_clocks,
            "whole result, governor with its state (StateInformationMiddleware)",
            paired::ratios(rounds, &checks!(mono_info, whole), &checks!(ours, whole)),
        ),
        (
            counter_clocks,
            "whole result, governor with its state (StateInformationMiddleware)",
            paired::ratios(rounds, &checks!(quanta_info, whole), &checks!(tsc, whole)),
        ),
    ] {
        println!(
            "gcra check, {label}, {kept}: governor / floodway time {}, floodway no slower in {} \
             of {rounds} rounds",
            r.summary(),
            r.at_least(1.0)
        );
    }
}

criterion_group!(benches, bench);

/// criterion's benches, or with `FLOODWAY_PAIRED=ROUNDS` the paired runs instead.
fn main() {
    paired::main(benches, run_paired);
}
