use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::controller::{Fixed, LimitAlgorithm, WindowSummary};
use super::{AcquireError, ConcurrencyConfigError};
use crate::observe::Reporter;
use crate::pressure::RetryBounds;
use crate::{Observer, Priority};

/// How the work behind a permit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; its round-trip time is a sample of the downstream's latency.
    Success,
    /// Refused by the downstream, failed with an overload error, or timed out.
    Dropped,
}

/// Counters and gauges of a [`ConcurrencyLimiter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConcurrencyStats {
    /// The current limit.
    pub limit: usize,
    /// Permits held now.
    pub in_flight: usize,
    /// Callers waiting in the queue now.
    pub waiting: usize,
    /// Permits granted so far.
    pub granted: u64,
    /// Requests refused at once (limit reached, wait queue full or absent).
    pub refused: u64,
    /// Requests that waited the whole timeout.
    pub timed_out: u64,
    /// Samples fed to the algorithm.
    pub samples: u64,
    /// Of those, drops.
    pub drops: u64,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    priority: Priority,
    tx: oneshot::Sender<()>,
}

#[derive(Debug)]
struct Window {
    samples: u32,
    drops: u32,
    rtt_sum: Duration,
    min_rtt: Duration,
    max_in_flight: usize,
    started: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            samples: 0,
            drops: 0,
            rtt_sum: Duration::ZERO,
            min_rtt: Duration::MAX,
            max_in_flight: 0,
            started: now,
        }
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    class_in_flight: [usize; Priority::COUNT],
    algorithm: Box<dyn LimitAlgorithm>,
    window: Window,
    mean_rtt: Duration,
    waiters: VecDeque<Waiter>,
    next_id: u64,
    stats: ConcurrencyStats,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    shares: Option<[f64; Priority::COUNT]>,
    wait: Option<(usize, Duration)>,
    max_window: Duration,
    retry: RetryBounds,
    reporter: Reporter,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admissible(&self, st: &State, priority: Priority) -> bool {
        if st.in_flight < st.limit {
            return true;
        }
        let c = priority.index();
        self.shares
            .is_some_and(|s| (st.class_in_flight[c] as f64) < (s[c] * st.limit as f64).floor())
    }

    fn take_slot(&self, st: &mut State, priority: Priority) {
        st.in_flight += 1;
        st.class_in_flight[priority.index()] += 1;
        st.stats.granted += 1;
    }

    fn retry_hint(&self, st: &State) -> Duration {
        // One permit frees up every mean_rtt / in_flight on average.
        let per_slot = st.mean_rtt.as_secs_f64() / st.in_flight.max(1) as f64;
        self.retry.clamp(Duration::from_secs_f64(per_slot))
    }

    /// Gives freed slots to the newest admissible waiters.
    fn hand_over(&self, st: &mut State) {
        while let Some(pos) = st
            .waiters
            .iter()
            .rposition(|w| self.admissible(st, w.priority))
        {
            let w = st.waiters.remove(pos).expect("position is in range");
            self.take_slot(st, w.priority);
            if w.tx.send(()).is_err() {
                // The waiter settles under this lock before its receiver goes, so this cannot
                // happen; undo the grant all the same rather than leak the slot.
                st.in_flight -= 1;
                st.class_in_flight[w.priority.index()] -= 1;
                st.stats.granted -= 1;
            }
        }
    }

    fn release(&self, st: &mut State, priority: Priority) {
        st.in_flight -= 1;
        st.class_in_flight[priority.index()] -= 1;
        self.hand_over(st);
    }

    fn record(
        &self,
        st: &mut State,
        rtt: Duration,
        in_flight: usize,
        outcome: Outcome,
        now: Instant,
    ) {
        let w = &mut st.window;
        w.samples += 1;
        if outcome == Outcome::Dropped {
            w.drops += 1;
            st.stats.drops += 1;
        }
        st.stats.samples += 1;
        if outcome == Outcome::Success {
            // A refusal's round trip (often a fast error) says nothing about service latency.
            w.rtt_sum += rtt;
            w.min_rtt = w.min_rtt.min(rtt);
        }
        w.max_in_flight = w.max_in_flight.max(in_flight);
        let full = w.samples as usize >= st.limit.max(1);
        let stale = now.saturating_duration_since(w.started) >= self.max_window;
        if !(full || stale) {
            return;
        }
        let successes = w.samples - w.drops;
        let (mean_rtt, min_rtt) = if successes == 0 {
            (Duration::ZERO, Duration::ZERO)
        } else {
            (w.rtt_sum / successes, w.min_rtt)
        };
        let summary = WindowSummary::new(w.samples, w.drops, mean_rtt, min_rtt, w.max_in_flight);
        if successes > 0 {
            st.mean_rtt = mean_rtt;
        }
        st.window = Window::new(now);
        let before = st.limit;
        st.limit = st.algorithm.update(before, &summary).max(1);
        st.stats.limit = st.limit;
        if st.limit != before {
            self.reporter.gauge("limit", st.limit as f64);
        }
        if st.limit > before {
            self.hand_over(st);
        }
    }
}

