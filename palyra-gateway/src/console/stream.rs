//! `GET /console/v1/stream` (subprotocol `palyra.console.v1`): the live console feed.
//!
//! Client -> server (JSON text frames): `hello {"resume": {"boot","seq"} | null, "sessions"?,
//! "agent"?}` first (within 10 s), then `chat.send`, `a2ui.action`, `ping`; agents (admin token
//! on the upgrade) also `chat.message`, `chat.delta`, `chat.done`, `a2ui.snapshot`,
//! `a2ui.patch`. Any request may carry `"ref"`: it is echoed in the `ack` or `error` answer.
//!
//! Server -> client: `welcome {"boot","seq","resumed"}`; then either the records after the
//! client's cursor, or `snapshot.required {"reason"}` (when the cursor cannot be served),
//! `a2ui.snapshot`s and `chat.message`s of the current state and `snapshot.done`; then records
//! live as they are stored. Every message carries `"cursor": {"boot","seq"}`; a client resumes
//! from the cursor of the last message it handled after `welcome` (cursors between `welcome`
//! and `snapshot.done` are not resume points).
//!
//! Backpressure: records are pulled from the durable log only while the socket's queue is below
//! [`LOW_WATER`], so a slow reader costs no memory beyond that. A reader more than
//! [`COALESCE_LAG`] records behind gets patches of one surface coalesced into a snapshot and
//! consecutive deltas of one message merged; one more than [`MAX_LAG`] records behind for
//! [`MAX_STALL`] is closed with 4001 and resumes by cursor.

use super::state::check_id;
use super::{Batch, Command, ConsoleError, ConsoleHub, Publishing, Resume};
use crate::operator::WsApp;
use crate::store::Pending;
use bytes::Bytes;
use palyra_proto::ws::{close_code, WsConnection};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The subprotocol.
pub const PROTOCOL: &str = "palyra.console.v1";
/// `hello` must arrive within this long.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Records are pulled while the socket's queue holds fewer bytes than this.
pub const LOW_WATER: usize = 128 * 1024;
/// Records pulled at once.
pub const BATCH_RECORDS: usize = 256;
/// Bytes pulled at once, about.
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

/// Who is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A person in the web console (session cookie).
    Console,
    /// An agent or script (admin token), named in `hello` (`agent` by default).
    Agent(String),
}

enum Phase {
    Hello {
        deadline: Instant,
    },
    Live {
        cursor: u64,
        sessions: Option<Vec<String>>,
        behind_since: Option<Instant>,
    },
}

/// An answer a stream owes.
enum Owed {
    Publish(Publishing, Vec<Option<Value>>),
    Pong,
}

/// One console stream connection.
pub struct ConsoleStream {
    hub: Arc<ConsoleHub>,
    role: Role,
    phase: Phase,
    queued: Vec<(Command, Option<Value>)>,
    /// Answers owed in order: publishes waiting to be durable (with the `ref`s to answer) and
    /// pongs, which wait for the answers before them.
    owed: VecDeque<Owed>,
    /// Records behind the memory window, being read from the log.
    reading: Option<Pending<Result<Batch, ConsoleError>>>,
    errors: u32,
    now: Instant,
}

fn str_field(msg: &Value, name: &str) -> Result<String, ConsoleError> {
    msg.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ConsoleError::invalid(format!("{name} must be a string")))
}

impl ConsoleStream {
    /// A stream accepted at `now` for `role`.
    pub fn new(hub: Arc<ConsoleHub>, role: Role, now: Instant) -> Self {
        Self {
            hub,
            role,
            phase: Phase::Hello {
                deadline: now + HELLO_TIMEOUT,
            },
            queued: Vec::new(),
            owed: VecDeque::new(),
            reading: None,
            errors: 0,
            now,
        }
    }

    fn cursor_value(&self) -> Value {
        match &self.phase {
            Phase::Live { cursor, .. } => self.hub.cursor(*cursor),
            Phase::Hello { .. } => Value::Null,
        }
    }

    fn send(&self, ws: &mut WsConnection, mut msg: Value) {
        msg["cursor"] = self.cursor_value();
        ws.send_text(&msg.to_string());
    }

    fn fail(&mut self, ws: &mut WsConnection, e: &ConsoleError, reference: Option<&Value>) {
        self.errors += 1;
        let mut msg = json!({"type": "error", "code": e.code, "message": e.message});
        if let Some(r) = reference {
            msg["ref"] = r.clone();
        }
        self.send(ws, msg);
        if self.errors > MAX_ERRORS {
            ws.close(close_code::POLICY, "too many bad requests");
        }
    }

