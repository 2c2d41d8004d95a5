//! The Chrome DevTools protocol (CDP) as a sans-IO machine: JSON-RPC commands with ids and
//! deadlines, responses matched to the command that asked, events routed to the flattened target
//! session (`sessionId`) they came from.
//!
//! Framing: Chromium's `--remote-debugging-pipe` (every message ends with a NUL byte) through
//! [`CdpConnection::handle_input`] and [`CdpConnection::poll_transmit`], or whole messages (a
//! WebSocket's text messages) through [`CdpConnection::handle_message`] with
//! [`Framing::Messages`].
//!
//! Tolerance: Chromium adds fields and events every release, so nothing here fails on what it
//! does not know. A message is kept as a JSON value; [`types`] reads the fields we use and ignores
//! the rest; an unknown event is delivered like any other; a line that is not JSON is counted and
//! skipped. Limits: a message over [`CdpConfig::max_message`] is skipped (the command it answers,
//! when its id can be read from the start of the message, fails with [`CdpError::TooBig`]), at
//! most [`CdpConfig::max_pending`] commands wait at once, and every command has a deadline.

pub mod types;

#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// How messages are delimited on the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `--remote-debugging-pipe`: each message is followed by a NUL byte.
    Pipe,
    /// The transport delimits messages itself (WebSocket text messages).
    Messages,
}

/// Limits of a CDP connection.
#[derive(Debug, Clone, Copy)]
pub struct CdpConfig {
    /// How messages are delimited.
    pub framing: Framing,
    /// Largest message accepted from the browser (full-page screenshots and PDFs come base64).
    pub max_message: usize,
    /// Commands waiting for an answer at once.
    pub max_pending: usize,
}

impl Default for CdpConfig {
    fn default() -> Self {
        Self {
            framing: Framing::Pipe,
            max_message: 64 * 1024 * 1024,
            max_pending: 1024,
        }
    }
}

/// A command's number on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommandId(pub u64);

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdpError {
    /// The browser answered with a JSON-RPC error.
    Protocol {
        /// JSON-RPC error code (e.g. -32000 for a generic server error).
        code: i64,
        /// The browser's message (with its `data`, when it sent one).
        message: String,
    },
    /// No answer before the command's deadline.
    Timeout {
        /// The command's method.
        method: String,
    },
    /// The answer was larger than [`CdpConfig::max_message`].
    TooBig {
        /// The limit.
        limit: usize,
    },
    /// The target session the command was sent to detached (tab closed or crashed).
    Detached,
    /// The connection closed (the browser exited) before an answer came.
    Closed,
    /// [`CdpConfig::max_pending`] commands are already waiting.
    TooManyPending,
    /// An answer did not have the shape its command promises.
    Malformed(String),
}

impl fmt::Display for CdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Protocol { code, message } => write!(f, "browser error {code}: {message}"),
            Self::Timeout { method } => write!(f, "{method}: no answer from the browser in time"),
            Self::TooBig { limit } => write!(f, "browser answer exceeds {limit} bytes"),
            Self::Detached => f.write_str("the page's target detached (tab closed or crashed)"),
            Self::Closed => f.write_str("the browser connection closed"),
            Self::TooManyPending => f.write_str("too many browser commands in flight"),
            Self::Malformed(m) => write!(f, "unexpected browser answer: {m}"),
        }
    }
}

impl std::error::Error for CdpError {}

/// What the browser sent, or what became of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum CdpEvent {
    /// A command's answer (or its failure: timeout, detach, close, size).
    Response {
        /// The command.
        id: CommandId,
        /// Its `result` object, or why there is none.
        result: Result<Value, CdpError>,
    },
    /// A protocol event.
    Event {
        /// The flattened target session it belongs to (`None`: the browser session).
        session: Option<String>,
        /// Event name, e.g. `Page.loadEventFired`.
        method: String,
        /// Its `params` (`Null` when absent).
        params: Value,
    },
    /// The connection ended; every waiting command was answered with [`CdpError::Closed`] first.
    Closed,
}

