//! The daemon's assembly, shared by `palyrad` (tokio) and `palyrad-smol` (smol): the stores,
//! the identity, the services of every listener, and [`Daemon::serve`], which binds them on a
//! runtime (the node plane first, the node TLS listener on its port number, the operator plane
//! once the address invites name is known) and records the bound addresses.
//!
//! ```text
//! Stores::files ─▶ Daemon::open_with ─▶ Daemon::serve(rt) ─▶ endpoints.json ─▶ Running::shutdown
//! ```

use crate::access::{tokens::TokenStore, Authenticator};
use crate::enroll::EnrollmentStore;
use crate::grpc::DaemonInfo;
use crate::grpc::GrpcListener;
use crate::node::service::{node_router, MoreServices, WallClock};
use crate::node::{open_node_plane, GatewayError, NodePlane, NodePlaneOptions};
use crate::operator::pairing::PairingAdmin;
use crate::operator::{auth::AdminAuth, Admin, Operator, OperatorAcceptor, RandomFill};
use crate::run::engine::{RunEngine, RunsConfig};
use crate::run::sessions::SessionStore;
use crate::runtime::Rt;
use crate::serve::node_plane::NodePlaneHandle;
use crate::serve::tcp::{ListenerLimits, TcpHandle};
use crate::store::unix_ms;
use crate::store::{
    DocStore, FileDocStore, LogStore, MeasuredDocs, MeasuredLog, StoreMetrics, TrustRecords,
};
use crate::trust::TrustService;
use crate::util::stop::Stop;
use palyra_proto::enroll::gateway::GatewayConfig;
use palyra_proto::identity::cert;
use palyra_proto::quic::tls;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// What a daemon is configured with.
#[derive(Clone)]
pub struct DaemonSettings {
    /// State directory.
    pub state_dir: PathBuf,
    /// Node plane options (hosts, limits, mTLS).
    pub node: NodePlaneOptions,
    /// Serve the gateway gRPC listener over TLS.
    pub grpc_tls: bool,
    /// Serve the operator listener over TLS.
    pub http_tls: bool,
    /// Pairing: device certificate lifetime, auto-approval.
    pub enrollment: GatewayConfig,
    /// Address written into pairing invites (default: the node TLS listener's).
    pub advertise_addr: Option<String>,
    /// Extra origins allowed to use the console.
    pub console_origins: Vec<String>,
    /// The admin token given by the environment (`PALYRA_ADMIN_TOKEN`), if any.
    pub admin_token: Option<String>,
    /// Daemon version.
    pub version: String,
    /// Git hash (or `unknown`).
    pub git_hash: String,
    /// Agent runs: the model provider and tool policy.
    pub runs: RunsConfig,
    /// The OpenAI-compatible API's limits and policy.
    pub openai: crate::operator::openai::OpenAiConfig,
    /// The browser daemon runs' browser tools use.
    pub browser: Option<crate::config::BrowserConfig>,
}

impl std::fmt::Debug for DaemonSettings {
    /// Everything but the admin token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonSettings")
            .field("state_dir", &self.state_dir)
            .field("grpc_tls", &self.grpc_tls)
            .field("http_tls", &self.http_tls)
            .field("enrollment", &self.enrollment)
            .field("advertise_addr", &self.advertise_addr)
            .field("console_origins", &self.console_origins)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// Why a daemon could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The node plane (identity, event log, QUIC server) could not be opened.
    #[error("cannot open state directory {dir}: {source}")]
    Plane {
        /// The state directory.
        dir: PathBuf,
        /// The cause.
        source: GatewayError,
    },
    /// Another part could not be set up.
    #[error("{what}: {reason}")]
    Part {
        /// The part.
        what: &'static str,
        /// The cause.
        reason: String,
    },
}

/// The shared document naming the CA every gateway of a cluster signs with.
pub const CLUSTER_CA_KEY: &str = "identity/cluster-ca.json";

