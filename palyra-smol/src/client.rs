//! Node-plane client on smol: one task owns the UDP socket and the client machine
//! ([`ClientTask`]); callers use the [`ClientHandle`] through [`NodeConnection`].

use crate::udp::Udp;
use async_io::Timer;
use futures_lite::future;
pub use palyra_proto::quic::Responses;
use palyra_proto::quic::{
    ClientCommand, ClientError, ClientHandle, ClientLimits, ClientTask, NodeClient,
};
use rand_core::{OsRng, RngCore};
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection attempt may take, as in the original.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a gateway's node plane.
pub struct NodeConnection {
    handle: ClientHandle,
    task: smol::Task<()>,
}

impl Deref for NodeConnection {
    type Target = ClientHandle;

    fn deref(&self) -> &ClientHandle {
        &self.handle
    }
}

impl NodeConnection {
    /// Connects to `addr`, verifying the server as `server_name`, and waits until the server
    /// confirmed the handshake.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        limits: ClientLimits,
    ) -> Result<Self, ClientError> {
        let bind = SocketAddr::new(
            if addr.is_ipv4() {
                [0u8; 4].into()
            } else {
                [0u16; 8].into()
            },
            0,
        );
        let socket = Udp::bind(bind)?;
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let client = NodeClient::connect(tls, limits, addr, server_name, Instant::now(), seed)
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let (task, handle, ready) = ClientTask::new(client, addr);
        let task = smol::spawn(run(socket, task));
        let timeout = async {
            Timer::after(HANDSHAKE_TIMEOUT).await;
            Err(format!(
                "QUIC handshake timed out after {}ms",
                HANDSHAKE_TIMEOUT.as_millis()
            ))
        };
        match future::or(ready.wait(), timeout).await {
            Ok(()) => Ok(Self { handle, task }),
            Err(reason) => Err(ClientError::Connect { addr, reason }),
        }
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.handle.close().await;
        let task = self.task;
        future::or(task, async {
            Timer::after(Duration::from_secs(1)).await;
        })
        .await;
    }
}

enum Wake {
    Readable(io::Result<()>),
    Timer,
    Command(Option<ClientCommand>),
}

async fn run(mut socket: Udp, mut task: ClientTask) {
    let mut send_buf = Vec::with_capacity(1500);
    loop {
        let now = Instant::now();
        while let Some(t) = task
            .client
            .poll_transmit(now, socket.max_segments(), &mut send_buf)
        {
            socket.send(&t, &send_buf[..t.size]).await;
        }
        task.route_events();
        if task.finished() {
            return;
        }
        let wake = task
            .client
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        let readable = async { Wake::Readable(socket.readable().await) };
        let timer = async {
            Timer::at(wake).await;
            Wake::Timer
        };
        let command = async { Wake::Command(task.next_command().await) };
        match future::or(readable, future::or(timer, command)).await {
            Wake::Readable(Ok(())) => {
                let now = Instant::now();
                let server = task.server;
                for _ in 0..32 {
                    let received = socket.try_recv(|from, ecn, datagram| {
                        if from == server {
                            task.client.handle_datagram(now, from, ecn, datagram);
                        }
                    });
                    if received.is_err() {
                        break;
                    }
                }
            }
            Wake::Readable(Err(_)) => {}
            Wake::Timer => task.client.handle_timeout(Instant::now()),
            Wake::Command(command) => task.handle_command(command, Instant::now()),
        }
    }
}
