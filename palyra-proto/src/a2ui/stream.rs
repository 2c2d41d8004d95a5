//! The console stream machine (`GET /console/v1/stream`, subprotocol `palyra.console.v1`): what
//! one client connection says and is sent, over the durable console log.
//!
//! Client -> server (JSON text messages): `hello {"resume": {"boot","seq"} | null, "sessions"?,
//! "agent"?}` first (within [`HELLO_TIMEOUT`]), then `chat.send`, `a2ui.action`, `ping`; agents
//! also `chat.message`, `chat.delta`, `chat.done`, `a2ui.snapshot`, `a2ui.patch`. Any request
//! may carry `"ref"`: it is echoed in the `ack` or `error` answer.
//!
//! Server -> client: `welcome {"boot","seq","resumed"}`; then either the records after the
//! client's cursor, or `snapshot.required {"reason"}` (when the cursor cannot be served),
//! `a2ui.snapshot`s and `chat.message`s of the current state and `snapshot.done`; then records
//! as they are stored. Every message carries `"cursor": {"boot","seq"}`; a client resumes from
//! the cursor of the last message it handled after `welcome`.
//!
//! Backpressure: records are asked for only while the socket holds fewer than [`LOW_WATER`]
//! bytes, so a slow reader costs no memory beyond that. A reader more than [`COALESCE_LAG`]
//! records behind gets the patches of one surface coalesced into a snapshot and consecutive
//! deltas of one message merged; one more than [`MAX_LAG`] records behind for [`MAX_STALL`] is
//! closed with 4001 and resumes by cursor.
//!
//! The machine reads no clock and holds no log: the application answers its events.
//!
//! | verb | |
//! |---|---|
//! | `handle_text`, `handle_binary` | a client message |
//! | `poll_event` | [`StreamEvent`]: hello to answer ([`PatchStream::welcome`]), commands to publish ([`PatchStream::handle_published`]), records to read ([`PatchStream::handle_records`], [`PatchStream::handle_read_later`], [`PatchStream::handle_read_lost`]) |
//! | `handle_backlog`, `handle_log_grown` | the socket's queued bytes; the log may hold more |
//! | `poll_transmit` | [`Transmit`]: a text message or the close |
//! | `poll_timeout`, `handle_timeout` | hello deadline, stall deadline |

use super::state::{check_id, Boots, Command, ConsoleError, Published, SurfaceInfo};
use crate::node::log::StoredEvent;
use bytes::Bytes;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// The WebSocket subprotocol.
pub const PROTOCOL: &str = "palyra.console.v1";
/// `hello` must arrive within this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Records are asked for while the socket's queue holds fewer bytes than this.
pub const LOW_WATER: usize = 128 * 1024;
/// Records asked for at once.
pub const BATCH_RECORDS: usize = 256;
/// Bytes asked for at once, about.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Beyond this many records behind, patches and deltas are coalesced.
pub const COALESCE_LAG: u64 = 64;
/// Beyond this many records behind ...
pub const MAX_LAG: u64 = 4096;
/// ... for this long, the reader is closed with 4001.
pub const MAX_STALL: Duration = Duration::from_secs(30);
/// Sessions a client may subscribe to by name.
pub const MAX_SUBSCRIBED: usize = 64;
/// Bad requests tolerated before the connection is closed with 1008.
pub const MAX_ERRORS: u32 = 64;
/// Requests published at once.
pub const MAX_BATCHED: usize = 256;
/// Answers (publishes and pongs) a client may have outstanding; beyond it the connection is
/// closed with 1013 (the store is slower than the client sends).
pub const MAX_OWED: usize = 1024;

/// WebSocket close codes the machine uses.
mod close {
    pub const UNSUPPORTED: u16 = 1003;
    pub const POLICY: u16 = 1008;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const TOO_SLOW: u16 = 4001;
}