/// Builds a [`ConcurrencyLimiter`]; see [`ConcurrencyLimiter::builder`].
#[derive(Debug)]
pub struct ConcurrencyBuilder {
    algorithm: Box<dyn LimitAlgorithm>,
    shares: Option<[f64; Priority::COUNT]>,
    wait: Option<(usize, Duration)>,
    max_window: Duration,
    retry: RetryBounds,
    observer: Option<Arc<dyn Observer>>,
    name: String,
}

impl ConcurrencyBuilder {
    /// Guarantees each class (indexed `Low`, `Normal`, `High`, `Critical`) a share of the limit.
    pub fn partitions(mut self, shares: [f64; Priority::COUNT]) -> Self {
        self.shares = Some(shares);
        self
    }

    /// Lets up to `max_waiters` callers of [`acquire`](ConcurrencyLimiter::acquire) wait, newest
    /// first, for at most `timeout` each.
    pub fn wait_queue(mut self, max_waiters: usize, timeout: Duration) -> Self {
        self.wait = Some((max_waiters, timeout));
        self
    }

    /// Closes a sample window after this long even if it holds fewer samples than the limit
    /// (default 1 s).
    pub fn max_window(mut self, max_window: Duration) -> Self {
        self.max_window = max_window;
        self
    }

    /// Bounds for retry hints.
    pub fn retry_bounds(mut self, bounds: RetryBounds) -> Self {
        self.retry = bounds;
        self
    }

    /// Reports `limit` and `in_flight` gauges and `refused` counters to `observer` under `name`.
    pub fn observer(mut self, name: &str, observer: Arc<dyn Observer>) -> Self {
        self.name = name.into();
        self.observer = Some(observer);
        self
    }

    /// Checks the configuration and builds the limiter.
    ///
    /// # Errors
    /// [`ConcurrencyConfigError`] for shares outside `0..=1` or summing above 1, or an empty wait
    /// queue.
    pub fn build(self) -> Result<ConcurrencyLimiter, ConcurrencyConfigError> {
        if let Some(shares) = self.shares {
            let sum: f64 = shares.iter().sum();
            if shares.iter().any(|s| !(0.0..=1.0).contains(s)) || sum.is_nan() || sum > 1.0 + 1e-9 {
                return Err(ConcurrencyConfigError::BadShares { sum });
            }
        }
        if let Some((n, t)) = self.wait {
            if n == 0 || t.is_zero() {
                return Err(ConcurrencyConfigError::EmptyWaitQueue);
            }
        }
        let now = Instant::now();
        let limit = self.algorithm.initial_limit().max(1);
        let state = State {
            limit,
            in_flight: 0,
            class_in_flight: [0; Priority::COUNT],
            algorithm: self.algorithm,
            window: Window::new(now),
            mean_rtt: Duration::ZERO,
            waiters: VecDeque::new(),
            next_id: 0,
            stats: ConcurrencyStats {
                limit,
                ..ConcurrencyStats::default()
            },
        };
        Ok(ConcurrencyLimiter {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                shares: self.shares,
                wait: self.wait,
                max_window: self.max_window,
                retry: self.retry,
                reporter: Reporter::new(self.observer, &self.name),
            }),
        })
    }
}

/// Bounds work in flight with RAII permits; fixed or adaptive. Clones share the same limit.
///
/// ```
/// use std::time::Duration;
/// use floodway::ConcurrencyLimiter;
/// use floodway::limit::concurrency::Aimd;
/// use floodway::Priority;
///
/// let limiter = ConcurrencyLimiter::builder(Aimd::new(1, 64).initial(2)).build().unwrap();
/// let a = limiter.try_acquire(Priority::Normal).unwrap();
/// let _b = limiter.try_acquire(Priority::Normal).unwrap();
/// assert!(limiter.try_acquire(Priority::Normal).is_err()); // limit 2 reached
/// a.success(); // the slot returns, and the round trip is a sample for AIMD
/// assert!(limiter.try_acquire(Priority::Normal).is_ok());
/// ```
#[derive(Clone, Debug)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

impl ConcurrencyLimiter {
    /// Starts a builder around `algorithm`.
    pub fn builder(algorithm: impl LimitAlgorithm) -> ConcurrencyBuilder {
        ConcurrencyBuilder {
            algorithm: Box::new(algorithm),
            shares: None,
            wait: None,
            max_window: Duration::from_secs(1),
            retry: RetryBounds::default(),
            observer: None,
            name: "concurrency".into(),
        }
    }

    /// A fixed limit of `limit` permits, no partitions, no wait queue.
    pub fn fixed(limit: usize) -> Self {
        Self::builder(Fixed(limit))
            .build()
            .expect("a fixed limit without options is always valid")
    }

    /// Takes a permit if one is free now.
    ///
    /// # Errors
    /// [`AcquireError::Saturated`] with a retry hint.
    pub fn try_acquire(&self, priority: Priority) -> Result<Permit, AcquireError> {
        let mut st = self.inner.lock();
        if self.inner.admissible(&st, priority) {
            self.inner.take_slot(&mut st, priority);
            return Ok(self.permit(&st, priority));
        }
        Err(self.refuse(&mut st))
    }

