//! The console hub: a durable, sequenced log of what the web console shows (chat messages,
//! streamed deltas, A2UI snapshots and patches, actions, node events), the state it adds up to,
//! and the cursors clients resume from.
//!
//! Every record is stored in the client's wire form with its cursor `{"boot","seq"}`: `seq`
//! numbers records gap-free across daemon restarts, `boot` names the daemon run that wrote the
//! record. A client resuming from `(boot, seq)` gets exactly the records after `seq`, unless the
//! log no longer holds them or never held that cursor (then a snapshot). Records are fsynced
//! before anyone sees them, so nothing a client saw is lost in a crash.
//!
//! `STATE/console/` holds `log/` (segments), `state.json` (the state at some seq, written every
//! [`SAVE_EVERY`] records so retention can drop old segments) and `boots.json`.

pub mod sessions;
pub mod state;
pub mod stream;
pub mod web;

use crate::node::service::WallClock;
use crate::notify::Notifier;
use crate::store::{
    write_atomic, EventStore, FileEventLog, FileEventLogConfig, NewEvent, StoreError, StoredEvent,
};
use bytes::Bytes;
use palyra_proto::a2ui::A2uiError;
use serde_json::{json, Value};
use state::{check_id, ChatMessage, Entry, SavedState, State};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// The state is saved after this many records.
pub const SAVE_EVERY: u64 = 1024;
/// ... or after this many bytes of records.
pub const SAVE_EVERY_BYTES: usize = 16 * 1024 * 1024;
/// Boots remembered (for checking cursors).
pub const MAX_BOOTS: usize = 4096;

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

/// Records read for a client.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records after the requested seq, in order.
    pub records: Vec<StoredEvent>,
    /// The newest seq in the log.
    pub head: u64,
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
}

struct Inner {
    log: FileEventLog,
    state: State,
    dir: PathBuf,
    /// `(first seq written, boot)` of each daemon run, oldest first.
    boots: Vec<(u64, String)>,
    unsaved: u64,
    unsaved_bytes: usize,
}

/// The console hub shared by every console connection and the admin API.
pub struct ConsoleHub {
    boot: String,
    inner: Mutex<Inner>,
    notifier: Arc<Notifier>,
    clock: WallClock,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHub")
            .field("boot", &self.boot)
            .finish()
    }
}

