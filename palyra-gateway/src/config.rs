//! `palyrad` configuration: built-in defaults, then a TOML file, then `PALYRA_*` environment
//! variables, then command-line flags (flags win).

use crate::node::NodePlaneOptions;
use crate::operator::openai::{ApprovalMode, OpenAiConfig};
use crate::provider::client::{Endpoint, ProviderSettings};
use crate::run::engine::ToolPolicy;
use crate::store::FileEventLogConfig;
use palyra_proto::quic::ServerLimits;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default node-plane listener.
pub const DEFAULT_NODE_ADDR: &str = "127.0.0.1:7444";

/// Default gateway gRPC listener (h2c).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:7443";

/// Default operator-plane HTTP listener.
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

/// The configuration file, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// State directory.
    pub state_dir: Option<PathBuf>,
    /// Node-plane QUIC listener.
    pub node_addr: Option<SocketAddr>,
    /// Gateway gRPC listener (h2c).
    pub grpc_addr: Option<SocketAddr>,
    /// Serve the gateway gRPC listener over TLS (the gateway's server certificate) instead of h2c.
    pub grpc_tls: Option<bool>,
    /// Operator-plane HTTP listener.
    pub http_addr: Option<SocketAddr>,
    /// Serve the operator listener over TLS (the gateway's ECDSA P-256 server certificate).
    pub http_tls: Option<bool>,
    /// Origins besides the listener's own allowed to use the console (`https://host:port`).
    pub console_origins: Option<Vec<String>>,
    /// Extra host names / IPs for the server certificate.
    pub hosts: Option<Vec<String>>,
    /// `human` or `json`.
    pub log_format: Option<LogFormat>,
    /// tracing filter, e.g. `info` or `palyra_proto=debug`.
    pub log_level: Option<String>,
    /// Node-plane limits.
    #[serde(default)]
    pub node: NodeSection,
    /// Event log sizes.
    #[serde(default)]
    pub events: EventsSection,
    /// Certificate lifetimes.
    #[serde(default)]
    pub certs: CertsSection,
    /// Pairing.
    #[serde(default)]
    pub enrollment: EnrollmentSection,
    /// Connection limits of the TCP listeners.
    #[serde(default)]
    pub listeners: ListenersSection,
    /// The model provider agent runs use (absent: no provider).
    pub model: Option<ModelSection>,
    /// Tool policy of agent runs.
    #[serde(default)]
    pub tools: ToolsSection,
    /// The OpenAI-compatible API's limits and policy.
    #[serde(default)]
    pub openai: OpenAiSection,
    /// The browser daemon runs' browser tools use (absent: runs have no browser).
    pub browser: Option<BrowserSection>,
    /// Where the gateway's state lives (absent: files under the state directory).
    #[serde(default)]
    pub store: StoreSection,
}

/// `[store]` section: the state's backend.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `file` (default: the state directory) or `nats` (a JetStream cluster several gateways
    /// share).
    pub backend: Option<StoreBackend>,
    /// NATS server URLs (`nats://host:4222`; required for `nats`).
    pub servers: Option<Vec<String>>,
    /// Prefix of the streams and buckets (default `palyra`): one per deployment.
    pub prefix: Option<String>,
    /// Replicas of every stream and bucket (default 3; 1 for a single server).
    pub replicas: Option<usize>,
    /// This gateway's name in the cluster (default: the host name and node port).
    pub gateway_name: Option<String>,
    /// NATS credentials file (`.creds`: JWT and NKey seed).
    pub creds_file: Option<PathBuf>,
    /// NATS user (with `password` or the PALYRA_NATS_PASSWORD environment variable).
    pub user: Option<String>,
    /// NATS password.
    pub password: Option<String>,
    /// NATS token (or the PALYRA_NATS_TOKEN environment variable).
    pub token: Option<String>,
    /// CA certificate (PEM) the NATS servers' certificates chain to; implies TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    pub tls_cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// How long a store request may take before it fails as unavailable, in milliseconds
    /// (default 5000).
    pub request_timeout_ms: Option<u64>,
}