/// Refuses to serve a cluster with another CA than its other gateways' (their nodes would not
/// be trusted here, nor this gateway's there): the first gateway records its CA's fingerprint,
/// every later one must have the same.
fn check_cluster_ca(docs: &dyn DocStore, fingerprint: &str) -> Result<(), DaemonError> {
    let mismatch = |theirs: &str| DaemonError::Part {
        what: "cluster CA",
        reason: format!(
            "this gateway's CA (sha256:{fingerprint}) is not the one the cluster's gateways use \
             (sha256:{theirs}); copy identity/ca.crt.pem and identity/ca.key.pem of the first \
             gateway into this state directory before its first start (docs/cluster.md)"
        ),
    };
    for _ in 0..3 {
        let current = docs.get(CLUSTER_CA_KEY).map_err(part("cluster CA"))?;
        if let Some(doc) = &current {
            let value: serde_json::Value = serde_json::from_slice(&doc.value).unwrap_or_default();
            return match value["ca_spki_sha256"].as_str() {
                Some(theirs) if theirs == fingerprint => Ok(()),
                Some(theirs) => Err(mismatch(theirs)),
                None => Err(mismatch("unreadable")),
            };
        }
        let body = serde_json::json!({ "ca_spki_sha256": fingerprint }).to_string();
        let (answer, done) = crate::store::pending(None);
        docs.put(
            CLUSTER_CA_KEY,
            body.into(),
            Some(0),
            Box::new(move |r| done.complete(r)),
        );
        match answer.wait_blocking(std::time::Duration::from_secs(30)) {
            Some(Ok(_)) => return Ok(()),
            // Another gateway recorded its CA first: compare with it.
            Some(Err(crate::store::StoreError::Conflict { .. })) => continue,
            Some(Err(e)) => return Err(part("cluster CA")(e)),
            None => return Err(part("cluster CA")("no answer from the store in 30 s")),
        }
    }
    Err(part("cluster CA")("the record kept changing"))
}

fn part<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> DaemonError {
    move |e| DaemonError::Part {
        what,
        reason: e.to_string(),
    }
}

/// The stores a daemon keeps its state in: small documents, the node-plane event log and the
/// console log. [`Stores::files`] is the embedded default; a networked backend (or a test's
/// wrapper) provides the same interfaces.
#[derive(Clone)]
pub struct Stores {
    /// Documents (node registry, enrollment, webhooks, console state and sessions).
    pub docs: Arc<dyn DocStore>,
    /// The node-plane event log.
    pub events: Arc<dyn LogStore>,
    /// The console log.
    pub console: Arc<dyn LogStore>,
    /// The run tape.
    pub runs: Arc<dyn LogStore>,
    /// The trust records, when they are not the identity directory's trust file.
    pub trust: Option<Arc<dyn TrustRecords>>,
    /// The other gateways sharing these stores, if any.
    pub peers: Option<Arc<dyn crate::node::peers::Peers>>,
}

impl Stores {
    /// The same stores, their writes and slow reads measured into `metrics`.
    pub fn measured(self, metrics: &StoreMetrics) -> Self {
        Self {
            docs: MeasuredDocs::wrap(self.docs, metrics),
            events: MeasuredLog::wrap("events", self.events, metrics),
            console: MeasuredLog::wrap("console", self.console, metrics),
            runs: MeasuredLog::wrap("runs", self.runs, metrics),
            ..self
        }
    }

    /// The file-backed stores under `state_dir` (each on its own thread).
    pub fn files(state_dir: &Path, options: &NodePlaneOptions) -> Result<Self, DaemonError> {
        let plane = |source: crate::store::StoreError| DaemonError::Plane {
            dir: state_dir.to_owned(),
            source: source.into(),
        };
        Ok(Self {
            docs: Arc::new(FileDocStore::open(state_dir).map_err(plane)?),
            events: crate::node::open_file_log(state_dir, options).map_err(plane)?,
            console: crate::console::open_file_log(state_dir).map_err(plane)?,
            runs: crate::run::tape::open_file_log(state_dir).map_err(plane)?,
            trust: None,
            peers: None,
        })
    }

    /// Waits until everything handed over is durable and stops the stores' threads.
    pub fn close(&self) {
        self.events.close();
        self.console.close();
        self.runs.close();
        self.docs.close();
    }
}