/// Who is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A person in the web console (session cookie).
    Console,
    /// An agent or script (admin token), named in `hello` (`agent` by default).
    Agent(String),
}

/// Where a client's feed starts, as the application decided from its `hello`.
#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// Replay the records after this seq.
    From(u64),
    /// The current state as client messages (`a2ui.snapshot`s, then `chat.message`s) at `seq`.
    Snapshot {
        /// The seq the state reflects; records after it follow.
        seq: u64,
        /// Why (`fresh` for a client without a cursor; else sent as `snapshot.required`).
        reason: &'static str,
        /// The messages, each with its cursor.
        messages: Vec<String>,
    },
}

/// What the machine asks of the application.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The client said hello: answer with [`PatchStream::welcome`].
    Hello {
        /// The client's cursor `(boot, seq)`, if it resumes.
        resume: Option<(String, u64)>,
        /// The sessions it subscribes to (`None`: all).
        sessions: Option<Vec<String>>,
    },
    /// Publish `commands` in order; answer with [`PatchStream::handle_published`].
    Publish {
        /// Names this publish in the answer.
        ticket: u64,
        /// The commands.
        commands: Vec<Command>,
    },
    /// Read durable records after `after`: answer with [`PatchStream::handle_records`], or
    /// [`PatchStream::handle_read_later`] then the records, or [`PatchStream::handle_read_lost`].
    Read {
        /// The last seq the client has.
        after: u64,
        /// At most this many records.
        max_records: usize,
        /// About this many bytes.
        max_bytes: usize,
    },
}

/// What the machine sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A text message.
    Text(Bytes),
    /// Close the connection with this code and reason (nothing follows).
    Close {
        /// WebSocket close code.
        code: u16,
        /// Reason for a person.
        reason: &'static str,
    },
}

enum Phase {
    Hello {
        deadline: Instant,
    },
    /// `hello` was handed to the application; `welcome` not answered yet.
    Welcoming {
        sessions: Option<Vec<String>>,
    },
    Live {
        cursor: u64,
        sessions: Option<Vec<String>>,
        behind_since: Option<Instant>,
    },
}

/// An answer the stream owes, in the order the requests came.
enum Owed {
    /// A refusal, ready.
    Error(Value),
    Publish {
        ticket: u64,
        refs: Vec<Option<Value>>,
        results: Option<Vec<Result<Published, ConsoleError>>>,
    },
    Pong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// No read asked for.
    Idle,
    /// A read was asked for; its answer comes with the next call.
    Asked,
    /// The application reads from slower storage; the records come later.
    Later,
}

/// One console stream connection, as a machine.
pub struct PatchStream {
    role: Role,
    phase: Phase,
    boots: Boots,
    /// Commands accepted and not yet handed out for publishing, with their `ref`s.
    queued: Vec<(Command, Option<Value>)>,
    owed: VecDeque<Owed>,
    next_ticket: u64,
    events: VecDeque<StreamEvent>,
    out: VecDeque<Transmit>,
    reading: Reading,
    /// The last read found nothing new; no more reads until the log grows.
    caught_up: bool,
    backlog: usize,
    errors: u32,
    closed: bool,
    now: Instant,
}

fn error_message(e: &ConsoleError, reference: Option<&Value>) -> Value {
    let mut msg = json!({"type": "error", "code": e.code, "message": e.message});
    if let Some(r) = reference {
        msg["ref"] = r.clone();
    }
    msg
}

fn str_field(msg: &Value, name: &str) -> Result<String, ConsoleError> {
    msg.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConsoleError::invalid(format!("{name} must be a string")))
}

/// The surface a record's routing tag names, for snapshots and patches.
fn surface_of(tag: Option<&str>) -> Option<&str> {
    tag.and_then(|t| t.strip_prefix("patch:").or_else(|| t.strip_prefix("snap:")))
}

