//! [`Runtime`] for smol: tasks on smol's executor, blocking work on its thread pool, async-io
//! timers and readiness for the sockets the serve loops bind.

use async_io::Async;
use palyra_gateway::runtime::{AsyncTimer, BoxFuture, Runtime, TcpIo, TcpListenerIo, UdpIo};
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// smol's global executor as a Palyra runtime.
#[derive(Debug, Clone, Default)]
pub struct Smol;

impl Smol {
    /// The runtime.
    pub fn new() -> Arc<Self> {
        Arc::new(Self)
    }
}

impl Runtime for Smol {
    fn spawn(&self, task: BoxFuture<()>) {
        smol::spawn(task).detach();
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        Box::pin(Timer(async_io::Timer::at(deadline)))
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        smol::unblock(work).detach();
    }

    fn wrap_udp(&self, socket: UdpSocket) -> io::Result<Box<dyn UdpIo>> {
        Ok(Box::new(Udp(Async::new(socket)?)))
    }

    fn wrap_tcp_listener(&self, listener: TcpListener) -> io::Result<Box<dyn TcpListenerIo>> {
        Ok(Box::new(Listener(Async::new(listener)?)))
    }

    fn wrap_tcp_stream(&self, stream: TcpStream) -> io::Result<Box<dyn TcpIo>> {
        Ok(Box::new(Stream(Async::new(stream)?)))
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn TcpIo>>> {
        Box::pin(async move {
            let stream = Async::<TcpStream>::connect(addr).await?;
            Ok(Box::new(Stream(stream)) as Box<dyn TcpIo>)
        })
    }

    fn wrap_unix_stream(&self, stream: UnixStream) -> io::Result<Box<dyn TcpIo>> {
        Ok(Box::new(Stream(Async::new(stream)?)))
    }
}

#[derive(Debug)]
struct Timer(async_io::Timer);

impl AsyncTimer for Timer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.set_at(deadline);
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// Runs `op` until it stops saying `WouldBlock`, waiting with `poll_ready` in between (async-io
/// readiness is edge-like: try first, then wait for the reactor).
fn poll_io<T>(
    cx: &mut Context<'_>,
    mut poll_ready: impl FnMut(&mut Context<'_>) -> Poll<io::Result<()>>,
    mut op: impl FnMut() -> io::Result<T>,
) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready!(poll_ready(cx))?,
            other => return Poll::Ready(other),
        }
    }
}

#[derive(Debug)]
struct Udp(Async<UdpSocket>);

impl UdpIo for Udp {
    fn sock_ref(&self) -> quinn_udp::UdpSockRef<'_> {
        quinn_udp::UdpSockRef::from(self.0.get_ref())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }

    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_readable(cx)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_writable(cx)
    }

    fn try_io(&self, _send: bool, op: &mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize> {
        op()
    }
}

#[derive(Debug)]
struct Listener(Async<TcpListener>);

impl TcpListenerIo for Listener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn TcpIo>, SocketAddr)>> {
        let (stream, peer) = ready!(poll_io(
            cx,
            |cx| self.0.poll_readable(cx),
            || self.0.get_ref().accept()
        ))?;
        Poll::Ready(Async::new(stream).map(|s| (Box::new(Stream(s)) as Box<dyn TcpIo>, peer)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().local_addr()
    }
}

/// A TCP or Unix stream.
#[derive(Debug)]
struct Stream<S>(Async<S>);

impl<S> TcpIo for Stream<S>
where
    S: std::os::fd::AsFd + std::fmt::Debug + Send + Sync,
    for<'a> &'a S: Read + Write,
{
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        poll_io(
            cx,
            |cx| self.0.poll_readable(cx),
            || {
                let mut stream: &S = self.0.get_ref();
                stream.read(buf)
            },
        )
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        poll_io(
            cx,
            |cx| self.0.poll_writable(cx),
            || {
                let mut stream: &S = self.0.get_ref();
                stream.write(buf)
            },
        )
    }

    fn socket(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(self.0.get_ref())
    }
}
