//! TCP listeners: one task accepts, one task per connection runs the [`StreamMachine`] the
//! listener's [`Acceptor`] builds (gRPC over HTTP/2, HTTP/1.1, either inside TLS).

use super::{Stop, StopWaiter, SHUTDOWN_GRACE};
use crate::notify::Notifier;
use crate::runtime::{self, Rt, Task, TcpIo, TcpListenerIo};
use crate::util::throttle::Throttle;
use crate::WRITE_STALL;
use palyra_proto::transport::{Acceptor, StreamMachine};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Bytes read per call at first: idle connections (and a flood of them) stay small.
const FIRST_READ_BUFFER: usize = 2 * 1024;
/// A read that fills the buffer doubles it, up to one maximum-size HTTP/2 frame (16 KiB).
const READ_BUFFER: usize = 16 * 1024;

/// Pending connections the kernel queues before the accept loop takes them.
const BACKLOG: i32 = 1024;

/// Binds a listening TCP socket (address reuse, a deep backlog) and wraps it for `rt`.
pub fn bind_listener(rt: &Rt, addr: SocketAddr) -> io::Result<Box<dyn TcpListenerIo>> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    rt.wrap_tcp_listener(socket.into())
}

/// Limits of one TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once. At the cap, the oldest idle (or half-open) connection is shed
    /// to make room; with none idle, the new one is refused with the protocol's answer.
    pub max_connections: usize,
    /// Refused connections lingering at once (beyond it they are closed without an answer).
    pub max_refusing: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: crate::limits::default_connection_cap(None),
            max_refusing: crate::limits::MAX_REFUSING,
        }
    }
}

/// What the accept loop knows of one connection.
struct Slot {
    /// The connection's machine says nothing is in progress.
    idle: std::sync::atomic::AtomicBool,
    /// Raised to shed the connection (it is asked to finish and closes).
    shed: Arc<Stop>,
    accepted: std::time::Instant,
}

/// A running TCP listener (gRPC, HTTP/1.1, ...): one task per connection.
pub struct TcpHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    stop: Arc<Stop>,
    task: Task<()>,
}

impl TcpHandle {
    /// Binds `addr` and serves what `listener` describes (a gRPC listener, the operator plane).
    pub fn start(
        rt: &Rt,
        addr: SocketAddr,
        listener: crate::grpc::GrpcListener,
    ) -> io::Result<Self> {
        Self::start_with(rt, addr, listener, ListenerLimits::default())
    }

    /// [`TcpHandle::start`] with explicit limits.
    pub fn start_with(
        rt: &Rt,
        addr: SocketAddr,
        listener: crate::grpc::GrpcListener,
        limits: ListenerLimits,
    ) -> io::Result<Self> {
        let (acceptor, notifier) = listener.into_parts();
        Self::serve_with(rt, addr, acceptor, notifier, limits)
    }

    /// Binds `addr` and runs the machine `acceptor` builds on every accepted connection,
    /// waking connections when `notifier` fires (default limits).
    pub fn serve(
        rt: &Rt,
        addr: SocketAddr,
        acceptor: Arc<dyn Acceptor>,
        notifier: Option<Arc<Notifier>>,
    ) -> io::Result<Self> {
        Self::serve_with(rt, addr, acceptor, notifier, ListenerLimits::default())
    }

