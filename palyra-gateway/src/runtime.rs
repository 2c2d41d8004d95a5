//! The small runtime trait the serve loops are written against, in the spirit of quinn's
//! `Runtime`: timers, tasks, blocking work and readiness-driven sockets. `palyra-tokio` and
//! `palyra-smol` each implement it in a few dozen lines; everything else (the UDP node plane,
//! the TCP listeners, the gRPC client channel, the node client) is written once, here and in
//! [`crate::serve`], over `Arc<dyn Runtime>`.
//!
//! Sockets are bound with `std::net` (or `socket2`) by the loops and handed to the runtime to be
//! wrapped; the runtime only adds readiness.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A boxed future a runtime can run.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The runtime the serve loops run on.
pub type Rt = Arc<dyn Runtime>;

/// What a runtime adapter provides.
pub trait Runtime: Send + Sync + Debug + 'static {
    /// Runs `task` in the background (detached; it ends on its own).
    fn spawn(&self, task: BoxFuture<()>);
    /// A timer that fires at `deadline` (and can be moved with [`AsyncTimer::reset`]).
    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>>;
    /// Runs `work` where blocking (file IO, DNS) does not stall the event loop.
    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>);
    /// Wraps a bound, non-blocking UDP socket.
    fn wrap_udp(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn UdpIo>>;
    /// Wraps a bound, listening, non-blocking TCP listener.
    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Box<dyn TcpListenerIo>>;
    /// Wraps a connected, non-blocking TCP stream.
    fn wrap_tcp_stream(&self, stream: std::net::TcpStream) -> io::Result<Box<dyn TcpIo>>;
    /// Opens a TCP connection to `addr`.
    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn TcpIo>>>;
    /// Wraps a connected, non-blocking Unix stream (a child process's pipe, e.g. Chromium's
    /// DevTools pipe); it reads and writes like a TCP stream.
    fn wrap_unix_stream(
        &self,
        stream: std::os::unix::net::UnixStream,
    ) -> io::Result<Box<dyn TcpIo>>;
    /// The current time (monotonic).
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A resettable timer (quinn's `AsyncTimer`).
pub trait AsyncTimer: Send + Debug {
    /// Moves the deadline.
    fn reset(self: Pin<&mut Self>, deadline: Instant);
    /// Ready once the deadline passed.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()>;
}

/// Readiness of a UDP socket, for `quinn-udp`'s batched, segmentation-offloading IO.
pub trait UdpIo: Send + Sync + Debug {
    /// The socket, for `quinn_udp::UdpSocketState::{send, recv}`.
    fn sock_ref(&self) -> quinn_udp::UdpSockRef<'_>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Ready when a receive may succeed.
    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ready when a send may succeed.
    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Runs one non-blocking operation; `WouldBlock` clears the runtime's readiness so the next
    /// `poll_*_ready` waits for the kernel again.
    fn try_io(&self, send: bool, op: &mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize>;
}

/// A listening TCP socket.
pub trait TcpListenerIo: Send + Sync + Debug {
    /// The next accepted connection (already non-blocking and wrapped) and its peer.
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn TcpIo>, SocketAddr)>>;
    /// The bound address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

/// A connected byte stream (TCP, or a Unix stream); reads and writes may be polled from one task
/// at once.
pub trait TcpIo: Send + Sync + Debug {
    /// Reads into `buf`; `Ok(0)` at end of stream.
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Writes some of `buf`.
    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// The underlying socket (options, shutdown, addresses).
    fn socket(&self) -> socket2::SockRef<'_>;
}

/// Spawns `future` on `rt` and returns a handle to its output.
pub fn spawn<T: Send + 'static>(
    rt: &dyn Runtime,
    future: impl Future<Output = T> + Send + 'static,
) -> Task<T> {
    let (tx, rx) = async_channel::bounded(1);
    rt.spawn(Box::pin(async move {
        let _ = tx.send(future.await).await;
    }));
    Task { rx }
}

/// The output of a spawned task, awaited with [`Task::join`]. Dropping it detaches the task.
#[derive(Debug)]
pub struct Task<T> {
    rx: async_channel::Receiver<T>,
}

impl<T> Task<T> {
    /// Waits for the task; `None` if it ended without an output (it panicked).
    pub async fn join(self) -> Option<T> {
        self.rx.recv().await.ok()
    }

    /// Whether the task has ended.
    pub fn is_finished(&self) -> bool {
        !self.rx.is_empty() || self.rx.sender_count() == 0
    }
}

/// Sleeps until `deadline`.
pub async fn sleep_until(rt: &dyn Runtime, deadline: Instant) {
    let mut timer = rt.new_timer(deadline);
    std::future::poll_fn(|cx| timer.as_mut().poll(cx)).await
}

/// Sleeps for `duration`.
pub async fn sleep(rt: &dyn Runtime, duration: Duration) {
    sleep_until(rt, rt.now() + duration).await
}

/// `future`'s output, or `None` if `limit` passed first.
pub async fn timeout<F: Future>(rt: &dyn Runtime, limit: Duration, future: F) -> Option<F::Output> {
    // The timer is made only once the future has to wait: most writes complete at once.
    let mut timer: Option<Pin<Box<dyn AsyncTimer>>> = None;
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer
            .get_or_insert_with(|| rt.new_timer(rt.now() + limit))
            .as_mut()
            .poll(cx)
            .map(|()| None)
    })
    .await
}

/// Runs blocking `work` off the event loop and waits for its result.
pub async fn unblock<T: Send + 'static>(
    rt: &dyn Runtime,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = async_channel::bounded(1);
    rt.spawn_blocking(Box::new(move || {
        let _ = tx.send_blocking(work());
    }));
    match rx.recv().await {
        Ok(out) => out,
        // The blocking pool dropped the work (runtime shutting down): nothing can be returned.
        Err(_) => std::future::pending().await,
    }
}

/// Reads into `buf` from `io`.
pub async fn read(io: &dyn TcpIo, buf: &mut [u8]) -> io::Result<usize> {
    std::future::poll_fn(|cx| io.poll_read(cx, buf)).await
}

/// Writes all of `bytes` to `io`.
pub async fn write_all(io: &dyn TcpIo, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        let n = std::future::poll_fn(|cx| io.poll_write(cx, bytes)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Resolves `host:port` (blocking resolver, off the event loop).
pub async fn lookup_host(rt: &dyn Runtime, target: &str) -> io::Result<Vec<SocketAddr>> {
    let target = target.to_owned();
    unblock(rt, move || {
        std::net::ToSocketAddrs::to_socket_addrs(&target).map(Iterator::collect)
    })
    .await
}
