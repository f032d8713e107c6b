//! Property tests: for any interleaving of push, pop, cancelled push, resize, expiry and time, every
//! item offered ends in exactly one place (delivered, returned, dead-lettered, still queued), the
//! bounds are never exceeded by a push, and service follows priority.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodway::queue::{Admitted, Meta};
use floodway::{CoDel, DeadLetter, Overflow, Priority, Queue};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Push {
        priority: usize,
        weight: u8,
        ttl_ms: Option<u8>,
    },
    /// A blocking push polled once, then dropped if it did not finish.
    CancelledPush {
        priority: usize,
        weight: u8,
    },
    Pop,
    Resize {
        items: usize,
        bytes: u16,
    },
    Advance {
        ms: u8,
    },
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 1..40u8, proptest::option::of(1..50u8))
            .prop_map(|(priority, weight, ttl_ms)| Op::Push { priority, weight, ttl_ms }),
        1 => (0..4usize, 1..40u8).prop_map(|(priority, weight)| Op::CancelledPush { priority, weight }),
        3 => Just(Op::Pop),
        1 => (1..12usize, 40..300u16).prop_map(|(items, bytes)| Op::Resize { items, bytes }),
        1 => (1..30u8).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Expire),
    ]
}

fn policy() -> impl Strategy<Value = Overflow> {
    prop_oneof![
        Just(Overflow::Block),
        Just(Overflow::Reject),
        Just(Overflow::DropNewest),
        Just(Overflow::DropOldest),
        Just(Overflow::DropLowestPriority),
    ]
}

/// An item: its id, and its weight in bytes.
type Item = (u64, u8);

fn run(policy: Overflow, codel: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let dead: Arc<Mutex<Vec<DeadLetter<Item>>>> = Arc::default();
        let sink = dead.clone();
        let mut b = Queue::builder()
            .max_items(6)
            .max_bytes(120)
            .weigher(|i: &Item| u64::from(i.1))
            .overflow(policy)
            .dead_letter(move |l| sink.lock().unwrap().push(l));
        if codel {
            b = b.codel(CoDel::new(
                Duration::from_millis(5),
                Duration::from_millis(20),
            ));
        }
        let q = b.build().unwrap();
        let (mut max_items, mut max_bytes) = (6usize, 120u64);

        let mut next_id = 0u64;
        let mut offered = HashSet::new();
        let mut delivered = Vec::new();
        let mut returned = Vec::new();
        // The model of what is queued: id -> priority.
        let mut model: BTreeMap<u64, Priority> = BTreeMap::new();
        let mut buried = 0usize;

        for op in ops {
            match op {
                Op::Push {
                    priority,
                    weight,
                    ttl_ms,
                } => {
                    next_id += 1;
                    offered.insert(next_id);
                    let p = Priority::ALL[priority];
                    let mut meta = Meta::priority(p);
                    if let Some(t) = ttl_ms {
                        meta = meta.with_ttl(Duration::from_millis(u64::from(t)));
                    }
                    match q.try_push_with((next_id, weight), meta) {
                        Ok(Admitted::Queued { .. }) => {
                            model.insert(next_id, p);
                            let s = q.stats();
                            prop_assert!(s.len <= max_items, "push overfilled items: {s:?}");
                            prop_assert!(s.bytes <= max_bytes, "push overfilled bytes: {s:?}");
                        }
                        Ok(Admitted::DeadLettered) => {}
                        Err(e) => returned.push(e.into_item().0),
                    }
                }
                Op::CancelledPush { priority, weight } => {
                    next_id += 1;
                    offered.insert(next_id);
                    let p = Priority::ALL[priority];
                    let done = tokio::select! {
                        biased;
                        r = q.push_with((next_id, weight), Meta::priority(p)) => Some(r),
                        () = std::future::ready(()) => None,
                    };
                    match done {
                        Some(Ok(Admitted::Queued { .. })) => {
                            model.insert(next_id, p);
                        }
                        Some(Ok(Admitted::DeadLettered)) | None => {}
                        Some(Err(e)) => returned.push(e.into_item().0),
                    }
                }
                Op::Pop => {
                    if let Ok(p) = q.try_pop() {
                        delivered.push(p.item.0);
                        prop_assert!(
                            model.remove(&p.item.0).is_some(),
                            "popped an item not queued"
                        );
                        // Apply dead letters produced by this pop before checking the order.
                        for l in dead.lock().unwrap()[buried..].iter() {
                            model.remove(&l.item.0);
                        }
                        buried = dead.lock().unwrap().len();
                        let top = model.values().max().copied();
                        prop_assert!(
                            top.is_none_or(|t| t <= p.priority),
                            "served {:?} before {:?}",
                            p.priority,
                            top
                        );
                    }
                }
                Op::Resize { items, bytes } => {
                    q.set_capacity(items, Some(u64::from(bytes))).unwrap();
                    (max_items, max_bytes) = (items, u64::from(bytes));
                }
                Op::Advance { ms } => {
                    tokio::time::advance(Duration::from_millis(u64::from(ms))).await
                }
                Op::Expire => {
                    q.expire();
                }
            }
            for l in dead.lock().unwrap()[buried..].iter() {
                model.remove(&l.item.0);
            }
            buried = dead.lock().unwrap().len();
            let s = q.stats();
            prop_assert_eq!(s.len, model.len(), "model and queue disagree");
            prop_assert_eq!(
                s.offered,
                s.delivered + s.refused.total() + s.dead_lettered.total() + s.len as u64
            );
        }

        // Drain what is left, then check every id ended in exactly one place.
        q.close();
        let mut queued = Vec::new();
        while let Ok(p) = q.try_pop() {
            queued.push(p.item.0);
        }
        let dead_ids: Vec<u64> = dead.lock().unwrap().iter().map(|l| l.item.0).collect();
        let mut seen = HashSet::new();
        for id in delivered
            .iter()
            .chain(&returned)
            .chain(&dead_ids)
            .chain(&queued)
        {
            prop_assert!(seen.insert(*id), "item {id} ended in two places");
        }
        prop_assert_eq!(seen, offered, "some item was lost");
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn conservation_bounds_and_priority(
        policy in policy(),
        codel in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(policy, codel, ops)?;
    }
}
