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

pub mod runs;
pub mod sessions;
mod shared;
pub mod stream;
pub mod web;

use crate::notify::Notifier;
use crate::store::{
    read_blocking, DocStore, FileEventLog, FileEventLogConfig, LogService, LogStore, NewEvent,
    Pending, StoreError, StoredEvent,
};
use crate::util::WallClock;
use bytes::Bytes;
pub use palyra_proto::a2ui::state::{
    self, Boots, Command, ConsoleError, Published, Resume, SurfaceInfo,
};
use serde_json::{json, Value};
use state::{check_id, ChatMessage, Entry, SavedState, State};
use std::sync::{Arc, Mutex, MutexGuard};

/// The state is saved after this many records.
pub const SAVE_EVERY: u64 = 1024;
/// ... or after this many bytes of records.
pub const SAVE_EVERY_BYTES: usize = 16 * 1024 * 1024;
/// Boots remembered (for checking cursors).
pub const MAX_BOOTS: usize = 4096;

/// Records read for a client.
#[derive(Debug, Default)]
pub struct Batch {
    /// Records after the requested seq, in order.
    pub records: Vec<StoredEvent>,
    /// The newest seq in the log.
    pub head: u64,
}

struct Inner {
    /// What the log adds up to including publishes not durable yet: new commands are checked
    /// against it, so a burst of patches chains without waiting for the disk.
    state: State,
    /// What the durable log adds up to: snapshots, reads and the admin API see only this.
    durable: State,
    /// The seq the next published record gets.
    next_seq: u64,
    /// The last durable seq.
    durable_seq: u64,
    /// Bumped when a failed write rolls the state back; writes of an older epoch are void.
    epoch: u64,
    unsaved: u64,
    unsaved_bytes: usize,
    /// The writer of a log other gateways write too (`None`: this gateway's own log).
    shared: Option<shared::Writer>,
}

/// The console hub shared by every console connection and the admin API.
pub struct ConsoleHub {
    boot: String,
    /// The daemon runs that wrote the log (this one last); fixed once open.
    boots: Boots,
    inner: Mutex<Inner>,
    log: Arc<dyn LogStore>,
    docs: Arc<dyn DocStore>,
    notifier: Arc<Notifier>,
    clock: WallClock,
    /// The document the state is saved in.
    state_key: &'static str,
}

impl std::fmt::Debug for ConsoleHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleHub")
            .field("boot", &self.boot)
            .finish()
    }
}

/// The console log's document keys.
const STATE_KEY: &str = "console/state.json";
const BOOTS_KEY: &str = "console/boots.json";

/// The documents that describe this gateway's own console log (its snapshot and its boots): a
/// store shared with other gateways keeps them beside the log, not with the shared documents.
pub const LOCAL_DOCS: [&str; 2] = [STATE_KEY, BOOTS_KEY];

/// The state of a log several gateways share, saved by any of them (a shared document).
const SHARED_STATE_KEY: &str = "console/shared-state.json";

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

/// Waits (at open, before anything is served) for a document write.
fn put_now(docs: &dyn DocStore, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
    let (answer, done) = crate::store::pending(None);
    docs.put(key, value.into(), None, Box::new(move |r| done.complete(r)));
    answer
        .wait_blocking(std::time::Duration::from_secs(60))
        .unwrap_or(Err(StoreError::Closed))
        .map(drop)
}

