//! The handshake between a task going to sleep and a thread that makes its wait pointless without
//! taking the queue's lock (a push staging an item, a reservation given back, a consumer owing
//! room it took: see `Shared::give_back`).
//!
//! The sleeper says it sleeps ([`Sleepers::enter`]), then takes one last look at what it waits
//! for; the other side changes the state, then looks for sleepers ([`Sleepers::after_publish`]).
//! Each side puts a `SeqCst` fence between its write and its read, so the two reads cannot both
//! miss the other side's write (the store-buffering outcome that weaker orderings, and a CPU's
//! store buffer, allow): either the sleeper sees the change and does not sleep, or the other side
//! sees the sleeper and wakes it. Without the fences a push could stage an item that a consumer
//! going to sleep at the same moment never hears of.
//!
//! Checked with loom, on this file's own code:
//! `RUSTFLAGS="--cfg floodway_loom" cargo test -p floodway --lib --target-dir target/loom sleepers`
//! (the test command runs it). loom models `fence(SeqCst)` but treats `SeqCst` loads and stores as
//! `AcqRel`, which is why the handshake is written with fences.

#[cfg(floodway_loom)]
use loom::sync::atomic::{AtomicUsize, Ordering, fence};
#[cfg(not(floodway_loom))]
use std::sync::atomic::{AtomicUsize, Ordering, fence};

/// How many tasks sleep on one condition.
#[derive(Debug, Default)]
pub(crate) struct Sleepers(AtomicUsize);

impl Sleepers {
    /// Counts the caller as asleep. Call it before the last look at the condition, with the
    /// wake-up already armed (a `Notified` enabled), so a wake-up sent after this is not lost.
    #[inline]
    pub(crate) fn enter(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Counts the caller awake again: woken, or its last look succeeded.
    #[inline]
    pub(crate) fn leave(&self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }

    /// After a change made without the lock: whether someone may be asleep and must be woken.
    #[inline]
    pub(crate) fn after_publish(&self) -> bool {
        fence(Ordering::SeqCst);
        self.0.load(Ordering::Relaxed) > 0
    }

    /// Whether anyone sleeps, for a caller whose change was itself a `SeqCst` read-modify-write
    /// (a consumer giving room back): the single order of `SeqCst` operations puts the sleeper's
    /// count and that change in some order, and the sleeper's last look follows its fence.
    #[inline]
    pub(crate) fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

#[cfg(all(test, floodway_loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicBool;

    /// One producer stages an item and looks for sleepers; one consumer says it sleeps and takes its
    /// last look. `staged` stands for the lock-free inbox, with the weakest ordering (the real one,
    /// crossbeam's queue, publishes with release stores, which only helps). The same model, roles
    /// swapped, covers a consumer recording the room it owes (a relaxed store) and a producer
    /// going to sleep for room.
    fn race(enter: fn(&Sleepers), after_publish: fn(&Sleepers) -> bool) {
        loom::model(move || {
            let sleepers = Arc::new(Sleepers::default());
            let staged = Arc::new(AtomicBool::new(false));
            let producer = {
                let (sleepers, staged) = (sleepers.clone(), staged.clone());
                loom::thread::spawn(move || {
                    staged.store(true, Ordering::Relaxed);
                    after_publish(&sleepers)
                })
            };
            enter(&sleepers);
            let saw_item = staged.load(Ordering::Relaxed);
            let woke_it = producer.join().unwrap();
            assert!(saw_item || woke_it, "a wake-up was lost");
        });
    }

    #[test]
    fn a_sleeper_sees_the_item_or_is_woken() {
        race(Sleepers::enter, Sleepers::after_publish);
    }

    /// The control: the same handshake without its fences loses the wake-up in some execution, so
    /// the model above is able to catch the bug it rules out.
    #[test]
    #[should_panic(expected = "a wake-up was lost")]
    fn without_the_fences_a_wake_up_is_lost() {
        race(
            |s| {
                s.0.fetch_add(1, Ordering::Relaxed);
            },
            |s| s.0.load(Ordering::Relaxed) > 0,
        );
    }
}