/// A daemon assembled and not yet bound.
pub struct Daemon {
    settings: DaemonSettings,
    /// The node plane, for the driver's QUIC loop (take it with `Option::take`).
    pub plane: Option<NodePlane>,
    /// The gateway gRPC listener (GetHealth, grpc.health.v1, reflection).
    pub gateway: GrpcListener,
    /// The node TLS listener (NodeService with the pairing RPCs).
    pub node: GrpcListener,
    /// The enrollment state.
    pub enrollment: Arc<EnrollmentStore>,
    /// Hex SHA-256 of the gateway CA's SubjectPublicKeyInfo (what devices pin).
    pub ca_fingerprint: String,
    /// The CA was created by this start.
    pub first_start: bool,
    /// An admin token generated by this start: show it once, never log it.
    pub new_admin_token: Option<String>,
    admin_auth: Arc<AdminAuth>,
    operator_built: bool,
    /// The API tokens.
    pub tokens: Arc<TokenStore>,
    /// The run engine.
    pub runs: Arc<RunEngine>,
    http_tls: Option<Arc<rustls::ServerConfig>>,
    hub: Arc<crate::node::hub::NodeHub>,
    stores: Stores,
    store_metrics: StoreMetrics,
    trust: Arc<TrustService>,
    clock: WallClock,
    random: RandomFill,
    started: Instant,
}

