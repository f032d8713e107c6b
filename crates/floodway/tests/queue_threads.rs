//! The queue under real threads: producers and consumers on a multi-threaded runtime, racing the
//! queue's lock-free way in against its consumers, evictions and `close`. Whatever the policy,
//! every id ends in exactly one place and the counters agree.
//!
//! These run on real time, bounded by a timeout: a lost wake-up shows up as a hang, and the timeout
//! turns it into a failure.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use floodway::queue::{Meta, PushError};
use floodway::{Overflow, Priority, Queue};

const PRODUCERS: u64 = 4;
const PER_PRODUCER: u64 = 3_000;

/// What became of the ids: popped, or handed back to their producer.
struct Outcome {
    delivered: Vec<u64>,
    returned: Vec<u64>,
}

/// Runs producers and two consumers against `q`; closes the queue once `close_after` ids were
/// offered (so some pushes meet the close while others are on their way in).
async fn race(q: Queue<(u64, u64)>, blocking: bool, close_after: u64) -> Outcome {
    let offered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (q, offered) = (q.clone(), offered.clone());
        producers.push(tokio::spawn(async move {
            let mut returned = Vec::new();
            for i in 0..PER_PRODUCER {
                let id = p * PER_PRODUCER + i;
                let meta = Meta::priority(Priority::ALL[(id % 4) as usize]);
                let item = (id, id % 5 + 1);
                let result = if blocking {
                    q.push_with(item, meta).await
                } else {
                    q.try_push_with(item, meta)
                };
                if offered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == close_after {
                    q.close();
                }
                match result {
                    Ok(_) => {}
                    Err(PushError::Full { item, .. }) if !blocking => {
                        returned.push(item.0);
                        tokio::task::yield_now().await;
                    }
                    Err(e) => returned.push(e.into_item().0),
                }
            }
            returned
        }));
    }
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let q = q.clone();
        consumers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(p) = q.pop().await {
                got.push(p.item.0);
            }
            got
        }));
    }
    let mut returned = Vec::new();
    for p in producers {
        returned.extend(p.await.unwrap());
    }
    q.close();
    let mut delivered = Vec::new();
    for c in consumers {
        delivered.extend(c.await.unwrap());
    }
    Outcome {
        delivered,
        returned,
    }
}

fn check(q: &Queue<(u64, u64)>, out: &Outcome, dead: Vec<u64>) {
    let mut seen = HashSet::new();
    for id in out.delivered.iter().chain(&out.returned).chain(&dead) {
        assert!(seen.insert(*id), "id {id} ended in two places");
    }
    assert_eq!(seen.len() as u64, PRODUCERS * PER_PRODUCER, "ids were lost");
    assert_eq!(q.len(), 0);
    let s = q.stats();
    assert_eq!(s.bytes, 0, "bytes left behind: {s:?}");
    assert_eq!(s.offered, PRODUCERS * PER_PRODUCER);
    assert_eq!(s.delivered, out.delivered.len() as u64);
    assert_eq!(s.refused.total(), out.returned.len() as u64);
    common::assert_conserved(q);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_loses_and_duplicates_nothing_across_threads() {
    let policies = [
        Overflow::Block,
        Overflow::Reject,
        Overflow::DropNewest,
        Overflow::DropOldest,
        Overflow::DropLowestPriority,
    ];
    // Two shapes: a small queue bound by items and bytes, and a larger one bound by items
    // alone, whose consumers give room back in batches (of 8 here).
    let shapes = [(16, true), (256, false)];
    for (policy, (max_items, weighed)) in policies.into_iter().flat_map(|p| shapes.map(|s| (p, s)))
    {
        for close_after in [u64::MAX, PRODUCERS * PER_PRODUCER / 2] {
            let (b, graves) = common::builder::<(u64, u64)>();
            let mut b = b.max_items(max_items).overflow(policy);
            if weighed {
                b = b.max_bytes(40).weigher(|i: &(u64, u64)| i.1);
            }
            let q = b.build().unwrap();
            let blocking = policy == Overflow::Block;
            let out = tokio::time::timeout(
                Duration::from_secs(30),
                race(q.clone(), blocking, close_after),
            )
            .await
            .unwrap_or_else(|_| {
                panic!("{policy:?}, {max_items} items: a producer or consumer never woke")
            });
            let dead = graves.take().into_iter().map(|l| l.item.0).collect();
            check(&q, &out, dead);
            if close_after == u64::MAX {
                assert!(
                    !out.delivered.is_empty() && out.returned.is_empty() || !blocking,
                    "{policy:?}: a blocking queue that stays open returns nothing"
                );
            }
        }
    }
}
