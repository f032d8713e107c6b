use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use super::controller::{Observation, ScaleEvent, Sizer};
use crate::observe::Reporter;
use crate::queue::Popped;
use crate::{Observer, Queue};

/// An elastic pool configuration that cannot work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElasticConfigError {
    /// `max` is zero or below `min`.
    BadBounds,
    /// `backlog_per_worker`, a step, or the tick is zero.
    ZeroSetting,
}

impl fmt::Display for ElasticConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ElasticConfigError::BadBounds => "need 1 <= max and min <= max workers",
            ElasticConfigError::ZeroSetting => {
                "backlog_per_worker, max_step_up, max_step_down and tick must be positive"
            }
        })
    }
}

impl std::error::Error for ElasticConfigError {}

/// Counters and gauges of an [`ElasticPool`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Workers running and not retiring.
    pub workers: usize,
    /// Workers handling an item now.
    pub busy: usize,
    /// The size the pool wants (the autoscaling signal).
    pub desired: usize,
    /// Items handled to completion.
    pub completed: u64,
    /// Resize decisions that grew the pool.
    pub scale_ups: u64,
    /// Resize decisions that shrank it.
    pub scale_downs: u64,
}

/// Builds an [`ElasticPool`]; see [`ElasticPool::builder`].
#[derive(Debug, Clone)]
pub struct ElasticBuilder {
    min: usize,
    max: usize,
    backlog_per_worker: usize,
    target_sojourn: Option<Duration>,
    tick: Duration,
    up_window: Duration,
    down_window: Duration,
    max_step_up: usize,
    max_step_down: usize,
    observer: Option<Arc<dyn Observer>>,
    name: String,
}

impl Default for ElasticBuilder {
    fn default() -> Self {
        ElasticBuilder {
            min: 1,
            max: 8,
            backlog_per_worker: 16,
            target_sojourn: None,
            tick: Duration::from_secs(1),
            up_window: Duration::ZERO,
            down_window: Duration::from_secs(30),
            max_step_up: 4,
            max_step_down: 1,
            observer: None,
            name: "pool".into(),
        }
    }
}

impl ElasticBuilder {
    /// The fewest and most workers (default 1..=8).
    pub fn workers(mut self, min: usize, max: usize) -> Self {
        self.min = min;
        self.max = max;
        self
    }

    /// Queued items one worker is expected to absorb (default 16).
    pub fn backlog_per_worker(mut self, n: usize) -> Self {
        self.backlog_per_worker = n;
        self
    }

    /// Add a worker whenever the oldest item has waited longer than this.
    pub fn target_sojourn(mut self, target: Duration) -> Self {
        self.target_sojourn = Some(target);
        self
    }

    /// How often to decide (default 1 s).
    pub fn tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// Stabilisation windows: scale up to the lowest recommendation over `up`, down to the highest
    /// over `down` (defaults zero and 30 s).
    pub fn stabilization(mut self, up: Duration, down: Duration) -> Self {
        self.up_window = up;
        self.down_window = down;
        self
    }

    /// The most workers added and removed per tick (defaults 4 and 1).
    pub fn max_steps(mut self, up: usize, down: usize) -> Self {
        self.max_step_up = up;
        self.max_step_down = down;
        self
    }

    /// Reports `workers`, `desired_workers` and `busy` gauges to `observer` under `name`.
    pub fn observer(mut self, name: &str, observer: Arc<dyn Observer>) -> Self {
        self.name = name.into();
        self.observer = Some(observer);
        self
    }