/// The state saved in document `key` brought up to date with the records of `log` after it;
/// returns it and how many records were replayed (read at open, before anything is served).
fn load_state(
    docs: &dyn DocStore,
    key: &str,
    log: &dyn LogStore,
) -> Result<(State, u64), StoreError> {
    let saved: SavedState = match docs.get(key)? {
        Some(doc) => serde_json::from_slice(&doc.value).map_err(|e| corrupt("state.json", e))?,
        None => SavedState::default(),
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
        let records = read_blocking(log, after, 1024, 16 * 1024 * 1024)?;
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

/// The console log as files under `state_dir/console/log`, driven by its own thread.
pub fn open_file_log(state_dir: &std::path::Path) -> Result<Arc<dyn LogStore>, StoreError> {
    let config = log_config();
    let file_log = FileEventLog::open(state_dir.join("console").join("log"), config)?;
    Ok(Arc::new(LogService::start(
        "palyra-console",
        Box::new(file_log),
        config.cache_bytes,
    )?))
}

/// Decodes a stored record back into its entry.
pub fn decode_record(body: &[u8]) -> Result<Entry, String> {
    let mut value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(map) = value.as_object_mut() {
        map.remove("cursor");
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// The console's surfaces as the runs' `palyra_patch_surface` tool changes them.
pub struct RunSurfaces(pub Arc<ConsoleHub>);

impl crate::run::gateway_tools::Surfaces for RunSurfaces {
    fn publish(&self, command: Command) -> Publishing {
        self.0.publish(vec![command])
    }
}

/// Results of one publish, once its records are durable (or known not to be).
pub type Publishing = Pending<Vec<Result<Published, ConsoleError>>>;

impl ConsoleHub {
    /// Opens the console over its `log` and the state in `docs`, rebuilds the state and starts
    /// run `boot`, which wakes `notifier` whenever records become durable.
    pub fn open(
        log: Arc<dyn LogStore>,
        docs: Arc<dyn DocStore>,
        boot: String,
        notifier: Arc<Notifier>,
        clock: WallClock,
    ) -> Result<Arc<Self>, StoreError> {
        if let Some(name) = log.shared_name() {
            return Self::open_shared(log, docs, name, notifier, clock);
        }
        let (state, replayed) = load_state(docs.as_ref(), STATE_KEY, log.as_ref())?;
        let bounds = log.bounds();
        let mut boots: Vec<(u64, String)> = match docs.get(BOOTS_KEY)? {
            Some(doc) => {
                serde_json::from_slice(&doc.value).map_err(|e| corrupt("boots.json", e))?
            }
            None => Vec::new(),
        };
        boots.push((bounds.last_seq + 1, boot.clone()));
        if boots.len() > MAX_BOOTS {
            boots.drain(..boots.len() - MAX_BOOTS);
        }
        put_now(
            docs.as_ref(),
            BOOTS_KEY,
            serde_json::to_vec(&boots).unwrap_or_default(),
        )?;
        let inner = Inner::opened(state, replayed, bounds.last_seq, None);
        Ok(Arc::new(Self {
            boot,
            boots: Boots::new(boots),
            inner: Mutex::new(inner),
            log,
            docs,
            notifier,
            clock,
            state_key: STATE_KEY,
        }))
    }

    /// Opens the console over a log other gateways write too, named `name`: the name is every
    /// cursor's boot (a cursor from any gateway resumes on any other), the state is a shared
    /// document, and the hub follows the log (see [`ConsoleHub::follow`]).
    fn open_shared(
        log: Arc<dyn LogStore>,
        docs: Arc<dyn DocStore>,
        name: String,
        notifier: Arc<Notifier>,
        clock: WallClock,
    ) -> Result<Arc<Self>, StoreError> {
        let (state, replayed) = load_state(docs.as_ref(), SHARED_STATE_KEY, log.as_ref())?;
        let bounds = log.bounds();
        let inner = Inner::opened(
            state,
            replayed,
            bounds.last_seq,
            Some(shared::Writer::default()),
        );
        Ok(Arc::new(Self {
            boots: Boots::new(vec![(1, name.clone())]),
            boot: name,
            inner: Mutex::new(inner),
            log,
            docs,
            notifier,
            clock,
            state_key: SHARED_STATE_KEY,
        }))
    }

    /// A hub whose log and state live in memory only, completing every write at once
    /// (simulations and tests).
    pub fn in_memory(boot: String, notifier: Arc<Notifier>, clock: WallClock) -> Arc<Self> {
        let inner = Inner {
            durable: State::default(),
            state: State::default(),
            next_seq: 1,
            durable_seq: 0,
            epoch: 0,
            unsaved: 0,
            unsaved_bytes: 0,
            shared: None,
        };
        Arc::new(Self {
            boots: Boots::new(vec![(1, boot.clone())]),
            boot,
            inner: Mutex::new(inner),
            log: Arc::new(crate::store::MemoryLog::new(64 * 1024 * 1024)),
            docs: Arc::new(crate::store::MemoryDocs::default()),
            notifier,
            clock,
            state_key: STATE_KEY,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This run's boot id.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// The daemon runs that wrote the log, for cursors.
    pub fn boots(&self) -> &Boots {
        &self.boots
    }

    /// The notifier woken by new durable records.
    pub fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.notifier)
    }

    /// The newest durable seq.
    pub fn head(&self) -> u64 {
        self.lock().durable_seq
    }

    /// Whether other gateways write the console log too.
    pub fn is_shared(&self) -> bool {
        self.lock().shared.is_some()
    }

    /// Whether this gateway wrote record `seq` (always, on a log only it writes; on a shared
    /// log, one of its recent records): a chat message starts a run only on the gateway that
    /// took it from the operator.
    pub fn wrote_here(&self, seq: u64) -> bool {
        self.lock()
            .shared
            .as_ref()
            .is_none_or(|writer| writer.wrote(seq))
    }

    /// Records published and not durable yet (0: every publisher has its answer).
    pub fn in_flight(&self) -> u64 {
        let inner = self.lock();
        let waiting = inner.shared.as_ref().map_or(0, shared::Writer::waiting);
        inner.next_seq - 1 - inner.durable_seq + waiting
    }

    /// Publishes `commands` in one write; the results (one per command, in order) arrive once
    /// the records are durable. Commands are checked against the state including earlier
    /// publishes still in flight; a failed write rolls that state back to the durable one.
    pub fn publish(self: &Arc<Self>, commands: Vec<Command>) -> Publishing {
        let (answer, done) = crate::store::pending(Some(Arc::clone(&self.notifier)));
        if self.lock().shared.is_some() {
            self.publish_shared(commands, done);
            return answer;
        }
        let now_ms = (self.clock)();
        let mut inner = self.lock();
        let first = inner.next_seq;
        let epoch = inner.epoch;
        let mut results = Vec::with_capacity(commands.len());
        let mut entries = Vec::new();
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
                        entries.push(entry);
                        Ok(published)
                    }
                });
            results.push(outcome);
        }
        if batch.is_empty() {
            drop(inner);
            done.complete(results);
            return answer;
        }
        inner.next_seq += batch.len() as u64;
        drop(inner);
        let bytes: usize = batch.iter().map(|e| e.body.len()).sum();
        let hub = Arc::clone(self);
        self.log.append(
            batch,
            Some(first),
            Box::new(move |stored| {
                hub.stored(epoch, first, entries, bytes, stored, results, done);
                hub.notifier.notify();
            }),
        );
        answer
    }

    /// A write of the records `first..` completed (on the log's thread): fold them into the
    /// durable state, or roll the state back when the write failed, and answer the publisher
    /// (before the lock is released, so nothing in flight means every publisher was answered).
    #[allow(clippy::too_many_arguments)]
    fn stored(
        &self,
        epoch: u64,
        first: u64,
        entries: Vec<Entry>,
        bytes: usize,
        stored: Result<Vec<u64>, StoreError>,
        mut results: Vec<Result<Published, ConsoleError>>,
        done: crate::store::Completer<Vec<Result<Published, ConsoleError>>>,
    ) {
        let mut inner = self.lock();
        match stored {
            Ok(_) => {
                for entry in &entries {
                    let _ = inner.durable.apply(entry);
                }
                inner.durable_seq = first + entries.len() as u64 - 1;
                inner.unsaved += entries.len() as u64;
                inner.unsaved_bytes += bytes;
                self.save_if_due(&mut inner);
            }
            Err(e) => {
                if inner.epoch == epoch {
                    tracing::error!(error = %e, "console log write failed; rolling back to the durable state");
                    inner.epoch += 1;
                    inner.state = inner.durable.clone();
                    inner.next_seq = inner.durable_seq + 1;
                }
                let message = format!("not stored: {e}");
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(ConsoleError::store(message.clone()));
                }
            }
        }
        done.complete(results);
    }

    /// Saves the durable state when enough records were added up since it was last saved.
    fn save_if_due(&self, inner: &mut Inner) {
        if inner.unsaved >= SAVE_EVERY || inner.unsaved_bytes >= SAVE_EVERY_BYTES {
            self.save_locked(inner);
        }
    }

    /// Hands the durable state to the document store (retention may then drop old segments).
    fn save_locked(&self, inner: &mut Inner) {
        let saved = inner.durable.save(inner.durable_seq);
        match serde_json::to_vec(&saved) {
            Ok(bytes) => {
                inner.unsaved = 0;
                inner.unsaved_bytes = 0;
                self.docs.put(
                    self.state_key,
                    bytes.into(),
                    None,
                    Box::new(|result| {
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "saving the console state failed; retrying later");
                        }
                    }),
                );
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the console state"),
        }
    }

    fn encode(&self, entry: &Entry, seq: u64) -> NewEvent {
        let mut value = serde_json::to_value(entry).unwrap_or(Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.insert("cursor".into(), json!({"boot": self.boot, "seq": seq}));
        }
        NewEvent {
            to: entry.tag(),
            body: Bytes::from(value.to_string()),
            id: None,
        }
    }

    /// Where a client resuming from `cursor` (`None`: a fresh client) starts.
    pub fn resume(&self, cursor: Option<(&str, u64)>) -> Resume {
        let Some((boot, seq)) = cursor else {
            return Resume::Snapshot("fresh");
        };
        let bounds = self.log.bounds();
        if seq > bounds.last_seq {
            return Resume::Snapshot("unknown_cursor");
        }
        if self.boots.boot_of(seq) != Some(boot) {
            return Resume::Snapshot("unknown_boot");
        }
        if seq + 1 < bounds.first_seq {
            return Resume::Snapshot("gap");
        }
        Resume::From(seq)
    }

    /// Durable records after `after` (at most `max` records and about `max_bytes`) when memory
    /// holds them: `Ok(None)` means [`ConsoleHub::read_later`]; `Err` when they are no longer
    /// retained.
    pub fn read(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<Option<Batch>, ConsoleError> {
        let bounds = self.log.bounds();
        if after + 1 < bounds.first_seq {
            return Err(ConsoleError::store("records no longer retained"));
        }
        Ok(self
            .log
            .read_cached(after, max, max_bytes)
            .map(|batch| Batch {
                records: batch.events,
                head: batch.bounds.last_seq,
            }))
    }

    /// Durable records after `after` from the log (disk), for a reader behind the memory window;
    /// the connection waiting on the notifier is woken when they arrive.
    pub fn read_later(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Pending<Result<Batch, ConsoleError>> {
        let (answer, done) = crate::store::pending(Some(Arc::clone(&self.notifier)));
        self.log.read(
            after,
            max,
            max_bytes,
            Box::new(move |result| {
                done.complete(
                    result
                        .map(|batch| Batch {
                            records: batch.events,
                            head: batch.bounds.last_seq,
                        })
                        .map_err(|e| ConsoleError::store(e.to_string())),
                )
            }),
        );
        answer
    }

    /// The cursor value of `seq`: `{"boot","seq"}`.
    pub fn cursor(&self, seq: u64) -> Value {
        self.boots.cursor(seq)
    }

    /// The durable state as client messages (`a2ui.snapshot` of every surface, then the recent
    /// `chat.message`s of the sessions in `sessions`, or of all when `None`), and the seq it
    /// reflects.
    pub fn snapshot(&self, sessions: Option<&[String]>) -> (u64, Vec<String>) {
        let inner = self.lock();
        let seq = inner.durable_seq;
        let cursor = self.boots.cursor(seq);
        let mut out = Vec::new();
        for (name, s) in &inner.durable.surfaces {
            out.push(
                json!({"type": "a2ui.snapshot", "surface": name, "version": s.surface.version(),
                       "document": s.surface.document(), "owner": s.owner, "cursor": cursor})
                .to_string(),
            );
        }
        for (id, session) in &inner.durable.sessions {
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

    /// A surface's durable state.
    pub fn surface(&self, name: &str) -> Option<SurfaceInfo> {
        let inner = self.lock();
        inner
            .durable
            .surfaces
            .get(name)
            .map(|s| surface_info(name, s, inner.durable_seq))
    }

    /// Every surface (durable state).
    pub fn surfaces(&self) -> Vec<SurfaceInfo> {
        let inner = self.lock();
        inner
            .durable
            .surfaces
            .iter()
            .map(|(name, s)| surface_info(name, s, inner.durable_seq))
            .collect()
    }

    /// Chat sessions: `(id, messages ever, last activity, recent messages)` (durable state).
    pub fn sessions(&self) -> Vec<(String, u64, u64, Vec<ChatMessage>)> {
        let inner = self.lock();
        inner
            .durable
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

    /// Hands the durable state to the document store now (so the next start replays less).
    pub fn save(&self) {
        let mut inner = self.lock();
        self.save_locked(&mut inner);
    }

    /// Saves the state and waits until the log and the state are durable (at shutdown, so the
    /// next start replays less).
    pub fn close(&self) {
        self.log.close();
        let mut inner = self.lock();
        self.save_locked(&mut inner);
    }
}

fn surface_info(name: &str, s: &state::OwnedSurface, seq: u64) -> SurfaceInfo {
    SurfaceInfo {
        seq,
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
    /// The hub's state at open: `state` adds up the log up to `last_seq`, `replayed` records of
    /// it since the state was last saved.
    fn opened(state: State, replayed: u64, last_seq: u64, shared: Option<shared::Writer>) -> Self {
        Self {
            durable: state.clone(),
            state,
            next_seq: last_seq + 1,
            durable_seq: last_seq,
            epoch: 0,
            unsaved: replayed,
            unsaved_bytes: 0,
            shared,
        }
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
