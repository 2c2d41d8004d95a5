//! `palyrad`: the Palyra gateway daemon.

use anyhow::Context;
use clap::{Parser, Subcommand};
use palyra_proto::gateway::{open_node_plane, write_endpoints};
use palyra_proto::identity::is_canonical_device_id;
use palyra_proto::store::{unix_ms, DeviceIdentityFiles, IdentityDir};
use palyra_tokio::config::{default_state_dir, Config, LogFormat, Overrides};
use palyra_tokio::grpc::{GrpcHandle, GrpcListener};
use palyra_tokio::NodePlaneHandle;
use rand_core::OsRng;
use std::collections::BTreeMap;
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
                    "expires_at_unix_ms": palyra_proto::store::unix_ms(bundle.issued.not_after),
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
    let first_start = !config.state_dir.join("identity/ca.crt.pem").exists();
    let plane = open_node_plane(
        &config.state_dir,
        &config.node,
        &mut OsRng,
        SystemTime::now(),
    )
    .with_context(|| format!("cannot open state directory {}", config.state_dir.display()))?;
    let ca_fingerprint = palyra_proto::identity::cert::hex_fingerprint(
        &palyra_proto::identity::cert::cert_spki_fingerprint(plane.identity.ca_der())?,
    );
    if first_start {
        tracing::info!(state_dir = %config.state_dir.display(), ca_spki_sha256 = %ca_fingerprint, "first start: created the gateway CA and server certificate");
    }
    let hub = std::sync::Arc::clone(&plane.hub);
    let node_tls = std::sync::Arc::clone(&plane.tcp_tls);
    let gateway_tls = if config.grpc_tls {
        Some(std::sync::Arc::new(
            palyra_proto::quic::tls::tcp_server_config(
                plane.identity.tcp_cert_slot(),
                palyra_proto::quic::tls::ALPN_H2,
            )?,
        ))
    } else {
        None
    };
    let http_tls = if config.http_tls {
        Some(std::sync::Arc::new(
            palyra_proto::quic::tls::tcp_server_config(
                plane.identity.tcp_cert_slot(),
                palyra_proto::quic::tls::ALPN_HTTP1,
            )?,
        ))
    } else {
        None
    };
    let started = std::time::Instant::now();
    let node = NodePlaneHandle::start(config.node_addr, plane)
        .await
        .with_context(|| format!("cannot bind the node plane on {}/udp", config.node_addr))?;
    let info = std::sync::Arc::new(palyra_proto::grpc::services::DaemonInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        git_hash: option_env!("PALYRA_GIT_HASH").unwrap_or("unknown").into(),
        build_profile: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .into(),
        started,
    });
    let gateway = GrpcListener {
        tls: gateway_tls,
        ..GrpcListener::h2c(palyra_proto::grpc::services::gateway_router(info)?)
    };
    let grpc = GrpcHandle::start(config.grpc_addr, gateway)
        .await
        .with_context(|| format!("cannot bind the gRPC listener on {}/tcp", config.grpc_addr))?;
    let clock: palyra_proto::gateway::node_service::WallClock =
        std::sync::Arc::new(|| unix_ms(SystemTime::now()));
    let random: palyra_proto::operator::RandomFill =
        std::sync::Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
    let enrollment = std::sync::Arc::new(
        palyra_proto::gateway::pairing::EnrollmentStore::open(
            &config.state_dir,
            config.enrollment,
            std::sync::Arc::clone(&random),
        )
        .context("cannot open the enrollment state")?
        .with_trust_index(hub.trust_index()),
    );
    let node_listener = GrpcListener {
        tls: Some(node_tls),
        notifier: Some(hub.notifier()),
        ..GrpcListener::h2c(palyra_proto::gateway::node_service::node_router(
            std::sync::Arc::clone(&hub),
            std::sync::Arc::clone(&clock),
            Some(std::sync::Arc::clone(&enrollment)),
        )?)
    };
    let node_tcp = start_beside(node.local_addr, config.node_addr, node_listener)
        .await
        .with_context(|| {
            format!(
                "cannot bind the node TLS listener on {}/tcp",
                node.local_addr
            )
        })?;
    let admin_token = std::env::var("PALYRA_ADMIN_TOKEN").ok();
    let (admin_auth, new_token) = palyra_proto::operator::auth::AdminAuth::load_or_create(
        &config.state_dir,
        admin_token.as_deref(),
        &mut OsRng,
    )
    .context("cannot load the admin token")?;
    if let Some(token) = new_token {
        // Shown once: only its hash is stored. Not logged.
        eprintln!("palyrad: admin token (shown once, store it now): {token}");
    }
    let mut admin = palyra_proto::operator::Admin::open(
        &config.state_dir,
        admin_auth,
        std::sync::Arc::clone(&hub),
        std::sync::Arc::clone(&clock),
        random,
        config.console_origins.clone(),
    )
    .context("cannot open the operator-plane stores")?;
    admin.pairing = Some(palyra_proto::operator::pairing::PairingAdmin::new(
        enrollment,
        config.advertise_addr.as_deref(),
        node_tcp.local_addr,
    ));
    let console = std::sync::Arc::clone(&admin.console);
    let operator = palyra_proto::operator::Operator::daemon(
        env!("CARGO_PKG_VERSION"),
        started,
        admin,
        http_tls.is_some(),
    );
    let http = GrpcHandle::serve(
        config.http_addr,
        std::sync::Arc::new(palyra_proto::operator::OperatorAcceptor {
            operator,
            config: Default::default(),
            tls: http_tls,
        }),
        Some(hub.notifier()),
    )
    .await
    .with_context(|| format!("cannot bind the HTTP listener on {}/tcp", config.http_addr))?;
    let mut endpoints = BTreeMap::new();
    endpoints.insert("http", http.local_addr.to_string());
    endpoints.insert("node_quic", node.local_addr.to_string());
    endpoints.insert("node_tcp", node_tcp.local_addr.to_string());
    endpoints.insert("grpc", grpc.local_addr.to_string());
    let endpoints_path = write_endpoints(&config.state_dir, &endpoints)?;
    tracing::info!(
        node_quic = %node.local_addr,
        node_tcp = %node_tcp.local_addr,
        http = %http.local_addr,
        grpc = %grpc.local_addr,
        grpc_tls = config.grpc_tls,
        http_tls = config.http_tls,
        endpoints = %endpoints_path.display(),
        ca_spki_sha256 = %ca_fingerprint,
        "palyrad listening"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    http.shutdown().await;
    if let Err(e) = console.save() {
        tracing::warn!(error = %e, "saving the console state failed");
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
