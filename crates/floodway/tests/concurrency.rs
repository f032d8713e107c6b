//! The concurrency limiter: permits, cancellation, wait queue, partitions.

use std::time::Duration;

use floodway::limit::concurrency::{AcquireError, Aimd, ConcurrencyConfigError, Fixed};
use floodway::{ConcurrencyLimiter, Priority};
use tokio::time::advance;

const N: Priority = Priority::Normal;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn permits_are_released_however_their_holder_ends() {
    let l = ConcurrencyLimiter::fixed(2);
    let a = l.try_acquire(N).unwrap();
    let b = l.try_acquire(N).unwrap();
    assert!(matches!(
        l.try_acquire(N),
        Err(AcquireError::Saturated { .. })
    ));
    // A task holding a permit is aborted mid-work: the permit comes back.
    let l2 = l.clone();
    drop(a);
    let task = tokio::spawn(async move {
        let _p = l2.try_acquire(N).unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    tokio::task::yield_now().await;
    assert_eq!(l.stats().in_flight, 2);
    task.abort();
    let _ = task.await;
    assert_eq!(l.stats().in_flight, 1);
    drop(b);
    assert_eq!(l.stats().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn wait_queue_serves_newest_first_and_times_out() {
    let l = ConcurrencyLimiter::builder(Fixed(1))
        .wait_queue(2, ms(100))
        .build()
        .unwrap();
    let held = l.try_acquire(N).unwrap();
    let (l1, l2, l3) = (l.clone(), l.clone(), l.clone());
    let first = tokio::spawn(async move { l1.acquire(N).await.map(|_p| "first") });
    tokio::task::yield_now().await;
    let second = tokio::spawn(async move {
        let p = l2.acquire(N).await?;
        tokio::time::sleep(ms(10)).await;
        drop(p);
        Ok::<_, AcquireError>("second")
    });
    tokio::task::yield_now().await;
    // The queue holds two: a third is refused at once.
    assert!(matches!(
        l3.acquire(N).await,
        Err(AcquireError::Saturated { .. })
    ));
    advance(ms(50)).await;
    drop(held);
    // LIFO: the newest waiter gets the slot.
    assert_eq!(second.await.unwrap().unwrap(), "second");
    // Then the older one, within its timeout.
    assert_eq!(first.await.unwrap().unwrap(), "first");

    let held = l.try_acquire(N).unwrap();
    let r = l.acquire(N).await;
    assert!(matches!(r, Err(AcquireError::Timeout { .. })));
    drop(held);
    let s = l.stats();
    assert_eq!(
        (s.in_flight, s.waiting, s.timed_out, s.refused),
        (0, 0, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_wait_leaves_no_trace() {
    let l = ConcurrencyLimiter::builder(Fixed(1))
        .wait_queue(4, Duration::from_secs(60))
        .build()
        .unwrap();
    let held = l.try_acquire(N).unwrap();
    let r = tokio::time::timeout(ms(10), l.acquire(N)).await;
    assert!(r.is_err());
    assert_eq!(l.stats().waiting, 0);
    drop(held);
    assert_eq!(l.stats().in_flight, 0);
    let _again = l.try_acquire(N).unwrap();
}

#[tokio::test(start_paused = true)]
async fn partitions_guarantee_a_share_to_each_class() {
    let l = ConcurrencyLimiter::builder(Fixed(10))
        .partitions([0.0, 0.2, 0.0, 0.5])
        .build()
        .unwrap();
    // Low-priority work fills the whole limit...
    let low: Vec<_> = (0..10)
        .map(|_| l.try_acquire(Priority::Low).unwrap())
        .collect();
    assert!(l.try_acquire(Priority::Low).is_err());
    // ...yet critical still gets its guaranteed 5 and normal its 2.
    let crit: Vec<_> = (0..5)
        .map(|_| l.try_acquire(Priority::Critical).unwrap())
        .collect();
    assert!(l.try_acquire(Priority::Critical).is_err());
    let normal: Vec<_> = (0..2)
        .map(|_| l.try_acquire(Priority::Normal).unwrap())
        .collect();
    assert!(l.try_acquire(Priority::Normal).is_err());
    assert!(l.try_acquire(Priority::High).is_err());
    assert_eq!(l.stats().in_flight, 17);
    drop((low, crit, normal));
    assert_eq!(l.stats().in_flight, 0);
    let bad = ConcurrencyLimiter::builder(Fixed(1))
        .partitions([0.5, 0.6, 0.0, 0.0])
        .build();
    assert!(matches!(bad, Err(ConcurrencyConfigError::BadShares { .. })));
}

#[tokio::test(start_paused = true)]
async fn samples_move_an_adaptive_limit() {
    let l = ConcurrencyLimiter::builder(Aimd::new(1, 100).initial(4))
        .build()
        .unwrap();
    // A full window of successes at full use: +1.
    let permits: Vec<_> = (0..4).map(|_| l.try_acquire(N).unwrap()).collect();
    advance(ms(10)).await;
    permits.into_iter().for_each(|p| p.success());
    assert_eq!(l.limit(), 5);
    // A window with a drop: x0.9, floored.
    let permits: Vec<_> = (0..5).map(|_| l.try_acquire(N).unwrap()).collect();
    for (i, p) in permits.into_iter().enumerate() {
        if i == 0 { p.dropped() } else { p.success() }
    }
    assert_eq!(l.limit(), 4);
    // Permits dropped without an outcome give no sample.
    let before = l.stats().samples;
    drop(l.try_acquire(N).unwrap());
    assert_eq!(l.stats().samples, before);
}

#[tokio::test(start_paused = true)]
async fn a_saturated_refusal_hints_from_recent_round_trips() {
    let l = ConcurrencyLimiter::builder(Aimd::new(2, 2))
        .build()
        .unwrap();
    let a = l.try_acquire(N).unwrap();
    let b = l.try_acquire(N).unwrap();
    advance(ms(200)).await;
    a.success();
    b.success();
    let _a = l.try_acquire(N).unwrap();
    let _b = l.try_acquire(N).unwrap();
    let hint = l.try_acquire(N).unwrap_err().retry_after();
    assert_eq!(hint, ms(100), "mean RTT 200 ms over 2 in flight");
}
