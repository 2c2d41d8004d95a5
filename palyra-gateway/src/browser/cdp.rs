//! The DevTools-protocol client: one task drives a [`CdpConnection`] over the browser's pipe;
//! callers hold a [`Cdp`] handle and `call` commands or `subscribe` to a target session's
//! events. Runtime-neutral (written over [`Runtime`]).

use crate::runtime::{self, Rt, TcpIo};
use palyra_proto::cdp::{CdpConfig, CdpConnection, CdpError, CdpEvent, CommandId};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::task::Poll;
use std::time::Duration;

/// Bytes read per call.
const READ_BUFFER: usize = 64 * 1024;

/// Events a subscriber may fall behind by before newer ones are dropped (and counted).
pub const EVENT_QUEUE: usize = 8192;

/// One protocol event of a subscribed session.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event name, e.g. `Page.loadEventFired`.
    pub method: String,
    /// Its parameters.
    pub params: Value,
}

enum Command {
    Call {
        session: Option<String>,
        method: String,
        params: Value,
        timeout: Duration,
        reply: async_channel::Sender<Result<Value, CdpError>>,
    },
    Subscribe {
        session: Option<String>,
        events: async_channel::Sender<Event>,
    },
}

/// A handle to a browser's DevTools connection; cheap to clone. When every handle is gone the
/// connection task ends.
#[derive(Clone, Debug)]
pub struct Cdp {
    commands: async_channel::Sender<Command>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Call { method, .. } => write!(f, "Call({method})"),
            Self::Subscribe { session, .. } => write!(f, "Subscribe({session:?})"),
        }
    }
}

impl Cdp {
    /// Starts the connection task over `pipe`; `closed` is told (once) when the browser's end
    /// closes.
    pub fn spawn(
        rt: &Rt,
        pipe: Box<dyn TcpIo>,
        config: CdpConfig,
    ) -> (Self, async_channel::Receiver<()>) {
        let (commands, rx) = async_channel::bounded(256);
        let (closed_tx, closed_rx) = async_channel::bounded(1);
        let machine = CdpConnection::new(config);
        let rt2 = Rt::clone(rt);
        rt.spawn(Box::pin(async move {
            run(rt2, pipe, machine, rx).await;
            let _ = closed_tx.try_send(());
        }));
        (Self { commands }, closed_rx)
    }

    /// Sends `method` to `session` (`None`: the browser) and waits for its result.
    pub async fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Value, CdpError> {
        let (reply, answer) = async_channel::bounded(1);
        self.commands
            .send(Command::Call {
                session: session.map(str::to_owned),
                method: method.to_owned(),
                params,
                timeout,
                reply,
            })
            .await
            .map_err(|_| CdpError::Closed)?;
        answer.recv().await.unwrap_or(Err(CdpError::Closed))
    }

    /// Every later event of `session` (`None`: the browser session). One subscriber per
    /// session: a new subscription replaces the old one. The channel closes with the connection.
    pub async fn subscribe(&self, session: Option<&str>) -> async_channel::Receiver<Event> {
        let (events, rx) = async_channel::bounded(EVENT_QUEUE);
        let _ = self
            .commands
            .send(Command::Subscribe {
                session: session.map(str::to_owned),
                events,
            })
            .await;
        rx
    }

    /// Whether the connection task has ended.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }
}

enum Wake {
    Read(io::Result<usize>),
    Timer,
    Command(Option<Command>),
}

async fn run(
    rt: Rt,
    pipe: Box<dyn TcpIo>,
    mut machine: CdpConnection,
    commands: async_channel::Receiver<Command>,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut waiting: HashMap<CommandId, async_channel::Sender<Result<Value, CdpError>>> =
        HashMap::new();
    let mut subscribers: HashMap<Option<String>, async_channel::Sender<Event>> = HashMap::new();
    let mut dropped: u64 = 0;
    let far = || rt.now() + Duration::from_secs(86_400);
    let mut timer = rt.new_timer(far());
    loop {
        while let Some(bytes) = machine.poll_transmit() {
            if runtime::write_all(&*pipe, &bytes).await.is_err() {
                machine.handle_eof();
                break;
            }
        }
        while let Some(event) = machine.poll_event() {
            match event {
                CdpEvent::Response { id, result } => {
                    if let Some(reply) = waiting.remove(&id) {
                        let _ = reply.try_send(result);
                    }
                }
                CdpEvent::Event {
                    session,
                    method,
                    params,
                } => {
                    if method == "Target.detachedFromTarget" {
                        if let Some(gone) = params.get("sessionId").and_then(Value::as_str) {
                            // The tab's consumer sees its channel close after this event.
                            if let Some(tx) = subscribers.remove(&Some(gone.to_owned())) {
                                let _ = tx.try_send(Event {
                                    method: method.clone(),
                                    params: params.clone(),
                                });
                            }
                        }
                    }
                    if let Some(tx) = subscribers.get(&session) {
                        if tx.try_send(Event { method, params }).is_err() {
                            dropped += 1;
                            if dropped.is_power_of_two() {
                                tracing::warn!(
                                    dropped,
                                    "browser events dropped: a consumer fell behind"
                                );
                            }
                        }
                    }
                }
                CdpEvent::Closed => {}
            }
        }
        if machine.is_closed() {
            let stats = machine.stats();
            tracing::info!(?stats, "browser DevTools connection closed");
            return;
        }
        timer
            .as_mut()
            .reset(machine.poll_timeout().unwrap_or_else(far));
        let mut next = std::pin::pin!(commands.recv());
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = pipe.poll_read(cx, &mut buf) {
                return Poll::Ready(Wake::Read(read));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if let Poll::Ready(command) = next.as_mut().poll(cx) {
                return Poll::Ready(Wake::Command(command.ok()));
            }
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Read(Ok(0)) | Wake::Read(Err(_)) => machine.handle_eof(),
            Wake::Read(Ok(n)) => machine.handle_input(rt.now(), &buf[..n]),
            Wake::Timer => machine.handle_timeout(rt.now()),
            Wake::Command(Some(Command::Call {
                session,
                method,
                params,
                timeout,
                reply,
            })) => {
                match machine.send_command(rt.now(), session.as_deref(), &method, params, timeout) {
                    Ok(id) => {
                        waiting.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.try_send(Err(e));
                    }
                }
            }
            Wake::Command(Some(Command::Subscribe { session, events })) => {
                subscribers.insert(session, events);
            }
            // Every handle is gone: nobody can ask anything any more.
            Wake::Command(None) => machine.close(),
        }
    }
}