/// A state backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// Files under the state directory (one gateway).
    #[default]
    File,
    /// A NATS JetStream cluster (several gateways).
    Nats,
}

/// The resolved `[store]` section.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// Files under the state directory.
    #[default]
    File,
    /// A NATS JetStream cluster.
    Nats(Box<NatsConfig>),
}

/// How to reach the NATS JetStream cluster and lay the state out in it.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Server URLs.
    pub servers: Vec<String>,
    /// Stream and bucket prefix.
    pub prefix: String,
    /// Replicas per stream and bucket.
    pub replicas: usize,
    /// This gateway's name.
    pub gateway_name: String,
    /// Credentials file.
    pub creds_file: Option<PathBuf>,
    /// User and password.
    pub user_password: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
    /// CA certificate for TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Retention of the node-plane event stream, in bytes (`[events] max_total_bytes`).
    pub max_event_bytes: u64,
}

/// A name usable in stream, bucket and subject names: 1 to `max` letters, digits, `_`, `-`.
fn valid_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl StoreSection {
    fn resolve(
        self,
        overrides: &Overrides,
        node_port: u16,
        max_event_bytes: u64,
    ) -> anyhow::Result<StoreConfig> {
        let backend = overrides.store_backend.or(self.backend).unwrap_or_default();
        if backend == StoreBackend::File {
            return Ok(StoreConfig::File);
        }
        let servers = if overrides.nats_servers.is_empty() {
            self.servers.unwrap_or_default()
        } else {
            overrides.nats_servers.clone()
        };
        if servers.is_empty() {
            anyhow::bail!(
                "store.backend = \"nats\" needs store.servers (e.g. [\"nats://127.0.0.1:4222\"]) or --nats-server"
            );
        }
        let prefix = self.prefix.unwrap_or_else(|| "palyra".into());
        if !valid_name(&prefix, 32) {
            anyhow::bail!("store.prefix {prefix:?} must be 1 to 32 letters, digits, '_' or '-'");
        }
        let replicas = self.replicas.unwrap_or(3);
        if !(1..=5).contains(&replicas) {
            anyhow::bail!(
                "store.replicas must be between 1 and 5 (JetStream's limit), not {replicas}"
            );
        }
        let gateway_name = match overrides.gateway_name.clone().or(self.gateway_name) {
            Some(name) => name,
            None => {
                let host = std::env::var("HOSTNAME")
                    .ok()
                    .filter(|h| !h.is_empty())
                    .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "gateway".into());
                format!("{}-{node_port}", host.replace('.', "-"))
            }
        };
        if !valid_name(&gateway_name, 64) {
            anyhow::bail!(
                "store.gateway_name {gateway_name:?} must be 1 to 64 letters, digits, '_' or '-'"
            );
        }
        let password = self
            .password
            .or_else(|| std::env::var("PALYRA_NATS_PASSWORD").ok());
        let user_password = match (self.user, password) {
            (Some(user), Some(password)) => Some((user, password)),
            (Some(_), None) => anyhow::bail!(
                "store.user needs store.password or the PALYRA_NATS_PASSWORD environment variable"
            ),
            (None, _) => None,
        };
        let tls_client = match (self.tls_cert_file, self.tls_key_file) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("store.tls_cert_file and store.tls_key_file go together"),
        };
        Ok(StoreConfig::Nats(Box::new(NatsConfig {
            servers,
            prefix,
            replicas,
            gateway_name,
            creds_file: self.creds_file,
            user_password,
            token: self
                .token
                .or_else(|| std::env::var("PALYRA_NATS_TOKEN").ok())
                .filter(|t| !t.is_empty()),
            tls_ca_file: self.tls_ca_file,
            tls_client,
            request_timeout: Duration::from_millis(match self.request_timeout_ms {
                Some(0) => anyhow::bail!("store.request_timeout_ms must be at least 1"),
                Some(ms) => ms,
                None => 5000,
            }),
            max_event_bytes,
        })))
    }
}

