//! State the node listeners share across connections and tasks: the node registry, the
//! capability work queue, and the inbox of events waiting to enter the event log.
//!
//! One [`NodeHub`] per daemon. Its methods are short critical sections over one mutex; whoever
//! changes something calls [`Notifier::notify`] so connection tasks poll their calls again
//! (capability dispatches are pushed to a node's open `StreamNodeEvents` as soon as they are
//! queued). The QUIC task owns the event log; gRPC handlers hand it events through
//! [`NodeHub::submit_event`] and learn the outcome from [`NodeHub::take_append_result`], so every
//! event is fsynced by the same group commit as node-plane publishes.

use crate::notify::Notifier;
use crate::store::{write_atomic, NewEvent, StoreError};
use palyra_proto::identity::trust::{TrustDecision, TrustIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// Capability requests queued for one device before new ones are refused.
pub const MAX_QUEUED_PER_DEVICE: usize = 64;
/// Capability requests in flight across all devices.
pub const MAX_JOBS: usize = 4096;
/// Events waiting for the log before new ones are refused.
pub const MAX_PENDING_APPENDS: usize = 4096;
/// Registered nodes kept (a registration beyond it is refused).
pub const MAX_NODES: usize = 65_536;
/// Capabilities a node may advertise.
pub const MAX_CAPABILITIES: usize = 256;

/// One advertised capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilityRecord {
    /// Capability name (trimmed).
    pub name: String,
    /// Whether the node can run it now.
    pub available: bool,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Canonical device ID.
    pub device_id: String,
    /// `os-arch`, as the node reported it (trimmed).
    pub platform: String,
    /// Advertised capabilities.
    pub capabilities: Vec<CapabilityRecord>,
    /// First registration.
    pub registered_at_unix_ms: u64,
    /// Last registration or event.
    pub last_seen_at_unix_ms: u64,
    /// Name of the last event the node sent.
    #[serde(default)]
    pub last_event_name: String,
    /// When it sent it.
    #[serde(default)]
    pub last_event_at_unix_ms: u64,
}

/// Work handed to a node's event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispatch {
    /// Capability request ID (ULID).
    pub request_id: String,
    /// Capability to run.
    pub capability: String,
    /// Its input, JSON.
    pub input_json: Vec<u8>,
    /// Largest output the caller accepts.
    pub max_payload_bytes: u64,
}

/// What a node answered for a capability request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityResult {
    /// Whether the capability succeeded.
    pub success: bool,
    /// Output, JSON (may be empty).
    pub output_json: Vec<u8>,
    /// Error text when it failed.
    pub error: String,
}

