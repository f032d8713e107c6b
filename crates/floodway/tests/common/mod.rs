//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use floodway::queue::QueueBuilder;
use floodway::{DeadLetter, DropReason, Queue};

/// Collects dead letters for inspection.
#[derive(Clone, Default)]
pub struct Graveyard<T>(Arc<Mutex<Vec<DeadLetter<T>>>>);

impl<T: Send + 'static> Graveyard<T> {
    pub fn new() -> Self {
        Graveyard(Arc::new(Mutex::new(Vec::new())))
    }

    pub fn hook(&self) -> impl Fn(DeadLetter<T>) + Send + Sync + 'static {
        let inner = self.0.clone();
        move |l| inner.lock().unwrap().push(l)
    }

    pub fn take(&self) -> Vec<DeadLetter<T>> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn items_with(&self, reason: DropReason) -> Vec<T>
    where
        T: Clone,
    {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.reason == reason)
            .map(|l| l.item.clone())
            .collect()
    }
}

/// A builder with a graveyard attached.
pub fn builder<T: Send + 'static>() -> (QueueBuilder<T>, Graveyard<T>) {
    let g = Graveyard::new();
    (Queue::builder().dead_letter(g.hook()), g)
}

/// Asserts the conservation law on a queue's counters.
pub fn assert_conserved<T>(q: &Queue<T>) {
    let s = q.stats();
    assert_eq!(
        s.offered,
        s.delivered + s.refused.total() + s.dead_lettered.total() + s.len as u64,
        "conservation broken: {s:?}"
    );
}
