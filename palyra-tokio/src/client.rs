//! Node-plane client on tokio: one task owns the UDP socket and the [`NodeClient`] machine;
//! callers send requests and read response frames through channels.

use crate::udp::Udp;
use palyra_proto::node::{NodeRequest, RequestFrame, ResponseFrame};
use palyra_proto::quic::{ClientLimits, NodeClient, RequestSinks, ResponseItem as Item};
use rand_core::{OsRng, RngCore};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection attempt may take, as in the original.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("network error: {0}")]
    Io(#[from] io::Error),
    /// The connection could not be set up.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// Target.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection is gone.
    #[error("connection closed: {0}")]
    Closed(String),
}

enum Command {
    Request {
        payload: Vec<u8>,
        reply: async_channel::Sender<Item>,
    },
    Close,
}

/// The response frames of one request, in order.
pub struct Responses {
    rx: async_channel::Receiver<Item>,
}

impl Responses {
    /// The next frame; `Ok(None)` once the server finished the stream.
    pub async fn next(&mut self) -> Result<Option<ResponseFrame>, ClientError> {
        match self.rx.recv().await {
            Ok(Item::Frame(frame)) => Ok(Some(frame)),
            Ok(Item::Done) => Ok(None),
            Ok(Item::Failed(reason)) => Err(ClientError::Closed(reason)),
            Err(_) => Err(ClientError::Closed("client task ended".into())),
        }
    }

    /// All frames until the server finishes the stream.
    pub async fn collect(mut self) -> Result<Vec<ResponseFrame>, ClientError> {
        let mut frames = Vec::new();
        while let Some(frame) = self.next().await? {
            frames.push(frame);
        }
        Ok(frames)
    }
}

/// A connection to a gateway's node plane.
pub struct NodeConnection {
    commands: async_channel::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl NodeConnection {
    /// Connects to `addr`, verifying the server as `server_name`, and waits for the handshake.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        tls: Arc<rustls::ClientConfig>,
        limits: ClientLimits,
    ) -> Result<Self, ClientError> {
        let bind: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap_or(addr)
        } else {
            "[::]:0".parse().unwrap_or(addr)
        };
        let socket = Udp::bind(bind)?;
        let mut seed = [0u8; 32];
        OsRng.fill_bytes(&mut seed);
        let client = NodeClient::connect(tls, limits, addr, server_name, Instant::now(), seed)
            .map_err(|e| ClientError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let (commands, command_rx) = async_channel::unbounded();
        let (ready_tx, ready_rx) = async_channel::bounded(1);
        let task = tokio::spawn(run(socket, addr, client, command_rx, ready_tx));
        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, ready_rx.recv()).await;
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(reason))) => Some(reason),
            Ok(Err(_)) => Some("client task ended".to_owned()),
            Err(_) => Some(format!(
                "QUIC handshake timed out after {}ms",
                HANDSHAKE_TIMEOUT.as_millis()
            )),
        };
        if let Some(reason) = failure {
            task.abort();
            return Err(ClientError::Connect { addr, reason });
        }
        Ok(Self { commands, task })
    }

    /// Sends a request on a new stream.
    pub async fn request(&self, request: &NodeRequest) -> Result<Responses, ClientError> {
        self.request_raw(RequestFrame::from_request(request).to_json())
            .await
    }

    /// Sends an arbitrary request payload (one frame) on a new stream.
    pub async fn request_raw(&self, payload: Vec<u8>) -> Result<Responses, ClientError> {
        let (reply, rx) = async_channel::unbounded();
        self.commands
            .send(Command::Request { payload, reply })
            .await
            .map_err(|_| ClientError::Closed("client task ended".into()))?;
        Ok(Responses { rx })
    }

    /// Closes the connection and waits briefly for the close to be sent.
    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.task).await;
    }
}

async fn run(
    mut socket: Udp,
    server: SocketAddr,
    mut client: NodeClient,
    commands: async_channel::Receiver<Command>,
    ready: async_channel::Sender<Result<(), String>>,
) {
    let mut send_buf = Vec::with_capacity(1500);
    let mut waiting = RequestSinks::<async_channel::Sender<Item>>::default();
    let mut closing = false;
    loop {
        let now = Instant::now();
        while let Some(t) = client.poll_transmit(now, socket.max_segments(), &mut send_buf) {
            socket.send(&t, &send_buf[..t.size]).await;
        }
        while let Some(event) = client.poll_event() {
            match waiting.dispatch(event, |tx, item| {
                let _ = tx.try_send(item);
            }) {
                Some(Ok(())) => {
                    let _ = ready.try_send(Ok(()));
                }
                Some(Err(reason)) => {
                    let _ = ready.try_send(Err(reason));
                    closing = true;
                }
                None => {}
            }
        }
        if closing && client.is_drained() {
            return;
        }
        let wake = client
            .poll_timeout()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    let now = Instant::now();
                    for _ in 0..32 {
                        let received = socket.try_recv(|from, ecn, datagram| {
                            if from == server {
                                client.handle_datagram(now, from, ecn, datagram);
                            }
                        });
                        if received.is_err() {
                            break;
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => client.handle_timeout(Instant::now()),
            command = commands.recv(), if !closing => match command {
                Ok(Command::Request { payload, reply }) => {
                    let id = client.request_raw(&payload);
                    waiting.insert(id, reply);
                }
                Ok(Command::Close) | Err(_) => {
                    client.close(Instant::now());
                    closing = true;
                }
            },
        }
    }
}
