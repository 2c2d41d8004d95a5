//! `palyra-browserd`, the browser automation daemon, once for every runtime: its command line,
//! the `token` command, and [`start`], which opens the engine and binds the gRPC listener
//! (BrowserService, TLS with a certificate from the gateway CA) and the HTTP `/healthz`
//! listener, recording both addresses in `STATE_DIR/endpoints.json`. A runtime adapter's binary is
//! `browserd::main(|args| block_on(browserd::serve(rt, args)))`.

use crate::browser::budget::Budget;
use crate::browser::engine::{BrowserEngine, DownloadPolicy, EngineConfig};
use crate::browser::healthz::HealthzAcceptor;
use crate::browser::service::{self, BrowserAuth};
use crate::grpc::GrpcListener;
use crate::notify::Notifier;
use crate::runtime::Rt;
use crate::serve::tcp::TcpHandle;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The browser automation daemon: real Chromium over the DevTools protocol, served as
/// palyra.browser.v1.BrowserService over gRPC (TLS), with /healthz on HTTP.
#[derive(Parser)]
#[command(name = "palyra-browserd", version)]
struct Cli {
    #[command(flatten)]
    args: Args,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Mints a token for PRINCIPAL: prints it once and appends its SHA-256 to the tokens file.
    Token {
        /// Who the token proves, e.g. service:palyrad or user:alice.
        #[arg(long)]
        principal: String,
    },
}

/// How browserd runs (every flag has an environment variable).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address of the gRPC listener (BrowserService).
    #[arg(
        long,
        env = "PALYRA_BROWSERD_GRPC_BIND",
        default_value = "127.0.0.1:7543"
    )]
    pub grpc_bind: SocketAddr,
    /// Address of the HTTP listener (/healthz).
    #[arg(
        long,
        env = "PALYRA_BROWSERD_HTTP_BIND",
        default_value = "127.0.0.1:7143"
    )]
    pub http_bind: SocketAddr,
    /// State directory: profiles, Chromium profiles, downloads, the tokens file, chromium.log.
    #[arg(long, env = "PALYRA_BROWSERD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory with browserd.crt.pem, browserd.key.pem and ca.crt.pem (written by
    /// `palyrad cert issue-browserd --out DIR`).
    #[arg(long, env = "PALYRA_BROWSERD_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Serve cleartext HTTP/2 instead of TLS (refused unless the gRPC address is loopback).
    #[arg(long)]
    pub insecure_h2c: bool,
    /// Accept client certificates from the gateway CA as callers (principal device:<ULID>).
    #[arg(long)]
    pub accept_client_certs: bool,
    /// Tokens file (PRINCIPAL SHA256-HEX per line); default: STATE_DIR/tokens.
    #[arg(long, env = "PALYRA_BROWSERD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,
    /// One more token, given in the environment (never on the command line).
    #[arg(skip = std::env::var("PALYRA_BROWSERD_AUTH_TOKEN").ok())]
    pub auth_token: Option<String>,
    /// The principal PALYRA_BROWSERD_AUTH_TOKEN proves.
    #[arg(
        long,
        env = "PALYRA_BROWSERD_TOKEN_PRINCIPAL",
        default_value = "service:palyrad"
    )]
    pub token_principal: String,
    /// The Chromium executable (default: chromium, chromium-browser or google-chrome on PATH).
    #[arg(long, env = "PALYRA_CHROMIUM")]
    pub chromium: Option<PathBuf>,
    /// An extra Chromium flag (repeatable).
    #[arg(long = "chromium-arg", allow_hyphen_values = true)]
    pub chromium_args: Vec<String>,
    /// Sessions open at once, all principals together.
    #[arg(long, default_value_t = 128)]
    pub max_sessions: usize,
    /// Profiles per principal.
    #[arg(long, default_value_t = 16)]
    pub max_profiles: usize,
    /// Longest navigation, ms (sessions may ask for less).
    #[arg(long, default_value_t = 15_000)]
    pub max_navigation_timeout_ms: u64,
    /// Longest session lifetime, ms.
    #[arg(long, default_value_t = 1_800_000)]
    pub max_session_lifetime_ms: u64,
    /// Longest idle time before a session is closed, ms.
    #[arg(long, default_value_t = 600_000)]
    pub max_idle_ttl_ms: u64,
    /// Longest wait of one action, ms.
    #[arg(long, default_value_t = 5_000)]
    pub max_action_timeout_ms: u64,
    /// Largest screenshot, bytes.
    #[arg(long, default_value_t = 262_144)]
    pub max_screenshot_bytes: u64,
    /// Largest response payload (PDF), bytes.
    #[arg(long, default_value_t = 524_288)]
    pub max_response_bytes: u64,
    /// Actions per session.
    #[arg(long, default_value_t = 256)]
    pub max_actions_per_session: u64,
    /// Actions per second and session.
    #[arg(long, default_value_t = 20)]
    pub max_actions_per_second: u64,
    /// Tabs per session.
    #[arg(long, default_value_t = 32)]
    pub max_tabs: u64,
    /// File extensions kept as download artifacts (others are quarantined).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "txt,csv,json,pdf,png,jpg,jpeg,gif,zip"
    )]
    pub download_extensions: Vec<String>,
    /// Largest download, bytes.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub max_download_bytes: u64,
    /// Bytes of downloads per session.
    #[arg(long, default_value_t = 32 * 1024 * 1024)]
    pub max_session_download_bytes: u64,
    /// Log filter (tracing syntax).
    #[arg(long, env = "PALYRA_LOG", default_value = "info")]
    pub log_level: String,
}

