//! `palyrad`: the Palyra gateway daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use palyra_gateway::store::{DeviceIdentityFiles, IdentityDir};
use palyra_proto::identity::is_canonical_device_id;
use palyra_tokio::config::{default_state_dir, Config, LogFormat, Overrides};
use palyra_tokio::grpc::{GrpcHandle, GrpcListener};
use palyra_tokio::NodePlaneHandle;
use rand_core::OsRng;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The Palyra gateway daemon. Without a subcommand it runs the gateway.
#[derive(Parser)]
#[command(name = "palyrad", version, about)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Offline certificate administration on a state directory.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum CertCommand {
    /// Issues a device certificate and writes device.crt.pem, device.key.pem and ca.crt.pem to OUT.
    IssueDevice {
        /// State directory of the gateway.
        #[arg(long, env = "PALYRA_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Device ID (a ULID); a new one is generated when omitted.
        #[arg(long)]
        device_id: Option<String>,
        /// Output directory for the device's identity.
        #[arg(long)]
        out: PathBuf,
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 30)]
        validity_days: u64,
    },
    /// Revokes every certificate of a device; a running daemon notices within a second.
    Revoke {
        /// State directory of the gateway.
        #[arg(long, env = "PALYRA_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Device ID to revoke.
        #[arg(long)]
        device_id: String,
        /// Reason recorded with the revocation.
        #[arg(long, default_value = "revoked_by_operator")]
        reason: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Cert(cert)) => run_cert(cert),
        None => run_daemon(&cli.overrides),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palyrad: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_cert(command: CertCommand) -> anyhow::Result<()> {
    match command {
        CertCommand::IssueDevice {
            state_dir,
            device_id,
            out,
            validity_days,
        } => {
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            let device_id = device_id.unwrap_or_else(|| ulid::Ulid::new().to_string());
            if !is_canonical_device_id(&device_id) {
                anyhow::bail!("--device-id {device_id:?} is not a canonical ULID (26 characters, Crockford base32, uppercase)");
            }
            if validity_days == 0 {
                anyhow::bail!("--validity-days must be at least 1");
            }
            let ids = IdentityDir::open(state_dir.join("identity"))?;
            let bundle = ids.issue_device(
                &mut OsRng,
                SystemTime::now(),
                &device_id,
                Duration::from_secs(validity_days * 86_400),
            )?;
            DeviceIdentityFiles::write(&out, &bundle)?;
            println!(
                "{}",
                serde_json::json!({
                    "device_id": device_id,
                    "spki_sha256": palyra_proto::identity::cert::hex_fingerprint(&bundle.issued.spki_sha256),
                    "expires_at_unix_ms": palyra_gateway::store::unix_ms(bundle.issued.not_after),
                    "identity_dir": out,
                })
            );
            Ok(())
        }
        CertCommand::Revoke {
            state_dir,
            device_id,
            reason,
        } => {
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            let ids = IdentityDir::open(state_dir.join("identity"))?;
            let newly = ids.revoke_device(SystemTime::now(), &device_id, &reason)?;
            println!(
                "{}",
                serde_json::json!({ "device_id": device_id, "revoked": true, "already_revoked": !newly })
            );
            Ok(())
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

fn run_daemon(overrides: &Overrides) -> anyhow::Result<()> {
    let config = Config::resolve(overrides)?;
    init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(daemon(config))
}

async fn daemon(config: Config) -> anyhow::Result<()> {
    use palyra_gateway::daemon::{Daemon, DaemonSettings, Endpoints};
    let random: palyra_gateway::operator::RandomFill =
        std::sync::Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
    let settings = DaemonSettings {
        state_dir: config.state_dir.clone(),
        node: config.node.clone(),
        grpc_tls: config.grpc_tls,
        http_tls: config.http_tls,
        enrollment: config.enrollment,
        advertise_addr: config.advertise_addr.clone(),
        console_origins: config.console_origins.clone(),
        admin_token: std::env::var("PALYRA_ADMIN_TOKEN").ok(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_hash: option_env!("PALYRA_GIT_HASH").unwrap_or("unknown").into(),
    };
    let mut daemon = Daemon::open(settings, random, &mut OsRng)?;
    if daemon.first_start {
        tracing::info!(state_dir = %config.state_dir.display(), ca_spki_sha256 = %daemon.ca_fingerprint, "first start: created the gateway CA and server certificate");
    }
    if let Some(token) = daemon.new_admin_token.take() {
        // Shown once: only its hash is stored. Not logged.
        eprintln!("palyrad: admin token (shown once, store it now): {token}");
    }
    let plane = daemon.plane.take().context("node plane already taken")?;
    let notifier = daemon.notifier();
    let node = NodePlaneHandle::start(config.node_addr, plane)
        .await
        .with_context(|| format!("cannot bind the node plane on {}/udp", config.node_addr))?;
    let grpc = GrpcHandle::start(config.grpc_addr, daemon.gateway.clone())
        .await
        .with_context(|| format!("cannot bind the gRPC listener on {}/tcp", config.grpc_addr))?;
    let node_tcp = start_beside(node.local_addr, config.node_addr, daemon.node.clone())
        .await
        .with_context(|| {
            format!(
                "cannot bind the node TLS listener on {}/tcp",
                node.local_addr
            )
        })?;
    let operator = daemon.operator(node_tcp.local_addr)?;
    let console_hub = operator
        .operator
        .admin
        .as_ref()
        .map(|admin| std::sync::Arc::clone(&admin.console));
    let http = GrpcHandle::serve(config.http_addr, operator, Some(notifier))
        .await
        .with_context(|| format!("cannot bind the HTTP listener on {}/tcp", config.http_addr))?;
    let endpoints_path = daemon.write_endpoints(&Endpoints {
        http: http.local_addr,
        node_quic: node.local_addr,
        node_tcp: node_tcp.local_addr,
        grpc: grpc.local_addr,
    })?;
    tracing::info!(
        node_quic = %node.local_addr,
        node_tcp = %node_tcp.local_addr,
        http = %http.local_addr,
        grpc = %grpc.local_addr,
        grpc_tls = config.grpc_tls,
        http_tls = config.http_tls,
        endpoints = %endpoints_path.display(),
        ca_spki_sha256 = %daemon.ca_fingerprint,
        "palyrad listening"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    http.shutdown().await;
    if let Some(console) = console_hub {
        if let Err(e) = console.save() {
            tracing::warn!(error = %e, "saving the console state failed");
        }
    }
    grpc.shutdown().await;
    node_tcp.shutdown().await;
    node.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds the node TLS listener on the QUIC socket's port number (TCP and UDP ports are
/// separate, so the same number serves both). With a configured port 0, if that number is taken
/// on TCP, any free port is used (endpoints.json tells which).
async fn start_beside(
    quic: std::net::SocketAddr,
    configured: std::net::SocketAddr,
    listener: GrpcListener,
) -> std::io::Result<GrpcHandle> {
    match GrpcHandle::start(quic, listener.clone()).await {
        Err(e) if configured.port() == 0 => {
            tracing::debug!(error = %e, "TCP port of the QUIC socket is taken; using another");
            GrpcHandle::start(std::net::SocketAddr::new(quic.ip(), 0), listener).await
        }
        other => other,
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