impl PatchStream {
    /// A stream accepted at `now` for `role`.
    pub fn new(role: Role, now: Instant) -> Self {
        Self {
            role,
            phase: Phase::Hello {
                deadline: now + HELLO_TIMEOUT,
            },
            boots: Boots::new(vec![(1, String::new())]),
            queued: Vec::new(),
            owed: VecDeque::new(),
            next_ticket: 0,
            events: VecDeque::new(),
            out: VecDeque::new(),
            reading: Reading::Idle,
            caught_up: false,
            backlog: 0,
            errors: 0,
            closed: false,
            now,
        }
    }

    /// Who is connected (an agent's name is set by its `hello`).
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The seq of the last record sent (`None` before `welcome`).
    pub fn cursor(&self) -> Option<u64> {
        match &self.phase {
            Phase::Live { cursor, .. } => Some(*cursor),
            _ => None,
        }
    }

    /// The machine closed the connection (a [`Transmit::Close`] was or will be sent).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    fn cursor_value(&self) -> Value {
        match &self.phase {
            Phase::Live { cursor, .. } => self.boots.cursor(*cursor),
            _ => Value::Null,
        }
    }

    fn send(&mut self, mut msg: Value) {
        msg["cursor"] = self.cursor_value();
        self.send_raw(Bytes::from(msg.to_string()));
    }

    fn send_raw(&mut self, text: Bytes) {
        if !self.closed {
            self.out.push_back(Transmit::Text(text));
        }
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Transmit::Close { code, reason });
        }
    }

    /// Refuses a request: answered in its turn (after the answers owed before it).
    fn fail(&mut self, e: &ConsoleError, reference: Option<&Value>) {
        let msg = error_message(e, reference);
        if matches!(self.phase, Phase::Hello { .. }) {
            self.send(msg);
        } else {
            self.submit_queued();
            self.owe(Owed::Error(msg));
        }
        self.errors += 1;
        if self.errors > MAX_ERRORS {
            self.close(close::POLICY, "too many bad requests");
        }
    }

    /// A text message from the client.
    pub fn handle_text(&mut self, now: Instant, text: &str) {
        self.now = now;
        if self.closed {
            return;
        }
        let msg: Value = match serde_json::from_str(text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let e = ConsoleError::invalid("messages are JSON objects with a type");
                return self.fail(&e, None);
            }
        };
        let reference = msg.get("ref").cloned();
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        let result = match (&self.phase, kind) {
            (_, "ping") => {
                // Answers to earlier requests and the records stored so far go first: the pong's
                // cursor says what the client has.
                self.submit_queued();
                self.owe(Owed::Pong);
                Ok(())
            }
            (Phase::Hello { .. }, "hello") => self.hello(&msg),
            (Phase::Hello { .. }, _) => Err(ConsoleError::invalid("send hello first")),
            (_, "hello") => Err(ConsoleError::invalid("hello was already sent")),
            (_, _) => self.command(kind, &msg).map(|command| {
                self.queued.push((command, reference.clone()));
                if self.queued.len() >= MAX_BATCHED {
                    self.submit_queued();
                }
            }),
        };
        if let Err(e) = result {
            self.fail(&e, reference.as_ref());
        }
    }

    /// A binary message from the client (this stream carries text only).
    pub fn handle_binary(&mut self, now: Instant) {
        self.now = now;
        self.close(close::UNSUPPORTED, "this stream carries JSON text frames");
    }

    fn hello(&mut self, msg: &Value) -> Result<(), ConsoleError> {
        let resume = match msg.get("resume") {
            None | Some(Value::Null) => None,
            Some(r) => {
                let boot = r.get("boot").and_then(Value::as_str);
                let seq = r.get("seq").and_then(Value::as_u64);
                match (boot, seq) {
                    (Some(b), Some(s)) if b.len() <= 64 => Some((b.to_owned(), s)),
                    _ => {
                        return Err(ConsoleError::invalid(
                            "resume must be {\"boot\": string, \"seq\": integer} or null",
                        ))
                    }
                }
            }
        };
        let sessions = match msg.get("sessions") {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) if items.len() <= MAX_SUBSCRIBED => {
                let mut ids = Vec::with_capacity(items.len());
                for item in items {
                    let id = item
                        .as_str()
                        .ok_or_else(|| ConsoleError::invalid("sessions must be strings"))?;
                    check_id("session", id)?;
                    ids.push(id.to_owned());
                }
                Some(ids)
            }
            Some(_) => {
                return Err(ConsoleError::invalid(format!(
                    "sessions must be an array of at most {MAX_SUBSCRIBED} ids"
                )))
            }
        };
        let agent = match (&self.role, msg.get("agent")) {
            (Role::Agent(_), Some(agent)) => {
                let agent = agent
                    .as_str()
                    .ok_or_else(|| ConsoleError::invalid("agent must be a string"))?;
                check_id("agent", agent)?;
                Some(agent.to_owned())
            }
            _ => None,
        };
        if let (Role::Agent(name), Some(agent)) = (&mut self.role, agent) {
            *name = agent;
        }
        self.events.push_back(StreamEvent::Hello {
            resume,
            sessions: sessions.clone(),
        });
        self.phase = Phase::Welcoming { sessions };
        Ok(())
    }

    /// The answer to [`StreamEvent::Hello`]: the log's runs and where the client starts.
    pub fn welcome(&mut self, boots: Boots, start: Start) {
        let sessions = match &mut self.phase {
            Phase::Welcoming { sessions } => sessions.take(),
            _ => {
                debug_assert!(false, "welcome without hello");
                return;
            }
        };
        let boot = boots.current().to_owned();
        self.boots = boots;
        let (seq, snapshot) = match start {
            Start::From(seq) => (seq, None),
            Start::Snapshot {
                seq,
                reason,
                messages,
            } => (seq, Some((reason, messages))),
        };
        self.phase = Phase::Live {
            cursor: seq,
            sessions,
            behind_since: None,
        };
        self.caught_up = false;
        let resumed = snapshot.is_none();
        self.send(json!({"type": "welcome", "boot": boot, "seq": seq, "resumed": resumed}));
        if let Some((reason, messages)) = snapshot {
            if reason != "fresh" {
                self.send(json!({"type": "snapshot.required", "reason": reason}));
            }
            for m in messages {
                self.send_raw(Bytes::from(m));
            }
            self.send(json!({"type": "snapshot.done"}));
        }
    }

    fn command(&self, kind: &str, msg: &Value) -> Result<Command, ConsoleError> {
        let agent = match &self.role {
            Role::Agent(name) => Some(name.clone()),
            Role::Console => None,
        };
        let agent_only = || {
            agent.clone().ok_or_else(|| ConsoleError {
                code: "forbidden",
                message: format!("{kind} is for agents (admin token)"),
            })
        };
        Ok(match kind {
            "chat.send" => Command::Send {
                session_id: str_field(msg, "session_id")?,
                client_msg_id: str_field(msg, "client_msg_id")?,
                text: str_field(msg, "text")?,
            },
            "a2ui.action" => Command::Action {
                surface: str_field(msg, "surface")?,
                component: str_field(msg, "component")?,
                action: str_field(msg, "action")?,
                value: msg.get("value").cloned().unwrap_or(Value::Null),
            },
            "chat.message" => Command::Post {
                author: agent_only()?,
                session_id: str_field(msg, "session_id")?,
                message_id: str_field(msg, "message_id")?,
                text: msg
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                streaming: msg
                    .get("streaming")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            },
            "chat.delta" => {
                agent_only()?;
                Command::Delta {
                    message_id: str_field(msg, "message_id")?,
                    text: str_field(msg, "text")?,
                }
            }
            "chat.done" => {
                agent_only()?;
                Command::Done {
                    message_id: str_field(msg, "message_id")?,
                }
            }
            "a2ui.snapshot" => Command::PutSurface {
                owner: agent_only()?,
                document: msg
                    .get("document")
                    .cloned()
                    .ok_or_else(|| ConsoleError::invalid("document is required"))?,
            },
            "a2ui.patch" => {
                agent_only()?;
                let base_version =
                    match msg.get("base_version") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(v.as_u64().ok_or_else(|| {
                            ConsoleError::invalid("base_version must be an integer")
                        })?),
                    };
                Command::Patch {
                    surface: str_field(msg, "surface")?,
                    base_version,
                    ops: msg
                        .get("ops")
                        .cloned()
                        .ok_or_else(|| ConsoleError::invalid("ops is required"))?,
                }
            }
            other => {
                return Err(ConsoleError::invalid(format!(
                    "unknown message type {other:?}"
                )))
            }
        })
    }

    fn owe(&mut self, owed: Owed) {
        if self.owed.len() >= MAX_OWED {
            self.close(
                close::TRY_AGAIN_LATER,
                "too many requests waiting for the store",
            );
            return;
        }
        self.owed.push_back(owed);
    }

    /// Hands the queued commands out as one publish.
    fn submit_queued(&mut self) {
        if self.queued.is_empty() || self.closed {
            return;
        }
        let (commands, refs): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.queued).into_iter().unzip();
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.owe(Owed::Publish {
            ticket,
            refs,
            results: None,
        });
        if self.closed {
            return;
        }
        self.events
            .push_back(StreamEvent::Publish { ticket, commands });
    }

    /// The answer to [`StreamEvent::Publish`]: one result per command, in order.
    pub fn handle_published(&mut self, ticket: u64, answers: Vec<Result<Published, ConsoleError>>) {
        for owed in &mut self.owed {
            if let Owed::Publish {
                ticket: t, results, ..
            } = owed
            {
                if *t == ticket {
                    *results = Some(answers);
                    return;
                }
            }
        }
    }

    /// The socket's queued bytes (records are asked for only below [`LOW_WATER`]).
    pub fn handle_backlog(&mut self, queued_bytes: usize) {
        self.backlog = queued_bytes;
    }

    /// The log may hold records the client has not been sent.
    pub fn handle_log_grown(&mut self) {
        self.caught_up = false;
    }

    /// A read is wanted now: live, none outstanding, not caught up, room in the socket.
    fn wants_read(&self) -> bool {
        matches!(self.phase, Phase::Live { .. })
            && self.reading == Reading::Idle
            && !self.caught_up
            && !self.closed
            && self.backlog < LOW_WATER
    }

    /// What the application should do next.
    pub fn poll_event(&mut self) -> Option<StreamEvent> {
        if self.closed {
            return None;
        }
        if self.events.is_empty() && !matches!(self.phase, Phase::Hello { .. }) {
            self.submit_queued();
        }
        if let Some(event) = self.events.pop_front() {
            return Some(event);
        }
        if !self.wants_read() {
            return None;
        }
        let Phase::Live { cursor, .. } = &self.phase else {
            return None;
        };
        self.reading = Reading::Asked;
        Some(StreamEvent::Read {
            after: *cursor,
            max_records: BATCH_RECORDS,
            max_bytes: BATCH_BYTES,
        })
    }

    /// The answer to [`StreamEvent::Read`] is slower storage: the records come later.
    pub fn handle_read_later(&mut self) {
        self.reading = Reading::Later;
    }

    /// The records asked for are no longer retained: the client must resume from its cursor.
    pub fn handle_read_lost(&mut self) {
        self.reading = Reading::Idle;
        self.close(
            close::TOO_SLOW,
            "fell behind the retained log; resume from your cursor",
        );
    }

    /// Records after the cursor, in order, and the newest seq in the log (`head`); `surfaces`
    /// gives a surface's current state (for coalescing).
    pub fn handle_records(
        &mut self,
        now: Instant,
        records: &[StoredEvent],
        head: u64,
        surfaces: &dyn Fn(&str) -> Option<SurfaceInfo>,
    ) {
        self.now = now;
        self.reading = Reading::Idle;
        let Phase::Live {
            cursor,
            behind_since,
            ..
        } = &mut self.phase
        else {
            return;
        };
        let lag = head.saturating_sub(*cursor);
        if lag > MAX_LAG {
            let since = *behind_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= MAX_STALL {
                return self.close(close::TOO_SLOW, "reader too slow; resume from your cursor");
            }
        } else {
            *behind_since = None;
        }
        let from = *cursor;
        let fresh: Vec<&StoredEvent> = records.iter().filter(|r| r.seq > from).collect();
        let Some(last) = fresh.last().map(|r| r.seq) else {
            self.caught_up = true;
            return;
        };
        for m in self.render(&fresh, lag > COALESCE_LAG, surfaces) {
            self.send_raw(m);
        }
        if let Phase::Live { cursor, .. } = &mut self.phase {
            *cursor = last;
        }
    }

    fn visible(&self, tag: Option<&str>) -> bool {
        let sessions = match &self.phase {
            Phase::Live { sessions, .. } | Phase::Welcoming { sessions } => sessions,
            Phase::Hello { .. } => return false,
        };
        let Some(tag) = tag else { return true };
        let (kind, key) = tag.split_once(':').unwrap_or((tag, ""));
        match kind {
            "msg" | "delta" | "done" => sessions
                .as_ref()
                .is_none_or(|s| s.iter().any(|id| id == key)),
            "action" => match &self.role {
                Role::Agent(name) => name == key,
                Role::Console => true,
            },
            _ => true,
        }
    }

    /// The messages for `records`; with `coalesce`, a surface changed more than once in the
    /// batch is sent once as its current snapshot (at its first record, with that record's
    /// cursor) and consecutive deltas of one message are merged (with the last one's cursor).
    fn render(
        &self,
        records: &[&StoredEvent],
        coalesce: bool,
        surfaces: &dyn Fn(&str) -> Option<SurfaceInfo>,
    ) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = Vec::with_capacity(records.len());
        // Per surface: how many of the records change it, and the last of them.
        let mut changes: HashMap<&str, (usize, u64)> = HashMap::new();
        if coalesce {
            for r in records {
                if let Some(s) = surface_of(r.to.as_deref()) {
                    let change = changes.entry(s).or_insert((0, 0));
                    *change = (change.0 + 1, r.seq);
                }
            }
        }
        let mut absorbed = HashSet::new();
        let mut kept = HashSet::new();
        let mut run: Option<DeltaRun> = None;
        for r in records {
            let tag = r.to.as_deref();
            if !self.visible(tag) {
                continue;
            }
            if let Some(s) = surface_of(tag) {
                let (count, last) = changes.get(s).copied().unwrap_or((0, 0));
                if count > 1 && !absorbed.contains(s) && !kept.contains(s) {
                    // The surface's state may lag the log by a write still being folded in: a
                    // snapshot that does not include the batch's last change of it would lose
                    // changes, so then its records are sent as they are.
                    match surfaces(s).filter(|info| info.seq >= last) {
                        Some(info) => {
                            self.end_run(&mut run, &mut out);
                            absorbed.insert(s);
                            let msg = json!({"type": "a2ui.snapshot", "surface": s,
                                             "version": info.version, "document": info.document,
                                             "owner": info.owner, "coalesced": true,
                                             "cursor": self.boots.cursor(r.seq)});
                            out.push(Bytes::from(msg.to_string()));
                            continue;
                        }
                        None => {
                            kept.insert(s);
                        }
                    }
                } else if absorbed.contains(s) {
                    continue;
                }
            }
            if coalesce && tag.is_some_and(|t| t.starts_with("delta:")) {
                if let Ok(Value::Object(d)) = serde_json::from_slice::<Value>(&r.body) {
                    let id = d.get("message_id").and_then(Value::as_str).unwrap_or("");
                    let text = d.get("text").and_then(Value::as_str).unwrap_or("");
                    if let Some(current) = &mut run {
                        if current.message_id == id && current.last + 1 == r.seq {
                            current.text.push_str(text);
                            current.last = r.seq;
                            continue;
                        }
                    }
                    self.end_run(&mut run, &mut out);
                    let session = d.get("session_id").and_then(Value::as_str).unwrap_or("");
                    run = Some(DeltaRun {
                        message_id: id.to_owned(),
                        text: text.to_owned(),
                        session_id: session.to_owned(),
                        last: r.seq,
                    });
                    continue;
                }
            }
            self.end_run(&mut run, &mut out);
            out.push(r.body.clone());
        }
        self.end_run(&mut run, &mut out);
        out
    }

    fn end_run(&self, run: &mut Option<DeltaRun>, out: &mut Vec<Bytes>) {
        if let Some(r) = run.take() {
            let msg = json!({"type": "chat.delta", "session_id": r.session_id,
                             "message_id": r.message_id, "text": r.text,
                             "cursor": self.boots.cursor(r.last)});
            out.push(Bytes::from(msg.to_string()));
        }
    }

    /// Moves the answers that are ready, in order, to the output: publishes once answered,
    /// pongs once everything before them was answered and no records are wanted right now (so
    /// the pong's cursor says what the client has).
    fn answer_ready(&mut self) {
        if matches!(self.phase, Phase::Welcoming { .. }) {
            return; // nothing goes before `welcome`
        }
        loop {
            let pong_ready = !self.wants_read() && self.reading != Reading::Asked;
            match self.owed.front() {
                Some(Owed::Error(_)) => {
                    if let Some(Owed::Error(msg)) = self.owed.pop_front() {
                        self.send(msg);
                    }
                }
                Some(Owed::Publish { results, .. }) if results.is_some() => {
                    if let Some(Owed::Publish { refs, results, .. }) = self.owed.pop_front() {
                        self.answer(results.unwrap_or_default(), refs);
                    }
                }
                Some(Owed::Pong) if pong_ready => {
                    self.owed.pop_front();
                    self.send(json!({"type": "pong"}));
                }
                _ => return,
            }
        }
    }

    fn answer(&mut self, results: Vec<Result<Published, ConsoleError>>, refs: Vec<Option<Value>>) {
        for (result, reference) in results.into_iter().zip(refs) {
            match result {
                Ok(p) => {
                    if let Some(r) = reference {
                        self.send(json!({"type": "ack", "ref": r, "id": p.id, "seq": p.seq,
                                         "version": p.version}));
                    }
                }
                Err(e) => {
                    self.errors += 1;
                    self.send(error_message(&e, reference.as_ref()));
                }
            }
        }
    }

    /// The next message to send, or the close.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if !self.closed {
            self.answer_ready();
        }
        self.out.pop_front()
    }

    /// When [`PatchStream::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        match &self.phase {
            Phase::Hello { deadline } => Some(*deadline),
            Phase::Live {
                behind_since: Some(since),
                ..
            } => Some(*since + MAX_STALL),
            _ => None,
        }
    }

    /// Timers: `hello` not received in time (1008); a reader more than [`MAX_LAG`] records
    /// behind for [`MAX_STALL`] (4001).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        match &self.phase {
            Phase::Hello { deadline } if now >= *deadline => {
                self.close(close::POLICY, "hello not received in time");
            }
            Phase::Live {
                behind_since: Some(since),
                ..
            } if now.saturating_duration_since(*since) >= MAX_STALL => {
                self.close(close::TOO_SLOW, "reader too slow; resume from your cursor");
            }
            _ => {}
        }
    }
}

/// Consecutive deltas of one message being merged.
struct DeltaRun {
    message_id: String,
    text: String,
    session_id: String,
    last: u64,
}

#[cfg(test)]
mod tests;