impl Daemon {
    /// Opens the state with the file-backed stores (see [`Daemon::open_with`]).
    pub fn open(
        settings: DaemonSettings,
        random: RandomFill,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, DaemonError> {
        let stores = Stores::files(&settings.state_dir, &settings.node)?;
        Self::open_with(settings, stores, random, rng)
    }

    /// Opens the state (identity, enrollment, admin token) over `stores` and builds the
    /// listeners' services. `random` fills buffers with OS randomness.
    pub fn open_with(
        settings: DaemonSettings,
        stores: Stores,
        random: RandomFill,
        rng: &mut impl rand_core::CryptoRngCore,
    ) -> Result<Self, DaemonError> {
        let started = Instant::now();
        let store_metrics = StoreMetrics::default();
        let stores = stores.measured(&store_metrics);
        let dir = settings.state_dir.clone();
        let first_start = !dir.join("identity/ca.crt.pem").exists();
        let docs = Arc::clone(&stores.docs);
        let plane = open_node_plane(
            &dir,
            &settings.node,
            Arc::clone(&docs),
            Arc::clone(&stores.events),
            stores.trust.clone(),
            rng,
            SystemTime::now(),
        )
        .map_err(|source| DaemonError::Plane {
            dir: dir.clone(),
            source,
        })?;
        let ca_fingerprint = cert::hex_fingerprint(
            &cert::cert_spki_fingerprint(plane.identity.ca_der()).map_err(part("gateway CA"))?,
        );
        let hub = Arc::clone(&plane.hub);
        if let Some(peers) = &stores.peers {
            check_cluster_ca(stores.docs.as_ref(), &ca_fingerprint)?;
            hub.join(Arc::clone(peers));
        }
        let tcp_config = |alpn: &[u8]| {
            tls::tcp_server_config(plane.identity.tcp_cert_slot(), alpn)
                .map(Arc::new)
                .map_err(part("TLS configuration"))
        };
        let gateway_tls = settings
            .grpc_tls
            .then(|| tcp_config(tls::ALPN_H2))
            .transpose()?;
        let http_tls = settings
            .http_tls
            .then(|| tcp_config(tls::ALPN_HTTP1))
            .transpose()?;
        let info = Arc::new(DaemonInfo {
            version: settings.version.clone(),
            git_hash: settings.git_hash.clone(),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            started,
        });
        let clock: WallClock = Arc::new(|| unix_ms(SystemTime::now()));
        let (enrollment, trust) = crate::node::open_enrollment(
            &dir,
            Some(plane.identity.records()),
            Arc::clone(&docs),
            settings.enrollment,
            &hub,
            Arc::clone(&random),
        )
        .map_err(part("enrollment state"))?;
        let (admin_auth, new_admin_token) =
            AdminAuth::load_or_create(&dir, settings.admin_token.as_deref(), rng)
                .map_err(part("admin token"))?;
        let admin_auth = Arc::new(admin_auth);
        let tokens = Arc::new(
            TokenStore::open(Arc::clone(&docs), Some(hub.notifier()))
                .map_err(part("API tokens"))?,
        );
        let auth = Arc::new(Authenticator::new(
            Arc::clone(&admin_auth),
            Arc::clone(&tokens),
            Arc::clone(&clock),
        ));
        let sessions = Arc::new(
            SessionStore::open(Arc::clone(&docs), Some(hub.notifier()))
                .map_err(part("sessions"))?,
        );
        let runs = RunEngine::open(
            Arc::clone(&stores.runs),
            sessions,
            Arc::clone(&hub),
            hub.notifier(),
            Arc::clone(&clock),
            settings.runs.clone(),
        )
        .map_err(part("run tape"))?;
        // Paired devices call the run services on the node TLS listener as node:<device_id>.
        let device_hub = Arc::clone(&hub);
        let node_auth = Arc::new(auth.with_devices(Arc::new(move |peer| {
            crate::node::service::authenticate(&device_hub, peer)
        })));
        let run_services = {
            let (info, runs) = (Arc::clone(&info), Arc::clone(&runs));
            MoreServices {
                names: vec![crate::run::service::GATEWAY, crate::run::service::APPROVALS],
                make: Arc::new(move || crate::run::service::run_services(&info, &runs, &node_auth)),
            }
        };
        let node = GrpcListener {
            tls: Some(Arc::clone(&plane.tcp_tls)),
            notifier: Some(hub.notifier()),
            ..GrpcListener::h2c(
                node_router(
                    Arc::clone(&hub),
                    Arc::clone(&clock),
                    Some(Arc::clone(&enrollment)),
                    Some(run_services),
                )
                .map_err(part("node services"))?,
            )
        };
        let gateway = GrpcListener {
            tls: gateway_tls,
            notifier: Some(hub.notifier()),
            ..GrpcListener::h2c(
                crate::run::service::gateway_router(info, Arc::clone(&runs), auth)
                    .map_err(part("gateway services"))?,
            )
        };
        Ok(Self {
            settings,
            plane: Some(plane),
            gateway,
            node,
            enrollment,
            ca_fingerprint,
            first_start,
            new_admin_token,
            admin_auth,
            operator_built: false,
            tokens,
            runs,
            http_tls,
            hub,
            stores,
            store_metrics,
            trust,
            clock,
            random,
            started,
        })
    }

    /// The operator plane (health, metrics, admin API with pairing, console), once the node TLS
    /// listener is bound at `node_tcp` (the address invites name unless one is advertised).
    /// Callable once.
    pub fn operator(&mut self, node_tcp: SocketAddr) -> Result<Arc<OperatorAcceptor>, DaemonError> {
        if std::mem::replace(&mut self.operator_built, true) {
            return Err(DaemonError::Part {
                what: "operator plane",
                reason: "already built".into(),
            });
        }
        let auth = Arc::clone(&self.admin_auth);
        let mut admin = Admin::open(
            Arc::clone(&self.stores.console),
            Arc::clone(&self.stores.docs),
            auth,
            Arc::clone(&self.hub),
            Arc::clone(&self.clock),
            Arc::clone(&self.random),
            self.settings.console_origins.clone(),
        )
        .map_err(part("operator-plane stores"))?;
        admin.pairing = Some(PairingAdmin::new(
            Arc::clone(&self.enrollment),
            self.settings.advertise_addr.as_deref(),
            node_tcp,
        ));
        admin.tokens = Some(Arc::clone(&self.tokens));
        admin.store_metrics = Some(self.store_metrics.clone());
        admin.runs = Some(Arc::clone(&self.runs));
        admin.openai = Some(crate::operator::openai::OpenAi::new(
            self.settings.openai.clone(),
            Arc::clone(&self.runs),
            Arc::clone(&self.tokens),
            Arc::clone(&self.clock),
        ));
        self.runs
            .set_surfaces(Arc::new(crate::console::RunSurfaces(Arc::clone(
                &admin.console,
            ))));
        let operator = Operator::daemon(
            self.settings.version.clone(),
            self.started,
            admin,
            self.http_tls.is_some(),
        );
        Ok(Arc::new(OperatorAcceptor {
            operator,
            config: Default::default(),
            tls: self.http_tls.clone(),
        }))
    }

    /// The node hub (registry, capability dispatch).
    pub fn hub(&self) -> &Arc<crate::node::hub::NodeHub> {
        &self.hub
    }

    /// The notifier that wakes operator connections (console stream) and node connections.
    pub fn notifier(&self) -> Arc<crate::notify::Notifier> {
        self.hub.notifier()
    }

    /// Records the bound addresses in `STATE/endpoints.json`; returns its path.
    pub fn write_endpoints(&self, bound: &Endpoints) -> Result<PathBuf, DaemonError> {
        let mut map = BTreeMap::new();
        map.insert("http", bound.http.to_string());
        map.insert("node_quic", bound.node_quic.to_string());
        map.insert("node_tcp", bound.node_tcp.to_string());
        map.insert("grpc", bound.grpc.to_string());
        crate::node::write_endpoints(&self.settings.state_dir, &map).map_err(part("endpoints.json"))
    }

    /// Waits until every write handed to the stores is durable, and stops their threads (after
    /// the listeners stopped).
    pub fn close_stores(&self) {
        self.trust.close();
        self.stores.close();
    }

    /// Binds every listener on `rt` (`limits` for the TCP ones) and records the bound addresses
    /// in `STATE/endpoints.json`: the node plane, the gateway gRPC listener, the node TLS listener
    /// on the QUIC socket's port number (another free one when that is taken and the configured
    /// port was 0), and the operator plane.
    pub fn serve(
        mut self,
        rt: &Rt,
        addrs: &ListenAddrs,
        limits: ListenerLimits,
    ) -> Result<Running, DaemonError> {
        let bind = |what: &'static str, addr: SocketAddr| {
            move |e: std::io::Error| DaemonError::Part {
                what,
                reason: format!("cannot bind {addr}: {e}"),
            }
        };
        let plane = self.plane.take().ok_or_else(|| DaemonError::Part {
            what: "node plane",
            reason: "already served".into(),
        })?;
        self.runs.set_runtime(Arc::clone(rt));
        if let Some(follow) = self.runs.follow(Arc::clone(rt)) {
            rt.spawn(follow);
        }
        #[cfg(unix)]
        if let Some(browser) = self.settings.browser.clone() {
            self.runs
                .set_browser(Arc::new(self.run_browser(rt, browser)?));
        }
        let node = NodePlaneHandle::start(rt, addrs.node, plane)
            .map_err(bind("the node plane (UDP)", addrs.node))?;
        let grpc = TcpHandle::start_with(rt, addrs.grpc, self.gateway.clone(), limits)
            .map_err(bind("the gateway gRPC listener", addrs.grpc))?;
        let node_tcp = match TcpHandle::start_with(rt, node.local_addr, self.node.clone(), limits) {
            Err(e) if addrs.node.port() == 0 => {
                tracing::debug!(error = %e, "TCP port of the QUIC socket is taken; using another");
                let any = SocketAddr::new(node.local_addr.ip(), 0);
                TcpHandle::start_with(rt, any, self.node.clone(), limits)
                    .map_err(bind("the node TLS listener", any))?
            }
            other => other.map_err(bind("the node TLS listener", node.local_addr))?,
        };
        let operator = self.operator(node_tcp.local_addr)?;
        let console = operator
            .operator
            .admin
            .as_ref()
            .map(|admin| Arc::clone(&admin.console));
        if let Some(follow) = console.as_ref().and_then(|hub| hub.follow(Arc::clone(rt))) {
            rt.spawn(follow);
        }
        let console_runs = Stop::new();
        if let (Some(hub), true) = (&console, self.runs.has_provider()) {
            crate::console::runs::serve(
                rt,
                Arc::clone(hub),
                Arc::clone(&self.runs),
                Arc::clone(&console_runs),
            );
        }
        let http = TcpHandle::serve_with(rt, addrs.http, operator, Some(self.notifier()), limits)
            .map_err(bind("the operator listener (HTTP)", addrs.http))?;
        let endpoints = Endpoints {
            http: http.local_addr,
            node_quic: node.local_addr,
            node_tcp: node_tcp.local_addr,
            grpc: grpc.local_addr,
        };
        let endpoints_path = self.write_endpoints(&endpoints)?;
        Ok(Running {
            daemon: self,
            endpoints,
            endpoints_path,
            node,
            grpc,
            node_tcp,
            http,
            console,
            console_runs,
        })
    }