/// `[browser]` section: where palyra-browserd is and how to reach it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrowserSection {
    /// browserd's gRPC address, `host:port` (required).
    pub endpoint: Option<String>,
    /// The name browserd's certificate is checked against (default: the endpoint's host).
    pub server_name: Option<String>,
    /// CA certificate (PEM) browserd's certificate chains to (default: this gateway's CA).
    pub ca_file: Option<PathBuf>,
    /// File holding the bearer token (default: the PALYRA_BROWSER_TOKEN environment variable).
    pub token_file: Option<PathBuf>,
    /// Cleartext HTTP/2 to a loopback browserd (default false).
    pub insecure_h2c: Option<bool>,
    /// Runs' browser sessions may load private and loopback pages (default false).
    pub allow_private_targets: Option<bool>,
}

/// The resolved `[browser]` section.
#[derive(Debug, Clone)]
pub struct BrowserConfig {
    /// browserd's gRPC address.
    pub addr: SocketAddr,
    /// The TLS server name.
    pub server_name: String,
    /// The CA file, if not the gateway's own.
    pub ca_file: Option<PathBuf>,
    /// The bearer token.
    pub token: String,
    /// Cleartext HTTP/2.
    pub h2c: bool,
    /// Private targets allowed for runs.
    pub allow_private: bool,
}

impl BrowserSection {
    fn resolve(self) -> anyhow::Result<BrowserConfig> {
        let endpoint = self.endpoint.ok_or_else(|| {
            anyhow::anyhow!("browser.endpoint (host:port of palyra-browserd) is required")
        })?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(endpoint.as_str())
            .map_err(|e| anyhow::anyhow!("browser.endpoint {endpoint:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("browser.endpoint {endpoint:?} resolves to nothing"))?;
        let host = endpoint
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_owned())
            .unwrap_or_default();
        let h2c = self.insecure_h2c.unwrap_or(false);
        if h2c && !addr.ip().is_loopback() {
            anyhow::bail!(
                "browser.insecure_h2c is only allowed for a loopback endpoint, not {addr}"
            );
        }
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("browser.token_file {}: {e}", path.display()))?
                .trim()
                .to_owned(),
            None => std::env::var("PALYRA_BROWSER_TOKEN")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        };
        if token.is_empty() {
            anyhow::bail!(
                "[browser] needs a token: set PALYRA_BROWSER_TOKEN or browser.token_file (mint one \
                 with `palyra-browserd token --principal service:palyrad`)"
            );
        }
        Ok(BrowserConfig {
            addr,
            server_name: self.server_name.unwrap_or(host),
            ca_file: self.ca_file,
            token,
            h2c,
            allow_private: self.allow_private_targets.unwrap_or(false),
        })
    }
}

/// `[openai]` section: limits and policy of the OpenAI-compatible API (`/v1/...`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiSection {
    /// Requests per minute per API key (default 600).
    pub requests_per_minute: Option<u32>,
    /// Provider tokens per minute per API key (default 1000000).
    pub tokens_per_minute: Option<u64>,
    /// Completions in progress at once per API key (default 16).
    pub concurrency: Option<u32>,
    /// Largest request body in bytes (default 4194304).
    pub max_body_bytes: Option<u64>,
    /// `wait` (an operator decides while the answer waits) or `deny` (calls that need an
    /// approval are denied at once); default `wait`.
    pub approvals: Option<String>,
    /// Seconds between keep-alive comments of a quiet stream (default 15).
    pub keepalive_secs: Option<u64>,
}

