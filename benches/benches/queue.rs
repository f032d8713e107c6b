//! The floodway queue beside tokio's bounded mpsc and flume's bounded channel, in the same run:
//! SPSC and MPSC (2 producers), async send/receive on a 2-worker runtime, capacity 1024.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use floodway::{Clock, DeadLetter, Overflow, Queue};

#[path = "common/paired.rs"]
mod paired;

const ITEMS: u64 = 20_000;
const CAPACITY: usize = 1024;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap()
}

/// A bounded queue that makes producers wait when full, as the channels beside it do.
fn blocking_queue(clock: Clock) -> Queue<u64> {
    Queue::builder()
        .clock(clock)
        .max_items(CAPACITY)
        .overflow(Overflow::Block)
        .dead_letter(|_l: DeadLetter<u64>| {
            unreachable!("a blocking queue without deadlines drops nothing")
        })
        .build()
        .unwrap()
}

/// Spawns `producers` tasks, each given a clone of `tx` and its share of `ITEMS` to send with
/// `produce`; returns how many items the consumer must take. `tx` itself is dropped here, so a
/// channel closes once the producers are done.
fn spawn_producers<T, F, Fut>(producers: u64, tx: T, produce: F) -> u64
where
    T: Clone,
    F: Fn(T, u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let per = ITEMS / producers;
    for _ in 0..producers {
        tokio::spawn(produce(tx.clone(), per));
    }
    per * producers
}

async fn floodway_run(producers: u64, clock: Clock) {
    let q = blocking_queue(clock);
    let total = spawn_producers(producers, q.clone(), |q, n| async move {
        for i in 0..n {
            q.push(i).await.unwrap();
        }
    });
    for _ in 0..total {
        std::hint::black_box(q.pop().await.unwrap());
    }
}

async fn tokio_run(producers: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
    let total = spawn_producers(producers, tx, |tx, n| async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    for _ in 0..total {
        std::hint::black_box(rx.recv().await.unwrap());
    }
}

/// tokio's channel carrying what floodway measures: each item stamped when sent, its sojourn
/// computed when received. The baseline for equal functionality.
async fn tokio_timestamped_run(producers: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(tokio::time::Instant, u64)>(CAPACITY);
    let total = spawn_producers(producers, tx, |tx, n| async move {
        for i in 0..n {
            tx.send((tokio::time::Instant::now(), i)).await.unwrap();
        }
    });
    for _ in 0..total {
        let (sent, item) = rx.recv().await.unwrap();
        std::hint::black_box((sent.elapsed(), item));
    }
}

async fn flume_run(producers: u64) {
    let (tx, rx) = flume::bounded::<u64>(CAPACITY);
    let total = spawn_producers(producers, tx, |tx, n| async move {
        for i in 0..n {
            tx.send_async(i).await.unwrap();
        }
    });
    for _ in 0..total {
        std::hint::black_box(rx.recv_async().await.unwrap());
    }
}

/// Batched consumers: floodway's `pop_many` beside tokio's `recv_many`, 64 at a time.
async fn floodway_batched(producers: u64) {
    let q = blocking_queue(Clock::tokio());
    let total = spawn_producers(producers, q.clone(), |q, n| async move {
        for i in 0..n {
            q.push(i).await.unwrap();
        }
    });
    let mut buf = Vec::with_capacity(64);
    let mut got = 0;
    while got < total {
        got += q.pop_many(&mut buf, 64).await as u64;
        std::hint::black_box(&buf);
        buf.clear();
    }
}

async fn tokio_batched(producers: u64) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
    let total = spawn_producers(producers, tx, |tx, n| async move {
        for i in 0..n {
            tx.send(i).await.unwrap();
        }
    });
    let mut buf = Vec::with_capacity(64);
    let mut got = 0;
    while got < total {
        got += rx.recv_many(&mut buf, 64).await as u64;
        std::hint::black_box(&buf);
        buf.clear();
    }
}

/// No contention and no wake-ups: fill then drain from one thread, to separate the data structure's
/// cost from the cost of crossing cores.
fn uncontended(c: &mut Criterion) {
    let mut g = c.benchmark_group("queue_uncontended");
    g.throughput(Throughput::Elements(CAPACITY as u64));
    let q = Queue::builder()
        .max_items(CAPACITY)
        .overflow(Overflow::Reject)
        .dead_letter(|_l: DeadLetter<u64>| unreachable!("nothing is dropped"))
        .build()
        .unwrap();
    g.bench_function("floodway", |b| {
        b.iter(|| {
            for i in 0..CAPACITY as u64 {
                q.try_push(i).unwrap();
            }
            for _ in 0..CAPACITY {
                std::hint::black_box(q.try_pop().unwrap());
            }
        })
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(CAPACITY);
    g.bench_function("tokio_mpsc", |b| {
        b.iter(|| {
            for i in 0..CAPACITY as u64 {
                tx.try_send(i).unwrap();
            }
            for _ in 0..CAPACITY {
                std::hint::black_box(rx.try_recv().unwrap());
            }
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(ITEMS));
    for producers in [1u64, 2] {
        let name = if producers == 1 { "spsc" } else { "mpsc2" };
        g.bench_function(BenchmarkId::new("floodway", name), |b| {
            b.iter(|| rt.block_on(floodway_run(producers, Clock::tokio())))
        });
        g.bench_function(BenchmarkId::new("floodway_tsc", name), |b| {
            b.iter(|| rt.block_on(floodway_run(producers, Clock::tsc())))
        });
        g.bench_function(BenchmarkId::new("tokio_mpsc", name), |b| {
            b.iter(|| rt.block_on(tokio_run(producers)))
        });
        g.bench_function(BenchmarkId::new("tokio_mpsc_timestamped", name), |b| {
            b.iter(|| rt.block_on(tokio_timestamped_run(producers)))
        });
        g.bench_function(BenchmarkId::new("flume", name), |b| {
            b.iter(|| rt.block_on(flume_run(producers)))
        });
        g.bench_function(BenchmarkId::new("floodway_batch64", name), |b| {
            b.iter(|| rt.block_on(floodway_batched(producers)))
        });
        g.bench_function(BenchmarkId::new("tokio_mpsc_batch64", name), |b| {
            b.iter(|| rt.block_on(tokio_batched(producers)))
        });
    }
    g.finish();
}

/// Paired runs of tokio's channel and floodway's queue (see `common/paired.rs`).
fn run_paired(rounds: usize) {
    let rt = runtime();
    for producers in [1u64, 2] {
        let name = if producers == 1 { "spsc" } else { "mpsc2" };
        for (label, clock) in [
            ("default clock", Clock::tokio()),
            ("Clock::tsc", Clock::tsc()),
        ] {
            let tokio = || rt.block_on(tokio_run(producers));
            let ours = || rt.block_on(floodway_run(producers, clock.clone()));
            let r = paired::ratios(rounds, &tokio, &ours);
            println!(
                "queue {name}, {label}: tokio / floodway {}, >= 0.9x in {} of {rounds} rounds",
                r.summary(),
                r.at_least(0.9)
            );
        }
    }
}

criterion_group!(benches, uncontended, bench);

/// criterion's benches, or with `FLOODWAY_PAIRED=ROUNDS` the paired runs instead.
fn main() {
    paired::main(benches, run_paired);
}
