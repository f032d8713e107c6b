//! The bounded queue through its public API, with paused time.

mod common;

use std::time::Duration;

use common::{assert_conserved, builder};
use floodway::queue::{Admitted, BuildError, Meta, PopError, PushError};
use floodway::{DropReason, Overflow, Priority};
use tokio::time::{Instant, advance};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(start_paused = true)]
async fn reject_gives_the_item_back_with_a_hint() {
    let (b, dead) = builder::<u32>();
    let q = b.max_items(2).overflow(Overflow::Reject).build().unwrap();
    q.try_push(1).unwrap();
    q.try_push(2).unwrap();
    let err = q.try_push(3).unwrap_err();
    assert!(matches!(err, PushError::Full { .. }));
    assert!(err.retry_after().unwrap() > Duration::ZERO);
    assert_eq!(err.into_item(), 3);
    assert_eq!(dead.len(), 0);
    assert_eq!(q.stats().refused.full, 1);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn drop_newest_dead_letters_the_new_item() {
    let (b, dead) = builder::<u32>();
    let q = b
        .max_items(2)
        .overflow(Overflow::DropNewest)
        .build()
        .unwrap();
    q.try_push(1).unwrap();
    q.try_push(2).unwrap();
    assert_eq!(q.try_push(3).unwrap(), Admitted::DeadLettered);
    assert_eq!(dead.items_with(DropReason::Full), vec![3]);
    assert_eq!(q.try_pop().unwrap().item, 1);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_evicts_in_arrival_order_across_classes() {
    let (b, dead) = builder::<u32>();
    let q = b
        .max_items(2)
        .overflow(Overflow::DropOldest)
        .build()
        .unwrap();
    q.try_push_with(1, Meta::priority(Priority::High)).unwrap();
    q.try_push_with(2, Meta::priority(Priority::Low)).unwrap();
    assert_eq!(q.try_push(3).unwrap(), Admitted::Queued { evicted: 1 });
    assert_eq!(dead.items_with(DropReason::Evicted), vec![1]);
    assert_eq!(q.len(), 2);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn drop_lowest_priority_spares_important_work() {
    let (b, dead) = builder::<&'static str>();
    let q = b
        .max_items(3)
        .overflow(Overflow::DropLowestPriority)
        .build()
        .unwrap();
    q.try_push_with("low-1", Meta::priority(Priority::Low))
        .unwrap();
    q.try_push_with("low-2", Meta::priority(Priority::Low))
        .unwrap();
    q.try_push_with("crit", Meta::priority(Priority::Critical))
        .unwrap();
    // A high item displaces the newest low one.
    assert_eq!(
        q.try_push_with("high", Meta::priority(Priority::High))
            .unwrap(),
        Admitted::Queued { evicted: 1 }
    );
    assert_eq!(dead.items_with(DropReason::Displaced), vec!["low-2"]);
    // A low item finds nothing below it: it is the one dead-lettered.
    assert_eq!(
        q.try_push_with("low-3", Meta::priority(Priority::Low))
            .unwrap(),
        Admitted::DeadLettered
    );
    assert_eq!(dead.items_with(DropReason::Full), vec!["low-3"]);
    let order: Vec<_> = std::iter::from_fn(|| q.try_pop().ok().map(|p| p.item)).collect();
    assert_eq!(order, vec!["crit", "high", "low-1"]);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn block_waits_for_room_and_resumes_on_pop() {
    let (b, _dead) = builder::<u32>();
    let q = b.max_items(1).overflow(Overflow::Block).build().unwrap();
    q.push(1).await.unwrap();
    assert!(matches!(q.try_push(9), Err(PushError::Full { .. })));
    let q2 = q.clone();
    let pusher = tokio::spawn(async move { q2.push(2).await });
    tokio::task::yield_now().await;
    assert!(
        !pusher.is_finished(),
        "push must wait while the queue is full"
    );
    assert_eq!(q.pop().await.unwrap().item, 1);
    assert_eq!(
        pusher.await.unwrap().unwrap(),
        Admitted::Queued { evicted: 0 }
    );
    assert_eq!(q.pop().await.unwrap().item, 2);
    assert_conserved(&q);
}

/// The consumer of a larger queue gives room back in batches; room it still owes is room all the
/// same: not counted in `len`, and found by a blocked push at once and by a non-blocking one.
#[tokio::test(start_paused = true)]
async fn room_a_consumer_still_owes_is_room() {
    let (b, _dead) = builder::<u32>();
    let q = b.max_items(64).overflow(Overflow::Block).build().unwrap();
    for i in 0..64 {
        q.try_push(i).unwrap();
    }
    assert_eq!(q.pop().await.unwrap().item, 0);
    assert_eq!(q.len(), 63);
    // No other pop comes to wake it: the push must see the room when it looks.
    let pushed = tokio::time::timeout(ms(10), q.push(64)).await;
    let admitted = pushed.expect("the push found the room").unwrap();
    assert_eq!(admitted, Admitted::Queued { evicted: 0 });
    assert_eq!(q.len(), 64);
    assert!(matches!(q.try_push(65), Err(PushError::Full { .. })));
    assert_eq!(q.pop().await.unwrap().item, 1);
    q.try_push(66).unwrap();
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_push_dead_letters_its_item_and_holds_nothing() {
    let (b, dead) = builder::<u32>();
    let q = b.max_items(1).overflow(Overflow::Block).build().unwrap();
    q.push(1).await.unwrap();
    // Blocked, then cancelled by a timeout.
    let r = tokio::time::timeout(ms(50), q.push(2)).await;
    assert!(r.is_err());
    assert_eq!(dead.items_with(DropReason::Cancelled), vec![2]);
    // A future dropped before its first poll counts too.
    drop(q.push(3));
    assert_eq!(dead.items_with(DropReason::Cancelled), vec![2, 3]);
    // No capacity leaked: after one pop there is room for exactly one item.
    assert_eq!(q.pop().await.unwrap().item, 1);
    q.try_push(4).unwrap();
    assert!(q.try_push(5).is_err());
    assert_eq!(q.len(), 1);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn bytes_bound_and_items_that_never_fit() {
    let (b, _dead) = builder::<Vec<u8>>();
    let q = b
        .max_items(100)
        .max_bytes(10)
        .weigher(|v: &Vec<u8>| v.len() as u64)
        .overflow(Overflow::Reject)
        .build()
        .unwrap();
    q.try_push(vec![0; 6]).unwrap();
    assert!(matches!(
        q.try_push(vec![0; 5]),
        Err(PushError::Full { .. })
    ));
    q.try_push(vec![0; 4]).unwrap();
    assert_eq!(q.stats().bytes, 10);
    let never = q.try_push(vec![0; 11]).unwrap_err();
    assert!(matches!(
        never,
        PushError::TooLarge {
            weight: 11,
            max_bytes: 10,
            ..
        }
    ));
    assert_eq!(never.retry_after(), None, "never is not 'not now'");
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn builder_refuses_combinations_that_cannot_work() {
    let none = floodway::Queue::<u8>::builder().build().unwrap_err();
    assert_eq!(none, BuildError::NoDeadLetterHook);
    let (b, _) = builder::<u8>();
    assert_eq!(
        b.max_bytes(10).build().unwrap_err(),
        BuildError::BytesWithoutWeigher
    );
    let (b, _) = builder::<u8>();
    assert_eq!(
        b.max_items(0).build().unwrap_err(),
        BuildError::ZeroCapacity
    );
    let (b, _) = builder::<u8>();
    assert_eq!(
        b.adaptive_lifo(true).build().unwrap_err(),
        BuildError::LifoWithoutCoDel
    );
}

#[tokio::test(start_paused = true)]
async fn deadlines_expire_in_the_queue_and_at_the_door() {
    let (b, dead) = builder::<u32>();
    let q = b.max_items(10).build().unwrap();
    let now = Instant::now();
    q.try_push_with(1, Meta::default().with_deadline(now + ms(100)))
        .unwrap();
    q.try_push_with(2, Meta::default().with_deadline(now + ms(500)))
        .unwrap();
    q.try_push(3).unwrap();
    let late = q
        .try_push_with(4, Meta::default().with_deadline(now))
        .unwrap_err();
    assert!(matches!(late, PushError::Expired { item: 4 }));
    advance(ms(200)).await;
    assert_eq!(
        q.try_pop().unwrap().item,
        2,
        "item 1 expired and is skipped"
    );
    assert_eq!(dead.items_with(DropReason::Expired), vec![1]);
    let expiring = q.clone();
    expiring
        .try_push_with(5, Meta::default().with_ttl(ms(10)))
        .unwrap();
    advance(ms(20)).await;
    assert_eq!(q.expire(), 1);
    assert_eq!(dead.items_with(DropReason::Expired), vec![1, 5]);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn sojourn_is_measured_and_priority_orders_service() {
    let (b, _) = builder::<u32>();
    let q = b.build().unwrap();
    q.try_push_with(1, Meta::priority(Priority::Low)).unwrap();
    advance(ms(30)).await;
    q.try_push_with(2, Meta::priority(Priority::Critical))
        .unwrap();
    advance(ms(10)).await;
    let first = q.pop().await.unwrap();
    assert_eq!(
        (first.item, first.priority, first.sojourn),
        (2, Priority::Critical, ms(10))
    );
    let second = q.pop().await.unwrap();
    assert_eq!((second.item, second.sojourn), (1, ms(40)));
}

#[tokio::test(start_paused = true)]
async fn capacity_changes_keep_every_item() {
    let (b, dead) = builder::<u32>();
    let q = b.max_items(4).overflow(Overflow::Reject).build().unwrap();
    for i in 0..4 {
        q.try_push(i).unwrap();
    }
    q.set_capacity(2, None).unwrap();
    assert_eq!(q.len(), 4, "shrinking keeps what is queued");
    assert!(q.try_push(9).is_err());
    q.try_pop().unwrap();
    q.try_pop().unwrap();
    assert!(q.try_push(9).is_err(), "still at the new bound");
    q.try_pop().unwrap();
    q.try_push(10).unwrap();
    q.set_capacity(8, None).unwrap();
    for i in 0..6 {
        q.try_push(100 + i).unwrap();
    }
    assert_eq!(q.len(), 8);
    assert_eq!(dead.len(), 0);
    assert_eq!(q.set_capacity(0, None), Err(BuildError::ZeroCapacity));
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn a_blocked_push_waits_for_a_capacity_increase() {
    let (b, _) = builder::<u32>();
    let q = b.max_items(1).build().unwrap();
    q.try_push(1).unwrap();
    let q2 = q.clone();
    let pusher = tokio::spawn(async move { q2.push(2).await });
    tokio::task::yield_now().await;
    assert!(!pusher.is_finished());
    q.set_capacity(2, None).unwrap();
    pusher.await.unwrap().unwrap();
    assert_eq!(q.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn close_wakes_blocked_producers_and_drains_consumers() {
    let (b, _) = builder::<u32>();
    let q = b.max_items(1).build().unwrap();
    q.try_push(1).unwrap();
    let q2 = q.clone();
    let pusher = tokio::spawn(async move { q2.push(2).await });
    tokio::task::yield_now().await;
    q.close();
    assert!(matches!(
        pusher.await.unwrap(),
        Err(PushError::Closed { item: 2 })
    ));
    assert_eq!(q.pop().await.unwrap().item, 1);
    assert_eq!(q.pop().await, None);
    assert_eq!(q.try_pop().unwrap_err(), PopError::Closed);
    assert_conserved(&q);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_consumer_is_woken_by_a_push() {
    let (b, _) = builder::<u32>();
    let q = b.build().unwrap();
    let q2 = q.clone();
    let consumer = tokio::spawn(async move { q2.pop().await.map(|p| p.item) });
    tokio::task::yield_now().await;
    assert!(!consumer.is_finished());
    q.try_push(7).unwrap();
    assert_eq!(consumer.await.unwrap(), Some(7));
}

#[tokio::test(start_paused = true)]
async fn retry_hints_shrink_as_the_queue_drains() {
    let (b, _) = builder::<u32>();
    let q = b
        .max_items(100)
        .overflow(Overflow::Reject)
        .drain_averaging(ms(100), ms(500))
        .build()
        .unwrap();
    for i in 0..100 {
        q.try_push(i).unwrap();
    }
    // Drain 10 items every 100 ms (100 per second) for one second, refilling as we go, so the
    // drain rate is known and the queue stays full.
    for i in 0..10 {
        advance(ms(100)).await;
        for j in 0..10 {
            q.try_pop().unwrap();
            q.try_push(1000 + i * 10 + j).unwrap();
        }
    }
    let full_hint = q.try_push(0).unwrap_err().retry_after().unwrap();
    assert!(
        full_hint >= ms(5) && full_hint <= ms(20),
        "one item at 100/s: {full_hint:?}"
    );
    // A batch that needs 50 items of room must wait longer than one that needs 5.
    let (far, near) = (q.retry_after(50), q.retry_after(5));
    assert!(far > near, "{far:?} > {near:?}");
    // As the backlog drains, the hint to clear what is left ahead of a caller shrinks.
    let mut hints = Vec::new();
    for _ in 0..5 {
        hints.push(q.retry_after(q.len() as u64));
        advance(ms(100)).await;
        for _ in 0..10 {
            q.try_pop().unwrap();
        }
    }
    assert!(hints.windows(2).all(|w| w[1] < w[0]), "{hints:?}");
}

#[tokio::test(start_paused = true)]
async fn pop_many_takes_a_batch_in_priority_order() {
    let (b, _) = builder::<u32>();
    let q = b.build().unwrap();
    for i in 0..5 {
        q.try_push_with(
            i,
            Meta::priority(if i == 3 {
                Priority::High
            } else {
                Priority::Normal
            }),
        )
        .unwrap();
    }
    let mut buf = Vec::new();
    buf.push(q.try_pop().unwrap()); // already holds one: the count is of new items
    assert_eq!(q.pop_many(&mut buf, 3).await, 3);
    let items: Vec<u32> = buf.iter().map(|p| p.item).collect();
    assert_eq!(items, vec![3, 0, 1, 2]);
    assert_eq!(q.pop_many(&mut buf, 10).await, 1);
    q.close();
    assert_eq!(q.pop_many(&mut buf, 10).await, 0);
    assert_conserved(&q);
}