impl OpenAiSection {
    fn resolve(self) -> anyhow::Result<OpenAiConfig> {
        let d = OpenAiConfig::default();
        let within = |value: Option<u64>, default: u64, name: &str, max: u64| match value {
            Some(0) => anyhow::bail!("openai.{name} must be at least 1"),
            Some(n) if n > max => anyhow::bail!("openai.{name} must be at most {max}"),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        Ok(OpenAiConfig {
            requests_per_minute: within(
                self.requests_per_minute.map(u64::from),
                u64::from(d.requests_per_minute),
                "requests_per_minute",
                1_000_000,
            )? as u32,
            tokens_per_minute: within(
                self.tokens_per_minute,
                d.tokens_per_minute,
                "tokens_per_minute",
                u64::MAX / 2,
            )?,
            concurrency: within(
                self.concurrency.map(u64::from),
                u64::from(d.concurrency),
                "concurrency",
                4096,
            )? as u32,
            body_limit: within(
                self.max_body_bytes,
                d.body_limit,
                "max_body_bytes",
                64 * 1024 * 1024,
            )?,
            approvals: match self.approvals.as_deref() {
                None | Some("wait") => ApprovalMode::Wait,
                Some("deny") => ApprovalMode::Deny,
                Some(other) => {
                    anyhow::bail!("openai.approvals must be \"wait\" or \"deny\", not {other:?}")
                }
            },
            keepalive: Duration::from_secs(within(
                self.keepalive_secs,
                d.keepalive.as_secs(),
                "keepalive_secs",
                3600,
            )?),
            limits: d.limits,
        })
    }
}

/// `[tools]` section: which tools need what.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsSection {
    /// Tools (names, or `"*"`) whose calls an operator must approve (default `["*"]`).
    pub require_approval: Option<Vec<String>>,
    /// Tools (names, or `"*"`) only runs with `allow_sensitive_tools` may call (default none).
    pub sensitive: Option<Vec<String>>,
    /// Tool calls a run may make (default 16).
    pub max_calls_per_run: Option<u32>,
    /// How long an approval request waits, in seconds (default 60).
    pub approval_timeout_secs: Option<u64>,
    /// How long a node capability may take, in seconds (default 30).
    pub capability_timeout_secs: Option<u64>,
    /// A run whose client disconnected is cancelled unless a stream re-attaches within this
    /// many seconds (default 15).
    pub detach_grace_secs: Option<u64>,
}

impl ToolsSection {
    fn resolve(self) -> anyhow::Result<(ToolPolicy, Duration)> {
        let defaults = ToolPolicy::default();
        let secs = |value: Option<u64>, default: Duration, name: &str| match value {
            Some(0) => anyhow::bail!("tools.{name} must be at least 1"),
            Some(n) if n > 86_400 => anyhow::bail!("tools.{name} must be at most 86400"),
            Some(n) => Ok(Duration::from_secs(n)),
            None => Ok(default),
        };
        let policy = ToolPolicy {
            require_approval: self.require_approval.unwrap_or(defaults.require_approval),
            sensitive: self.sensitive.unwrap_or(defaults.sensitive),
            max_calls_per_run: match self.max_calls_per_run {
                Some(n) if n > 1000 => {
                    anyhow::bail!("tools.max_calls_per_run must be at most 1000")
                }
                Some(n) => n,
                None => defaults.max_calls_per_run,
            },
            approval_timeout: secs(
                self.approval_timeout_secs,
                defaults.approval_timeout,
                "approval_timeout_secs",
            )?,
            capability_timeout: secs(
                self.capability_timeout_secs,
                defaults.capability_timeout,
                "capability_timeout_secs",
            )?,
        };
        let grace = secs(
            self.detach_grace_secs,
            Duration::from_secs(15),
            "detach_grace_secs",
        )?;
        Ok((policy, grace))
    }
}

/// `[model]` section: an OpenAI-compatible chat-completions server.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Where it listens, up to the path before `/chat/completions`
    /// (`http://127.0.0.1:8000/v1`, `https://api.openai.com/v1`).
    pub base_url: Option<String>,
    /// The model name sent with every request.
    pub model: Option<String>,
    /// The environment variable holding the API key (none: no `Authorization` header).
    pub api_key_env: Option<String>,
    /// Connecting may take this long, in seconds (default 10).
    pub connect_timeout_secs: Option<u64>,
    /// The provider may be silent this long, in seconds (default 120).
    pub idle_timeout_secs: Option<u64>,
    /// Refused requests (408, 429, 5xx) are retried this many times before the first token
    /// (default 3).
    pub max_retries: Option<u32>,
}

