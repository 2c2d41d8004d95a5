//! Console entries (what the durable console log holds) and the state they build: chat sessions
//! with their recent messages, and A2UI surfaces with their owners and versions; the commands
//! that produce entries, the errors that refuse them, and the cursors clients resume from.

use super::{self as a2ui, A2uiError, Surface};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Longest chat session, message, client message and agent id.
pub const MAX_ID: usize = 64;
/// Longest text of one chat message or delta.
pub const MAX_TEXT: usize = 64 * 1024;
/// Longest text a streamed message may grow to.
pub const MAX_STREAMED_TEXT: usize = 256 * 1024;
/// Chat sessions kept (the least recently active one is dropped beyond it).
pub const MAX_SESSIONS: usize = 1024;
/// Recent messages kept per session (for snapshots; the log keeps the rest).
pub const MESSAGES_PER_SESSION: usize = 200;
/// Messages streaming at once.
pub const MAX_OPEN_STREAMS: usize = 1024;
/// Surfaces kept.
pub const MAX_SURFACES: usize = 256;
/// Longest action name.
pub const MAX_ACTION: usize = 64;
/// Largest encoded action value.
pub const MAX_ACTION_VALUE: usize = 64 * 1024;

/// Why a console request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConsoleError {
    /// Machine-readable code (`invalid`, `not_found`, `conflict`, `too_large`, ...).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

impl ConsoleError {
    /// A malformed request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: "invalid",
            message: message.into(),
        }
    }
    /// Something named does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: "not_found",
            message: message.into(),
        }
    }
    /// The request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            code: "conflict",
            message: message.into(),
        }
    }
    /// Over a size limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self {
            code: "too_large",
            message: message.into(),
        }
    }
    /// Over a count limit.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self {
            code: "overloaded",
            message: message.into(),
        }
    }
    /// The log could not be written.
    pub fn store(message: impl Into<String>) -> Self {
        Self {
            code: "store_failed",
            message: message.into(),
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self.code {
            "not_found" => S::NOT_FOUND,
            "conflict" | "stale_base_version" => S::CONFLICT,
            "too_large" => S::PAYLOAD_TOO_LARGE,
            "overloaded" => S::TOO_MANY_REQUESTS,
            "store_failed" => S::SERVICE_UNAVAILABLE,
            _ => S::BAD_REQUEST,
        }
    }
}

impl From<A2uiError> for ConsoleError {
    fn from(e: A2uiError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Something to publish; the hub turns it into a log entry against the current state.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// A person's chat message from the console (idempotent per `client_msg_id`).
    Send {
        /// Session.
        session_id: String,
        /// The console's id for this message.
        client_msg_id: String,
        /// Text.
        text: String,
    },
    /// An agent's chat message, whole or starting a stream.
    Post {
        /// Session.
        session_id: String,
        /// The agent's id for the message (unique; `u-` is reserved).
        message_id: String,
        /// Sender name.
        author: String,
        /// Text (the first part when streaming).
        text: String,
        /// Deltas follow.
        streaming: bool,
    },
    /// Text appended to a streaming message.
    Delta {
        /// The message.
        message_id: String,
        /// Appended text.
        text: String,
    },
    /// A streaming message is complete.
    Done {
        /// The message.
        message_id: String,
    },
    /// Creates or replaces a surface with a whole document.
    PutSurface {
        /// The document (`{"v":1,"surface",...}`).
        document: Value,
        /// Publisher, who receives the surface's actions.
        owner: String,
    },
    /// Patches a surface.
    Patch {
        /// Surface name.
        surface: String,
        /// The version the patch was made against (`None`: whatever is current).
        base_version: Option<u64>,
        /// The operations.
        ops: Value,
    },
    /// A person acted on a surface.
    Action {
        /// Surface name.
        surface: String,
        /// Component id.
        component: String,
        /// Action name.
        action: String,
        /// Value.
        value: Value,
    },
    /// A node-plane event, for the console to show.
    NodeEvent {
        /// Event name.
        name: String,
        /// Sender.
        device_id: String,
        /// Its seq in the node-plane log.
        node_seq: u64,
        /// Payload.
        payload: Value,
        /// Addressee, when not broadcast.
        to: Option<String>,
    },
}

/// What publishing one command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Its seq in the console log (the earlier seq for a resent `client_msg_id`).
    pub seq: u64,
    /// The message id or surface name.
    pub id: String,
    /// The surface's version (0 for chat).
    pub version: u64,
}

/// Where a resuming client starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Replay records after this seq.
    From(u64),
    /// The cursor cannot be served; send snapshots (with this reason).
    Snapshot(&'static str),
}