fn log_config() -> FileEventLogConfig {
    FileEventLogConfig {
        segment_bytes: 4 * 1024 * 1024,
        max_total_bytes: 64 * 1024 * 1024,
        max_record_bytes: palyra_proto::a2ui::MAX_DOCUMENT_BYTES + 64 * 1024,
        cache_bytes: 8 * 1024 * 1024,
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// The state saved in `dir/state.json` brought up to date with the records of `log` after it;
/// returns it and how many records were replayed.
fn load_state(dir: &std::path::Path, log: &mut FileEventLog) -> Result<(State, u64), StoreError> {
    let saved: SavedState = match std::fs::read(dir.join("state.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt("state.json", e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedState::default(),
        Err(e) => return Err(StoreError::io("reading console/state.json")(e)),
    };
    let mut after = saved.seq;
    let mut state = State::restore(saved).map_err(|e| corrupt("state.json", e))?;
    let bounds = log.bounds();
    if bounds.first_seq > after + 1 && bounds.last_seq > after {
        tracing::warn!(
            saved = after,
            first = bounds.first_seq,
            "console log retention passed the saved state; older records are lost"
        );
        after = bounds.first_seq - 1;
    }
    let mut replayed = 0u64;
    loop {
        let records = log.read_after(after, 1024, 16 * 1024 * 1024)?;
        let Some(last) = records.last() else { break };
        after = last.seq;
        for record in &records {
            let entry = decode_record(&record.body)
                .map_err(|e| corrupt(&format!("console record {}", record.seq), e))?;
            // A record that no longer applies (its surface was dropped with old segments) is
            // skipped: the log is the truth clients already saw.
            let _ = state.apply(&entry);
            replayed += 1;
        }
    }
    Ok((state, replayed))
}

/// Decodes a stored record back into its entry.
pub fn decode_record(body: &[u8]) -> Result<Entry, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(map) = value.as_object_mut() {
        map.remove("cursor");
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

impl ConsoleHub {
    /// Opens `STATE/console` (creating it), rebuilds the state and starts run `boot`, which wakes
    /// `notifier` whenever records are added.
    pub fn open(
        state_dir: &std::path::Path,
        boot: String,
        notifier: Arc<Notifier>,
        clock: WallClock,
    ) -> Result<Self, StoreError> {
        let dir = state_dir.join("console");
        let mut log = FileEventLog::open(dir.join("log"), log_config())?;
        let (state, replayed) = load_state(&dir, &mut log)?;
        let bounds = log.bounds();
        let mut boots: Vec<(u64, String)> = match std::fs::read(dir.join("boots.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| corrupt("boots.json", e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("reading console/boots.json")(e)),
        };
        boots.push((bounds.last_seq + 1, boot.clone()));
        if boots.len() > MAX_BOOTS {
            boots.drain(..boots.len() - MAX_BOOTS);
        }
        write_atomic(
            &dir.join("boots.json"),
            &serde_json::to_vec(&boots).unwrap_or_default(),
        )?;
        Ok(Self {
            boot,
            inner: Mutex::new(Inner {
                log,
                state,
                dir,
                boots,
                unsaved: replayed,
                unsaved_bytes: 0,
            }),
            notifier,
            clock,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This run's boot id.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// The notifier woken by new records.
    pub fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.notifier)
    }

    /// The newest seq.
    pub fn head(&self) -> u64 {
        self.lock().log.bounds().last_seq
    }

    /// Publishes `commands` in one durable write; one result per command, in order.
    pub fn publish(&self, commands: Vec<Command>) -> Vec<Result<Published, ConsoleError>> {
        let now_ms = (self.clock)();
        let mut inner = self.lock();
        let first = inner.log.bounds().last_seq + 1;
        let mut results = Vec::with_capacity(commands.len());
        let mut batch = Vec::new();
        for command in commands {
            let seq = first + batch.len() as u64;
            let outcome = inner
                .prepare(command, seq, now_ms)
                .and_then(|prepared| match prepared {
                    Prepared::Existing(published) => Ok(published),
                    Prepared::New(entry, published) => {
                        inner.state.apply(&entry)?;
                        batch.push(self.encode(&entry, seq));
                        Ok(published)
                    }
                });
            results.push(outcome);
        }
        if batch.is_empty() {
            return results;
        }
        let bytes: usize = batch.iter().map(|e| e.body.len()).sum();
        if let Err(e) = inner.log.append(&batch) {
            tracing::error!(error = %e, "console log write failed; reloading the state");
            let message = format!("not stored: {e}");
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(ConsoleError::store(message.clone()));
            }
            if let Err(e) = inner.reload() {
                tracing::error!(error = %e, "console state reload failed");
            }
            return results;
        }
        inner.unsaved += batch.len() as u64;
        inner.unsaved_bytes += bytes;
        if inner.unsaved >= SAVE_EVERY || inner.unsaved_bytes >= SAVE_EVERY_BYTES {
            if let Err(e) = inner.save() {
                tracing::warn!(error = %e, "saving the console state failed; retrying later");
            }
        }
        drop(inner);
        self.notifier.notify();
        results
    }

    fn encode(&self, entry: &Entry, seq: u64) -> NewEvent {
        let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.insert("cursor".into(), json!({"boot": self.boot, "seq": seq}));
        }
        NewEvent {
            to: entry.tag(),
            body: Bytes::from(value.to_string()),
        }
    }

    /// Where a client resuming from `cursor` (`None`: a fresh client) starts.
    pub fn resume(&self, cursor: Option<(&str, u64)>) -> Resume {
        let Some((boot, seq)) = cursor else {
            return Resume::Snapshot("fresh");
        };
        let inner = self.lock();
        let bounds = inner.log.bounds();
        if seq > bounds.last_seq {
            return Resume::Snapshot("unknown_cursor");
        }
        if inner.boot_of(seq) != Some(boot) {
            return Resume::Snapshot("unknown_boot");
        }
        if seq + 1 < bounds.first_seq {
            return Resume::Snapshot("gap");
        }
        Resume::From(seq)
    }

    /// Records after `after` (at most `max` records and about `max_bytes`); `Err` when they are
    /// no longer retained.
    pub fn read(&self, after: u64, max: usize, max_bytes: usize) -> Result<Batch, ConsoleError> {
        let mut inner = self.lock();
        let bounds = inner.log.bounds();
        if after + 1 < bounds.first_seq {
            return Err(ConsoleError::store("records no longer retained"));
        }
        let records = inner
            .log
            .read_after(after, max, max_bytes)
            .map_err(|e| ConsoleError::store(e.to_string()))?;
        Ok(Batch {
            records,
            head: bounds.last_seq,
        })
    }

    /// The cursor value of `seq`: `{"boot","seq"}`.
    pub fn cursor(&self, seq: u64) -> Value {
        let inner = self.lock();
        json!({"boot": inner.boot_of(seq).unwrap_or(&self.boot), "seq": seq})
    }

    /// The current state as client messages (`a2ui.snapshot` of every surface, then the recent
    /// `chat.message`s of the sessions in `sessions`, or of all when `None`), and the seq it
    /// reflects.
    pub fn snapshot(&self, sessions: Option<&[String]>) -> (u64, Vec<String>) {
        let inner = self.lock();
        let seq = inner.log.bounds().last_seq;
        let cursor = json!({"boot": inner.boot_of(seq).unwrap_or(&self.boot), "seq": seq});
        let mut out = Vec::new();
        for (name, s) in &inner.state.surfaces {
            out.push(
                json!({"type": "a2ui.snapshot", "surface": name, "version": s.surface.version(),
                       "document": s.surface.document(), "owner": s.owner, "cursor": cursor})
                .to_string(),
            );
        }
        for (id, session) in &inner.state.sessions {
            if sessions.is_some_and(|wanted| !wanted.iter().any(|w| w == id)) {
                continue;
            }
            for m in &session.messages {
                let mut value = serde_json::to_value(Entry::Message(m.clone())).unwrap_or_default();
                value["cursor"] = cursor.clone();
                out.push(value.to_string());
            }
        }
        (seq, out)
    }

    /// A surface's current state.
    pub fn surface(&self, name: &str) -> Option<SurfaceInfo> {
        let inner = self.lock();
        inner
            .state
            .surfaces
            .get(name)
            .map(|s| surface_info(name, s))
    }

    /// Every surface.
    pub fn surfaces(&self) -> Vec<SurfaceInfo> {
        let inner = self.lock();
        inner
            .state
            .surfaces
            .iter()
            .map(|(name, s)| surface_info(name, s))
            .collect()
    }

    /// Chat sessions: `(id, messages ever, last activity, recent messages)`.
    pub fn sessions(&self) -> Vec<(String, u64, u64, Vec<ChatMessage>)> {
        let inner = self.lock();
        inner
            .state
            .sessions
            .iter()
            .map(|(id, s)| {
                (
                    id.clone(),
                    s.message_count,
                    s.last_at_unix_ms,
                    s.messages.iter().cloned().collect(),
                )
            })
            .collect()
    }

    /// Saves the state now (at shutdown, so the next start replays less).
    pub fn save(&self) -> Result<(), StoreError> {
        self.lock().save()
    }
}

fn surface_info(name: &str, s: &state::OwnedSurface) -> SurfaceInfo {
    SurfaceInfo {
        surface: name.to_owned(),
        version: s.surface.version(),
        owner: s.owner.clone(),
        document: s.surface.document().clone(),
    }
}

enum Prepared {
    New(Entry, Published),
    Existing(Published),
}

impl Inner {
    fn boot_of(&self, seq: u64) -> Option<&str> {
        // The run that wrote `seq`; seq 0 (nothing seen yet) belongs to the first run.
        let index = self
            .boots
            .partition_point(|(first, _)| *first <= seq.max(1));
        self.boots
            .get(index.checked_sub(1)?)
            .map(|(_, b)| b.as_str())
    }

    fn save(&mut self) -> Result<(), StoreError> {
        let saved = self.state.save(self.log.bounds().last_seq);
        let bytes = serde_json::to_vec(&saved).map_err(|e| corrupt("state", e))?;
        write_atomic(&self.dir.join("state.json"), &bytes)?;
        self.unsaved = 0;
        self.unsaved_bytes = 0;
        Ok(())
    }

    fn reload(&mut self) -> Result<(), StoreError> {
        self.log = FileEventLog::open(self.dir.join("log"), log_config())?;
        self.state = load_state(&self.dir, &mut self.log)?.0;
        Ok(())
    }

    fn prepare(&self, command: Command, seq: u64, now_ms: u64) -> Result<Prepared, ConsoleError> {
        let chat = |id: &str, version: u64| Published {
            seq,
            id: id.to_owned(),
            version,
        };
        let entry = match command {
            Command::Send {
                session_id,
                client_msg_id,
                text,
            } => {
                check_id("session_id", &session_id)?;
                check_id("client_msg_id", &client_msg_id)?;
                if let Some(m) = self.state.by_client_id(&session_id, &client_msg_id) {
                    return Ok(Prepared::Existing(chat(&m.message_id, 0)));
                }
                Entry::Message(ChatMessage {
                    session_id,
                    message_id: format!("u-{seq}"),
                    role: "user".into(),
                    author: "operator".into(),
                    text,
                    streaming: false,
                    client_msg_id: Some(client_msg_id),
                    at_unix_ms: now_ms,
                })
            }
            Command::Post {
                session_id,
                message_id,
                author,
                text,
                streaming,
            } => {
                check_id("message_id", &message_id)?;
                if message_id.starts_with("u-") {
                    return Err(ConsoleError::invalid(
                        "message ids starting with u- are the daemon's",
                    ));
                }
                Entry::Message(ChatMessage {
                    session_id,
                    message_id,
                    role: "agent".into(),
                    author,
                    text,
                    streaming,
                    client_msg_id: None,
                    at_unix_ms: now_ms,
                })
            }
            Command::Delta { message_id, text } => Entry::Delta {
                session_id: self.streaming_session(&message_id)?,
                message_id,
                text,
            },
            Command::Done { message_id } => Entry::Done {
                session_id: self.streaming_session(&message_id)?,
                message_id,
            },
            Command::PutSurface { document, owner } => {
                let surface = document
                    .get("surface")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ConsoleError::invalid("document needs a string surface"))?
                    .to_owned();
                check_id("surface", &surface)?;
                let version = self
                    .state
                    .surfaces
                    .get(&surface)
                    .map_or(1, |s| s.surface.version() + 1);
                Entry::Snapshot {
                    surface,
                    version,
                    document,
                    owner,
                }
            }
            Command::Patch {
                surface,
                base_version,
                ops,
            } => {
                let current = self
                    .state
                    .surfaces
                    .get(&surface)
                    .ok_or_else(|| ConsoleError::not_found(format!("no surface {surface}")))?
                    .surface
                    .version();
                let base = base_version.unwrap_or(current);
                Entry::Patch {
                    surface,
                    version: base + 1,
                    base_version: base,
                    ops,
                }
            }
            Command::Action {
                surface,
                component,
                action,
                value,
            } => {
                let owner = self
                    .state
                    .surfaces
                    .get(&surface)
                    .ok_or_else(|| ConsoleError::not_found(format!("no surface {surface}")))?
                    .owner
                    .clone();
                Entry::Action {
                    surface,
                    component,
                    action,
                    value,
                    owner,
                    from: "operator".into(),
                    at_unix_ms: now_ms,
                }
            }
            Command::NodeEvent {
                name,
                device_id,
                node_seq,
                payload,
                to,
            } => Entry::NodeEvent {
                name,
                device_id,
                node_seq,
                payload,
                to,
            },
        };
        let published = match &entry {
            Entry::Message(m) => chat(&m.message_id, 0),
            Entry::Delta { message_id, .. } | Entry::Done { message_id, .. } => chat(message_id, 0),
            Entry::Snapshot {
                surface, version, ..
            }
            | Entry::Patch {
                surface, version, ..
            } => chat(surface, *version),
            Entry::Action { surface, .. } => chat(surface, 0),
            Entry::NodeEvent { name, .. } => chat(name, 0),
        };
        Ok(Prepared::New(entry, published))
    }

    fn streaming_session(&self, message_id: &str) -> Result<String, ConsoleError> {
        self.state
            .streaming
            .get(message_id)
            .cloned()
            .ok_or_else(|| {
                ConsoleError::not_found(format!("message {message_id} is not streaming"))
            })
    }
}

#[cfg(test)]
mod tests;
