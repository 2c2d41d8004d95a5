//! The runtime-free half of a driver's client task: the command channel between callers and
//! the task, per-request response channels, and event routing. Drivers add only the socket,
//! the timer and the spawn.

use palyra_proto::node::{NodeRequest, RequestFrame, ResponseFrame};
use palyra_proto::quic::client::{ClientLimits, NodeClient, RequestSinks, ResponseItem};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a connection attempt may take, as in the original.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a client socket for `server` binds: the wildcard address of its family, port 0.
pub fn client_bind_addr(server: SocketAddr) -> SocketAddr {
    let ip: std::net::IpAddr = if server.is_ipv4() {
        [0u8; 4].into()
    } else {
        [0u16; 8].into()
    };
    SocketAddr::new(ip, 0)
}

/// The error for a handshake that did not complete within [`HANDSHAKE_TIMEOUT`].
pub fn handshake_timed_out(server: SocketAddr) -> ClientError {
    ClientError::Connect {
        addr: server,
        reason: format!(
            "QUIC handshake timed out after {}ms",
            HANDSHAKE_TIMEOUT.as_millis()
        ),
    }
}

/// Errors of a driver's client connection.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
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

/// What callers ask the client task to do.
pub enum ClientCommand {
    /// Send `payload` as one request frame on a new stream; frames go to `reply`.
    Request {
        /// Request JSON.
        payload: Vec<u8>,
        /// Where the response items go.
        reply: async_channel::Sender<ResponseItem>,
    },
    /// Close the connection.
    Close,
}

/// The response frames of one request, in order.
pub struct Responses {
    rx: async_channel::Receiver<ResponseItem>,
}

impl Responses {
    /// The next frame; `Ok(None)` once the server finished the stream.
    pub async fn next(&mut self) -> Result<Option<ResponseFrame>, ClientError> {
        match self.rx.recv().await {
            Ok(ResponseItem::Frame(frame)) => Ok(Some(frame)),
            Ok(ResponseItem::Done) => Ok(None),
            Ok(ResponseItem::Failed(reason)) => Err(ClientError::Closed(reason)),
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

/// The callers' side of a client task.
#[derive(Clone)]
pub struct ClientHandle {
    commands: async_channel::Sender<ClientCommand>,
}

impl ClientHandle {
    /// Sends a request on a new stream.
    pub async fn request(&self, request: &NodeRequest) -> Result<Responses, ClientError> {
        self.request_raw(RequestFrame::from_request(request).to_json())
            .await
    }

    /// Sends an arbitrary request payload (one frame) on a new stream.
    pub async fn request_raw(&self, payload: Vec<u8>) -> Result<Responses, ClientError> {
        let (reply, rx) = async_channel::unbounded();
        self.commands
            .send(ClientCommand::Request { payload, reply })
            .await
            .map_err(|_| ClientError::Closed("client task ended".into()))?;
        Ok(Responses { rx })
    }

    /// Asks the task to close the connection.
    pub async fn close(&self) {
        let _ = self.commands.send(ClientCommand::Close).await;
    }
}

/// Resolves once the server confirmed the handshake, or with the reason it failed.
pub struct ReadySignal {
    rx: async_channel::Receiver<Result<(), String>>,
}

impl ReadySignal {
    /// Waits for the outcome of the handshake.
    pub async fn wait(self) -> Result<(), String> {
        self.rx
            .recv()
            .await
            .unwrap_or_else(|_| Err("client task ended".into()))
    }
}

/// The task's side: the client machine plus routing of its events to callers.
pub struct ClientTask {
    /// The machine; drivers feed it datagrams and timeouts.
    pub client: NodeClient,
    /// The peer; datagrams from anyone else are ignored.
    pub server: SocketAddr,
    commands: async_channel::Receiver<ClientCommand>,
    sinks: RequestSinks<async_channel::Sender<ResponseItem>>,
    ready: async_channel::Sender<Result<(), String>>,
    closing: bool,
}

impl ClientTask {
    /// Starts a client machine connecting to `server` (TLS name `server_name`) and wraps it;
    /// `rng` seeds quinn's RNG.
    pub fn connect(
        tls: Arc<rustls::ClientConfig>,
        limits: ClientLimits,
        server: SocketAddr,
        server_name: &str,
        now: Instant,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<(Self, ClientHandle, ReadySignal), ClientError> {
        let client =
            NodeClient::connect(tls, limits, server, server_name, now, rng).map_err(|e| {
                ClientError::Connect {
                    addr: server,
                    reason: e.to_string(),
                }
            })?;
        Ok(Self::new(client, server))
    }

    /// Wraps a client machine; returns the task side, the callers' handle and the ready signal.
    pub fn new(client: NodeClient, server: SocketAddr) -> (Self, ClientHandle, ReadySignal) {
        let (commands_tx, commands) = async_channel::unbounded();
        let (ready, ready_rx) = async_channel::bounded(1);
        let task = Self {
            client,
            server,
            commands,
            sinks: RequestSinks::default(),
            ready,
            closing: false,
        };
        (
            task,
            ClientHandle {
                commands: commands_tx,
            },
            ReadySignal { rx: ready_rx },
        )
    }

    /// Routes the machine's events to the waiting callers.
    pub fn route_events(&mut self) {
        while let Some(event) = self.client.poll_event() {
            let outcome = self.sinks.dispatch(event, |tx, item| {
                let _ = tx.try_send(item);
            });
            match outcome {
                Some(Ok(())) => {
                    let _ = self.ready.try_send(Ok(()));
                }
                Some(Err(reason)) => {
                    let _ = self.ready.try_send(Err(reason));
                    self.closing = true;
                }
                None => {}
            }
        }
    }

    /// The next command, for the driver's select; once every handle is gone and the task is
    /// closing, it never resolves.
    pub async fn next_command(&self) -> Option<ClientCommand> {
        if self.closing && self.commands.is_closed() {
            std::future::pending::<()>().await;
        }
        self.commands.recv().await.ok()
    }

    /// Carries out a command (`None`: every handle is gone, which closes the connection). A
    /// request on a connection that is closing fails at once.
    pub fn handle_command(&mut self, command: Option<ClientCommand>, now: Instant) {
        match command {
            Some(ClientCommand::Request { reply, .. }) if self.closing => {
                let _ = reply.try_send(ResponseItem::Failed("connection is closed".into()));
            }
            Some(ClientCommand::Request { payload, reply }) => {
                let id = self.client.request_raw(&payload);
                self.sinks.insert(id, reply);
            }
            Some(ClientCommand::Close) => {
                self.client.close(now);
                self.closing = true;
            }
            None => {
                self.client.close(now);
                self.closing = true;
                self.commands.close();
            }
        }
    }

    /// True when the connection is closed and drained: the task may end.
    pub fn finished(&self) -> bool {
        self.closing && self.client.is_drained()
    }
}