/// Why the hub refused something; handlers map it to a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// A bound was reached.
    #[error("{0}")]
    Overloaded(&'static str),
    /// The referenced capability request does not exist or is not this device's.
    #[error("unknown capability request {0}")]
    UnknownRequest(String),
    /// The node must register first.
    #[error("node must register before executing capabilities")]
    NotRegistered,
    /// The registry could not be persisted.
    #[error("node registry could not be saved: {0}")]
    Store(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Queued,
    Dispatched,
    AwaitingMediation,
    Done,
}

#[derive(Debug)]
struct Job {
    device_id: String,
    dispatch: Dispatch,
    state: JobState,
    result: Option<CapabilityResult>,
}

#[derive(Default)]
struct HubState {
    nodes: BTreeMap<String, NodeRecord>,
    nodes_dirty: bool,
    jobs: HashMap<String, Job>,
    queues: HashMap<String, VecDeque<String>>,
    appends: VecDeque<(u64, NewEvent)>,
    append_results: HashMap<u64, Result<u64, String>>,
    next_ticket: u64,
    /// Open QUIC connections per device.
    quic: HashMap<String, usize>,
}

/// The shared node-listener state of one daemon.
pub struct NodeHub {
    state: Mutex<HubState>,
    notifier: Arc<Notifier>,
    trust: Arc<TrustIndex>,
    registry: Option<PathBuf>,
}

impl NodeHub {
    /// A hub deciding trust with `trust`, persisting the registry at `registry` (loaded if it
    /// exists; `None` keeps it in memory, for tests).
    pub fn open(trust: Arc<TrustIndex>, registry: Option<PathBuf>) -> Result<Self, StoreError> {
        let mut state = HubState::default();
        if let Some(path) = &registry {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let nodes: Vec<NodeRecord> = serde_json::from_slice(&bytes).map_err(|e| {
                        StoreError::io(format!("parsing {}", path.display()))(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            e,
                        ))
                    })?;
                    state.nodes = nodes
                        .into_iter()
                        .map(|n| (n.device_id.clone(), n))
                        .collect();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
            }
        }
        Ok(Self {
            state: Mutex::new(state),
            notifier: Arc::new(Notifier::new()),
            trust,
            registry,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The notifier connection tasks wait on.
    pub fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.notifier)
    }

    /// The live trust index.
    pub fn trust(&self) -> &TrustIndex {
        &self.trust
    }

    /// Counts a device's QUIC connection opened (`true`) or closed (`false`).
    pub fn quic_connection(&self, device_id: &str, opened: bool) {
        let mut state = self.lock();
        let count = state.quic.entry(device_id.to_owned()).or_default();
        if opened {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.quic.remove(device_id);
            }
        }
    }

    /// QUIC connections the device has open now.
    pub fn quic_connections(&self, device_id: &str) -> usize {
        self.lock().quic.get(device_id).copied().unwrap_or(0)
    }

    /// The live trust index, shared.
    pub fn trust_index(&self) -> Arc<TrustIndex> {
        Arc::clone(&self.trust)
    }

    /// Which device a certificate (SPKI fingerprint) belongs to, if it is in good standing.
    pub fn check(&self, spki_sha256: &[u8; 32]) -> TrustDecision {
        self.trust.check(spki_sha256)
    }

    /// Registers (or re-registers) a node and saves the registry.
    pub fn register(
        &self,
        device_id: &str,
        platform: &str,
        capabilities: Vec<CapabilityRecord>,
        now_ms: u64,
    ) -> Result<(), HubError> {
        let mut state = self.lock();
        if !state.nodes.contains_key(device_id) && state.nodes.len() >= MAX_NODES {
            return Err(HubError::Overloaded("node registry is full"));
        }
        let record = state
            .nodes
            .entry(device_id.to_owned())
            .or_insert_with(|| NodeRecord {
                device_id: device_id.to_owned(),
                platform: String::new(),
                capabilities: Vec::new(),
                registered_at_unix_ms: now_ms,
                last_seen_at_unix_ms: now_ms,
                last_event_name: String::new(),
                last_event_at_unix_ms: 0,
            });
        record.platform = platform.to_owned();
        record.capabilities = capabilities;
        record.last_seen_at_unix_ms = now_ms;
        let saved = self.save(&state);
        state.nodes_dirty = saved.is_err();
        drop(state);
        self.notifier.notify();
        saved
    }

    /// Records that `device_id` sent `event_name` (registered nodes only).
    pub fn touch(&self, device_id: &str, event_name: &str, now_ms: u64) {
        let mut state = self.lock();
        if let Some(node) = state.nodes.get_mut(device_id) {
            node.last_seen_at_unix_ms = now_ms;
            node.last_event_name = event_name.to_owned();
            node.last_event_at_unix_ms = now_ms;
            state.nodes_dirty = true;
        }
    }

    /// A registered node.
    pub fn node(&self, device_id: &str) -> Option<NodeRecord> {
        self.lock().nodes.get(device_id).cloned()
    }

    /// Every registered node.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.lock().nodes.values().cloned().collect()
    }

    /// Saves presence updates (last seen) if any; drivers call it from maintenance.
    pub fn flush(&self) -> Result<(), HubError> {
        let mut state = self.lock();
        if !state.nodes_dirty {
            return Ok(());
        }
        let saved = self.save(&state);
        state.nodes_dirty = saved.is_err();
        saved
    }

    fn save(&self, state: &HubState) -> Result<(), HubError> {
        let Some(path) = &self.registry else {
            return Ok(());
        };
        let nodes: Vec<&NodeRecord> = state.nodes.values().collect();
        let json = serde_json::to_vec_pretty(&nodes).unwrap_or_default();
        write_atomic(path, &json).map_err(|e| HubError::Store(e.to_string()))
    }

    /// Queues capability work for a registered device; returns the request ID.
    pub fn enqueue(
        &self,
        device_id: &str,
        capability: &str,
        input_json: Vec<u8>,
        max_payload_bytes: u64,
    ) -> Result<String, HubError> {
        let mut state = self.lock();
        if !state.nodes.contains_key(device_id) {
            return Err(HubError::NotRegistered);
        }
        if state.jobs.len() >= MAX_JOBS {
            return Err(HubError::Overloaded(
                "too many capability requests in flight",
            ));
        }
        let queued = state.queues.get(device_id).map_or(0, VecDeque::len);
        if queued >= MAX_QUEUED_PER_DEVICE {
            return Err(HubError::Overloaded(
                "too many capability requests queued for this node",
            ));
        }
        let request_id = ulid::Ulid::new().to_string();
        state.jobs.insert(
            request_id.clone(),
            Job {
                device_id: device_id.to_owned(),
                dispatch: Dispatch {
                    request_id: request_id.clone(),
                    capability: capability.to_owned(),
                    input_json,
                    max_payload_bytes,
                },
                state: JobState::Queued,
                result: None,
            },
        );
        state
            .queues
            .entry(device_id.to_owned())
            .or_default()
            .push_back(request_id.clone());
        drop(state);
        self.notifier.notify();
        Ok(request_id)
    }

    /// Takes the next queued dispatch of `device_id` (it becomes `dispatched`).
    pub fn take_dispatch(&self, device_id: &str) -> Option<Dispatch> {
        let mut state = self.lock();
        let state = &mut *state;
        let queue = state.queues.get_mut(device_id)?;
        while let Some(id) = queue.pop_front() {
            if let Some(job) = state.jobs.get_mut(&id) {
                if job.state == JobState::Queued {
                    job.state = JobState::Dispatched;
                    return Some(job.dispatch.clone());
                }
            }
        }
        None
    }

    /// Whether `device_id` has queued work.
    pub fn has_dispatch(&self, device_id: &str) -> bool {
        self.lock()
            .queues
            .get(device_id)
            .is_some_and(|q| !q.is_empty())
    }

    /// The node reports it waits for local mediation (a person) before running the request.
    pub fn awaiting_mediation(&self, device_id: &str, request_id: &str) -> Result<(), HubError> {
        let mut state = self.lock();
        match state.jobs.get_mut(request_id) {
            Some(job) if job.device_id == device_id && job.state == JobState::Dispatched => {
                job.state = JobState::AwaitingMediation;
                Ok(())
            }
            _ => Err(HubError::UnknownRequest(request_id.to_owned())),
        }
    }

    /// The node delivers a result; only the device the request was dispatched to may.
    pub fn complete(
        &self,
        device_id: &str,
        request_id: &str,
        result: CapabilityResult,
    ) -> Result<(), HubError> {
        let mut state = self.lock();
        match state.jobs.get_mut(request_id) {
            Some(job)
                if job.device_id == device_id
                    && matches!(
                        job.state,
                        JobState::Dispatched | JobState::AwaitingMediation
                    ) =>
            {
                job.state = JobState::Done;
                job.result = Some(result);
            }
            _ => return Err(HubError::UnknownRequest(request_id.to_owned())),
        }
        drop(state);
        self.notifier.notify();
        Ok(())
    }

    /// Takes the result of a finished request (the request is forgotten).
    pub fn take_result(&self, request_id: &str) -> Option<CapabilityResult> {
        let mut state = self.lock();
        let done = state
            .jobs
            .get(request_id)
            .is_some_and(|j| j.state == JobState::Done);
        if !done {
            return None;
        }
        state.jobs.remove(request_id).and_then(|j| j.result)
    }

    /// Forgets a request whose caller gave up (timeout, cancellation).
    pub fn abandon(&self, request_id: &str) {
        let mut state = self.lock();
        if let Some(job) = state.jobs.remove(request_id) {
            if let Some(queue) = state.queues.get_mut(&job.device_id) {
                queue.retain(|id| id != request_id);
            }
        }
    }

    /// Hands an event to the log writer; returns a ticket for [`NodeHub::take_append_result`].
    pub fn submit_event(&self, event: NewEvent) -> Result<u64, HubError> {
        let mut state = self.lock();
        if state.appends.len() + state.append_results.len() >= MAX_PENDING_APPENDS {
            return Err(HubError::Overloaded(
                "too many events waiting to be stored; retry",
            ));
        }
        state.next_ticket += 1;
        let ticket = state.next_ticket;
        state.appends.push_back((ticket, event));
        drop(state);
        self.notifier.notify();
        Ok(ticket)
    }

    /// The log writer takes the events submitted since its last call.
    pub fn take_appends(&self) -> Vec<(u64, NewEvent)> {
        self.lock().appends.drain(..).collect()
    }

    /// The log writer reports outcomes: the event's sequence number, or why it was not stored.
    pub fn finish_appends(&self, results: Vec<(u64, Result<u64, String>)>) {
        if results.is_empty() {
            return;
        }
        self.lock().append_results.extend(results);
        self.notifier.notify();
    }

    /// The outcome of a submitted event, once the log writer reported it.
    pub fn take_append_result(&self, ticket: u64) -> Option<Result<u64, String>> {
        self.lock().append_results.remove(&ticket)
    }

    /// Forgets a ticket whose caller went away (its outcome is dropped when it arrives).
    pub fn forget_ticket(&self, ticket: u64) {
        let mut state = self.lock();
        if state.append_results.remove(&ticket).is_none() {
            state.appends.retain(|(t, _)| *t != ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palyra_proto::identity::trust::TrustSnapshot;

    fn hub() -> NodeHub {
        NodeHub::open(Arc::new(TrustIndex::new(&TrustSnapshot::default())), None).unwrap()
    }

    #[test]
    fn dispatch_lifecycle_is_guarded() {
        let hub = hub();
        assert_eq!(
            hub.enqueue("dev", "echo", b"{}".to_vec(), 10),
            Err(HubError::NotRegistered)
        );
        hub.register("dev", "linux-x86_64", Vec::new(), 1).unwrap();
        let version = hub.notifier().version();
        let id = hub.enqueue("dev", "echo", b"{}".to_vec(), 10).unwrap();
        assert!(
            hub.notifier().version() > version,
            "enqueue wakes listeners"
        );
        assert!(hub.take_dispatch("other").is_none());
        let dispatch = hub.take_dispatch("dev").unwrap();
        assert_eq!(dispatch.request_id, id);
        assert!(hub.take_dispatch("dev").is_none(), "dispatched once");
        let result = CapabilityResult {
            success: true,
            output_json: b"1".to_vec(),
            error: String::new(),
        };
        assert!(
            hub.complete("other", &id, result.clone()).is_err(),
            "another device cannot answer"
        );
        assert!(hub.take_result(&id).is_none());
        hub.awaiting_mediation("dev", &id).unwrap();
        hub.complete("dev", &id, result.clone()).unwrap();
        assert!(hub.complete("dev", &id, result.clone()).is_err(), "once");
        assert_eq!(hub.take_result(&id), Some(result));
        assert!(hub.take_result(&id).is_none());
    }

    #[test]
    fn queues_are_bounded_and_abandon_cleans_up() {
        let hub = hub();
        hub.register("dev", "p", Vec::new(), 1).unwrap();
        let ids: Vec<String> = (0..MAX_QUEUED_PER_DEVICE)
            .map(|_| hub.enqueue("dev", "echo", Vec::new(), 1).unwrap())
            .collect();
        assert!(matches!(
            hub.enqueue("dev", "echo", Vec::new(), 1),
            Err(HubError::Overloaded(_))
        ));
        for id in &ids {
            hub.abandon(id);
        }
        assert!(!hub.has_dispatch("dev"));
        hub.enqueue("dev", "echo", Vec::new(), 1).unwrap();
    }

    #[test]
    fn registry_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nodes.json");
        let trust = Arc::new(TrustIndex::new(&TrustSnapshot::default()));
        let hub = NodeHub::open(Arc::clone(&trust), Some(path.clone())).unwrap();
        let caps = vec![CapabilityRecord {
            name: "echo".into(),
            available: true,
        }];
        hub.register("dev", "linux-x86_64", caps.clone(), 5)
            .unwrap();
        hub.touch("dev", "node.heartbeat", 9);
        hub.flush().unwrap();
        let again = NodeHub::open(trust, Some(path.clone())).unwrap();
        let node = again.node("dev").unwrap();
        assert_eq!(node.capabilities, caps);
        assert_eq!(node.registered_at_unix_ms, 5);
        assert_eq!(node.last_seen_at_unix_ms, 9);
        assert_eq!(node.last_event_name, "node.heartbeat");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(NodeHub::open(Arc::new(TrustIndex::default()), Some(path)).is_err());
    }

    #[test]
    fn appends_round_trip_through_the_writer() {
        let hub = hub();
        let event = NewEvent {
            to: None,
            body: bytes::Bytes::from_static(b"{}"),
        };
        let a = hub.submit_event(event.clone()).unwrap();
        let b = hub.submit_event(event.clone()).unwrap();
        hub.forget_ticket(b);
        let taken = hub.take_appends();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].0, a);
        assert!(hub.take_append_result(a).is_none());
        hub.finish_appends(vec![(a, Ok(7))]);
        assert_eq!(hub.take_append_result(a), Some(Ok(7)));
    }
}