    #[cfg(unix)]
    fn run_browser(
        &self,
        rt: &Rt,
        browser: crate::config::BrowserConfig,
    ) -> Result<crate::browser_link::RunBrowser, DaemonError> {
        let part = |reason: String| DaemonError::Part {
            what: "the browser link ([browser])",
            reason,
        };
        let ca_der = match (&browser.ca_file, browser.h2c) {
            (_, true) => None,
            (Some(path), false) => {
                let pem = std::fs::read_to_string(path)
                    .map_err(|e| part(format!("{}: {e}", path.display())))?;
                Some(
                    palyra_proto::identity::cert::cert_pem_to_der(&pem)
                        .map_err(|e| part(format!("{}: {e}", path.display())))?,
                )
            }
            (None, false) => {
                let ids = crate::store::IdentityDir::open(self.settings.state_dir.join("identity"))
                    .map_err(|e| part(e.to_string()))?;
                let ca = ids
                    .load_ca()
                    .map_err(|e| part(e.to_string()))?
                    .ok_or_else(|| part("the gateway CA is missing".into()))?;
                Some(ca.cert_der().to_vec())
            }
        };
        let rpc = crate::browser_link::BrowserRpc::new(
            rt,
            crate::browser_link::BrowserEndpoint {
                addr: browser.addr,
                server_name: browser.server_name,
                ca_der,
                h2c: browser.h2c,
                token: browser.token,
                principal: None,
            },
        );
        tracing::info!(endpoint = %browser.addr, "runs get browser tools from palyra-browserd");
        Ok(crate::browser_link::RunBrowser::new(
            rt,
            rpc,
            self.settings.state_dir.join("screenshots"),
            browser.allow_private,
        ))
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }
}

