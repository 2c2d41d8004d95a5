//! State the node listeners share across connections and tasks: the node registry, the
//! capability work queue, and the inbox of events waiting to enter the event log.
//!
//! One [`NodeHub`] per daemon. Its methods are short critical sections over one mutex, never
//! held across a write; whoever changes something calls [`Notifier::notify`] so connection tasks
//! poll their calls again (capability dispatches are pushed to a node's open `StreamNodeEvents`
//! as soon as they are queued). The event log ([`NodeHub::log`]) is shared: node-plane publishes,
//! NodeService events and the admin API's events are group-committed by the same log thread.
//! The registry is a document (`nodes.json`) written through the [`DocStore`]; a registration is
//! answered once it is durable.

use crate::notify::Notifier;
use crate::store::{pending, DocStore, LogStore, Pending, StoreError};
use palyra_proto::identity::trust::{TrustDecision, TrustIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// How recently a node must have been seen here to count as connected here (heartbeats come
/// every 10 s).
pub const PRESENCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The registry's document.
pub const REGISTRY_KEY: &str = "nodes.json";

/// Capability requests queued for one device before new ones are refused.
pub const MAX_QUEUED_PER_DEVICE: usize = 64;
/// Capability requests in flight across all devices.
pub const MAX_JOBS: usize = 4096;
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
    /// What it does (for a model offered it as a tool).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The JSON schema of its input, if the node gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
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
    /// Presence changed since the registry was last handed to the store.
    nodes_dirty: bool,
    jobs: HashMap<String, Job>,
    queues: HashMap<String, VecDeque<String>>,
    /// Open QUIC connections per device.
    quic: HashMap<String, usize>,
}

/// A registration being made durable: answered once the registry document is written.
pub type Registration = Pending<Result<(), HubError>>;

/// The shared node-listener state of one daemon.
pub struct NodeHub {
    state: Mutex<HubState>,
    notifier: Arc<Notifier>,
    trust: Arc<TrustIndex>,
    log: Arc<dyn LogStore>,
    registry: Option<Arc<dyn DocStore>>,
    /// The registry's document.
    registry_key: String,
    /// The other gateways of a cluster, once attached.
    peers: std::sync::OnceLock<Arc<dyn super::peers::Peers>>,
    /// Wakes the node plane's serve loop when trust changes.
    plane_wake: Arc<Notifier>,
}

impl NodeHub {
    /// A hub deciding trust with `trust`, appending to `log`, keeping the registry in `registry`
    /// (loaded if it holds one; `None` keeps it in memory, for tests), and waking the node
    /// plane's loop through `plane_wake` on trust changes.
    pub fn open(
        trust: Arc<TrustIndex>,
        log: Arc<dyn LogStore>,
        registry: Option<Arc<dyn DocStore>>,
        plane_wake: Arc<Notifier>,
    ) -> Result<Self, StoreError> {
        Self::open_keyed(trust, log, registry, REGISTRY_KEY, plane_wake)
    }

    /// As [`NodeHub::open`], the registry under `registry_key`.
    pub fn open_keyed(
        trust: Arc<TrustIndex>,
        log: Arc<dyn LogStore>,
        registry: Option<Arc<dyn DocStore>>,
        registry_key: &str,
        plane_wake: Arc<Notifier>,
    ) -> Result<Self, StoreError> {
        let mut state = HubState::default();
        if let Some(doc) = registry
            .as_ref()
            .map(|docs| docs.get(registry_key))
            .transpose()?
            .flatten()
        {
            let nodes: Vec<NodeRecord> = serde_json::from_slice(&doc.value)
                .map_err(|e| StoreError::Corrupt(format!("{registry_key}: {e}")))?;
            state.nodes = nodes
                .into_iter()
                .map(|n| (n.device_id.clone(), n))
                .collect();
        }
        Ok(Self {
            state: Mutex::new(state),
            notifier: Arc::new(Notifier::new()),
            trust,
            log,
            registry,
            registry_key: registry_key.to_owned(),
            peers: std::sync::OnceLock::new(),
            plane_wake,
        })
    }

    /// A hub whose event log and registry live in memory only (simulations and tests).
    pub fn in_memory(trust: Arc<TrustIndex>) -> Self {
        Self {
            state: Mutex::new(HubState::default()),
            notifier: Arc::new(Notifier::new()),
            trust,
            log: Arc::new(crate::store::log::MemoryLog::new(64 * 1024 * 1024)),
            registry: None,
            registry_key: REGISTRY_KEY.into(),
            peers: std::sync::OnceLock::new(),
            plane_wake: Arc::new(Notifier::new()),
        }
    }

    /// The node-plane event log.
    pub fn log(&self) -> &Arc<dyn LogStore> {
        &self.log
    }