/// Counters of what was skipped, for logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CdpStats {
    /// Messages received.
    pub messages: u64,
    /// Messages that were not JSON objects.
    pub malformed: u64,
    /// Messages over the size limit.
    pub oversized: u64,
    /// Answers to commands no longer waiting (timed out or unknown ids).
    pub late: u64,
    /// JSON objects that were neither an answer nor an event.
    pub unknown: u64,
}

#[derive(Debug)]
struct Waiting {
    deadline: Instant,
    method: String,
    session: Option<String>,
}

/// How much of an oversized message is kept to find its `"id"`.
const ID_SCAN: usize = 64;

/// One connection to a browser's DevTools endpoint.
#[derive(Debug)]
pub struct CdpConnection {
    config: CdpConfig,
    next_id: u64,
    waiting: BTreeMap<CommandId, Waiting>,
    input: BytesMut,
    /// Set while skipping the rest of an oversized message (pipe framing).
    skipping: bool,
    output: VecDeque<Bytes>,
    events: VecDeque<CdpEvent>,
    closed: bool,
    stats: CdpStats,
}

impl CdpConnection {
    /// A connection with nothing sent yet.
    pub fn new(config: CdpConfig) -> Self {
        Self {
            config,
            next_id: 1,
            waiting: BTreeMap::new(),
            input: BytesMut::new(),
            skipping: false,
            output: VecDeque::new(),
            events: VecDeque::new(),
            closed: false,
            stats: CdpStats::default(),
        }
    }

