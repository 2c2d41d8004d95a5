//! The node-plane client over any runtime: one task owns the UDP socket and the client machine
//! ([`ClientTask`]); callers use the [`ClientHandle`] through [`NodeConnection`].

use super::udp::Udp;
use crate::node_client::{
    client_bind_addr, handshake_timed_out, ClientCommand, ClientError, ClientHandle, ClientTask,
    HANDSHAKE_TIMEOUT,
};
use crate::runtime::{self, Rt, Task};
use palyra_proto::quic::ClientLimits;
use rand_core::OsRng;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

/// Datagram batches received before the loop turns to timers and sends again.
const RECV_BATCHES: usize = 32;

/// A connection to a gateway's node plane.
pub struct NodeConnection {
    rt: Rt,
    handle: ClientHandle,
    task: Task<()>,
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
        rt: &Rt,
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        limits: ClientLimits,
    ) -> Result<Self, ClientError> {
        let socket = Udp::bind(rt.as_ref(), client_bind_addr(addr))?;
        let (task, handle, ready) =
            ClientTask::connect(tls, limits, addr, server_name, rt.now(), &mut OsRng)?;
        let task = runtime::spawn(rt.as_ref(), run(Rt::clone(rt), socket, task));
        match runtime::timeout(rt.as_ref(), HANDSHAKE_TIMEOUT, ready.wait()).await {
            Some(Ok(())) => Ok(Self {
                rt: Rt::clone(rt),
                handle,
                task,
            }),
            // Dropping the handle ends the task.
            Some(Err(reason)) => Err(ClientError::Connect { addr, reason }),
            None => Err(handshake_timed_out(addr)),
        }
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        self.handle.close().await;
        let _ = runtime::timeout(self.rt.as_ref(), Duration::from_secs(1), self.task.join()).await;
    }
}

enum Wake {
    Readable(io::Result<()>),
    Timer,
    Command(Option<ClientCommand>),
}

async fn run(rt: Rt, mut socket: Udp, mut task: ClientTask) {
    let mut send_buf = Vec::with_capacity(1500);
    let far = || rt.now() + Duration::from_secs(3600);
    let mut timer = rt.new_timer(far());
    loop {
        let now = rt.now();
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
        timer
            .as_mut()
            .reset(task.client.poll_timeout().unwrap_or_else(far));
        let woke = {
            let mut command = std::pin::pin!(task.next_command());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(ready) = socket.poll_recv_ready(cx) {
                    return Poll::Ready(Wake::Readable(ready));
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Wake::Timer);
                }
                command.as_mut().poll(cx).map(Wake::Command)
            })
            .await
        };
        match woke {
            Wake::Readable(Ok(())) => {
                let now = rt.now();
                let server = task.server;
                for _ in 0..RECV_BATCHES {
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
            Wake::Timer => task.client.handle_timeout(rt.now()),
            Wake::Command(command) => task.handle_command(command, rt.now()),
        }
    }
}
