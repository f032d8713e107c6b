//! Property tests: for any interleaving of push, pop, cancelled push, resize, expiry and time, every
//! item offered ends in exactly one place (delivered, returned, dead-lettered, still queued), the
//! bounds are never exceeded by a push, and service follows priority.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodway::queue::{Admitted, Meta, PushError};
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

/// A queue of 6 items and 120 bytes, or one of 64 items, nearly full from the start. The
/// larger one's consumers give room back in batches (of 2 or more), and there the full snapshot
/// (which settles what they owe) is taken only every seventh step, so that pushes meet room still
/// owed; `len` is checked at every step.
fn run(policy: Overflow, codel: bool, large: bool, ops: Vec<Op>) -> Result<(), TestCaseError> {
    // 64 items (and at least that after a resize), and bytes scaled by 32, so that the larger
    // queue fills by its item count as often as by its bytes.
    let (items, byte_scale) = if large { (64, 32) } else { (6, 1) };
    let snapshot_every = if large { 7 } else { 1 };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let dead: Arc<Mutex<Vec<DeadLetter<Item>>>> = Arc::default();
        let sink = dead.clone();
        let mut b = Queue::builder()
            .max_items(items)
            .max_bytes(120 * byte_scale)
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
        let (mut max_items, mut max_bytes) = (items, 120 * byte_scale);

        let mut next_id = 0u64;
        let mut offered = HashSet::new();
        let mut delivered = Vec::new();
        let mut returned = Vec::new();
        // The model of what is queued: id -> priority.
        let mut model: BTreeMap<u64, Priority> = BTreeMap::new();
        let mut buried = 0usize;
        // Every id's weight, to tell what the model's queued items weigh.
        let mut weights: BTreeMap<u64, u64> = BTreeMap::new();
        // The larger queue starts nearly full (light items), so that its steps run along the
        // bound where room still owed matters.
        if large {
            for _ in 0..max_items - 3 {
                next_id += 1;
                offered.insert(next_id);
                weights.insert(next_id, 1);
                q.try_push_with((next_id, 1), Meta::priority(Priority::Low))
                    .unwrap();
                model.insert(next_id, Priority::Low);
            }
        }

        for (step, op) in ops.into_iter().enumerate() {
            let mut refused_full = None;
            match op {
                Op::Push {
                    priority,
                    weight,
                    ttl_ms,
                } => {
                    next_id += 1;
                    offered.insert(next_id);
                    weights.insert(next_id, u64::from(weight));
                    let p = Priority::ALL[priority];
                    let mut meta = Meta::priority(p);
                    if let Some(t) = ttl_ms {
                        meta = meta.with_ttl(Duration::from_millis(u64::from(t)));
                    }
                    match q.try_push_with((next_id, weight), meta) {
                        Ok(Admitted::Queued { .. }) => {
                            model.insert(next_id, p);
                            prop_assert!(q.len() <= max_items, "push overfilled items");
                            if step % snapshot_every == 0 {
                                let s = q.stats();
                                prop_assert!(s.bytes <= max_bytes, "overfilled bytes: {s:?}");
                            }
                        }
                        Ok(Admitted::DeadLettered) => {}
                        Err(e) => {
                            if matches!(e, PushError::Full { .. }) {
                                refused_full = Some(u64::from(weight));
                            }
                            returned.push(e.into_item().0);
                        }
                    }
                }
                Op::CancelledPush { priority, weight } => {
                    next_id += 1;
                    offered.insert(next_id);
                    weights.insert(next_id, u64::from(weight));
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
                    // The larger queue stays at 64 items or more: its consumers give room
                    // back in batches of at least 2.
                    let items = if large { 56 + items * 8 } else { items };
                    let bytes = u64::from(bytes) * byte_scale;
                    q.set_capacity(items, Some(bytes)).unwrap();
                    (max_items, max_bytes) = (items, bytes);
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
            prop_assert_eq!(q.len(), model.len(), "model and queue disagree");
            // Refused for room only when there was none (an expired item at the front counted
            // as room, and is in the dead letters by now).
            if let Some(w) = refused_full {
                let bytes: u64 = model.keys().map(|id| weights[id]).sum();
                prop_assert!(
                    model.len() >= max_items || bytes + w > max_bytes,
                    "refused as full with {} items and {bytes} bytes queued",
                    model.len()
                );
            }
            if step % snapshot_every == 0 {
                let s = q.stats();
                prop_assert_eq!(s.len, model.len(), "model and snapshot disagree");
                prop_assert_eq!(
                    s.offered,
                    s.delivered + s.refused.total() + s.dead_lettered.total() + s.len as u64
                );
            }
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
        large in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..240),
    ) {
        run(policy, codel, large, ops)?;
    }
}