/// A surface as listed.
#[derive(Debug, Clone, PartialEq)]
pub struct SurfaceInfo {
    /// Name.
    pub surface: String,
    /// Version.
    pub version: u64,
    /// Owner.
    pub owner: String,
    /// Document.
    pub document: Value,
    /// The last console record the document includes: a record after it is not in it yet.
    pub seq: u64,
}

/// The daemon runs that wrote the console log, oldest first: a cursor `{"boot","seq"}` names the
/// run that wrote its seq, so a client's cursor from an earlier run still resumes. Cloning is
/// cheap (the runs are shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Boots {
    /// `(first seq written, boot)` of each run; the last one is the current run.
    runs: std::sync::Arc<[(u64, String)]>,
}

impl Boots {
    /// Runs as `(first seq written, boot)`, oldest first, the current run last (at least one).
    pub fn new(runs: Vec<(u64, String)>) -> Self {
        debug_assert!(!runs.is_empty(), "the current run is always known");
        Self { runs: runs.into() }
    }

    /// The current run's boot id.
    pub fn current(&self) -> &str {
        self.runs.last().map(|(_, b)| b.as_str()).unwrap_or("")
    }

    /// The runs, oldest first.
    pub fn runs(&self) -> &[(u64, String)] {
        &self.runs
    }

    /// The run that wrote `seq` (seq 0, nothing seen yet, belongs to the first run).
    pub fn boot_of(&self, seq: u64) -> Option<&str> {
        let index = self.runs.partition_point(|(first, _)| *first <= seq.max(1));
        self.runs
            .get(index.checked_sub(1)?)
            .map(|(_, b)| b.as_str())
    }

    /// The cursor of `seq`: `{"boot","seq"}`.
    pub fn cursor(&self, seq: u64) -> Value {
        let boot = self.boot_of(seq).unwrap_or(self.current());
        serde_json::json!({"boot": boot, "seq": seq})
    }
}

/// One record of the console log, in the form clients receive it (plus a cursor).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Entry {
    /// A whole chat message, or the start of a streamed one.
    #[serde(rename = "chat.message")]
    Message(ChatMessage),
    /// Text appended to a streaming message.
    #[serde(rename = "chat.delta")]
    Delta {
        /// Session of the message.
        session_id: String,
        /// The streaming message.
        message_id: String,
        /// Appended text.
        text: String,
    },
    /// A streamed message is complete.
    #[serde(rename = "chat.done")]
    Done {
        /// Session of the message.
        session_id: String,
        /// The message.
        message_id: String,
    },
    /// A surface created or replaced as a whole.
    #[serde(rename = "a2ui.snapshot")]
    Snapshot {
        /// Surface name.
        surface: String,
        /// Version after this snapshot.
        version: u64,
        /// The whole document.
        document: Value,
        /// Who publishes it (receives its actions).
        owner: String,
    },
    /// Operations taking a surface from `base_version` to `version`.
    #[serde(rename = "a2ui.patch")]
    Patch {
        /// Surface name.
        surface: String,
        /// Version after the patch.
        version: u64,
        /// Version the patch applies to.
        base_version: u64,
        /// The operations (`[{"op","path","value"}]`).
        ops: Value,
    },
    /// A person acted on a surface (a form submitted); delivered to the surface's owner.
    #[serde(rename = "a2ui.action")]
    Action {
        /// Surface name.
        surface: String,
        /// Component id.
        component: String,
        /// Action name (`submit` for forms).
        action: String,
        /// Value (form fields).
        value: Value,
        /// Owner of the surface.
        owner: String,
        /// Who acted.
        from: String,
        /// When (Unix ms).
        at_unix_ms: u64,
    },
    /// A node-plane event (admin API, webhook).
    #[serde(rename = "node.event")]
    NodeEvent {
        /// Event name.
        name: String,
        /// Sender device (`gateway` for the daemon itself).
        device_id: String,
        /// Sequence number in the node-plane log.
        node_seq: u64,
        /// Payload.
        payload: Value,
        /// Addressed device, when not broadcast.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
    },
}

/// A chat message as stored and sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Session it belongs to.
    pub session_id: String,
    /// Unique id.
    pub message_id: String,
    /// `user` (a person in the console) or `agent`.
    pub role: String,
    /// Display name of the sender.
    pub author: String,
    /// Text so far.
    pub text: String,
    /// More text follows in `chat.delta` messages until `chat.done`.
    #[serde(default)]
    pub streaming: bool,
    /// The id the console chose when sending (idempotent resend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// When (Unix ms).
    pub at_unix_ms: u64,
}

