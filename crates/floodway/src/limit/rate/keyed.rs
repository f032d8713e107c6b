use std::collections::HashMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use super::gcra::{self, Decision};
use super::{Allowed, InsufficientCapacity, KeyedRateError, Quota, RateLimited};
use crate::clock::{Clock, Epoch};

/// Counters of a [`KeyedRateLimiter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedStats {
    /// Keys tracked now.
    pub keys: usize,
    /// Requests allowed.
    pub allowed: u64,
    /// Requests refused because their key's quota was spent.
    pub limited: u64,
    /// Requests refused because the key table was full.
    pub refused_keys: u64,
    /// Idle keys forgotten.
    pub evicted: u64,
}

#[derive(Debug)]
struct Table<K> {
    tats: HashMap<K, u64>,
    quota: Quota,
    /// No tracked key can become idle before this time (nanos); sweeping earlier finds nothing.
    next_idle: u64,
    last_sweep: u64,
    stats: KeyedStats,
}

/// GCRA per key (per producer, per tenant), with bounded state.
///
/// A key whose credit is fully restored (its TAT is not in the future) is indistinguishable from a
/// key never seen, so it is forgotten: memory follows the number of *active* keys. A sweep runs at
/// most once per `sweep_every` and whenever the table is full. When `max_keys` keys are all active, a
/// new key is refused with [`KeyedRateError::TooManyKeys`] rather than evicting an active key (which
/// would forgive its debt and let a key-spraying producer escape its quota).
///
/// ```
/// use std::num::NonZeroU32;
/// use floodway::{KeyedRateLimiter, Quota};
///
/// let limiter = KeyedRateLimiter::new(Quota::per_second(NonZeroU32::new(1).unwrap()), 10_000);
/// assert!(limiter.check(&"alice").is_ok());
/// assert!(limiter.check(&"alice").is_err()); // alice's quota is spent...
/// assert!(limiter.check(&"bob").is_ok()); // ...bob's is not
/// ```
#[derive(Debug)]
pub struct KeyedRateLimiter<K> {
    epoch: Epoch,
    max_keys: usize,
    sweep_every: Duration,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// A limiter giving every key `quota`, tracking at most `max_keys` keys at once.
    ///
    /// # Panics
    /// If `max_keys` is zero.
    #[track_caller]
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        assert!(max_keys > 0, "max_keys must be at least 1");
        KeyedRateLimiter {
            epoch: Clock::tokio().epoch(),
            max_keys,
            sweep_every: Duration::from_secs(10),
            table: Mutex::new(Table {
                tats: HashMap::new(),
                quota,
                next_idle: 0,
                last_sweep: 0,
                stats: KeyedStats::default(),
            }),
        }
    }

    /// Sets how often idle keys are swept even when the table is not full (default 10 s).
    pub fn with_sweep_every(mut self, every: Duration) -> Self {
        self.sweep_every = every;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<K>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `clock` instead of tokio's; see [`Clock::tsc`]. Call before the first check.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.epoch = clock.epoch();
        self
    }

    fn nanos(&self) -> u64 {
        self.epoch.nanos()
    }

    /// The quota every key gets.
    pub fn quota(&self) -> Quota {
        self.lock().quota
    }

    /// Replaces the quota for every key; debts already incurred carry over.
    pub fn set_quota(&self, quota: Quota) {
        self.lock().quota = quota;
    }

    /// Counters and the number of keys tracked.
    pub fn stats(&self) -> KeyedStats {
        let t = self.lock();
        KeyedStats {
            keys: t.tats.len(),
            ..t.stats
        }
    }

    /// Forgets every idle key now; returns how many were forgotten.
    pub fn retain_recent(&self) -> usize {
        let now = self.nanos();
        let mut t = self.lock();
        Self::sweep(&mut t, now)
    }

    fn sweep(t: &mut Table<K>, now: u64) -> usize {
        let before = t.tats.len();
        let mut next_idle = u64::MAX;
        t.tats.retain(|_, tat| {
            let keep = *tat > now;
            if keep {
                next_idle = next_idle.min(*tat);
            }
            keep
        });
        t.next_idle = next_idle;
        t.last_sweep = now;
        let evicted = before - t.tats.len();
        t.stats.evicted += evicted as u64;
        evicted
    }

    /// Takes one cell from `key`'s quota.
    ///
    /// # Errors
    /// [`KeyedRateError::Limited`] when the key's quota is spent for now;
    /// [`KeyedRateError::TooManyKeys`] when the key is new and the table is full of active keys.
    pub fn check(&self, key: &K) -> Result<Allowed, KeyedRateError> {
        self.check_n(key, NonZeroU32::MIN)
    }

    /// Takes `n` cells from `key`'s quota, or none.
    ///
    /// # Errors
    /// As [`check`](Self::check), and [`KeyedRateError::Insufficient`] when `n` exceeds the burst.
    pub fn check_n(&self, key: &K, n: NonZeroU32) -> Result<Allowed, KeyedRateError> {
        let now = self.nanos();
        let mut t = self.lock();
        let quota = t.quota;
        if now.saturating_sub(t.last_sweep) >= self.sweep_every.as_nanos() as u64 {
            Self::sweep(&mut t, now);
        }
        let known = t.tats.get(key).copied();
        if known.is_none() && t.tats.len() >= self.max_keys {
            if now >= t.next_idle {
                Self::sweep(&mut t, now);
            }
            if t.tats.len() >= self.max_keys {
                t.stats.refused_keys += 1;
                return Err(KeyedRateError::TooManyKeys {
                    retry_after: Duration::from_nanos(t.next_idle.saturating_sub(now)),
                });
            }
        }
        match gcra::decide(quota, known.unwrap_or(0), now, n.get()) {
            Decision::Allow { tat, allowed } => {
                t.stats.allowed += 1;
                t.next_idle = t.next_idle.min(tat);
                match t.tats.get_mut(key) {
                    Some(slot) => *slot = tat,
                    None => {
                        t.tats.insert(key.clone(), tat);
                    }
                }
                Ok(allowed)
            }
            Decision::Deny { wait } => {
                t.stats.limited += 1;
                Err(KeyedRateError::Limited(RateLimited {
                    retry_after: Duration::from_nanos(wait),
                    limit: quota.burst.get(),
                }))
            }
            Decision::Never => Err(KeyedRateError::Insufficient(InsufficientCapacity {
                requested: n.get(),
                burst: quota.burst.get(),
            })),
        }
    }

    /// Waits until `key` has a cell available and takes it.
    ///
    /// # Errors
    /// Never [`Limited`](KeyedRateError::Limited) (that is waited out); `TooManyKeys` is waited out too.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is taken until the future completes.
    pub async fn until_key_ready(&self, key: &K) -> Allowed {
        loop {
            match self.check(key) {
                Ok(a) => return a,
                Err(e) => {
                    let wait = e.retry_after().unwrap_or(Duration::from_millis(1));
                    tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
                }
            }
        }
    }
}