    /// [`TcpHandle::serve`] with explicit limits.
    pub fn serve_with(
        rt: &Rt,
        addr: SocketAddr,
        acceptor: Arc<dyn Acceptor>,
        notifier: Option<Arc<Notifier>>,
        limits: ListenerLimits,
    ) -> io::Result<Self> {
        let socket = bind_listener(rt, addr)?;
        let local_addr = socket.local_addr()?;
        let stop = Stop::new();
        let listener = Listener {
            rt: Rt::clone(rt),
            acceptor,
            notifier,
            stop: Arc::clone(&stop),
            limits,
            addr: local_addr,
        };
        let task = runtime::spawn(rt.as_ref(), listener.run(socket));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// Stops accepting, asks every connection to finish (GOAWAY, close) and waits (bounded).
    pub async fn shutdown(self, rt: &Rt) {
        self.stop.raise();
        let _ = runtime::timeout(
            rt.as_ref(),
            SHUTDOWN_GRACE + Duration::from_secs(1),
            self.task.join(),
        )
        .await;
    }
}

enum Accepted {
    Connection(io::Result<(Box<dyn TcpIo>, SocketAddr)>),
    Stop,
}

/// The first accept back-off after a resource error; it doubles up to [`MAX_ACCEPT_BACKOFF`].
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
/// The longest accept back-off.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_millis(250);

/// Whether an accept error means the process (or system) ran out of something that frees up
/// with time: descriptors, buffers, memory. Accepting again at once would spin.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The accept loop of one listener and what it shares with its connections.
struct Listener {
    rt: Rt,
    acceptor: Arc<dyn Acceptor>,
    notifier: Option<Arc<Notifier>>,
    stop: Arc<Stop>,
    limits: ListenerLimits,
    addr: SocketAddr,
}

impl Listener {
    async fn run(self, socket: Box<dyn TcpListenerIo>) {
        let rt = Rt::clone(&self.rt);
        let mut connections: Vec<(Arc<Slot>, Task<()>)> = Vec::new();
        let mut refusing: Vec<Task<()>> = Vec::new();
        let mut stopping = StopWaiter::new(Arc::clone(&self.stop));
        let mut backoff = FIRST_ACCEPT_BACKOFF;
        let mut accept_errors = Throttle::new(Duration::from_secs(1));
        let mut refusals = Throttle::new(Duration::from_secs(1));
        let mut sheds = Throttle::new(Duration::from_secs(1));
        loop {
            let accepted = std::future::poll_fn(|cx| {
                if stopping.poll(cx).is_ready() {
                    return Poll::Ready(Accepted::Stop);
                }
                socket.poll_accept(cx).map(Accepted::Connection)
            })
            .await;
            let (stream, peer) = match accepted {
                Accepted::Stop => break,
                Accepted::Connection(Ok(accepted)) => {
                    backoff = FIRST_ACCEPT_BACKOFF;
                    accepted
                }
                Accepted::Connection(Err(e)) => {
                    let exhausted = is_resource_exhaustion(&e);
                    if let Some(count) = accept_errors.hit(rt.now()) {
                        tracing::warn!(listener = %self.addr, error = %e, count, backoff_ms = exhausted.then_some(backoff.as_millis() as u64), "accept failed");
                    }
                    if exhausted {
                        // Descriptors free up as connections close: wait instead of spinning.
                        runtime::sleep(rt.as_ref(), backoff).await;
                        backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    }
                    continue;
                }
            };
            let _ = stream.socket().set_tcp_nodelay(true);
            connections.retain(|(_, t)| !t.is_finished());
            refusing.retain(|t| !t.is_finished());
            let now = rt.now();
            if connections.len() >= self.limits.max_connections && !self.shed_one(&connections) {
                if let Some(count) = refusals.hit(now) {
                    tracing::warn!(listener = %self.addr, cap = self.limits.max_connections, count, "connection limit reached; refusing new connections");
                }
                if refusing.len() < self.limits.max_refusing {
                    if let Some(refusal) = self.acceptor.refuse(now, peer) {
                        let stop = Stop::new();
                        refusing.push(runtime::spawn(
                            rt.as_ref(),
                            serve_connection(
                                Rt::clone(&rt),
                                stream,
                                peer,
                                refusal,
                                None,
                                stop,
                                None,
                            ),
                        ));
                    }
                }
                continue;
            } else if connections.len() >= self.limits.max_connections {
                if let Some(count) = sheds.hit(now) {
                    tracing::info!(listener = %self.addr, cap = self.limits.max_connections, count, "connection limit reached; shedding idle connections");
                }
            }
            match self.acceptor.accept(now, peer) {
                Ok(conn) => {
                    let slot = Arc::new(Slot {
                        idle: std::sync::atomic::AtomicBool::new(true),
                        shed: Stop::new(),
                        accepted: now,
                    });
                    let task = runtime::spawn(
                        rt.as_ref(),
                        serve_connection(
                            Rt::clone(&rt),
                            stream,
                            peer,
                            conn,
                            self.notifier.clone(),
                            Arc::clone(&self.stop),
                            Some(Arc::clone(&slot)),
                        ),
                    );
                    connections.push((slot, task));
                }
                Err(e) => tracing::warn!(error = %e, "connection setup failed"),
            }
        }
        let _ = runtime::timeout(rt.as_ref(), SHUTDOWN_GRACE, async {
            for (_, task) in connections {
                task.join().await;
            }
        })
        .await;
    }