impl Entry {
    /// Routing tag kept beside the record: `kind:key` (session, surface or owner).
    pub fn tag(&self) -> Option<String> {
        match self {
            Entry::Message(m) => Some(format!("msg:{}", m.session_id)),
            Entry::Delta { session_id, .. } => Some(format!("delta:{session_id}")),
            Entry::Done { session_id, .. } => Some(format!("done:{session_id}")),
            Entry::Snapshot { surface, .. } => Some(format!("snap:{surface}")),
            Entry::Patch { surface, .. } => Some(format!("patch:{surface}")),
            Entry::Action { owner, .. } => Some(format!("action:{owner}")),
            Entry::NodeEvent { .. } => None,
        }
    }
}

/// A checked identifier: 1..=64 bytes of `[A-Za-z0-9._:-]`.
pub fn check_id(what: &str, id: &str) -> Result<(), ConsoleError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConsoleError::invalid(format!(
            "{what} must be 1..={MAX_ID} characters of A-Z a-z 0-9 . _ : -"
        )))
    }
}

fn check_text(text: &str) -> Result<(), ConsoleError> {
    if text.len() > MAX_TEXT {
        return Err(ConsoleError::too_large(format!(
            "text of {} bytes exceeds {MAX_TEXT}",
            text.len()
        )));
    }
    Ok(())
}

/// A chat session and its recent messages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Session {
    /// Recent messages, oldest first.
    pub messages: VecDeque<ChatMessage>,
    /// Messages ever posted.
    pub message_count: u64,
    /// Last activity (Unix ms).
    pub last_at_unix_ms: u64,
}

/// A surface and who owns it.
#[derive(Debug, Clone)]
pub struct OwnedSurface {
    /// The live document.
    pub surface: Surface,
    /// Who receives its actions.
    pub owner: String,
}

/// What the console log adds up to.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Chat sessions by id.
    pub sessions: BTreeMap<String, Session>,
    /// Messages still streaming: message id -> session id.
    pub streaming: HashMap<String, String>,
    /// Surfaces by name.
    pub surfaces: BTreeMap<String, OwnedSurface>,
}

/// The persisted form of [`State`] (`STATE/console/state.json`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedState {
    /// Last log sequence number folded in.
    pub seq: u64,
    /// Sessions.
    pub sessions: BTreeMap<String, Session>,
    /// Surfaces: `(version, owner, document)`.
    pub surfaces: BTreeMap<String, (u64, String, Value)>,
}