/// The default state directory: `$XDG_STATE_HOME/palyra-browserd` or
/// `~/.local/state/palyra-browserd`.
pub fn default_state_dir() -> PathBuf {
    crate::config::default_state_dir()
        .parent()
        .map(|p| p.join("palyra-browserd"))
        .unwrap_or_else(|| PathBuf::from("palyra-browserd-state"))
}

impl Args {
    /// The state directory in use.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }

    fn tokens_path(&self) -> PathBuf {
        self.tokens_file
            .clone()
            .unwrap_or_else(|| self.state_dir().join("tokens"))
    }

    /// Defaults with `state_dir`, ephemeral ports and cleartext (for tests).
    pub fn for_tests(state_dir: PathBuf) -> Self {
        let cli = Cli::parse_from([
            "palyra-browserd",
            "--grpc-bind",
            "127.0.0.1:0",
            "--http-bind",
            "127.0.0.1:0",
            "--insecure-h2c",
        ]);
        Self {
            state_dir: Some(state_dir),
            auth_token: None,
            ..cli.args
        }
    }

    fn limits(&self) -> Budget {
        Budget {
            navigation_timeout_ms: self.max_navigation_timeout_ms.max(1),
            session_lifetime_ms: self.max_session_lifetime_ms.max(1),
            idle_ttl_ms: self.max_idle_ttl_ms.max(1),
            screenshot_bytes: self.max_screenshot_bytes.max(1),
            response_bytes: self.max_response_bytes.max(1),
            action_timeout_ms: self.max_action_timeout_ms.max(1),
            actions_per_session: self.max_actions_per_session.max(1),
            actions_per_window: self.max_actions_per_second.max(1),
            action_rate_window_ms: 1_000,
            tabs: self.max_tabs.max(1),
            ..Budget::default()
        }
    }

    fn auth(&self) -> anyhow::Result<BrowserAuth> {
        let mut auth = BrowserAuth::new(self.accept_client_certs);
        let path = self.tokens_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => auth
                .load_file(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        if let Some(token) = self.auth_token.as_deref().filter(|t| !t.trim().is_empty()) {
            auth.add_token(token.trim(), &self.token_principal)
                .map_err(|e| anyhow::anyhow!("PALYRA_BROWSERD_AUTH_TOKEN: {e}"))?;
        }
        if auth.is_empty() {
            anyhow::bail!(
                "no credentials are configured, so nobody could call browserd: mint a token with \
                 `palyra-browserd token --principal service:palyrad`, set \
                 PALYRA_BROWSERD_AUTH_TOKEN, or pass --accept-client-certs with --tls-dir"
            );
        }
        Ok(auth)
    }

    fn tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        let Some(dir) = &self.tls_dir else {
            if self.insecure_h2c {
                if !self.grpc_bind.ip().is_loopback() {
                    anyhow::bail!(
                        "--insecure-h2c is only allowed on a loopback address, not {}",
                        self.grpc_bind
                    );
                }
                return Ok(None);
            }
            anyhow::bail!(
                "browserd serves TLS: pass --tls-dir with browserd.crt.pem, browserd.key.pem and \
                 ca.crt.pem (`palyrad cert issue-browserd --out DIR` writes them), or \
                 --insecure-h2c on loopback"
            );
        };
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .with_context(|| format!("reading {}", dir.join(name).display()))
        };
        use palyra_proto::identity::cert::{self, ServerKey, ServerKeyKind};
        let leaf = cert::cert_pem_to_der(&read("browserd.crt.pem")?)?;
        let ca = cert::cert_pem_to_der(&read("ca.crt.pem")?)?;
        let key = ServerKey::from_pem(ServerKeyKind::EcdsaP256, &read("browserd.key.pem")?)?;
        let certified =
            palyra_proto::quic::tls::certified_key(vec![leaf, ca.clone()], key.pkcs8_der()?)?;
        let slot = palyra_proto::quic::tls::ServerCertSlot::new(certified);
        let config = palyra_proto::quic::tls::node_tcp_server_config(&ca, slot)?;
        Ok(Some(Arc::new(config)))
    }
}

/// A running browserd.
pub struct Running {
    /// The engine.
    pub engine: Arc<BrowserEngine>,
    /// The gRPC listener's address.
    pub grpc: SocketAddr,
    /// The HTTP listener's address.
    pub http: SocketAddr,
    /// Whether the gRPC listener speaks TLS.
    pub tls: bool,
    grpc_handle: TcpHandle,
    http_handle: TcpHandle,
}