    /// Sheds the oldest idle connection not shed yet; returns whether there was one.
    fn shed_one(&self, connections: &[(Arc<Slot>, Task<()>)]) -> bool {
        let victim = connections
            .iter()
            .filter(|(slot, _)| {
                slot.idle.load(std::sync::atomic::Ordering::Acquire) && !slot.shed.is_raised()
            })
            .min_by_key(|(slot, _)| slot.accepted);
        match victim {
            Some((slot, _)) => {
                slot.shed.raise();
                true
            }
            None => false,
        }
    }
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Notified,
    Stop,
}

/// Runs `conn` over `stream` until it is closed: writes what it emits, feeds it what arrives,
/// its timers and wake-ups from `notifier`, and asks it to finish when `stop` is raised (or its
/// `slot` is shed); keeps the slot's idle flag current.
async fn serve_connection<M: StreamMachine>(
    rt: Rt,
    stream: Box<dyn TcpIo>,
    peer: SocketAddr,
    mut conn: M,
    notifier: Option<Arc<Notifier>>,
    stop: Arc<Stop>,
    slot: Option<Arc<Slot>>,
) {
    let mut buf = vec![0u8; FIRST_READ_BUFFER];
    let mut stopping = false;
    if stop.is_raised() {
        stopping = true;
        conn.go_away();
    }
    let mut stop = StopWaiter::new(stop);
    let mut shed = slot.as_ref().map(|s| StopWaiter::new(Arc::clone(&s.shed)));
    let far = || rt.now() + Duration::from_secs(86_400);
    let mut timer = rt.new_timer(far());
    let mut armed: Option<std::time::Instant> = None;
    let mut fired = false;
    let mut seen = notifier.as_ref().map_or(0, |n| n.version());
    loop {
        let mut listener = notifier.as_ref().map(|n| n.listen());
        if notifier
            .as_ref()
            .is_some_and(|n| n.changed_since(&mut seen))
        {
            conn.handle_wake(rt.now());
        }
        // The idle flag is current before anything is written: a peer that has its answer must
        // not find its connection still marked idle (the accept loop sheds idle ones first).
        if let Some(slot) = &slot {
            slot.idle
                .store(conn.is_idle(), std::sync::atomic::Ordering::Release);
        }
        while let Some(bytes) = conn.poll_transmit() {
            let written = runtime::timeout(
                rt.as_ref(),
                WRITE_STALL,
                runtime::write_all(&*stream, &bytes),
            )
            .await;
            if !matches!(written, Some(Ok(()))) {
                tracing::debug!(%peer, "write failed or stalled; dropping the connection");
                return;
            }
        }
        if conn.is_closed() {
            if let Some(reason) = conn.failure() {
                tracing::debug!(%peer, %reason, "connection failed");
            }
            let _ = stream.socket().shutdown(std::net::Shutdown::Write);
            return;
        }
        if let Some(slot) = &slot {
            slot.idle
                .store(conn.is_idle(), std::sync::atomic::Ordering::Release);
        }
        // Re-arm only when the deadline moved or the timer fired (a fired timer may never fire
        // again on its own): most turns of a busy connection leave it alone.
        let deadline = conn.poll_timeout();
        if deadline != armed || fired {
            armed = deadline;
            fired = false;
            timer.as_mut().reset(deadline.unwrap_or_else(far));
        }
        let reading = conn.wants_input();
        let woke = std::future::poll_fn(|cx| {
            if reading {
                if let Poll::Ready(read) = stream.poll_read(cx, &mut buf) {
                    return Poll::Ready(Wake::Read(read));
                }
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if let Some(listener) = listener.as_mut() {
                if std::pin::Pin::new(listener).poll(cx).is_ready() {
                    return Poll::Ready(Wake::Notified);
                }
            }
            if !stopping && stop.poll(cx).is_ready() {
                return Poll::Ready(Wake::Stop);
            }
            if !stopping && shed.as_mut().is_some_and(|s| s.poll(cx).is_ready()) {
                return Poll::Ready(Wake::Stop);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => {
                conn.handle_eof();
                while let Some(bytes) = conn.poll_transmit() {
                    if runtime::write_all(&*stream, &bytes).await.is_err() {
                        break;
                    }
                }
                tracing::debug!(%peer, "connection closed by peer");
                return;
            }
            Wake::Read(Ok(n)) => {
                conn.handle_input(rt.now(), &buf[..n]);
                if n == buf.len() && buf.len() < READ_BUFFER {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Wake::Timer => {
                fired = true;
                conn.handle_timeout(rt.now());
            }
            Wake::Notified => {}
            Wake::Stop => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}