/// The resolved `[model]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Where the provider listens.
    pub endpoint: Endpoint,
    /// The model name.
    pub model: String,
    /// The environment variable holding the API key (read when the provider is used, so the
    /// key is never part of the configuration).
    pub api_key_env: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Silence timeout.
    pub idle_timeout: Duration,
    /// Retries before the first token.
    pub max_retries: u32,
}

impl ModelConfig {
    /// The provider client's settings (the API key read from its variable now).
    pub fn provider(&self) -> anyhow::Result<ProviderSettings> {
        let api_key =
            match &self.api_key_env {
                Some(var) => Some(std::env::var(var).map_err(|_| {
                    anyhow::anyhow!("model.api_key_env names {var}, which is not set")
                })?),
                None => None,
            };
        let tls = match self.endpoint.tls {
            true => Some(std::sync::Arc::new(
                palyra_proto::quic::tls::web_client_config(None)
                    .map_err(|e| anyhow::anyhow!("TLS for the model provider: {e}"))?,
            )),
            false => None,
        };
        Ok(ProviderSettings {
            endpoint: self.endpoint.clone(),
            api_key,
            tls,
            connect_timeout: self.connect_timeout,
            idle_timeout: self.idle_timeout,
            max_retries: self.max_retries,
            limits: palyra_proto::openai::chat::ChatLimits::default(),
        })
    }
}

impl ModelSection {
    fn resolve(self) -> anyhow::Result<ModelConfig> {
        let base_url = self
            .base_url
            .ok_or_else(|| anyhow::anyhow!("model.base_url is required in a [model] section"))?;
        let endpoint = Endpoint::parse(&base_url).map_err(anyhow::Error::msg)?;
        let model = self
            .model
            .filter(|m| !m.trim().is_empty())
            .ok_or_else(|| anyhow::anyhow!("model.model (the model name) is required"))?;
        if let Some(var) = &self.api_key_env {
            if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                anyhow::bail!("model.api_key_env names {var}, which is not set");
            }
        }
        let secs = |value: Option<u64>, default: u64, name: &str| match value {
            Some(0) => anyhow::bail!("model.{name} must be at least 1"),
            other => Ok(Duration::from_secs(other.unwrap_or(default))),
        };
        Ok(ModelConfig {
            endpoint,
            model,
            api_key_env: self.api_key_env,
            connect_timeout: secs(self.connect_timeout_secs, 10, "connect_timeout_secs")?,
            idle_timeout: secs(self.idle_timeout_secs, 120, "idle_timeout_secs")?,
            max_retries: self.max_retries.unwrap_or(3).min(10),
        })
    }
}

/// `[listeners]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersSection {
    /// Connections each TCP listener serves at once (default: derived from the open-file
    /// limit, leaving headroom for the daemon's own files). At the cap idle connections are
    /// shed first, then new ones refused (HTTP 503 with Retry-After, HTTP/2 GOAWAY).
    pub max_connections: Option<usize>,
}

/// `[node]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Client certificates mandatory (default true).
    pub require_client_cert: Option<bool>,
    /// Established connections (default 256).
    pub max_connections: Option<usize>,
    /// Handshakes in progress (default 64).
    pub max_handshakes: Option<usize>,
    /// Largest frame (default 524288).
    pub max_frame_bytes: Option<usize>,
    /// Handshake timeout in seconds (default 10).
    pub handshake_timeout_secs: Option<u64>,
    /// Idle timeout in seconds (default 30).
    pub idle_timeout_secs: Option<u64>,
}

/// `[events]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    /// Retention: the log is cut to about this many bytes (default 256 MiB).
    pub max_total_bytes: Option<u64>,
    /// Segment size (default 16 MiB).
    pub segment_bytes: Option<u64>,
}

/// `[certs]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsSection {
    /// Server certificate lifetime in seconds (default 30 days); renewed at a third left.
    pub server_validity_secs: Option<u64>,
    /// Device certificate lifetime in seconds (default 30 days); nodes renew at a third left.
    pub device_validity_secs: Option<u64>,
}