impl State {
    /// Checks `entry` against the state and applies it; the state is unchanged on error.
    pub fn apply(&mut self, entry: &Entry) -> Result<(), ConsoleError> {
        match entry {
            Entry::Message(m) => {
                check_id("session_id", &m.session_id)?;
                check_id("message_id", &m.message_id)?;
                if let Some(c) = &m.client_msg_id {
                    check_id("client_msg_id", c)?;
                }
                check_text(&m.text)?;
                if m.author.len() > MAX_ID {
                    return Err(ConsoleError::invalid("author is too long"));
                }
                if self.streaming.contains_key(&m.message_id)
                    || self
                        .sessions
                        .get(&m.session_id)
                        .is_some_and(|s| s.messages.iter().any(|x| x.message_id == m.message_id))
                {
                    return Err(ConsoleError::conflict(format!(
                        "message {} already exists",
                        m.message_id
                    )));
                }
                if m.streaming && self.streaming.len() >= MAX_OPEN_STREAMS {
                    return Err(ConsoleError::overloaded("too many messages streaming"));
                }
                if !self.sessions.contains_key(&m.session_id) && self.sessions.len() >= MAX_SESSIONS
                {
                    let oldest = self
                        .sessions
                        .iter()
                        .min_by_key(|(_, s)| s.last_at_unix_ms)
                        .map(|(id, _)| id.clone());
                    if let Some(id) = oldest {
                        self.sessions.remove(&id);
                        self.streaming.retain(|_, s| *s != id);
                    }
                }
                let session = self.sessions.entry(m.session_id.clone()).or_default();
                session.messages.push_back(m.clone());
                session.message_count += 1;
                session.last_at_unix_ms = m.at_unix_ms;
                while session.messages.len() > MESSAGES_PER_SESSION {
                    if let Some(old) = session.messages.pop_front() {
                        self.streaming.remove(&old.message_id);
                    }
                }
                if m.streaming {
                    self.streaming
                        .insert(m.message_id.clone(), m.session_id.clone());
                }
            }
            Entry::Delta {
                session_id,
                message_id,
                text,
            } => {
                check_text(text)?;
                let message = self.streaming_message(session_id, message_id)?;
                if message.text.len() + text.len() > MAX_STREAMED_TEXT {
                    return Err(ConsoleError::too_large(format!(
                        "a streamed message may hold {MAX_STREAMED_TEXT} bytes"
                    )));
                }
                message.text.push_str(text);
            }
            Entry::Done {
                session_id,
                message_id,
            } => {
                self.streaming_message(session_id, message_id)?.streaming = false;
                self.streaming.remove(message_id);
            }
            Entry::Snapshot {
                surface,
                version,
                document,
                owner,
            } => {
                check_id("owner", owner)?;
                let mut live = Surface::new(document.clone()).map_err(ConsoleError::from)?;
                if live.name() != surface {
                    return Err(ConsoleError::invalid(
                        "the document's surface differs from the surface named",
                    ));
                }
                let expected = self
                    .surfaces
                    .get(surface)
                    .map_or(1, |s| s.surface.version() + 1);
                if *version != expected {
                    return Err(ConsoleError::conflict(format!(
                        "snapshot version {version} does not follow {}",
                        expected - 1
                    )));
                }
                if !self.surfaces.contains_key(surface) && self.surfaces.len() >= MAX_SURFACES {
                    return Err(ConsoleError::overloaded(format!(
                        "at most {MAX_SURFACES} surfaces"
                    )));
                }
                live.set_version(*version);
                self.surfaces.insert(
                    surface.clone(),
                    OwnedSurface {
                        surface: live,
                        owner: owner.clone(),
                    },
                );
            }
            Entry::Patch {
                surface,
                version,
                base_version,
                ops,
            } => {
                let live = self
                    .surfaces
                    .get_mut(surface)
                    .ok_or_else(|| ConsoleError::not_found(format!("no surface {surface}")))?;
                let patch = serde_json::json!({"v": a2ui::VERSION, "ops": ops});
                let mut next = live.surface.clone();
                next.apply_patch(Some(*base_version), &patch)
                    .map_err(ConsoleError::from)?;
                if next.version() != *version {
                    return Err(ConsoleError::conflict("patch version out of order"));
                }
                live.surface = next;
            }
            Entry::Action {
                surface,
                component,
                action,
                value,
                ..
            } => {
                let live = self
                    .surfaces
                    .get(surface)
                    .ok_or_else(|| ConsoleError::not_found(format!("no surface {surface}")))?;
                let known = live.surface.document()["components"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["id"] == component.as_str()));
                if !known {
                    return Err(ConsoleError::not_found(format!(
                        "surface {surface} has no component {component}"
                    )));
                }
                if action.is_empty() || action.len() > MAX_ACTION {
                    return Err(ConsoleError::invalid(format!(
                        "action must be 1..={MAX_ACTION} bytes"
                    )));
                }
                if value.to_string().len() > MAX_ACTION_VALUE {
                    return Err(ConsoleError::too_large(format!(
                        "action value exceeds {MAX_ACTION_VALUE} bytes"
                    )));
                }
                a2ui::check_value(value, 0).map_err(ConsoleError::from)?;
            }
            Entry::NodeEvent { .. } => {}
        }
        Ok(())
    }

    fn streaming_message(
        &mut self,
        session_id: &str,
        message_id: &str,
    ) -> Result<&mut ChatMessage, ConsoleError> {
        if self.streaming.get(message_id).map(String::as_str) != Some(session_id) {
            return Err(ConsoleError::not_found(format!(
                "message {message_id} is not streaming in session {session_id}"
            )));
        }
        self.sessions
            .get_mut(session_id)
            .and_then(|s| {
                s.messages
                    .iter_mut()
                    .rev()
                    .find(|m| m.message_id == message_id)
            })
            .ok_or_else(|| ConsoleError::not_found(format!("no message {message_id}")))
    }

    /// A message already sent by the console with `client_msg_id` in `session_id`.
    pub fn by_client_id(&self, session_id: &str, client_msg_id: &str) -> Option<&ChatMessage> {
        self.sessions.get(session_id).and_then(|s| {
            s.messages
                .iter()
                .find(|m| m.client_msg_id.as_deref() == Some(client_msg_id))
        })
    }

    /// The persisted form, at log position `seq`.
    pub fn save(&self, seq: u64) -> SavedState {
        SavedState {
            seq,
            sessions: self.sessions.clone(),
            surfaces: self
                .surfaces
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        (
                            s.surface.version(),
                            s.owner.clone(),
                            s.surface.document().clone(),
                        ),
                    )
                })
                .collect(),
        }
    }

    /// Rebuilds from the persisted form.
    pub fn restore(saved: SavedState) -> Result<Self, ConsoleError> {
        let mut state = State {
            sessions: saved.sessions,
            ..State::default()
        };
        for (id, session) in &state.sessions {
            for m in session.messages.iter().filter(|m| m.streaming) {
                state.streaming.insert(m.message_id.clone(), id.clone());
            }
        }
        for (name, (version, owner, document)) in saved.surfaces {
            let mut surface = Surface::new(document).map_err(ConsoleError::from)?;
            surface.set_version(version);
            state.surfaces.insert(name, OwnedSurface { surface, owner });
        }
        Ok(state)
    }
}