    /// Sends `method` with `params` (an object or `Null`) to `session` (`None`: the browser
    /// itself); the answer comes as [`CdpEvent::Response`] with the returned id, by `now + timeout`
    /// at the latest.
    pub fn send_command(
        &mut self,
        now: Instant,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<CommandId, CdpError> {
        if self.closed {
            return Err(CdpError::Closed);
        }
        if self.waiting.len() >= self.config.max_pending {
            return Err(CdpError::TooManyPending);
        }
        let id = CommandId(self.next_id);
        self.next_id += 1;
        let mut message = Map::new();
        message.insert("id".into(), Value::from(id.0));
        message.insert("method".into(), Value::from(method));
        if !params.is_null() {
            message.insert("params".into(), params);
        }
        if let Some(session) = session {
            message.insert("sessionId".into(), Value::from(session));
        }
        let mut bytes = serde_json::to_vec(&Value::Object(message))
            .map_err(|e| CdpError::Malformed(e.to_string()))?;
        if self.config.framing == Framing::Pipe {
            bytes.push(0);
        }
        self.output.push_back(Bytes::from(bytes));
        self.waiting.insert(
            id,
            Waiting {
                deadline: now + timeout,
                method: method.to_owned(),
                session: session.map(str::to_owned),
            },
        );
        Ok(id)
    }

    /// Bytes read from a pipe-framed transport.
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.closed {
            return;
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = rest.iter().position(|b| *b == 0);
            let (chunk, terminated) = match end {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = match end {
                Some(i) => &rest[i + 1..],
                None => &[],
            };
            if self.skipping {
                if terminated {
                    self.skipping = false;
                }
                continue;
            }
            self.input.extend_from_slice(chunk);
            if self.input.len() > self.config.max_message {
                self.oversized();
                self.input.clear();
                self.skipping = !terminated;
            } else if terminated {
                let message = self.input.split().freeze();
                self.message(now, &message);
            }
        }
    }

    /// One whole message from a transport that delimits messages ([`Framing::Messages`]).
    pub fn handle_message(&mut self, now: Instant, message: &[u8]) {
        if self.closed {
            return;
        }
        if message.len() > self.config.max_message {
            self.input.clear();
            self.input
                .extend_from_slice(&message[..ID_SCAN.min(message.len())]);
            self.oversized();
            self.input.clear();
            return;
        }
        self.message(now, message);
    }

    /// The message in `self.input` is too big: fail the command it answers, if its id shows.
    fn oversized(&mut self) {
        self.stats.messages += 1;
        self.stats.oversized += 1;
        let head = &self.input[..ID_SCAN.min(self.input.len())];
        if let Some(id) = leading_id(head) {
            if self.waiting.remove(&id).is_some() {
                self.events.push_back(CdpEvent::Response {
                    id,
                    result: Err(CdpError::TooBig {
                        limit: self.config.max_message,
                    }),
                });
            }
        }
    }

    fn message(&mut self, _now: Instant, bytes: &[u8]) {
        self.stats.messages += 1;
        let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(bytes) else {
            self.stats.malformed += 1;
            return;
        };
        if let Some(id) = object.get("id").and_then(Value::as_u64) {
            let id = CommandId(id);
            if self.waiting.remove(&id).is_none() {
                self.stats.late += 1;
                return;
            }
            let result = match object.remove("error") {
                Some(error) => Err(protocol_error(&error)),
                None => Ok(object.remove("result").unwrap_or(Value::Null)),
            };
            self.events.push_back(CdpEvent::Response { id, result });
            return;
        }
        let Some(Value::String(method)) = object.remove("method") else {
            self.stats.unknown += 1;
            return;
        };
        let session = match object.remove("sessionId") {
            Some(Value::String(s)) => Some(s),
            _ => None,
        };
        let params = object.remove("params").unwrap_or(Value::Null);
        if method == "Target.detachedFromTarget" {
            if let Some(gone) = params.get("sessionId").and_then(Value::as_str) {
                self.fail_session(gone);
            }
        }
        self.events.push_back(CdpEvent::Event {
            session,
            method,
            params,
        });
    }

    /// Answers every command sent to `session` with [`CdpError::Detached`].
    fn fail_session(&mut self, session: &str) {
        let gone: Vec<CommandId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.session.as_deref() == Some(session))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.waiting.remove(&id);
            self.events.push_back(CdpEvent::Response {
                id,
                result: Err(CdpError::Detached),
            });
        }
    }

    /// Fails commands whose deadline passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<CommandId> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(w) = self.waiting.remove(&id) {
                self.events.push_back(CdpEvent::Response {
                    id,
                    result: Err(CdpError::Timeout { method: w.method }),
                });
            }
        }
    }

    /// The earliest command deadline.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.values().map(|w| w.deadline).min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CdpEvent> {
        self.events.pop_front()
    }

    /// The next bytes (pipe framing) or message ([`Framing::Messages`]) to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.output.pop_front()
    }

    /// The transport ended (the browser exited or closed the pipe).
    pub fn handle_eof(&mut self) {
        self.close();
    }

    /// Ends the connection: every waiting command fails with [`CdpError::Closed`], then
    /// [`CdpEvent::Closed`].
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.output.clear();
        for (id, _) in std::mem::take(&mut self.waiting) {
            self.events.push_back(CdpEvent::Response {
                id,
                result: Err(CdpError::Closed),
            });
        }
        self.events.push_back(CdpEvent::Closed);
    }

    /// Whether the connection ended.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Commands waiting for an answer.
    pub fn pending(&self) -> usize {
        self.waiting.len()
    }

    /// What was skipped so far.
    pub fn stats(&self) -> CdpStats {
        self.stats
    }
}

/// The id of a message that starts `{"id":N` (Chromium writes the id first), if `head` shows it.
fn leading_id(head: &[u8]) -> Option<CommandId> {
    let text = std::str::from_utf8(head).ok().or_else(|| {
        // The cut may fall inside a multi-byte character: read up to it.
        let valid = std::str::from_utf8(head).err()?.valid_up_to();
        std::str::from_utf8(&head[..valid]).ok()
    })?;
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"id\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next()?;
    if digits.is_empty() || !(after == ',' || after == '}' || after.is_whitespace()) {
        return None;
    }
    digits.parse().ok().map(CommandId)
}

/// A JSON-RPC `error` object as [`CdpError::Protocol`].
fn protocol_error(error: &Value) -> CdpError {
    let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
    let mut message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("error without a message")
        .to_owned();
    if let Some(data) = error.get("data").and_then(Value::as_str) {
        message.push_str(": ");
        message.push_str(data);
    }
    CdpError::Protocol { code, message }
}