/// `[enrollment]` section.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentSection {
    /// Approve valid pairings without an operator (never a re-pairing of a known device).
    pub auto_approve: Option<bool>,
    /// `HOST:PORT` devices dial to pair, written into invites (default: the node TLS
    /// listener's address; set it when that listens on a wildcard or behind NAT).
    pub advertise_addr: Option<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Settings given on the command line or in the environment (clap merges those two).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// State directory (default: $XDG_STATE_HOME/palyra or ~/.local/state/palyra).
    #[arg(long, env = "PALYRA_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Node-plane QUIC listener, e.g. 127.0.0.1:7444 (port 0 picks a free port).
    #[arg(long, env = "PALYRA_NODE_ADDR")]
    pub node_addr: Option<SocketAddr>,
    /// Gateway gRPC listener (cleartext HTTP/2), e.g. 127.0.0.1:7443 (port 0 picks a free port).
    #[arg(long, env = "PALYRA_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Serve the gateway gRPC listener over TLS (server certificate of the gateway CA).
    #[arg(long, env = "PALYRA_GRPC_TLS")]
    pub grpc_tls: bool,
    /// Operator-plane HTTP listener (health, metrics), e.g. 127.0.0.1:8080 (port 0 picks one).
    #[arg(long, env = "PALYRA_HTTP_ADDR")]
    pub http_addr: Option<SocketAddr>,
    /// Serve the operator listener over HTTPS with the gateway's ECDSA P-256 server certificate
    /// (clients trust the gateway CA: STATE/identity/ca.crt.pem); adds HSTS and Secure cookies.
    #[arg(long, env = "PALYRA_HTTP_TLS")]
    pub http_tls: bool,
    /// Extra origin allowed to open the console stream, e.g. https://palyra.example:8443
    /// (repeatable; env: comma-separated). The listener's own origin is always allowed.
    #[arg(
        long = "console-origin",
        env = "PALYRA_CONSOLE_ORIGINS",
        value_delimiter = ','
    )]
    pub console_origins: Vec<String>,
    /// TOML configuration file.
    #[arg(long, env = "PALYRA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Extra host name or IP for the server certificate (repeatable; env: comma-separated).
    #[arg(long = "host", env = "PALYRA_HOSTS", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Log format.
    #[arg(long, env = "PALYRA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter (tracing syntax), e.g. info or debug.
    #[arg(long, env = "PALYRA_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// State backend: file (the state directory) or nats (a JetStream cluster several gateways
    /// share; see docs/cluster.md).
    #[arg(long, env = "PALYRA_STORE_BACKEND", value_enum)]
    pub store_backend: Option<StoreBackend>,
    /// NATS server URL for the nats backend, e.g. nats://127.0.0.1:4222 (repeatable; env:
    /// comma-separated).
    #[arg(
        long = "nats-server",
        env = "PALYRA_NATS_SERVERS",
        value_delimiter = ','
    )]
    pub nats_servers: Vec<String>,
    /// This gateway's name in a cluster (default: host name and node port).
    #[arg(long, env = "PALYRA_GATEWAY_NAME")]
    pub gateway_name: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory.
    pub state_dir: PathBuf,
    /// Node-plane listener.
    pub node_addr: SocketAddr,
    /// Gateway gRPC listener.
    pub grpc_addr: SocketAddr,
    /// Whether the gateway gRPC listener speaks TLS.
    pub grpc_tls: bool,
    /// Operator-plane HTTP listener.
    pub http_addr: SocketAddr,
    /// Whether the operator listener speaks TLS.
    pub http_tls: bool,
    /// Extra console origins.
    pub console_origins: Vec<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// Node-plane options.
    pub node: NodePlaneOptions,
    /// Pairing: device certificate lifetime, auto-approval.
    pub enrollment: palyra_proto::enroll::gateway::GatewayConfig,
    /// Address written into pairing invites (`[enrollment] advertise_addr`).
    pub advertise_addr: Option<String>,
    /// Connections each TCP listener serves at once (`None`: derived from the open-file limit).
    pub max_connections_per_listener: Option<usize>,
    /// The model provider (`[model]`), if one is configured.
    pub model: Option<ModelConfig>,
    /// Tool policy (`[tools]`).
    pub tools: ToolPolicy,
    /// How long a disconnected run waits for a stream to re-attach.
    pub detach_grace: Duration,
    /// The OpenAI-compatible API (`[openai]`).
    pub openai: OpenAiConfig,
    /// The browser daemon (`[browser]`), if one is configured.
    pub browser: Option<BrowserConfig>,
    /// Where the state lives (`[store]`).
    pub store: StoreConfig,
}

