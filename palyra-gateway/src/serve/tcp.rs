//! TCP listeners: one task accepts, one task per connection runs the [`StreamMachine`] the
//! listener's [`Acceptor`] builds (gRPC over HTTP/2, HTTP/1.1, either inside TLS).

use super::{Stop, StopWaiter, SHUTDOWN_GRACE};
use crate::notify::Notifier;
use crate::runtime::{self, Rt, Task, TcpIo, TcpListenerIo};
use crate::WRITE_STALL;
use palyra_proto::transport::{Acceptor, StreamMachine};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Bytes read per call: one maximum-size HTTP/2 frame (16 KiB); idle connections stay small.
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
        let (acceptor, notifier) = listener.into_parts();
        Self::serve(rt, addr, acceptor, notifier)
    }

    /// Binds `addr` and runs the machine `acceptor` builds on every accepted connection,
    /// waking connections when `notifier` fires.
    pub fn serve(
        rt: &Rt,
        addr: SocketAddr,
        acceptor: Arc<dyn Acceptor>,
        notifier: Option<Arc<Notifier>>,
    ) -> io::Result<Self> {
        let socket = bind_listener(rt, addr)?;
        let local_addr = socket.local_addr()?;
        let stop = Stop::new();
        let task = runtime::spawn(
            rt.as_ref(),
            accept_loop(Rt::clone(rt), socket, acceptor, notifier, Arc::clone(&stop)),
        );
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

async fn accept_loop(
    rt: Rt,
    socket: Box<dyn TcpListenerIo>,
    acceptor: Arc<dyn Acceptor>,
    notifier: Option<Arc<Notifier>>,
    stop: Arc<Stop>,
) {
    let mut connections: Vec<Task<()>> = Vec::new();
    let mut stopping = StopWaiter::new(Arc::clone(&stop));
    loop {
        let accepted = std::future::poll_fn(|cx| {
            if stopping.poll(cx).is_ready() {
                return Poll::Ready(Accepted::Stop);
            }
            socket.poll_accept(cx).map(Accepted::Connection)
        })
        .await;
        match accepted {
            Accepted::Connection(Ok((stream, peer))) => {
                let _ = stream.socket().set_tcp_nodelay(true);
                connections.retain(|t| !t.is_finished());
                match acceptor.accept(rt.now(), peer) {
                    Ok(conn) => connections.push(runtime::spawn(
                        rt.as_ref(),
                        serve_connection(
                            Rt::clone(&rt),
                            stream,
                            peer,
                            conn,
                            notifier.clone(),
                            Arc::clone(&stop),
                        ),
                    )),
                    Err(e) => tracing::warn!(error = %e, "connection setup failed"),
                }
            }
            Accepted::Connection(Err(e)) => tracing::warn!(error = %e, "accept failed"),
            Accepted::Stop => break,
        }
    }
    let _ = runtime::timeout(rt.as_ref(), SHUTDOWN_GRACE, async {
        for task in connections {
            task.join().await;
        }
    })
    .await;
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Notified,
    Stop,
}

/// Runs `conn` over `stream` until it is closed: writes what it emits, feeds it what arrives,
/// its timers and wake-ups from `notifier`, and asks it to finish when `stop` is raised.
pub async fn serve_connection<M: StreamMachine>(
    rt: Rt,
    stream: Box<dyn TcpIo>,
    peer: SocketAddr,
    mut conn: M,
    notifier: Option<Arc<Notifier>>,
    stop: Arc<Stop>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stopping = false;
    if stop.is_raised() {
        stopping = true;
        conn.go_away();
    }
    let mut stop = StopWaiter::new(stop);
    let far = || rt.now() + Duration::from_secs(86_400);
    let mut timer = rt.new_timer(far());
    let mut seen = notifier.as_ref().map_or(0, |n| n.version());
    loop {
        let mut listener = notifier.as_ref().map(|n| n.listen());
        if notifier
            .as_ref()
            .is_some_and(|n| n.changed_since(&mut seen))
        {
            conn.handle_wake(rt.now());
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
        timer
            .as_mut()
            .reset(conn.poll_timeout().unwrap_or_else(far));
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
            Wake::Read(Ok(n)) => conn.handle_input(rt.now(), &buf[..n]),
            Wake::Timer => conn.handle_timeout(rt.now()),
            Wake::Notified => {}
            Wake::Stop => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}
