//! GCRA `check` beside governor's, in the same run, each on both of its clocks: floodway on
//! `tokio::time::Instant` (its default) and on the CPU counter (`Clock::tsc`), governor on the
//! monotonic clock (`MonotonicClock`) and on its default counter clock (`QuantaClock`). The quota never runs out, so every check is an allowed one:
//! the common path.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let big = NonZeroU32::new(1_000_000_000).unwrap();
    let mut g = c.benchmark_group("gcra_check");
    g.throughput(Throughput::Elements(1));

    let ours = floodway::RateLimiter::new(floodway::Quota::per_second(big));
    g.bench_function("floodway", |b| {
        b.iter(|| std::hint::black_box(ours.check()).is_ok())
    });

    let tsc =
        floodway::RateLimiter::with_clock(floodway::Quota::per_second(big), floodway::Clock::tsc());
    g.bench_function("floodway_tsc", |b| {
        b.iter(|| std::hint::black_box(tsc.check()).is_ok())
    });

    let quota = governor::Quota::per_second(big);
    let mono = governor::RateLimiter::direct_with_clock(quota, governor::clock::MonotonicClock);
    g.bench_function("governor_monotonic", |b| {
        b.iter(|| std::hint::black_box(mono.check()).is_ok())
    });

    let quanta =
        governor::RateLimiter::direct_with_clock(quota, governor::clock::QuantaClock::default());
    g.bench_function("governor_quanta", |b| {
        b.iter(|| std::hint::black_box(quanta.check()).is_ok())
    });
    // The clock read alone, to separate it from the limiter's arithmetic.
    g.bench_function("clock_read_tokio_instant", |b| {
        b.iter(tokio::time::Instant::now)
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
