//! A tower stack with floodway's rate-limit and concurrency layers in pass-through (limits never
//! reached) beside the bare service, in the same run: the per-call overhead of the layers.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use floodway::layer::{BoxError, ConcurrencyLimitLayer, RateLimitLayer};
use floodway::{ConcurrencyLimiter, Quota, RateLimiter};
use tower::{Service, ServiceBuilder, ServiceExt};

const CALLS: u64 = 1000;

async fn drive<S>(svc: &mut S)
where
    S: Service<u64, Response = u64>,
    S::Error: std::fmt::Debug,
{
    for i in 0..CALLS {
        let r = svc.ready().await.unwrap().call(i).await.unwrap();
        std::hint::black_box(r);
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("tower_layers");
    g.throughput(Throughput::Elements(CALLS));

    let mut bare = tower::service_fn(|x: u64| async move { Ok::<_, BoxError>(x + 1) });
    g.bench_function("bare", |b| b.iter(|| rt.block_on(drive(&mut bare))));

    let limiter = Arc::new(RateLimiter::new(Quota::per_second(
        NonZeroU32::new(1_000_000_000).unwrap(),
    )));
    let mut rate = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter.clone()))
        .service_fn(|x: u64| async move { Ok::<_, BoxError>(x + 1) });
    g.bench_function("rate_limit", |b| b.iter(|| rt.block_on(drive(&mut rate))));

    let mut both = ServiceBuilder::new()
        .layer(RateLimitLayer::new(limiter))
        .layer(ConcurrencyLimitLayer::new(ConcurrencyLimiter::fixed(
            1_000_000,
        )))
        .service_fn(|x: u64| async move { Ok::<_, BoxError>(x + 1) });
    g.bench_function("rate_and_concurrency", |b| {
        b.iter(|| rt.block_on(drive(&mut both)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