    /// The trust index changed (pairing, revocation, a reloaded trust file): node TLS streams and
    /// the QUIC loop re-check their peers.
    pub fn trust_changed(&self) {
        self.notifier.notify();
        self.plane_wake.notify();
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

    /// Registers (or re-registers) a node; the answer comes once the registry is durable.
    pub fn register(
        &self,
        device_id: &str,
        platform: &str,
        capabilities: Vec<CapabilityRecord>,
        now_ms: u64,
    ) -> Registration {
        let (answer, done) = pending(Some(Arc::clone(&self.notifier)));
        let mut state = self.lock();
        if !state.nodes.contains_key(device_id) && state.nodes.len() >= MAX_NODES {
            drop(state);
            done.complete(Err(HubError::Overloaded("node registry is full")));
            return answer;
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
        state.nodes_dirty = false;
        let snapshot = registry_json(&state);
        drop(state);
        self.notifier.notify();
        match &self.registry {
            Some(docs) => docs.put(
                &self.registry_key,
                snapshot.into(),
                None,
                Box::new(move |result| {
                    done.complete(result.map(drop).map_err(|e| HubError::Store(e.to_string())))
                }),
            ),
            None => done.complete(Ok(())),
        }
        answer
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

    /// Hands presence updates (last seen) to the store if there are any; the maintenance thread
    /// calls it every few seconds. A failed write is retried next time.
    pub fn flush(self: &Arc<Self>) {
        let Some(docs) = &self.registry else { return };
        let snapshot = {
            let mut state = self.lock();
            if !state.nodes_dirty {
                return;
            }
            state.nodes_dirty = false;
            registry_json(&state)
        };
        let hub = Arc::clone(self);
        docs.put(
            &self.registry_key,
            snapshot.into(),
            None,
            Box::new(move |result| {
                if let Err(e) = result {
                    tracing::error!(error = %e, "cannot save node presence; will retry");
                    hub.lock().nodes_dirty = true;
                }
            }),
        );
    }

    /// Joins the hub to the other gateways of a cluster (once).
    pub fn join(self: &Arc<Self>, peers: Arc<dyn super::peers::Peers>) {
        if self.peers.set(Arc::clone(&peers)).is_ok() {
            peers.attach(Arc::clone(self));
        }
    }

    /// The other gateways of the cluster this hub joined, if any.
    pub fn peers(&self) -> Option<Arc<dyn super::peers::Peers>> {
        self.peers.get().cloned()
    }

    /// The other gateway holding `device_id` when this one does not: its name and the way to
    /// reach it.
    pub fn remote(&self, device_id: &str) -> Option<(Arc<dyn super::peers::Peers>, String)> {
        let now_ms = crate::store::unix_ms(std::time::SystemTime::now());
        let here = self.lock().nodes.get(device_id).is_some_and(|n| {
            now_ms.saturating_sub(n.last_seen_at_unix_ms) < PRESENCE_WINDOW.as_millis() as u64
        });
        if here {
            return None;
        }
        let peers = self.peers.get()?;
        let gateway = peers.holder(device_id)?;
        Some((Arc::clone(peers), gateway))
    }

    /// Every node of the fleet: those registered here, and those other gateways of a cluster
    /// hold now (which this gateway reaches through them).
    pub fn fleet_nodes(&self) -> Vec<NodeRecord> {
        let mut nodes = self.nodes();
        if let Some(peers) = self.peers.get() {
            for remote in peers.nodes() {
                match nodes.iter_mut().find(|n| n.device_id == remote.device_id) {
                    Some(local) if local.last_seen_at_unix_ms >= remote.last_seen_at_unix_ms => {}
                    Some(local) => *local = remote,
                    None => nodes.push(remote),
                }
            }
        }
        nodes
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
}

/// The registry as stored: every node, by device ID.
fn registry_json(state: &HubState) -> Vec<u8> {
    let nodes: Vec<&NodeRecord> = state.nodes.values().collect();
    serde_json::to_vec_pretty(&nodes).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{FileDocStore, LogService, MemoryEventLog};
    use palyra_proto::identity::trust::TrustSnapshot;
    use std::time::Duration;

    fn memory_log() -> Arc<dyn LogStore> {
        Arc::new(
            LogService::start(
                "test-events",
                Box::new(MemoryEventLog::new(1 << 20)),
                1 << 20,
            )
            .unwrap(),
        )
    }

    fn open(
        trust: Arc<TrustIndex>,
        docs: Option<Arc<dyn DocStore>>,
    ) -> Result<NodeHub, StoreError> {
        NodeHub::open(trust, memory_log(), docs, Arc::new(Notifier::new()))
    }

    fn hub() -> NodeHub {
        open(Arc::new(TrustIndex::new(&TrustSnapshot::default())), None).unwrap()
    }

    fn register(hub: &NodeHub, device: &str, caps: Vec<CapabilityRecord>, now_ms: u64) {
        hub.register(device, "linux-x86_64", caps, now_ms)
            .wait_blocking(Duration::from_secs(5))
            .expect("answered")
            .expect("registered");
    }

    #[test]
    fn dispatch_lifecycle_is_guarded() {
        let hub = hub();
        assert_eq!(
            hub.enqueue("dev", "echo", b"{}".to_vec(), 10),
            Err(HubError::NotRegistered)
        );
        register(&hub, "dev", Vec::new(), 1);
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
        register(&hub, "dev", Vec::new(), 1);
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
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        let hub = Arc::new(open(Arc::clone(&trust), Some(Arc::clone(&docs))).unwrap());
        let caps = vec![CapabilityRecord {
            name: "echo".into(),
            available: true,
            description: "echoes".into(),
            input_schema: None,
        }];
        register(&hub, "dev", caps.clone(), 5);
        hub.touch("dev", "node.heartbeat", 9);
        hub.flush();
        docs.close();
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        let again = open(Arc::clone(&trust), Some(docs)).unwrap();
        let node = again.node("dev").unwrap();
        assert_eq!(node.capabilities, caps);
        assert_eq!(node.registered_at_unix_ms, 5);
        assert_eq!(node.last_seen_at_unix_ms, 9);
        assert_eq!(node.last_event_name, "node.heartbeat");
        std::fs::write(&path, b"{not json").unwrap();
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        assert!(open(Arc::new(TrustIndex::default()), Some(docs)).is_err());
    }
}
