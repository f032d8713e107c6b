//! Shedding through the public API: CoDel in a queue, priority-aware victims, adaptive LIFO,
//! and the client-side throttle.

mod common;

use std::time::Duration;

use common::{assert_conserved, builder};
use floodway::queue::Meta;
use floodway::{AdaptiveThrottle, CoDel, DropReason, Priority};
use tokio::time::advance;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Keeps a standing queue: `arrivals` per ms, one pop per ms, for `total` ms.
async fn run_standing(
    q: &floodway::Queue<(Priority, u32)>,
    total: u64,
    mix: &[Priority],
) -> Vec<(Priority, u32)> {
    let mut served = Vec::new();
    let mut n = 0;
    for _ in 0..total {
        for &p in mix {
            n += 1;
            q.try_push_with((p, n), Meta::priority(p)).unwrap();
        }
        advance(ms(1)).await;
        if let Ok(popped) = q.try_pop() {
            served.push(popped.item);
        }
    }
    served
}

#[tokio::test(start_paused = true)]
async fn codel_sheds_a_standing_queue_lowest_class_first() {
    let (b, dead) = builder::<(Priority, u32)>();
    let q = b
        .max_items(100_000)
        .codel(CoDel::new(ms(5), ms(100)))
        .build()
        .unwrap();
    // Two arrivals per ms (one critical, one low), one departure: a queue that keeps growing.
    let served = run_standing(&q, 1000, &[Priority::Critical, Priority::Low]).await;
    let shed = dead.items_with(DropReason::Shed);
    assert!(!shed.is_empty(), "a standing queue must be shed");
    assert!(
        shed.iter().all(|(p, _)| *p == Priority::Low),
        "critical items are shed last"
    );
    assert!(served.iter().all(|(p, _)| *p == Priority::Critical));
    assert!(q.stats().standing);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn codel_leaves_a_short_burst_alone() {
    let (b, dead) = builder::<(Priority, u32)>();
    let q = b.codel(CoDel::new(ms(5), ms(100))).build().unwrap();
    // A burst of 50 items drained at one per ms: sojourns exceed target for 50 ms only.
    for i in 0..50 {
        q.try_push((Priority::Normal, i)).unwrap();
    }
    for _ in 0..50 {
        advance(ms(1)).await;
        q.try_pop().unwrap();
    }
    assert_eq!(dead.len(), 0);
    assert!(!q.stats().standing);
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_serves_newest_under_a_standing_queue() {
    let (b, _dead) = builder::<(Priority, u32)>();
    let q = b
        .codel(CoDel::new(ms(5), ms(100)))
        .adaptive_lifo(true)
        .max_items(100_000)
        .build()
        .unwrap();
    let served = run_standing(&q, 400, &[Priority::Normal, Priority::Normal]).await;
    // FIFO at first (ids rise slowly), then newest first once the queue is standing: the last
    // items served are recent ones, far ahead of where FIFO order would be.
    let last = served.last().unwrap().1;
    assert!(
        last > 700,
        "LIFO serves recent arrivals (served id {last} of 800)"
    );
    let early = served[10].1;
    assert!(early < 30, "FIFO while calm (served id {early})");
}

#[test]
fn throttle_probability_follows_the_formula() {
    let t = AdaptiveThrottle::with_seed(2.0, Duration::from_secs(60), 7);
    assert_eq!(t.probability(), 0.0);
    // 100 requests, 10 accepted: p = (100 - 2*10) / 101.
    let mut sent = 0;
    for i in 0..100 {
        if t.try_acquire().is_ok() {
            sent += 1;
            t.record(i < 10);
        }
    }
    // All requests count, accepted or rejected locally; only 10 were accepted by the backend.
    let p = t.probability();
    assert!((p - 80.0 / 101.0).abs() < 1e-9, "p = {p}");
    assert!(sent < 100, "some requests were rejected locally");
}

#[test]
fn a_healthy_backend_is_never_throttled() {
    let t = AdaptiveThrottle::with_seed(2.0, Duration::from_secs(60), 1);
    for _ in 0..1000 {
        t.try_acquire().unwrap();
        t.record(true);
    }
    assert_eq!(t.probability(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn throttle_forgets_outside_its_window() {
    let t = AdaptiveThrottle::with_seed(2.0, Duration::from_secs(10), 3);
    for _ in 0..50 {
        let _ = t.try_acquire();
    }
    assert!(t.probability() > 0.9);
    advance(Duration::from_secs(11)).await;
    assert_eq!(t.probability(), 0.0);
}
