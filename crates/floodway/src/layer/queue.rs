use std::fmt;
use std::future::{Future, poll_fn};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;
use tower_layer::Layer;
use tower_service::Service;

use super::{BoxError, Reason, Refused};
use crate::queue::{Admitted, Meta, PushError, QueueStats};
use crate::shed::CoDel;
use crate::{DeadLetter, Overflow, Queue};

/// A queued request and the channel its caller awaits.
struct Message<Req, F> {
    req: Req,
    reply: oneshot::Sender<Result<F, Refused>>,
}

/// Puts a floodway [`Queue`] in front of a service, drained by one worker task that calls the
/// service as it becomes ready (as tower's `Buffer` does, with floodway's policies).
///
/// Requests carry [`Meta`] from the `meta` function (priority, deadline). A request shed, expired or
/// evicted while queued is answered with [`Reason::Shed`], so every caller hears back. With
/// [`Overflow::Block`], a caller waits inside the response future for room; with the other
/// policies it is answered at once. `poll_ready` is always ready: the queue is the back pressure.
///
/// When every clone of the service is dropped, the queue closes; the worker serves what is left,
/// then exits.
pub struct QueueLayer<Req, M = fn(&Req) -> Meta> {
    max_items: usize,
    overflow: Overflow,
    codel: Option<CoDel>,
    lifo: bool,
    meta: Option<M>,
    _req: PhantomData<fn(Req)>,
}

impl<Req, M: Clone> Clone for QueueLayer<Req, M> {
    fn clone(&self) -> Self {
        QueueLayer {
            max_items: self.max_items,
            overflow: self.overflow,
            codel: self.codel.clone(),
            lifo: self.lifo,
            meta: self.meta.clone(),
            _req: PhantomData,
        }
    }
}

impl<Req, M> fmt::Debug for QueueLayer<Req, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueLayer")
            .field("max_items", &self.max_items)
            .field("overflow", &self.overflow)
            .field("codel", &self.codel)
            .field("lifo", &self.lifo)
            .finish_non_exhaustive()
    }
}

impl<Req> QueueLayer<Req> {
    /// A queue of at most `max_items` requests with the given overflow policy.
    ///
    /// # Panics
    /// If `max_items` is zero.
    #[track_caller]
    pub fn new(max_items: usize, overflow: Overflow) -> Self {
        assert!(max_items > 0, "max_items must be at least 1");
        QueueLayer {
            max_items,
            overflow,
            codel: None,
            lifo: false,
            meta: None,
            _req: PhantomData,
        }
    }
}

impl<Req, M> QueueLayer<Req, M> {
    /// Sheds by sojourn time with `codel`; with `adaptive_lifo`, serves newest first while the queue
    /// is standing.
    pub fn codel(mut self, codel: CoDel, adaptive_lifo: bool) -> Self {
        self.codel = Some(codel);
        self.lifo = adaptive_lifo;
        self
    }

    /// Takes each request's priority and deadline from `meta(&request)`.
    pub fn with_meta<N: Fn(&Req) -> Meta>(self, meta: N) -> QueueLayer<Req, N> {
        QueueLayer {
            max_items: self.max_items,
            overflow: self.overflow,
            codel: self.codel,
            lifo: self.lifo,
            meta: Some(meta),
            _req: PhantomData,
        }
    }
}

impl<S, Req, M> Layer<S> for QueueLayer<Req, M>
where
    S: Service<Req> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    M: Clone,
{
    type Service = QueueService<Req, S::Future, M>;

    /// Builds the queue and spawns its worker; must be called within a tokio runtime.
    fn layer(&self, inner: S) -> Self::Service {
        let mut builder = Queue::builder()
            .max_items(self.max_items)
            .overflow(self.overflow)
            .adaptive_lifo(self.lifo)
            .dead_letter(|letter: DeadLetter<Message<Req, S::Future>>| {
                // The caller hears why its request was given up on.
                let refused = Refused::new(Reason::Shed(letter.reason), None);
                let _ = letter.item.reply.send(Err(refused));
            });
        if let Some(codel) = &self.codel {
            builder = builder.codel(codel.clone());
        }
        let queue = builder
            .build()
            .expect("max_items > 0, no byte bound, and LIFO only with CoDel");
        tokio::spawn(work(queue.clone(), inner));
        QueueService {
            handle: Arc::new(CloseOnDrop(queue)),
            meta: self.meta.clone(),
        }
    }
}

async fn work<S, Req>(queue: Queue<Message<Req, S::Future>>, mut inner: S)
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
    S::Future: Send + 'static,
{
    let mut failed = false;
    while let Some(popped) = queue.pop().await {
        let Message { req, reply } = popped.item;
        if reply.is_closed() {
            // The caller is gone: doing its work would only add load.
            continue;
        }
        if !failed {
            match poll_fn(|cx| inner.poll_ready(cx)).await {
                Ok(()) => {
                    let _ = reply.send(Ok(inner.call(req)));
                    continue;
                }
                Err(_) => {
                    // A service that fails readiness is done for (tower's contract): refuse the
                    // rest, and stop taking new requests.
                    failed = true;
                    queue.close();
                }
            }
        }
        let _ = reply.send(Err(Refused::new(Reason::Closed, None)));
    }
}

#[derive(Debug)]
struct CloseOnDrop<T>(Queue<T>);

impl<T> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The service made by [`QueueLayer`].
pub struct QueueService<Req, F, M> {
    handle: Arc<CloseOnDrop<Message<Req, F>>>,
    meta: Option<M>,
}

impl<Req, F, M: Clone> Clone for QueueService<Req, F, M> {
    fn clone(&self) -> Self {
        QueueService {
            handle: self.handle.clone(),
            meta: self.meta.clone(),
        }
    }
}

impl<Req, F, M> fmt::Debug for QueueService<Req, F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueService").finish_non_exhaustive()
    }
}

impl<Req, F, M> QueueService<Req, F, M> {
    /// The counters of the queue in front of the service.
    pub fn stats(&self) -> QueueStats {
        self.handle.0.stats()
    }

    /// How full the queue is (see [`Queue::utilisation`]).
    pub fn utilisation(&self) -> f64 {
        self.handle.0.utilisation()
    }
}

impl<Req, F, T, E, M> Service<Req> for QueueService<Req, F, M>
where
    Req: Send + 'static,
    F: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
    T: Send + 'static,
    M: Fn(&Req) -> Meta,
{
    type Response = T;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let meta = self.meta.as_ref().map_or_else(Meta::default, |m| m(&req));
        let handle = self.handle.clone();
        let (reply, answer) = oneshot::channel();
        Box::pin(async move {
            let pushed = handle.0.push_with(Message { req, reply }, meta).await;
            match pushed {
                // A dead-lettered request is answered through its reply channel.
                Ok(Admitted::Queued { .. } | Admitted::DeadLettered) => {}
                Err(e) => {
                    let refused = match &e {
                        PushError::Full { retry_after, .. } => {
                            Refused::new(Reason::Full, Some(*retry_after))
                        }
                        PushError::TooLarge { .. } => Refused::new(Reason::Never, None),
                        PushError::Expired { .. } => {
                            Refused::new(Reason::Shed(crate::DropReason::Expired), None)
                        }
                        PushError::Closed { .. } => Refused::new(Reason::Closed, None),
                    };
                    return Err(refused.into());
                }
            }
            match answer.await {
                Ok(Ok(future)) => future.await.map_err(Into::into),
                Ok(Err(refused)) => Err(refused.into()),
                Err(_) => Err(Refused::new(Reason::Closed, None).into()),
            }
        })
    }
}