    /// Starts `min` workers popping from `queue` and calling `handler` for each item, and the
    /// controller that resizes them. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ElasticConfigError`] for bounds or settings that cannot work.
    pub fn spawn<T, F, Fut>(
        self,
        queue: Queue<T>,
        handler: F,
    ) -> Result<ElasticPool, ElasticConfigError>
    where
        T: Send + 'static,
        F: Fn(Popped<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.max == 0 || self.min > self.max {
            return Err(ElasticConfigError::BadBounds);
        }
        if self.backlog_per_worker == 0
            || self.max_step_up == 0
            || self.max_step_down == 0
            || self.tick.is_zero()
        {
            return Err(ElasticConfigError::ZeroSetting);
        }
        let (desired, _) = watch::channel(self.min);
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            crew: Mutex::new(Crew {
                live: 0,
                retiring: 0,
                running: 0,
            }),
            busy: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            retire: Notify::new(),
            exited: Notify::new(),
            desired,
            events,
            scale_ups: AtomicU64::new(0),
            scale_downs: AtomicU64::new(0),
            reporter: Reporter::new(self.observer.clone(), &self.name),
        });
        let work: Arc<dyn Work> = Arc::new(Handler {
            queue: queue.clone(),
            handler,
        });
        for _ in 0..self.min {
            spawn_worker(&shared, &work);
        }
        let sizer = Sizer::new(
            self.min,
            self.max,
            self.backlog_per_worker,
            self.target_sojourn,
            self.up_window,
            self.down_window,
            self.max_step_up,
            self.max_step_down,
        );
        let probe: Arc<dyn Fn() -> (usize, Duration) + Send + Sync> = Arc::new(move || {
            let s = queue.stats();
            (s.len, s.oldest_sojourn)
        });
        let controller = tokio::spawn(control(shared.clone(), work, sizer, probe, self.tick));
        Ok(ElasticPool { shared, controller })
    }
}

/// One item's worth of work, with the item type erased so the pool itself is not generic.
trait Work: Send + Sync + 'static {
    /// Waits for the next item and turns it into a job; `None` once the queue is closed and empty.
    fn next(&self) -> Pin<Box<dyn Future<Output = Option<Job>> + Send + '_>>;
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

struct Handler<T, F> {
    queue: Queue<T>,
    handler: F,
}

impl<T, F, Fut> Work for Handler<T, F>
where
    T: Send + 'static,
    F: Fn(Popped<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn next(&self) -> Pin<Box<dyn Future<Output = Option<Job>> + Send + '_>> {
        Box::pin(async move {
            let popped = self.queue.pop().await?;
            Some(Box::pin((self.handler)(popped)) as Job)
        })
    }
}

#[derive(Debug)]
struct Crew {
    /// Workers running and not asked to retire.
    live: usize,
    /// Retirements asked for and not yet taken by a worker.
    retiring: usize,
    /// Worker tasks that have not exited (live + retiring-but-finishing).
    running: usize,
}

struct Shared {
    crew: Mutex<Crew>,
    busy: AtomicUsize,
    completed: AtomicU64,
    retire: Notify,
    exited: Notify,
    desired: watch::Sender<usize>,
    events: broadcast::Sender<ScaleEvent>,
    scale_ups: AtomicU64,
    scale_downs: AtomicU64,
    reporter: Reporter,
}

impl Shared {
    fn crew(&self) -> MutexGuard<'_, Crew> {
        self.crew.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one pending retirement, if any: the calling worker then exits.
    fn take_retirement(&self) -> bool {
        let mut c = self.crew();
        if c.retiring > 0 {
            c.retiring -= 1;
            true
        } else {
            false
        }
    }

    fn resize(&self, work: &Arc<dyn Work>, self_arc: &Arc<Shared>, to: usize) {
        let from = self.crew().live;
        if to > from {
            for _ in from..to {
                spawn_worker(self_arc, work);
            }
        } else if to < from {
            {
                let mut c = self.crew();
                c.live -= from - to;
                c.retiring += from - to;
            }
            self.retire.notify_waiters();
        }
        self.reporter.gauge("workers", to as f64);
    }
}

/// Decrements the crew when a worker task ends, even by a panic in the handler.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        {
            let mut c = self.0.crew();
            c.running -= 1;
        }
        self.0.exited.notify_waiters();
    }
}

struct BusyGuard<'a>(&'a AtomicUsize);

impl Drop for BusyGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn spawn_worker(shared: &Arc<Shared>, work: &Arc<dyn Work>) {
    {
        let mut c = shared.crew();
        c.live += 1;
        c.running += 1;
    }
    let guard = ExitGuard(shared.clone());
    let work = work.clone();
    tokio::spawn(async move {
        let shared = guard.0.clone();
        loop {
            let retire = shared.retire.notified();
            tokio::pin!(retire);
            // Register for retirement wake-ups before checking, so a request in between is seen.
            retire.as_mut().enable();
            if shared.take_retirement() {
                break;
            }
            let job = tokio::select! {
                biased;
                () = &mut retire => continue,
                job = work.next() => job,
            };
            let Some(job) = job else {
                // The queue is closed and drained: leave, counting as a retirement if one is due.
                let mut c = shared.crew();
                if c.retiring > 0 {
                    c.retiring -= 1;
                } else {
                    c.live -= 1;
                }
                break;
            };
            shared.busy.fetch_add(1, Ordering::AcqRel);
            let busy = BusyGuard(&shared.busy);
            // The item is in hand: it runs to completion whatever the controller decides.
            job.await;
            drop(busy);
            shared.completed.fetch_add(1, Ordering::Relaxed);
        }
        drop(guard);
    });
}