/// The per-user default state directory.
pub fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("palyra");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/palyra");
    }
    PathBuf::from("palyra-state")
}

/// Reads a TOML configuration file with a clear error.
pub fn read_file_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))
}

impl Config {
    /// Resolves defaults < file < environment/flags.
    pub fn resolve(overrides: &Overrides) -> anyhow::Result<Self> {
        let mut file = match &overrides.config {
            Some(path) => read_file_config(path)?,
            None => FileConfig::default(),
        };
        let defaults = ServerLimits::default();
        let limits = ServerLimits {
            max_connections: file
                .node
                .max_connections
                .unwrap_or(defaults.max_connections),
            max_handshakes: file.node.max_handshakes.unwrap_or(defaults.max_handshakes),
            max_frame_bytes: file
                .node
                .max_frame_bytes
                .unwrap_or(defaults.max_frame_bytes),
            handshake_timeout: file
                .node
                .handshake_timeout_secs
                .map_or(defaults.handshake_timeout, Duration::from_secs),
            idle_timeout: file
                .node
                .idle_timeout_secs
                .map_or(defaults.idle_timeout, Duration::from_secs),
            ..defaults
        };
        if limits.max_frame_bytes == 0 || limits.max_frame_bytes > u32::MAX as usize {
            anyhow::bail!("node.max_frame_bytes must be between 1 and {}", u32::MAX);
        }
        let log_defaults = FileEventLogConfig::default();
        let log = FileEventLogConfig {
            max_total_bytes: file
                .events
                .max_total_bytes
                .unwrap_or(log_defaults.max_total_bytes),
            segment_bytes: file
                .events
                .segment_bytes
                .unwrap_or(log_defaults.segment_bytes),
            ..log_defaults
        };
        if log.segment_bytes < 4096 || log.max_total_bytes < log.segment_bytes {
            anyhow::bail!(
                "events.segment_bytes must be at least 4096 and at most events.max_total_bytes"
            );
        }
        let (tools, detach_grace) = std::mem::take(&mut file.tools).resolve()?;
        let node_port = overrides
            .node_addr
            .or(file.node_addr)
            .map_or(7444, |a| a.port());
        let store =
            std::mem::take(&mut file.store).resolve(overrides, node_port, log.max_total_bytes)?;
        let mut hosts = file.hosts.unwrap_or_default();
        hosts.extend(overrides.hosts.iter().filter(|h| !h.is_empty()).cloned());
        let node = NodePlaneOptions {
            hosts,
            mtls_required: file.node.require_client_cert.unwrap_or(true),
            limits,
            log,
            server_cert_validity: file.certs.server_validity_secs.map_or(
                NodePlaneOptions::default().server_cert_validity,
                Duration::from_secs,
            ),
            registry_key: match &store {
                // Each gateway of a cluster keeps the registry of the nodes it served.
                StoreConfig::Nats(nats) => format!("nodes/{}.json", nats.gateway_name),
                StoreConfig::File => NodePlaneOptions::default().registry_key,
            },
        };
        let enrollment = palyra_proto::enroll::gateway::GatewayConfig {
            cert_validity_ms: match file.certs.device_validity_secs {
                Some(0) => anyhow::bail!("certs.device_validity_secs must be at least 1"),
                Some(secs) => secs.saturating_mul(1000),
                None => palyra_proto::enroll::gateway::GatewayConfig::default().cert_validity_ms,
            },
            auto_approve: file.enrollment.auto_approve.unwrap_or(false),
        };
        Ok(Self {
            state_dir: overrides
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(default_state_dir),
            node_addr: overrides
                .node_addr
                .or(file.node_addr)
                .unwrap_or_else(|| DEFAULT_NODE_ADDR.parse().expect("valid default address")),
            grpc_addr: overrides
                .grpc_addr
                .or(file.grpc_addr)
                .unwrap_or_else(|| DEFAULT_GRPC_ADDR.parse().expect("valid default address")),
            grpc_tls: overrides.grpc_tls || file.grpc_tls.unwrap_or(false),
            http_addr: overrides
                .http_addr
                .or(file.http_addr)
                .unwrap_or_else(|| DEFAULT_HTTP_ADDR.parse().expect("valid default address")),
            http_tls: overrides.http_tls || file.http_tls.unwrap_or(false),
            console_origins: overrides
                .console_origins
                .iter()
                .cloned()
                .chain(file.console_origins.unwrap_or_default())
                .collect(),
            log_format: overrides.log_format.or(file.log_format).unwrap_or_default(),
            log_level: overrides
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            node,
            enrollment,
            advertise_addr: file.enrollment.advertise_addr,
            max_connections_per_listener: match file.listeners.max_connections {
                Some(0) => anyhow::bail!("listeners.max_connections must be at least 1"),
                other => other,
            },
            model: file.model.map(ModelSection::resolve).transpose()?,
            tools,
            detach_grace,
            openai: file.openai.resolve()?,
            browser: file.browser.map(BrowserSection::resolve).transpose()?,
            store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palyrad.toml");
        std::fs::write(
            &path,
            "node_addr = \"127.0.0.1:9000\"\nlog_level = \"debug\"\n[node]\nmax_connections = 3\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(path.clone()),
            node_addr: Some("127.0.0.1:9100".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.node_addr.port(), 9100);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.node.limits.max_connections, 3);
        assert_eq!(config.node.limits.max_handshakes, 64);
    }

    #[test]
    fn the_documented_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/palyrad.example.toml");
        let config = Config::resolve(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(config.http_addr, DEFAULT_HTTP_ADDR.parse().unwrap());
        assert_eq!(config.grpc_addr, DEFAULT_GRPC_ADDR.parse().unwrap());
        assert!(!config.grpc_tls);
    }

    #[test]
    fn the_model_section_is_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let resolve = |text: &str| {
            let path = dir.path().join("model.toml");
            std::fs::write(&path, text).unwrap();
            Config::resolve(&Overrides {
                config: Some(path),
                ..Overrides::default()
            })
        };
        let config =
            resolve("[model]\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"llama\"\n")
                .unwrap();
        let model = config.model.unwrap();
        assert_eq!((model.endpoint.port, model.model.as_str()), (8000, "llama"));
        assert_eq!(model.idle_timeout, Duration::from_secs(120));
        assert!(
            resolve("").unwrap().model.is_none(),
            "no section, no provider"
        );
        let err = |text: &str| resolve(text).unwrap_err().to_string();
        assert!(err("[model]\nmodel = \"m\"\n").contains("model.base_url is required"));
        assert!(err("[model]\nbase_url = \"x\"\nmodel = \"m\"\n").contains("http://"));
        assert!(err("[model]\nbase_url = \"http://h/v1\"\n").contains("model name"));
        assert!(err("[model]\nbase_url = \"http://h\"\nmodel = \"m\"\napi_key_env = \"PALYRA_TEST_UNSET_KEY_VAR\"\n")
            .contains("PALYRA_TEST_UNSET_KEY_VAR, which is not set"));
        assert!(
            err("[model]\nbase_url = \"http://h\"\nmodel = \"m\"\nidle_timeout_secs = 0\n")
                .contains("at least 1")
        );
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "nod_addr = \"x\"\n").unwrap();
        let err = Config::resolve(&Overrides {
            config: Some(path),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("nod_addr"),
            "{err}"
        );
    }
}
