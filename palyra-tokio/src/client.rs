//! Node-plane client on tokio: one task owns the UDP socket and the client machine
//! ([`ClientTask`]); callers use the [`ClientHandle`] through [`NodeConnection`].

use crate::udp::Udp;
pub use palyra_gateway::node_client::Responses;
use palyra_gateway::node_client::{
    client_bind_addr, handshake_timed_out, ClientError, ClientHandle, ClientTask, HANDSHAKE_TIMEOUT,
};
use palyra_proto::quic::ClientLimits;
use rand_core::{OsRng, RngCore};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A connection to a gateway's node plane.
pub struct NodeConnection {
    handle: ClientHandle,
    task: tokio::task::JoinHandle<()>,
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
        let task = tokio::spawn(run(socket, task));
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, ready.wait()).await {
            Ok(Ok(())) => Ok(Self { handle, task }),
            Ok(Err(reason)) => {
                task.abort();
                Err(ClientError::Connect { addr, reason })
            }
            Err(_) => {
                task.abort();
                Err(handshake_timed_out(addr))
            }
        }
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.handle.close().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
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
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
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
            }
            _ = tokio::time::sleep_until(wake.into()) => task.client.handle_timeout(Instant::now()),
            command = task.next_command() => task.handle_command(command, Instant::now()),
        }
    }
}
