//! Node-plane client on smol: one task owns the UDP socket and the client machine
//! ([`ClientTask`]); callers use the [`ClientHandle`] through [`NodeConnection`].

use crate::udp::Udp;
use async_io::Timer;
use futures_lite::future;
pub use palyra_gateway::node_client::Responses;
use palyra_gateway::node_client::{
    client_bind_addr, handshake_timed_out, ClientCommand, ClientError, ClientHandle, ClientTask,
    HANDSHAKE_TIMEOUT,
};
use palyra_proto::quic::ClientLimits;
use rand_core::{OsRng, RngCore};
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let socket = Udp::bind(client_bind_addr(addr))?;
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let (task, handle, ready) =
            ClientTask::connect(tls, limits, addr, server_name, Instant::now(), seed)?;
        let task = smol::spawn(run(socket, task));
        let timeout = async {
            Timer::after(HANDSHAKE_TIMEOUT).await;
            Err(None)
        };
        match future::or(async { ready.wait().await.map_err(Some) }, timeout).await {
            Ok(()) => Ok(Self { handle, task }),
            Err(Some(reason)) => Err(ClientError::Connect { addr, reason }),
            Err(None) => Err(handshake_timed_out(addr)),
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