/// Where a daemon's listeners bind.
#[derive(Debug, Clone, Copy)]
pub struct ListenAddrs {
    /// Node plane (QUIC, UDP); the node TLS listener takes the same port number on TCP.
    pub node: SocketAddr,
    /// Gateway gRPC listener.
    pub grpc: SocketAddr,
    /// Operator plane (HTTP/1.1).
    pub http: SocketAddr,
}

/// A daemon serving on a runtime.
pub struct Running {
    daemon: Daemon,
    /// The bound addresses.
    pub endpoints: Endpoints,
    /// Where they were recorded.
    pub endpoints_path: PathBuf,
    node: NodePlaneHandle,
    grpc: TcpHandle,
    node_tcp: TcpHandle,
    http: TcpHandle,
    console: Option<Arc<crate::console::ConsoleHub>>,
    /// Stops the task that runs the console's chat messages.
    console_runs: Arc<Stop>,
}

impl Running {
    /// The daemon (its services and stores).
    pub fn daemon(&self) -> &Daemon {
        &self.daemon
    }

    /// Shuts down gracefully: the operator plane first (console streams get a going-away close),
    /// then the gRPC listeners (GOAWAY), the node plane (application close), and finally the
    /// stores, once everything handed to them is durable.
    pub async fn shutdown(self, rt: &Rt) -> std::io::Result<()> {
        self.console_runs.raise();
        self.http.shutdown(rt).await;
        if let Some(console) = &self.console {
            console.save();
        }
        self.grpc.shutdown(rt).await;
        self.node_tcp.shutdown(rt).await;
        let node = self.node.shutdown().await;
        self.daemon.close_stores();
        node
    }
}

/// The addresses a daemon's listeners are bound to.
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// Operator plane (HTTP/1.1).
    pub http: SocketAddr,
    /// Node plane (QUIC, UDP).
    pub node_quic: SocketAddr,
    /// Node TLS listener (NodeService, TCP).
    pub node_tcp: SocketAddr,
    /// Gateway gRPC listener.
    pub grpc: SocketAddr,
}
