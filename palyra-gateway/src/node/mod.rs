//! The daemon's node-plane assembly, shared by both drivers: state directory layout, identity
//! (CA, server certificate with renewal, live trust index) and the event log.
//!
//! ```text
//! STATE/identity/   CA, server certificate, trust.json (see `store::IdentityDir`)
//! STATE/events/     the durable event log (see `store::FileEventLog`)
//! STATE/nodes.json  registered nodes (see `hub::NodeHub`)
//! STATE/endpoints.json   bound addresses, written once listening
//! ```

pub mod hub;
pub mod peers;
pub mod service;

use crate::enroll::EnrollmentStore;
use crate::notify::Notifier;
use crate::store::{
    DocStore, EventBatch, FileEventLog, FileEventLogConfig, IdentityDir, IdentityError, LogService,
    LogStore, NewEvent, StoreError, TrustRecords,
};
use palyra_proto::identity::cert::ServerKeyKind;
use palyra_proto::identity::trust::TrustIndex;
use palyra_proto::node::log::LogUnavailable;
use palyra_proto::quic::server::{NodeServer, NodeServerConfig, ServerError, ServerLimits};
use palyra_proto::quic::tls::{self, ServerCertSlot, TlsError};
use palyra_proto::quic::{ServerEvent, StreamKey};
use rand_core::CryptoRngCore;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Errors assembling the node plane.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Identity state could not be loaded or created.
    #[error("identity state: {0}")]
    Identity(#[from] IdentityError),
    /// The event log could not be opened.
    #[error("event log: {0}")]
    Store(#[from] StoreError),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC server could not be created.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// Options of the node plane.
#[derive(Debug, Clone)]
pub struct NodePlaneOptions {
    /// Extra host names or IP addresses for the server certificate.
    pub hosts: Vec<String>,
    /// Whether client certificates are mandatory.
    pub mtls_required: bool,
    /// Connection, stream and frame limits.
    pub limits: ServerLimits,
    /// Event log sizes and retention.
    pub log: FileEventLogConfig,
    /// Lifetime of the server certificate; it is renewed when a third of it is left.
    pub server_cert_validity: Duration,
    /// The document the node registry is kept in (one per gateway when gateways share a store).
    pub registry_key: String,
}

impl Default for NodePlaneOptions {
    fn default() -> Self {
        Self {
            hosts: Vec::new(),
            mtls_required: true,
            limits: ServerLimits::default(),
            log: FileEventLogConfig::default(),
            server_cert_validity: Duration::from_secs(30 * 24 * 3600),
            registry_key: hub::REGISTRY_KEY.into(),
        }
    }
}

/// One server certificate in use: its key kind, the live slot handshakes read, its end of validity.
struct ServedCert {
    kind: ServerKeyKind,
    slot: Arc<ServerCertSlot>,
    not_after: SystemTime,
}

/// The gateway's live identity: trust index kept in sync with `trust.json`, and the server
/// certificates (Ed25519 for QUIC, ECDSA P-256 for TCP listeners) renewed in place. Shared: the
/// maintenance thread renews and reloads while listeners read the slots and the index.
pub struct GatewayIdentity {
    ids: IdentityDir,
    records: Arc<dyn TrustRecords>,
    trust: Arc<TrustIndex>,
    slots: [Arc<ServerCertSlot>; 2],
    ca_der: Vec<u8>,
    hosts: Vec<String>,
    server_cert_validity: Duration,
    state: std::sync::Mutex<IdentityState>,
}

/// What renewal and reloading change.
struct IdentityState {
    served: [ServedCert; 2],
    trust_stamp: Option<(SystemTime, u64)>,
}

/// Loads (or issues) the server certificate of `kind`; handshakes present it with the CA
/// certificate after it, so a device that pins the CA's key (pairing invites) can verify the
/// chain before it has the CA.
fn load_server_cert(
    ids: &IdentityDir,
    ca_der: &[u8],
    rng: &mut impl CryptoRngCore,
    now: SystemTime,
    kind: ServerKeyKind,
    hosts: &[String],
    validity: Duration,
) -> Result<(Arc<rustls::sign::CertifiedKey>, SystemTime), GatewayError> {
    let server = ids.load_or_issue_server_cert(rng, now, kind, hosts, validity, validity / 3)?;
    let key = tls::certified_key(
        vec![server.cert.der.clone(), ca_der.to_vec()],
        server.key.pkcs8_der().map_err(IdentityError::from)?,
    )?;
    Ok((key, server.cert.not_after))
}

impl GatewayIdentity {
    /// Loads (creating on first start) the CA, the server certificates and the trust index
    /// (from the directory's trust file).
    pub fn open(
        dir: &Path,
        hosts: &[String],
        server_cert_validity: Duration,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
    ) -> Result<Self, GatewayError> {
        Self::open_with(dir, None, hosts, server_cert_validity, rng, now)
    }

    /// As [`GatewayIdentity::open`], with the trust records in `records` (`None`: the
    /// directory's trust file).
    pub fn open_with(
        dir: &Path,
        records: Option<Arc<dyn TrustRecords>>,
        hosts: &[String],
        server_cert_validity: Duration,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
    ) -> Result<Self, GatewayError> {
        let ids = IdentityDir::open(dir)?;
        let records = records.unwrap_or_else(|| Arc::new(ids.clone()));
        let ca = ids.load_or_create_ca(rng, now)?;
        let mut load = |kind| -> Result<ServedCert, GatewayError> {
            let (key, not_after) = load_server_cert(
                &ids,
                ca.cert_der(),
                rng,
                now,
                kind,
                hosts,
                server_cert_validity,
            )?;
            Ok(ServedCert {
                kind,
                slot: ServerCertSlot::new(key),
                not_after,
            })
        };
        let served = [
            load(ServerKeyKind::Ed25519)?,
            load(ServerKeyKind::EcdsaP256)?,
        ];
        let trust_stamp = records.trust_stamp();
        let trust = Arc::new(TrustIndex::new(&records.load_trust()?));
        Ok(Self {
            ca_der: ca.cert_der().to_vec(),
            slots: [Arc::clone(&served[0].slot), Arc::clone(&served[1].slot)],
            state: std::sync::Mutex::new(IdentityState {
                served,
                trust_stamp,
            }),
            trust,
            hosts: hosts.to_vec(),
            server_cert_validity,
            ids,
            records,
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IdentityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The gateway CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// Where the trust records live.
    pub fn records(&self) -> Arc<dyn TrustRecords> {
        Arc::clone(&self.records)
    }

    /// The live trust index.
    pub fn trust(&self) -> Arc<TrustIndex> {
        Arc::clone(&self.trust)
    }

    /// The Ed25519 server certificate slot (QUIC node plane).
    pub fn cert_slot(&self) -> Arc<ServerCertSlot> {
        Arc::clone(&self.slots[0])
    }

    /// The ECDSA P-256 server certificate slot (TCP listeners: node TLS, gateway TLS).
    pub fn tcp_cert_slot(&self) -> Arc<ServerCertSlot> {
        Arc::clone(&self.slots[1])
    }

    /// End of validity of the Ed25519 server certificate in use.
    pub fn server_cert_not_after(&self) -> SystemTime {
        self.state().served[0].not_after
    }

    /// Confirms the rotated certificates seen in use since the last call (revoking what they
    /// superseded) in the trust file; the next [`GatewayIdentity::refresh_trust`] applies it.
    pub fn confirm_rotations(&self, now: SystemTime) -> Result<bool, GatewayError> {
        let seen = self.trust.take_confirmed();
        if seen.is_empty() {
            return Ok(false);
        }
        Ok(self.records.confirm_certs(now, &seen)?)
    }

    /// Reloads `trust.json` now (an offline command changed it); returns the index's new
    /// generation.
    pub fn reload_trust(&self) -> Result<u64, GatewayError> {
        let mut state = self.state();
        state.trust_stamp = self.records.trust_stamp();
        let snapshot = self.records.load_trust()?;
        self.trust.replace(&snapshot);
        Ok(self.trust.generation())
    }

    /// Reloads `trust.json` if it changed since the last look. Returns true if the index changed.
    pub fn refresh_trust(&self) -> Result<bool, GatewayError> {
        let mut state = self.state();
        let stamp = self.records.trust_stamp();
        if stamp == state.trust_stamp {
            return Ok(false);
        }
        let snapshot = self.records.load_trust()?;
        state.trust_stamp = stamp;
        self.trust.replace(&snapshot);
        Ok(true)
    }

    /// Renews each server certificate when a third of its lifetime is left; new handshakes use
    /// the new certificate at once. Returns true if any was renewed.
    pub fn renew_server_cert_if_due(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
    ) -> Result<bool, GatewayError> {
        let renew_before = self.server_cert_validity / 3;
        let mut renewed = false;
        let mut state = self.state();
        for served in &mut state.served {
            if now + renew_before < served.not_after {
                continue;
            }
            let (key, not_after) = load_server_cert(
                &self.ids,
                &self.ca_der,
                rng,
                now,
                served.kind,
                &self.hosts,
                self.server_cert_validity,
            )?;
            served.slot.replace(key);
            renewed |= not_after != served.not_after;
            served.not_after = not_after;
        }
        Ok(renewed)
    }
}

/// Everything the node plane's serve loop needs: the QUIC machine and what it answers from.
pub struct NodePlane {
    /// The QUIC server machine.
    pub server: NodeServer,
    /// The live identity (shared with the maintenance thread).
    pub identity: Arc<GatewayIdentity>,
    /// State shared with the node TLS listener (registry, capability queue, the event log).
    pub hub: Arc<hub::NodeHub>,
    /// TLS configuration of the node TCP listener (NodeService).
    pub tcp_tls: Arc<rustls::ServerConfig>,
    /// Wall time for the machine (event timestamps, health answers); the system clock.
    pub clock: crate::util::WallClock,
    /// Completed log work for the machine, filled on the log's thread.
    inbox: Arc<std::sync::Mutex<Vec<LogOutcome>>>,
    /// Wakes the serve loop: log work completed, trust changed.
    wake: Arc<Notifier>,
    maintenance: Option<Maintenance>,
    /// Refused connections are logged at most once a second (a flood cannot fill the log).
    refusals: crate::util::throttle::Throttle,
}

/// Log work the machine asked for, completed.
enum LogOutcome {
    Appended(StreamKey, Result<u64, LogUnavailable>),
    Read(StreamKey, Result<EventBatch, LogUnavailable>),
}

fn unavailable(e: StoreError) -> LogUnavailable {
    LogUnavailable(e.to_string())
}

impl NodePlane {
    /// The notifiers the serve loop waits on besides its socket and timer: completed log work and
    /// trust changes, and the log growing (following streams read on).
    pub fn wakers(&self) -> [Arc<Notifier>; 2] {
        [Arc::clone(&self.wake), self.hub.log().notifier()]
    }

    /// Carries out what the machine asked for and hands it what completed: publishes go to the
    /// event log as one batch, reads are served from memory (or from the log's thread), finished
    /// work goes back to the machine, and trust changes and log growth reach its streams. Logs
    /// what is worth logging.
    pub fn pump(&mut self, now: Instant) {
        self.server.handle_trust_change(now);
        loop {
            let outcomes = std::mem::take(&mut *self.inbox());
            let any = !outcomes.is_empty();
            for outcome in outcomes {
                match outcome {
                    LogOutcome::Appended(key, result) => {
                        self.server.complete_append(now, key, result)
                    }
                    LogOutcome::Read(key, result) => self.server.handle_events(now, key, result),
                }
            }
            if !self.serve_requests(now) && !any {
                break;
            }
        }
    }

    /// Tells following streams that the event log grew.
    pub fn log_grown(&mut self, now: Instant) {
        self.server.handle_log_grown(now);
        self.pump(now);
    }

    fn inbox(&self) -> std::sync::MutexGuard<'_, Vec<LogOutcome>> {
        self.inbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drains the machine's events; returns whether it asked for anything.
    fn serve_requests(&mut self, now: Instant) -> bool {
        let mut appends: Vec<(StreamKey, NewEvent)> = Vec::new();
        let mut asked = false;
        while let Some(event) = self.server.poll_event() {
            match event {
                ServerEvent::Append { stream, event } => {
                    asked = true;
                    appends.push((stream, event));
                }
                ServerEvent::ReadEvents {
                    stream,
                    after,
                    max_events,
                    max_bytes,
                } => {
                    asked = true;
                    let log = self.hub.log();
                    match log.read_cached(after, max_events, max_bytes) {
                        Some(batch) => self.server.handle_events(now, stream, Ok(batch)),
                        None => {
                            let (inbox, wake) = (Arc::clone(&self.inbox), Arc::clone(&self.wake));
                            log.read(
                                after,
                                max_events,
                                max_bytes,
                                Box::new(move |result| {
                                    let outcome =
                                        LogOutcome::Read(stream, result.map_err(unavailable));
                                    inbox
                                        .lock()
                                        .unwrap_or_else(|p| p.into_inner())
                                        .push(outcome);
                                    wake.notify();
                                }),
                            );
                        }
                    }
                }
                ServerEvent::Connected {
                    device_id: Some(ref device),
                    ..
                } => {
                    self.hub.quic_connection(device, true);
                    log_server_event(&event);
                }
                ServerEvent::Closed {
                    device_id: Some(ref device),
                    ..
                } => {
                    self.hub.quic_connection(device, false);
                    log_server_event(&event);
                }
                ServerEvent::Refused { remote, reason } => {
                    if let Some(count) = self.refusals.hit(now) {
                        tracing::warn!(%remote, %reason, count, "node connections refused");
                    }
                }
                other => log_server_event(&other),
            }
        }
        if !appends.is_empty() {
            let (keys, events): (Vec<StreamKey>, Vec<NewEvent>) = appends.into_iter().unzip();
            let (inbox, wake) = (Arc::clone(&self.inbox), Arc::clone(&self.wake));
            self.hub.log().append(
                events,
                None,
                Box::new(move |result| {
                    let mut inbox = inbox.lock().unwrap_or_else(|p| p.into_inner());
                    for (i, key) in keys.into_iter().enumerate() {
                        let seq = match &result {
                            Ok(seqs) => seqs
                                .get(i)
                                .copied()
                                .ok_or_else(|| LogUnavailable("the log lost an event".into())),
                            Err(e) => Err(unavailable(e.clone())),
                        };
                        inbox.push(LogOutcome::Appended(key, seq));
                    }
                    drop(inbox);
                    wake.notify();
                }),
            );
        }
        asked
    }

    /// Starts a graceful shutdown of the machine.
    pub fn shutdown(&mut self, now: Instant) {
        self.server.close(now);
    }

    /// Stops the maintenance thread.
    pub fn stop_maintenance(&mut self) {
        self.maintenance.take();
    }
}

/// The periodic work that touches files, on its own thread: reload the trust file (offline
/// revocations, hand edits), confirm rotated certificates in use, renew server certificates,
/// save node presence.
struct Maintenance {
    stop: Arc<crate::util::stop::Stop>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Maintenance {
    fn start(
        identity: Arc<GatewayIdentity>,
        hub: Arc<hub::NodeHub>,
        wake: Arc<Notifier>,
    ) -> std::io::Result<Self> {
        let stop = crate::util::stop::Stop::new();
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("palyra-maintenance".into())
            .spawn(move || {
                let mut next_flush = Instant::now() + REGISTRY_FLUSH_INTERVAL;
                while !stopped.wait_blocking(MAINTENANCE_INTERVAL) {
                    maintain(&identity, &hub, &wake);
                    if Instant::now() >= next_flush {
                        next_flush = Instant::now() + REGISTRY_FLUSH_INTERVAL;
                        hub.flush();
                    }
                }
                hub.flush();
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        self.stop.raise();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One round of maintenance. Failures are logged and retried next time; the previous state stays
/// in force.
fn maintain(identity: &GatewayIdentity, hub: &hub::NodeHub, wake: &Notifier) {
    let wall = SystemTime::now();
    match identity.confirm_rotations(wall) {
        Ok(true) => tracing::info!("rotated certificates in use; their predecessors are revoked"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "cannot confirm rotated certificates; will retry"),
    }
    match identity.refresh_trust() {
        Ok(true) => {
            tracing::info!("trust file changed; re-checking open connections");
            hub.trust_changed();
            wake.notify();
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot reload trust file; keeping the previous trust index")
        }
    }
    match identity.renew_server_cert_if_due(&mut rand_core::OsRng, wall) {
        Ok(true) => tracing::info!("server certificate renewed"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "server certificate renewal failed; will retry"),
    }
}

/// How often node presence (last seen) is saved.
pub const REGISTRY_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// How often the maintenance thread looks at the trust file: revocations made offline take
/// effect within this (plus a round trip), well inside the one-second promise.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(250);

/// The node-plane event log as files under `state_dir/events`, driven by its own thread (a torn
/// tail left by a crash is cut, and said so).
pub fn open_file_log(
    state_dir: &Path,
    options: &NodePlaneOptions,
) -> Result<Arc<dyn LogStore>, StoreError> {
    let file_log = FileEventLog::open(state_dir.join("events"), options.log)?;
    let recovery = file_log.recovery();
    if recovery.torn_bytes > 0 {
        tracing::warn!(
            torn_bytes = recovery.torn_bytes,
            "event log had a torn tail after a crash; it was cut"
        );
    }
    Ok(Arc::new(LogService::start(
        "palyra-events",
        Box::new(file_log),
        options.log.cache_bytes,
    )?))
}

/// Opens the identity under `state_dir` and assembles the node plane over the event log `log`,
/// the documents `docs` and the trust records `records` (`None`: the identity directory's trust
/// file): the hub (registry), the QUIC machine, the maintenance thread and the control socket.
pub fn open_node_plane(
    state_dir: &Path,
    options: &NodePlaneOptions,
    docs: Arc<dyn DocStore>,
    log: Arc<dyn LogStore>,
    records: Option<Arc<dyn TrustRecords>>,
    rng: &mut impl CryptoRngCore,
    now: SystemTime,
) -> Result<NodePlane, GatewayError> {
    std::fs::create_dir_all(state_dir)
        .map_err(StoreError::io(format!("creating {}", state_dir.display())))?;
    let identity = Arc::new(GatewayIdentity::open_with(
        &state_dir.join("identity"),
        records,
        &options.hosts,
        options.server_cert_validity,
        rng,
        now,
    )?);
    let plane = open_node_plane_with(identity, log, docs, options, rng)?;
    #[cfg(unix)]
    {
        let (identity, hub, wake) = (
            Arc::clone(&plane.identity),
            Arc::clone(&plane.hub),
            Arc::clone(&plane.wake),
        );
        let reload: crate::control::ReloadTrust = Arc::new(move || {
            let generation = identity.reload_trust().map_err(|e| e.to_string())?;
            tracing::info!("trust file changed offline; re-checking open connections");
            hub.trust_changed();
            wake.notify();
            Ok(generation)
        });
        if let Err(e) = crate::control::serve(state_dir, reload) {
            tracing::warn!(error = %e, "no control socket: offline certificate changes take effect within a maintenance interval");
        }
    }
    Ok(plane)
}

/// Assembles the node plane over an opened identity and the given stores (tests inject slow or
/// in-memory ones).
pub fn open_node_plane_with(
    identity: Arc<GatewayIdentity>,
    log: Arc<dyn LogStore>,
    docs: Arc<dyn DocStore>,
    options: &NodePlaneOptions,
    rng: &mut impl CryptoRngCore,
) -> Result<NodePlane, GatewayError> {
    let tls = tls::server_config(
        identity.ca_der(),
        identity.cert_slot(),
        identity.trust(),
        options.mtls_required,
    )?;
    let server = NodeServer::new(
        NodeServerConfig {
            tls: Arc::new(tls),
            limits: options.limits,
            mtls_required: options.mtls_required,
        },
        identity.trust(),
        rng,
    )?;
    let wake = Arc::new(Notifier::new());
    let hub = Arc::new(hub::NodeHub::open_keyed(
        identity.trust(),
        log,
        Some(docs),
        &options.registry_key,
        Arc::clone(&wake),
    )?);
    let tcp_tls = Arc::new(tls::node_tcp_server_config(
        identity.ca_der(),
        identity.tcp_cert_slot(),
    )?);
    // Another gateway's trust change (a revocation, a pairing) takes effect here at once.
    let (watched, watched_hub, watched_wake) = (
        Arc::downgrade(&identity),
        Arc::downgrade(&hub),
        Arc::downgrade(&wake),
    );
    identity.records().watch(Arc::new(move || {
        let (Some(identity), Some(hub), Some(wake)) = (
            watched.upgrade(),
            watched_hub.upgrade(),
            watched_wake.upgrade(),
        ) else {
            return;
        };
        match identity.refresh_trust() {
            Ok(true) => {
                tracing::info!(
                    "trust records changed on another gateway; re-checking open connections"
                );
                hub.trust_changed();
                wake.notify();
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot reload the trust records"),
        }
    }));
    let maintenance =
        Maintenance::start(Arc::clone(&identity), Arc::clone(&hub), Arc::clone(&wake))
            .map_err(StoreError::io("starting the maintenance thread"))?;
    Ok(NodePlane {
        server,
        identity,
        hub,
        tcp_tls,
        clock: crate::util::system_clock(),
        inbox: Arc::default(),
        wake,
        maintenance: Some(maintenance),
        refusals: crate::util::throttle::Throttle::new(Duration::from_secs(1)),
    })
}

/// The daemon's enrollment: the gateway CA under `state_dir/identity`, the trust records
/// `records` (`None`: that directory's trust file) with their own thread keeping `hub`'s live
/// index current and waking its listeners, and the state in `docs`. Returns the store and its
/// trust service.
pub fn open_enrollment(
    state_dir: &Path,
    records: Option<Arc<dyn TrustRecords>>,
    docs: Arc<dyn DocStore>,
    config: palyra_proto::enroll::gateway::GatewayConfig,
    hub: &Arc<hub::NodeHub>,
    random: crate::util::RandomFill,
) -> Result<(Arc<EnrollmentStore>, Arc<crate::trust::TrustService>), IdentityError> {
    let ids = IdentityDir::open(state_dir.join("identity"))?;
    let ca = ids
        .load_ca()?
        .ok_or_else(|| StoreError::Corrupt("the gateway has no CA".into()))?;
    let changed = Arc::clone(hub);
    let records = records.unwrap_or_else(|| Arc::new(ids));
    let trust = Arc::new(crate::trust::TrustService::start(
        records,
        hub.trust_index(),
        Arc::new(move || changed.trust_changed()),
    )?);
    let store =
        EnrollmentStore::open(docs, config, ca, Arc::clone(&trust), random, hub.notifier())?;
    Ok((store, trust))
}

/// Writes `STATE/endpoints.json` (`{"node_quic":"127.0.0.1:54321", ...}`) atomically.
pub fn write_endpoints(
    state_dir: &Path,
    endpoints: &BTreeMap<&str, String>,
) -> Result<PathBuf, StoreError> {
    let path = state_dir.join("endpoints.json");
    crate::store::write_json(&path, endpoints)?;
    Ok(path)
}

/// Logs a node-plane server event with `tracing`.
pub fn log_server_event(event: &palyra_proto::quic::ServerEvent) {
    use palyra_proto::quic::ServerEvent as E;
    match event {
        E::Connected { remote, device_id } => {
            tracing::info!(%remote, device_id = device_id.as_deref().unwrap_or("-"), "node connected")
        }
        E::Closed {
            remote,
            device_id,
            reason,
        } => {
            tracing::info!(%remote, device_id = device_id.as_deref().unwrap_or("-"), %reason, "node connection closed")
        }
        E::Refused { remote, reason } => {
            tracing::warn!(%remote, %reason, "node connection refused")
        }
        E::RequestRefused {
            device_id,
            code,
            message,
        } => {
            tracing::debug!(device_id = device_id.as_deref().unwrap_or("-"), %code, %message, "node request refused")
        }
        E::Append { .. } | E::ReadEvents { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn server_certificate_is_renewed_in_place_when_a_third_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let now = SystemTime::now();
        let validity = Duration::from_secs(3 * 3600);
        let hosts = vec!["gw.example.net".to_owned()];
        let identity = GatewayIdentity::open(dir.path(), &hosts, validity, &mut rng, now).unwrap();
        let slot = identity.cert_slot();
        let first = identity.server_cert_not_after();
        let first_der = slot.current_cert_der();
        // Two thirds of the lifetime left: nothing to do.
        assert!(!identity
            .renew_server_cert_if_due(&mut rng, now + Duration::from_secs(3600))
            .unwrap());
        // Less than a third left: a new certificate replaces the old one in the live slot.
        let later = now + Duration::from_secs(2 * 3600 + 60);
        assert!(identity.renew_server_cert_if_due(&mut rng, later).unwrap());
        assert!(identity.server_cert_not_after() > first);
        let served = slot.current_cert_der();
        assert_ne!(served, first_der);
        assert_eq!(
            palyra_proto::identity::cert::cert_not_after(&served).unwrap(),
            identity.server_cert_not_after()
        );
        // A restart reuses the renewed certificate instead of minting another one.
        let reopened =
            GatewayIdentity::open(dir.path(), &hosts, validity, &mut rng, later).unwrap();
        assert_eq!(
            reopened.server_cert_not_after(),
            identity.server_cert_not_after()
        );
    }
}
