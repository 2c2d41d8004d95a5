//! Serves gRPC over cleartext HTTP/2 (h2c): one task per TCP connection, each running a
//! [`ServerConnection`] machine.

use async_io::{Async, Timer};
use futures_lite::{future, AsyncReadExt, AsyncWriteExt};
use palyra_proto::grpc::server::ServerConfig;
use palyra_proto::grpc::service::{RouterFactory, ServerConnection};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Bytes read per call: one maximum-size HTTP/2 frame (16 KiB); idle connections stay small.
const READ_BUFFER: usize = 16 * 1024;

/// How long open calls may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running gRPC listener.
pub struct GrpcHandle {
    /// The bound address.
    pub local_addr: SocketAddr,
    shutdown: async_channel::Sender<()>,
    task: smol::Task<()>,
}

impl GrpcHandle {
    /// Binds `addr` and serves connections with the services `routers` builds.
    pub fn start(
        addr: SocketAddr,
        config: ServerConfig,
        routers: RouterFactory,
    ) -> io::Result<Self> {
        let listener = Async::<TcpListener>::bind(addr)?;
        let local_addr = listener.get_ref().local_addr()?;
        let (shutdown, signal) = async_channel::bounded(1);
        let task = smol::spawn(accept_loop(listener, config, routers, signal));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Stops accepting, sends GOAWAY on every connection and waits (bounded) for them to end.
    pub async fn shutdown(self) {
        self.shutdown.close();
        let task = self.task;
        future::or(task, async {
            Timer::after(SHUTDOWN_GRACE + Duration::from_secs(1)).await;
        })
        .await;
    }
}

async fn accept_loop(
    listener: Async<TcpListener>,
    config: ServerConfig,
    routers: RouterFactory,
    signal: async_channel::Receiver<()>,
) {
    let mut connections = Vec::new();
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            let _ = signal.recv().await;
            None
        };
        match future::or(accept, stop).await {
            Some(Ok((stream, peer))) => {
                let _ = stream.get_ref().set_nodelay(true);
                let conn = ServerConnection::new(config, routers(), Instant::now());
                connections.retain(|t: &smol::Task<()>| !t.is_finished());
                connections.push(smol::spawn(serve_connection(
                    stream,
                    peer,
                    conn,
                    signal.clone(),
                )));
            }
            Some(Err(e)) => tracing::warn!(error = %e, "gRPC accept failed"),
            None => break,
        }
    }
    let all = async {
        for task in connections {
            task.await;
        }
    };
    future::or(all, async {
        Timer::after(SHUTDOWN_GRACE).await;
    })
    .await;
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Stop,
}

async fn serve_connection(
    mut stream: Async<TcpStream>,
    peer: SocketAddr,
    mut conn: ServerConnection,
    signal: async_channel::Receiver<()>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut stopping = false;
    loop {
        while let Some(bytes) = conn.poll_transmit() {
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if conn.is_closed() {
            let _ = stream.close().await;
            return;
        }
        let wake = conn.poll_timeout();
        let read = async { Wake::Read(stream.read(&mut buf).await) };
        let timer = async {
            match wake {
                Some(deadline) => {
                    Timer::at(deadline).await;
                }
                None => future::pending::<()>().await,
            }
            Wake::Timer
        };
        let stop = async {
            if stopping {
                future::pending::<()>().await;
            }
            let _ = signal.recv().await;
            Wake::Stop
        };
        match future::or(read, future::or(timer, stop)).await {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => {
                conn.handle_eof();
                while let Some(bytes) = conn.poll_transmit() {
                    let _ = stream.write_all(&bytes).await;
                }
                tracing::debug!(%peer, "gRPC connection closed by peer");
                return;
            }
            Wake::Read(Ok(n)) => conn.handle_input(Instant::now(), &buf[..n]),
            Wake::Timer => conn.handle_timeout(Instant::now()),
            Wake::Stop => {
                stopping = true;
                conn.go_away();
            }
        }
    }
}