    fn refuse(&self, st: &mut State) -> AcquireError {
        st.stats.refused += 1;
        self.inner.reporter.counter("refused", "concurrency", 1);
        AcquireError::Saturated {
            retry_after: self.inner.retry_hint(st),
        }
    }

    fn permit(&self, st: &State, priority: Priority) -> Permit {
        self.inner.reporter.gauge("in_flight", st.in_flight as f64);
        Permit {
            inner: self.inner.clone(),
            priority,
            start: Instant::now(),
            in_flight: st.in_flight,
            outcome: None,
        }
    }

    /// Takes a permit, waiting in the LIFO wait queue if one is configured.
    ///
    /// # Errors
    /// [`AcquireError::Saturated`] when there is no room in the wait queue (or no wait queue);
    /// [`AcquireError::Timeout`] after waiting the whole timeout.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled wait leaves the queue, and a permit granted at the moment of
    /// cancellation is returned at once.
    pub async fn acquire(&self, priority: Priority) -> Result<Permit, AcquireError> {
        let (rx, id, timeout) = {
            let mut st = self.inner.lock();
            if self.inner.admissible(&st, priority) {
                self.inner.take_slot(&mut st, priority);
                return Ok(self.permit(&st, priority));
            }
            let Some((max_waiters, timeout)) = self.inner.wait else {
                return Err(self.refuse(&mut st));
            };
            if st.waiters.len() >= max_waiters {
                return Err(self.refuse(&mut st));
            }
            let (tx, rx) = oneshot::channel();
            st.next_id += 1;
            let id = st.next_id;
            st.waiters.push_back(Waiter { id, priority, tx });
            (rx, id, timeout)
        };
        let mut guard = WaitGuard {
            inner: &self.inner,
            id,
            priority,
            settled: false,
        };
        // Whether the receiver fired or the timeout did, the waiter list under the lock is the
        // truth: still listed means not granted.
        let _ = tokio::time::timeout(timeout, rx).await;
        let mut st = self.inner.lock();
        guard.settled = true;
        if let Some(pos) = st.waiters.iter().position(|w| w.id == id) {
            st.waiters.remove(pos);
            st.stats.timed_out += 1;
            self.inner.reporter.counter("refused", "timeout", 1);
            return Err(AcquireError::Timeout {
                retry_after: self.inner.retry_hint(&st),
            });
        }
        Ok(self.permit(&st, priority))
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.inner.lock().limit
    }

    /// Counters and gauges.
    pub fn stats(&self) -> ConcurrencyStats {
        let st = self.inner.lock();
        ConcurrencyStats {
            limit: st.limit,
            in_flight: st.in_flight,
            waiting: st.waiters.len(),
            ..st.stats
        }
    }

    /// `in_flight / limit`: feed this to a [`Pressure`](crate::Pressure).
    pub fn utilisation(&self) -> f64 {
        let st = self.inner.lock();
        st.in_flight as f64 / st.limit.max(1) as f64
    }
}

/// Removes a cancelled waiter from the queue, or returns a slot granted to it.
struct WaitGuard<'a> {
    inner: &'a Inner,
    id: u64,
    priority: Priority,
    settled: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut st = self.inner.lock();
        match st.waiters.iter().position(|w| w.id == self.id) {
            Some(pos) => {
                st.waiters.remove(pos);
            }
            None => self.inner.release(&mut st, self.priority),
        }
    }
}

/// The right to run one piece of work. Dropping it returns the slot.
///
/// Report how the work went with [`success`](Permit::success) or [`dropped`](Permit::dropped) so an
/// adaptive limit can learn; a permit dropped without a report gives no sample.
#[must_use = "the permit is released as soon as it is dropped"]
#[derive(Debug)]
pub struct Permit {
    inner: Arc<Inner>,
    priority: Priority,
    start: Instant,
    in_flight: usize,
    outcome: Option<Outcome>,
}

impl Permit {
    /// The work succeeded: releases the permit and records its round-trip time.
    pub fn success(self) {
        self.record(Outcome::Success);
    }

    /// The work was refused by the downstream or timed out: releases the permit and records a drop.
    pub fn dropped(self) {
        self.record(Outcome::Dropped);
    }

    /// Releases the permit, recording `outcome`.
    pub fn record(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// Sets the outcome to record when the permit is dropped.
    pub fn set_outcome(&mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }

    /// The class this permit was granted to.
    pub fn priority(&self) -> Priority {
        self.priority
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut st = self.inner.lock();
        if let Some(outcome) = self.outcome {
            let rtt = now.saturating_duration_since(self.start);
            self.inner
                .record(&mut st, rtt, self.in_flight, outcome, now);
        }
        self.inner.release(&mut st, self.priority);
        self.inner.reporter.gauge("in_flight", st.in_flight as f64);
    }
}
