//! The elastic pool: growth, shrink after stabilisation, no cancelled work, the desired signal.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::builder;
use floodway::ElasticPool;
use floodway::elastic::{ElasticConfigError, ScaleReason};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn grows_with_backlog_shrinks_after_the_window_and_finishes_all_work() {
    let (b, dead) = builder::<u32>();
    let queue = b.max_items(10_000).build().unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let (s, f) = (started.clone(), finished.clone());
    let pool = ElasticPool::builder()
        .workers(1, 8)
        .backlog_per_worker(10)
        .tick(secs(1))
        .stabilization(Duration::ZERO, secs(10))
        .max_steps(2, 1)
        .spawn(queue.clone(), move |_job| {
            let (s, f) = (s.clone(), f.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                // Each item takes 500 ms: long enough to be in flight when the pool shrinks.
                tokio::time::sleep(Duration::from_millis(500)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    let mut events = pool.events();
    for i in 0..200 {
        queue.push(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // First tick: 1 busy + 199/10 wanted, capped by the step of 2.
    assert_eq!(pool.stats().workers, 3);
    let e = events.recv().await.unwrap();
    assert_eq!((e.from, e.to, e.reason), (1, 3, ScaleReason::Backlog));
    tokio::time::sleep(secs(3)).await;
    assert_eq!(pool.stats().workers, 8, "grows to max in steps of 2");
    assert_eq!(*pool.desired().borrow(), 8);

    // Wait for the backlog to clear, then through the 10 s window: one step down per tick.
    while !queue.is_empty() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_at = pool.stats().workers;
    assert_eq!(drained_at, 8);
    tokio::time::sleep(secs(5)).await;
    assert_eq!(
        pool.stats().workers,
        8,
        "holds within the stabilisation window"
    );
    tokio::time::sleep(secs(20)).await;
    assert_eq!(pool.stats().workers, 1, "shrinks to min after the window");
    assert!(pool.stats().scale_downs >= 7);

    // Nothing was cancelled: every item that started finished, and every item was handled.
    assert_eq!(started.load(Ordering::SeqCst), 200);
    assert_eq!(finished.load(Ordering::SeqCst), 200);
    assert_eq!(pool.stats().completed, 200);
    assert_eq!(dead.len(), 0);
    pool.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn scaling_down_lets_in_flight_work_finish() {
    let (b, _dead) = builder::<u32>();
    let queue = b.build().unwrap();
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let pool = ElasticPool::builder()
        .workers(1, 4)
        .backlog_per_worker(1)
        .tick(secs(1))
        .stabilization(Duration::ZERO, Duration::ZERO)
        .max_steps(4, 4)
        .spawn(queue.clone(), move |_job| {
            let f = f.clone();
            async move {
                // Longer than the ticks that shrink the pool.
                tokio::time::sleep(secs(30)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        })
        .unwrap();
    for i in 0..4 {
        queue.push(i).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.stats().workers, 4);
    assert_eq!(pool.stats().busy, 4);
    // Shutdown retires every worker; all four items still run to the end.
    pool.shutdown().await;
    assert_eq!(finished.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn late_items_raise_the_desired_size() {
    let (b, _dead) = builder::<u32>();
    let queue = b.build().unwrap();
    let pool = ElasticPool::builder()
        .workers(1, 3)
        .backlog_per_worker(1000)
        .target_sojourn(Duration::from_millis(100))
        .tick(secs(1))
        .spawn(queue.clone(), |_job| async {
            tokio::time::sleep(secs(60)).await;
        })
        .unwrap();
    let mut events = pool.events();
    queue.push(1).await.unwrap();
    queue.push(2).await.unwrap();
    // Item 2 waits behind item 1; its sojourn passes the target before the first tick.
    let e = events.recv().await.unwrap();
    assert_eq!((e.from, e.to, e.reason), (1, 2, ScaleReason::Sojourn));
    drop(pool);
}

#[tokio::test]
async fn bad_bounds_are_refused() {
    let (b, _dead) = builder::<u32>();
    let queue = b.build().unwrap();
    let r = ElasticPool::builder()
        .workers(4, 2)
        .spawn(queue, |_j| async {});
    assert_eq!(r.unwrap_err(), ElasticConfigError::BadBounds);
}
