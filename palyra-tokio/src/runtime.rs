//! [`Runtime`] for tokio: tasks and blocking work on a tokio runtime, tokio timers, and tokio's
//! readiness for the sockets the serve loops bind.

use palyra_gateway::runtime::{AsyncTimer, BoxFuture, Runtime, TcpIo, TcpListenerIo, UdpIo};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::Interest;

/// A tokio runtime as a Palyra runtime.
#[derive(Debug, Clone)]
pub struct Tokio {
    handle: tokio::runtime::Handle,
}

impl Tokio {
    /// The runtime `handle` belongs to.
    pub fn new(handle: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Self { handle })
    }

    /// The runtime of the calling task.
    pub fn current() -> Arc<Self> {
        Self::new(tokio::runtime::Handle::current())
    }
}

impl Runtime for Tokio {
    fn spawn(&self, task: BoxFuture<()>) {
        self.handle.spawn(task);
    }

    fn new_timer(&self, deadline: Instant) -> Pin<Box<dyn AsyncTimer>> {
        let _entered = self.handle.enter();
        Box::pin(Timer(Box::pin(tokio::time::sleep_until(deadline.into()))))
    }

    fn spawn_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) {
        self.handle.spawn_blocking(work);
    }

    fn wrap_udp(&self, socket: std::net::UdpSocket) -> io::Result<Box<dyn UdpIo>> {
        let _entered = self.handle.enter();
        Ok(Box::new(Udp(tokio::net::UdpSocket::from_std(socket)?)))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Box<dyn TcpListenerIo>> {
        let _entered = self.handle.enter();
        Ok(Box::new(Listener(tokio::net::TcpListener::from_std(
            listener,
        )?)))
    }

    fn wrap_tcp_stream(&self, stream: std::net::TcpStream) -> io::Result<Box<dyn TcpIo>> {
        let _entered = self.handle.enter();
        Ok(Box::new(Stream(tokio::net::TcpStream::from_std(stream)?)))
    }

    fn connect_tcp(&self, addr: SocketAddr) -> BoxFuture<io::Result<Box<dyn TcpIo>>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            Ok(Box::new(Stream(stream)) as Box<dyn TcpIo>)
        })
    }

    fn wrap_unix_stream(
        &self,
        stream: std::os::unix::net::UnixStream,
    ) -> io::Result<Box<dyn TcpIo>> {
        let _entered = self.handle.enter();
        Ok(Box::new(Unix(tokio::net::UnixStream::from_std(stream)?)))
    }
}

#[derive(Debug)]
struct Timer(Pin<Box<tokio::time::Sleep>>);

impl AsyncTimer for Timer {
    fn reset(mut self: Pin<&mut Self>, deadline: Instant) {
        self.0.as_mut().reset(deadline.into());
    }

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        std::future::Future::poll(self.0.as_mut(), cx)
    }
}

#[derive(Debug)]
struct Udp(tokio::net::UdpSocket);

impl UdpIo for Udp {
    fn sock_ref(&self) -> quinn_udp::UdpSockRef<'_> {
        quinn_udp::UdpSockRef::from(&self.0)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_recv_ready(cx)
    }

    fn poll_send_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_send_ready(cx)
    }

    fn try_io(&self, send: bool, op: &mut dyn FnMut() -> io::Result<usize>) -> io::Result<usize> {
        let interest = if send {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        self.0.try_io(interest, op)
    }
}

#[derive(Debug)]
struct Listener(tokio::net::TcpListener);

impl TcpListenerIo for Listener {
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Box<dyn TcpIo>, SocketAddr)>> {
        let (stream, peer) = ready!(self.0.poll_accept(cx))?;
        Poll::Ready(Ok((Box::new(Stream(stream)), peer)))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A tokio byte stream as [`TcpIo`]: tokio's TCP and Unix streams have the same readiness
/// methods but no common trait.
macro_rules! byte_stream {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Debug)]
        struct $name($inner);

        impl TcpIo for $name {
            fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
                loop {
                    match self.0.try_read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(self.0.poll_read_ready(cx))?
                        }
                        other => return Poll::Ready(other),
                    }
                }
            }

            fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
                loop {
                    match self.0.try_write(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            ready!(self.0.poll_write_ready(cx))?
                        }
                        other => return Poll::Ready(other),
                    }
                }
            }

            fn socket(&self) -> socket2::SockRef<'_> {
                socket2::SockRef::from(&self.0)
            }
        }
    };
}

byte_stream!(
    /// A TCP stream.
    Stream,
    tokio::net::TcpStream
);
byte_stream!(
    /// A Unix stream (a child process's pipe).
    Unix,
    tokio::net::UnixStream
);