async fn control(
    shared: Arc<Shared>,
    work: Arc<dyn Work>,
    mut sizer: Sizer,
    probe: Arc<dyn Fn() -> (usize, Duration) + Send + Sync>,
    tick: Duration,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        let (backlog, oldest_sojourn) = probe();
        let current = shared.crew().live;
        let now = Instant::now();
        let observation = Observation {
            now,
            current,
            busy: shared.busy.load(Ordering::Acquire),
            backlog,
            oldest_sojourn,
        };
        let (to, reason) = sizer.decide(observation);
        shared.desired.send_replace(to);
        shared.reporter.gauge("desired_workers", to as f64);
        if let Some(reason) = reason {
            if to > current {
                shared.scale_ups.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.scale_downs.fetch_add(1, Ordering::Relaxed);
            }
            shared.resize(&work, &shared, to);
            // A lagging subscriber is told it lagged by the channel; nobody subscribed is fine.
            let _ = shared.events.send(ScaleEvent {
                at: now,
                from: current,
                to,
                reason,
                backlog,
                oldest_sojourn,
            });
        }
    }
}

/// An elastic pool of workers over a [`Queue`]; see the [module docs](crate::elastic).
///
/// ```
/// use std::time::Duration;
/// use floodway::{ElasticPool, Queue};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let queue = Queue::builder()
///     .dead_letter(|_l: floodway::DeadLetter<u32>| {})
///     .build()
///     .unwrap();
/// let pool = ElasticPool::builder()
///     .workers(1, 16)
///     .backlog_per_worker(8)
///     .tick(Duration::from_millis(100))
///     .spawn(queue.clone(), |job| async move {
///         let _n: u32 = job.item; // ... handle it ...
///     })
///     .unwrap();
/// queue.push(7).await.unwrap();
/// println!("desired workers: {}", *pool.desired().borrow());
/// pool.shutdown().await;
/// # }
/// ```
pub struct ElasticPool {
    shared: Arc<Shared>,
    controller: JoinHandle<()>,
}

impl fmt::Debug for ElasticPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElasticPool")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ElasticPool {
    /// Starts a builder: 1..=8 workers, 16 items per worker, 1 s tick, 30 s scale-down window.
    pub fn builder() -> ElasticBuilder {
        ElasticBuilder::default()
    }

    /// The size the pool wants, updated every tick.
    pub fn desired(&self) -> watch::Receiver<usize> {
        self.shared.desired.subscribe()
    }

    /// Every resize decision from now on (the channel keeps the last 64 for slow readers).
    pub fn events(&self) -> broadcast::Receiver<ScaleEvent> {
        self.shared.events.subscribe()
    }

    /// Counters and gauges.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            workers: self.shared.crew().live,
            busy: self.shared.busy.load(Ordering::Acquire),
            desired: *self.shared.desired.borrow(),
            completed: self.shared.completed.load(Ordering::Relaxed),
            scale_ups: self.shared.scale_ups.load(Ordering::Relaxed),
            scale_downs: self.shared.scale_downs.load(Ordering::Relaxed),
        }
    }

    /// Stops resizing, lets every worker finish the item it holds, and waits until all have
    /// exited. Items still queued stay in the queue.
    pub async fn shutdown(self) {
        self.controller.abort();
        loop {
            let exited = self.shared.exited.notified();
            tokio::pin!(exited);
            exited.as_mut().enable();
            {
                let mut c = self.shared.crew();
                if c.running == 0 {
                    return;
                }
                c.retiring += c.live;
                c.live = 0;
            }
            self.shared.retire.notify_waiters();
            exited.await;
        }
    }
}

impl Drop for ElasticPool {
    fn drop(&mut self) {
        self.controller.abort();
    }
}