/// Opens the engine and binds both listeners.
pub fn start(rt: &Rt, args: &Args) -> anyhow::Result<Running> {
    let state_dir = args.state_dir();
    let auth = Arc::new(args.auth()?);
    let tls = args.tls()?;
    let executable = match &args.chromium {
        Some(path) => path.clone(),
        None => crate::browser::chromium::find_executable().ok_or_else(|| {
            anyhow::anyhow!(
                "Chromium not found on PATH (chromium, chromium-browser, google-chrome): install \
                 it (Debian: apt-get install chromium) or pass --chromium PATH"
            )
        })?,
    };
    let config = EngineConfig {
        executable,
        state_dir: state_dir.clone(),
        limits: args.limits(),
        max_sessions: args.max_sessions.max(1),
        max_profiles: args.max_profiles.max(1),
        downloads: DownloadPolicy {
            allowed_extensions: args
                .download_extensions
                .iter()
                .map(|e| e.trim().trim_start_matches('.').to_ascii_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            max_file_bytes: args.max_download_bytes,
            max_session_bytes: args.max_session_download_bytes,
        },
        extra_args: args.chromium_args.clone(),
    };
    let engine = BrowserEngine::open(rt, config)
        .with_context(|| format!("opening the state directory {}", state_dir.display()))?;
    let wake = Arc::new(Notifier::new());
    let routers = service::router(Arc::clone(&engine), auth, Arc::clone(&wake))?;
    let listener = GrpcListener {
        config: palyra_proto::grpc::server::ServerConfig::default(),
        routers,
        tls: tls.clone(),
        notifier: Some(wake),
    };
    let grpc_handle = TcpHandle::start(rt, args.grpc_bind, listener)
        .with_context(|| format!("binding the gRPC listener on {}", args.grpc_bind))?;
    let reporting = Arc::clone(&engine);
    let report: crate::browser::healthz::Report = Arc::new(move || {
        let e = &reporting;
        let body = serde_json::json!({
            "service": "palyra-browserd",
            "status": service::health_status(e),
            "uptime_seconds": e.started.elapsed().as_secs(),
            "sessions": e.session_count(),
            "chromium": {
                "running": e.browsers().iter().filter(|b| b.alive()).count(),
                "launches": e.browser_launches.load(Ordering::Relaxed),
                "exits": e.browser_exits.load(Ordering::Relaxed),
            },
        });
        (true, format!("{body}\n"))
    });
    let http_handle = TcpHandle::serve(
        rt,
        args.http_bind,
        Arc::new(HealthzAcceptor { report }),
        None,
    )
    .with_context(|| format!("binding the HTTP listener on {}", args.http_bind))?;
    let endpoints = serde_json::json!({
        "grpc": grpc_handle.local_addr.to_string(),
        "http": http_handle.local_addr.to_string(),
        "tls": tls.is_some(),
    });
    crate::store::write_json(&state_dir.join("endpoints.json"), &endpoints)?;
    Ok(Running {
        engine,
        grpc: grpc_handle.local_addr,
        http: http_handle.local_addr,
        tls: tls.is_some(),
        grpc_handle,
        http_handle,
    })
}

impl Running {
    /// Stops the listeners, closes every session and stops Chromium.
    pub async fn shutdown(self, rt: &Rt) {
        self.grpc_handle.shutdown(rt).await;
        self.http_handle.shutdown(rt).await;
        self.engine.shutdown().await;
    }
}

/// Serves until SIGINT or SIGTERM.
pub async fn serve(rt: Rt, args: Args) -> anyhow::Result<()> {
    let signals = crate::signals::termination()?;
    let running = start(&rt, &args)?;
    tracing::info!(grpc = %running.grpc, http = %running.http, tls = running.tls,
                   state_dir = %args.state_dir().display(), "palyra-browserd listening");
    let signal = signals.recv().await;
    tracing::info!(signal = signal.unwrap_or(0), "shutting down");
    running.shutdown(&rt).await;
    tracing::info!("stopped");
    Ok(())
}

fn mint_token(args: &Args, principal: &str) -> anyhow::Result<()> {
    crate::access::valid_principal(principal).map_err(anyhow::Error::msg)?;
    let mut secret = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    let token = format!(
        "pbd_{}",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, secret)
    );
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let path = args.tokens_path();
    if let Some(dir) = path.parent() {
        crate::store::create_private_dir(dir)?;
    }
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("{principal} {hash}\n"));
    crate::store::write_atomic(&path, text.as_bytes())?;
    eprintln!(
        "palyra-browserd: token for {principal} (shown once; its hash is in {}):",
        path.display()
    );
    println!("{token}");
    Ok(())
}

/// Runs the `palyra-browserd` command line; `serve` runs the daemon on the adapter's runtime.
pub fn main(serve: impl FnOnce(Args) -> anyhow::Result<()>) -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Token { principal }) => mint_token(&cli.args, principal),
        None => {
            let filter = tracing_subscriber::EnvFilter::try_new(&cli.args.log_level)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
            serve(cli.args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palyra-browserd: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
