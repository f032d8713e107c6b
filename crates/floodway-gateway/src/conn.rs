//! Bounds on client connections: how many may be open at once, and how long one may go without a
//! byte read or written. axum's `serve` has neither; without them, clients that open connections
//! and then send nothing (or send a byte now and then) hold memory and file descriptors for as
//! long as they like.
//!
//! At the cap the listener stops accepting: new connections wait in the kernel's listen queue
//! (their clients see a slow connect, which is the back pressure TCP itself offers) until an open
//! one closes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How many client connections may be open, and how many are.
#[derive(Debug)]
pub struct Connections {
    permits: Arc<Semaphore>,
    max: usize,
    /// Connections accepted and not yet closed. Not derived from the permits: the listener holds
    /// one while it waits for the next connection.
    open: AtomicUsize,
}

impl Connections {
    /// Room for `max` connections.
    pub fn new(max: usize) -> Arc<Connections> {
        Arc::new(Connections {
            permits: Arc::new(Semaphore::new(max)),
            max,
            open: AtomicUsize::new(0),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// A TCP listener that keeps at most [`Connections::max`] connections open and closes the ones
/// idle for longer than its idle timeout.
#[derive(Debug)]
pub struct Limited {
    listener: TcpListener,
    connections: Arc<Connections>,
    idle: Duration,
}

impl Limited {
    /// Wraps `listener`.
    pub fn new(listener: TcpListener, connections: Arc<Connections>, idle: Duration) -> Limited {
        Limited {
            listener,
            connections,
            idle,
        }
    }
}

impl axum::serve::Listener for Limited {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .connections
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        // axum's accept, which logs and retries failures such as running out of descriptors.
        let (io, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let room = Room::new(permit, self.connections.clone());
        (Guarded::new(io, self.idle, room), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops accepting, lets each open
/// connection finish the request it is serving (an idle one closes at once), and waits for them
/// for at most `grace`.
///
/// By hand rather than `axum::serve`, which has no bound on the time a client may take to send a
/// request's head: with hyper's HTTP/1 server directly, a head that is not whole within
/// `header_timeout` closes the connection. (Without it, clients trickling one header byte now and
/// then, inside the idle timeout, could hold every connection the gateway allows.) Each
/// connection gets `TCP_NODELAY` (responses go out whole, one write each: no reason to hold back
/// the last segment of one) and its requests the client's address as axum's [`ConnectInfo`].
pub async fn serve(
    mut listener: Limited,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    use axum::serve::Listener;
    use hyper::body::Incoming;
    use tower::ServiceExt;

    let (stop, stopping) = tokio::sync::watch::channel(false);
    // Each connection holds a sender: once all are dropped, every connection is closed.
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    tokio::pin!(shutdown);
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let _ = io.get_ref().set_nodelay(true);
        let app = app.clone();
        let (mut stopping, open) = (stopping.clone(), open.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(addr));
                app.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout);
            let conn = http.serve_connection(hyper_util::rt::TokioIo::new(io), service);
            tokio::pin!(conn);
            let stopped = async move {
                let _ = stopping.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => {}
                () = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    drop(open);
    if tokio::time::timeout(grace, all_closed.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the grace period; closing them");
    }
}

/// A connection that fails with [`io::ErrorKind::TimedOut`] once nothing was read or written for
/// the idle timeout (the server then closes it), and gives its room back when dropped.
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    idle: Duration,
    /// When a byte last went either way.
    last: Instant,
    /// Armed for `last + idle` or earlier; moved on when it fires early.
    timer: Pin<Box<Sleep>>,
    _room: Room,
}

/// An open connection's place among the [`Connections`], given back when it is dropped.
#[derive(Debug)]
struct Room {
    _permit: OwnedSemaphorePermit,
    of: Arc<Connections>,
}

impl Room {
    fn new(permit: OwnedSemaphorePermit, of: Arc<Connections>) -> Room {
        of.open.fetch_add(1, Ordering::Relaxed);
        Room {
            _permit: permit,
            of,
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.of.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S> Guarded<S> {
    fn new(inner: S, idle: Duration, room: Room) -> Guarded<S> {
        let now = Instant::now();
        Guarded {
            inner,
            idle,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            _room: room,
        }
    }

    /// The connection itself.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// After an operation that would wait: an error once the connection has been idle too long.
    /// (Moving the timer on every byte would cost a timer update per read and write; it is moved
    /// only when it fires.)
    fn check_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let due = self.last + self.idle;
            if due <= Instant::now() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection was idle for too long",
                ));
            }
            self.timer.as_mut().reset(due);
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.last = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                this.check_idle(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> Guarded<S> {
    /// One write-side call, with the idle bookkeeping around it.
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut S>, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.check_idle(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .write_with(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                this.check_idle(cx)?;
                Poll::Pending
            }
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const IDLE: Duration = Duration::from_secs(60);

    /// A connection is closed exactly when nothing went either way for the idle timeout: bytes
    /// read or written push the moment back.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_traffic_keeps_it_open() {
        let (client, server) = tokio::io::duplex(64);
        let connections = Connections::new(1);
        let permit = connections.permits.clone().try_acquire_owned().unwrap();
        let room = Room::new(permit, connections);
        let mut conn = Guarded::new(server, IDLE, room);
        let mut client = client;
        let mut buf = [0u8; 8];
        let start = Instant::now();
        // Something arrives after 50 s: the read succeeds and the connection lives on.
        let send = async {
            tokio::time::sleep(Duration::from_secs(50)).await;
            client.write_all(b"hi").await.unwrap();
            client
        };
        let (n, mut client) = tokio::join!(conn.read(&mut buf), send);
        assert_eq!(n.unwrap(), 2);
        // A write at 100 s also counts.
        tokio::time::sleep(Duration::from_secs(50)).await;
        conn.write_all(b"ok").await.unwrap();
        client.read_exact(&mut buf[..2]).await.unwrap();
        // Then silence: the wait fails 60 s after that write, not earlier.
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, Duration::from_secs(160));
    }

    /// Room for a connection is held for as long as the connection lives.
    #[tokio::test]
    async fn a_connection_holds_its_room_until_dropped() {
        let connections = Connections::new(2);
        // As the listener does: a permit first, held while it waits for a connection.
        let permit = connections.permits.clone().acquire_owned().await.unwrap();
        assert_eq!(connections.open(), 0, "waiting for a connection is not one");
        let (_client, server) = tokio::io::duplex(8);
        let conn = Guarded::new(server, IDLE, Room::new(permit, connections.clone()));
        assert_eq!(connections.open(), 1);
        assert_eq!(connections.permits.available_permits(), 1);
        drop(conn);
        assert_eq!(connections.open(), 0);
        assert_eq!(connections.permits.available_permits(), 2);
    }
}