    fn hello(&mut self, ws: &mut WsConnection, msg: &Value) -> Result<(), ConsoleError> {
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
                let mut ids = Vec::new();
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
        if let Role::Agent(name) = &mut self.role {
            if let Some(agent) = msg.get("agent") {
                let agent = agent
                    .as_str()
                    .ok_or_else(|| ConsoleError::invalid("agent must be a string"))?;
                check_id("agent", agent)?;
                *name = agent.to_owned();
            }
        }
        let resumed = self
            .hub
            .resume(resume.as_ref().map(|(b, s)| (b.as_str(), *s)));
        match resumed {
            Resume::From(seq) => {
                self.phase = Phase::Live {
                    cursor: seq,
                    sessions,
                    behind_since: None,
                };
                let welcome = json!({"type": "welcome", "boot": self.hub.boot(), "seq": seq, "resumed": true});
                self.send(ws, welcome);
            }
            Resume::Snapshot(reason) => {
                let (seq, messages) = self.hub.snapshot(sessions.as_deref());
                self.phase = Phase::Live {
                    cursor: seq,
                    sessions,
                    behind_since: None,
                };
                let welcome = json!({"type": "welcome", "boot": self.hub.boot(), "seq": seq, "resumed": false});
                self.send(ws, welcome);
                if reason != "fresh" {
                    self.send(ws, json!({"type": "snapshot.required", "reason": reason}));
                }
                for m in messages {
                    ws.send_text(&m);
                }
                self.send(ws, json!({"type": "snapshot.done"}));
            }
        }
        Ok(())
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

    /// Publishes what was queued and gives, in order, the answers that are ready: publishes
    /// once durable, pongs once everything before them was answered (after the records stored
    /// so far, so the pong's cursor says what the client has).
    fn flush(&mut self, ws: &mut WsConnection) {
        self.submit_queued();
        loop {
            match self.owed.front() {
                Some(Owed::Publish(publishing, _)) => {
                    let Some(results) = publishing.take() else {
                        return;
                    };
                    if let Some(Owed::Publish(_, refs)) = self.owed.pop_front() {
                        self.answer(ws, results, refs);
                    }
                }
                Some(Owed::Pong) => {
                    self.owed.pop_front();
                    self.pull(ws);
                    self.send(ws, json!({"type": "pong"}));
                }
                None => return,
            }
        }
    }

    /// Hands the queued commands to the hub as one publish.
    fn submit_queued(&mut self) {
        if self.queued.is_empty() {
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        let (commands, refs): (Vec<_>, Vec<_>) = queued.into_iter().unzip();
        let publishing = self.hub.publish(commands);
        self.owed.push_back(Owed::Publish(publishing, refs));
    }

    fn answer(
        &mut self,
        ws: &mut WsConnection,
        results: Vec<Result<super::Published, ConsoleError>>,
        refs: Vec<Option<Value>>,
    ) {
        for (result, reference) in results.into_iter().zip(refs) {
            match result {
                Ok(p) => {
                    if let Some(r) = reference {
                        let ack = json!({"type": "ack", "ref": r, "id": p.id, "seq": p.seq, "version": p.version});
                        self.send(ws, ack);
                    }
                }
                Err(e) => self.fail(ws, &e, reference.as_ref()),
            }
        }
    }

    /// Sends records from the log while the socket has room.
    fn pull(&mut self, ws: &mut WsConnection) {
        let now = self.now;
        loop {
            if ws.is_closed() || ws.queued_bytes() >= LOW_WATER {
                return;
            }
            let Phase::Live {
                cursor,
                behind_since,
                ..
            } = &mut self.phase
            else {
                return;
            };
            let read = match self.reading.take() {
                Some(pending) => match pending.take() {
                    Some(result) => result.map(Some),
                    None => {
                        self.reading = Some(pending);
                        return;
                    }
                },
                None => self.hub.read(*cursor, BATCH_RECORDS, BATCH_BYTES),
            };
            let batch = match read {
                Ok(Some(b)) => b,
                Ok(None) => {
                    // Behind the records kept in memory: read them from the log meanwhile.
                    self.reading = Some(self.hub.read_later(*cursor, BATCH_RECORDS, BATCH_BYTES));
                    return;
                }
                Err(_) => {
                    ws.close(
                        close_code::TOO_SLOW,
                        "fell behind the retained log; resume from your cursor",
                    );
                    return;
                }
            };
            let lag = batch.head.saturating_sub(*cursor);
            if lag > MAX_LAG {
                let since = *behind_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= MAX_STALL {
                    ws.close(
                        close_code::TOO_SLOW,
                        "reader too slow; resume from your cursor",
                    );
                    return;
                }
            } else {
                *behind_since = None;
            }
            let Some(last) = batch.records.last().map(|r| r.seq) else {
                return;
            };
            let messages = self.render(&batch.records, lag > COALESCE_LAG);
            for m in messages {
                ws.send_text_shared(m);
            }
            if let Phase::Live { cursor, .. } = &mut self.phase {
                *cursor = last;
            }
        }
    }

    fn visible(&self, tag: Option<&str>) -> bool {
        let Phase::Live { sessions, .. } = &self.phase else {
            return false;
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

    /// The messages for `records`; with `coalesce`, a surface patched more than once in the
    /// batch is sent once as its current snapshot (at its first record, with that record's
    /// cursor) and consecutive deltas of one message are merged (with the last one's cursor).
    fn render(&self, records: &[crate::store::StoredEvent], coalesce: bool) -> Vec<Bytes> {
        let mut out: Vec<Bytes> = Vec::with_capacity(records.len());
        let mut surface_counts = std::collections::HashMap::new();
        if coalesce {
            for r in records {
                if let Some(s) =
                    r.to.as_deref()
                        .and_then(|t| t.strip_prefix("patch:").or_else(|| t.strip_prefix("snap:")))
                {
                    *surface_counts.entry(s).or_insert(0usize) += 1;
                }
            }
        }
        let mut absorbed = std::collections::HashSet::new();
        // (message id, merged text, session, last seq) of a delta run being merged.
        let mut run: Option<(String, String, String, u64)> = None;
        let end_run = |run: &mut Option<(String, String, String, u64)>, out: &mut Vec<Bytes>| {
            if let Some((message_id, text, session_id, seq)) = run.take() {
                let msg = json!({"type": "chat.delta", "session_id": session_id,
                                 "message_id": message_id, "text": text,
                                 "cursor": self.hub.cursor(seq)});
                out.push(Bytes::from(msg.to_string()));
            }
        };
        for r in records {
            let tag = r.to.as_deref();
            if !self.visible(tag) {
                continue;
            }
            let surface =
                tag.and_then(|t| t.strip_prefix("patch:").or_else(|| t.strip_prefix("snap:")));
            if let Some(s) = surface {
                if surface_counts.get(s).copied().unwrap_or(0) > 1 {
                    end_run(&mut run, &mut out);
                    if absorbed.insert(s) {
                        if let Some(info) = self.hub.surface(s) {
                            let msg = json!({"type": "a2ui.snapshot", "surface": s,
                                             "version": info.version, "document": info.document,
                                             "owner": info.owner, "coalesced": true,
                                             "cursor": self.hub.cursor(r.seq)});
                            out.push(Bytes::from(msg.to_string()));
                        }
                    }
                    continue;
                }
            }
            if coalesce && tag.is_some_and(|t| t.starts_with("delta:")) {
                if let Ok(Value::Object(d)) = serde_json::from_slice::<Value>(&r.body) {
                    let id = d.get("message_id").and_then(Value::as_str).unwrap_or("");
                    let text = d.get("text").and_then(Value::as_str).unwrap_or("");
                    if let Some((run_id, run_text, _, last)) = &mut run {
                        if run_id == id && *last + 1 == r.seq {
                            run_text.push_str(text);
                            *last = r.seq;
                            continue;
                        }
                    }
                    end_run(&mut run, &mut out);
                    let session = d.get("session_id").and_then(Value::as_str).unwrap_or("");
                    run = Some((id.to_owned(), text.to_owned(), session.to_owned(), r.seq));
                    continue;
                }
            }
            end_run(&mut run, &mut out);
            out.push(r.body.clone());
        }
        end_run(&mut run, &mut out);
        out
    }
}

impl WsApp for ConsoleStream {
    fn on_text(&mut self, now: Instant, text: String, ws: &mut WsConnection) {
        self.now = now;
        let msg: Value = match serde_json::from_str(&text) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return self.fail(
                    ws,
                    &ConsoleError::invalid("messages are JSON objects with a type"),
                    None,
                )
            }
        };
        let reference = msg.get("ref").cloned();
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (&self.phase, kind) {
            (_, "ping") => {
                // Answers to earlier requests and the records stored so far go first: the pong's
                // cursor says what the client has.
                self.submit_queued();
                self.owed.push_back(Owed::Pong);
                self.flush(ws);
            }
            (Phase::Hello { .. }, "hello") => {
                if let Err(e) = self.hello(ws, &msg) {
                    self.fail(ws, &e, reference.as_ref());
                }
            }
            (Phase::Hello { .. }, _) => self.fail(
                ws,
                &ConsoleError::invalid("send hello first"),
                reference.as_ref(),
            ),
            (Phase::Live { .. }, "hello") => self.fail(
                ws,
                &ConsoleError::invalid("hello was already sent"),
                reference.as_ref(),
            ),
            (Phase::Live { .. }, _) => match self.command(kind, &msg) {
                Ok(command) => {
                    self.queued.push((command, reference));
                    if self.queued.len() >= MAX_BATCHED {
                        self.flush(ws);
                    }
                }
                Err(e) => self.fail(ws, &e, reference.as_ref()),
            },
        }
    }

    fn on_binary(&mut self, _now: Instant, _data: Bytes, ws: &mut WsConnection) {
        ws.close(
            close_code::UNSUPPORTED,
            "this stream carries JSON text frames",
        );
    }

    fn pump(&mut self, now: Instant, ws: &mut WsConnection) {
        self.now = now;
        self.flush(ws);
        if let Phase::Hello { deadline } = self.phase {
            if now >= deadline {
                ws.close(close_code::POLICY, "hello not received in time");
            }
            return;
        }
        self.pull(ws);
    }

    fn timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Hello { deadline } => Some(*deadline),
            Phase::Live {
                behind_since: Some(since),
                ..
            } => Some(*since + MAX_STALL),
            Phase::Live { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests;
