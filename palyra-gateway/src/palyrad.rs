//! `palyrad`, the gateway daemon, once for every runtime: the command line, the offline
//! certificate commands, logging, and [`serve`], which opens the [`Daemon`], binds every
//! listener on the given runtime, waits for SIGINT or SIGTERM and shuts down gracefully.
//!
//! A runtime adapter's binary is `palyrad::main(|config| block_on(palyrad::serve(rt, config)))`.

use crate::config::{default_state_dir, Config, LogFormat, Overrides, StoreConfig};
use crate::daemon::{Daemon, DaemonSettings, ListenAddrs, Stores};
use crate::run::engine::RunsConfig;
use crate::runtime::Rt;
use crate::serve::tcp::ListenerLimits;
use crate::store::{DeviceIdentityFiles, IdentityDir};
use clap::{Parser, Subcommand};
use palyra_proto::identity::is_canonical_device_id;
use rand_core::OsRng;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

/// The Palyra gateway daemon: node plane (QUIC), node TLS listener (NodeService), gateway gRPC
/// listener and operator plane (admin API, web console). Without a subcommand it runs the
/// gateway until SIGINT or SIGTERM.
#[derive(Parser)]
#[command(name = "palyrad", version)]
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
    /// Issues a TLS server certificate for palyra-browserd, signed by the gateway CA, and writes
    /// browserd.crt.pem, browserd.key.pem and ca.crt.pem to OUT (browserd's --tls-dir).
    IssueBrowserd {
        /// State directory of the gateway.
        #[arg(long, env = "PALYRA_STATE_DIR")]
        state_dir: Option<PathBuf>,
        /// Output directory (created, mode 0700).
        #[arg(long)]
        out: PathBuf,
        /// Host names or IP addresses browserd is reached at (repeatable).
        #[arg(long = "host", default_values_t = ["127.0.0.1".to_string(), "localhost".to_string()])]
        hosts: Vec<String>,
        /// Certificate lifetime in days.
        #[arg(long, default_value_t = 90)]
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

/// Runs the `palyrad` command line; `serve` runs the daemon with the resolved configuration on
/// the adapter's runtime (blocking until it stops).
pub fn main(serve: impl FnOnce(Config) -> anyhow::Result<()>) -> ExitCode {
    let cli = Cli::parse();
    let program = std::env::args()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "palyrad".into());
    let result = match cli.command {
        Some(Command::Cert(cert)) => run_cert(cert),
        None => Config::resolve(&cli.overrides).and_then(|config| {
            init_logging(&config);
            serve(config)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: error: {err:#}");
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
            let daemon = tell_daemon(&state_dir);
            println!(
                "{}",
                serde_json::json!({
                    "device_id": device_id,
                    "spki_sha256": palyra_proto::identity::cert::hex_fingerprint(&bundle.issued.spki_sha256),
                    "expires_at_unix_ms": palyra_proto::time::unix_ms(bundle.issued.not_after),
                    "identity_dir": out,
                    "daemon": daemon,
                })
            );
            Ok(())
        }
        CertCommand::IssueBrowserd {
            state_dir,
            out,
            hosts,
            validity_days,
        } => {
            let state_dir = state_dir.unwrap_or_else(default_state_dir);
            if validity_days == 0 {
                anyhow::bail!("--validity-days must be at least 1");
            }
            let ids = IdentityDir::open(state_dir.join("identity"))?;
            let issued = ids.issue_service_cert(
                &mut OsRng,
                SystemTime::now(),
                &hosts,
                Duration::from_secs(validity_days * 86_400),
            )?;
            let ca = ids
                .load_ca()?
                .ok_or_else(|| anyhow::anyhow!("the gateway CA is missing"))?;
            crate::store::create_private_dir(&out)?;
            crate::store::write_atomic(
                &out.join("browserd.key.pem"),
                issued.key.to_pem()?.as_bytes(),
            )?;
            crate::store::write_atomic(&out.join("browserd.crt.pem"), issued.cert.pem.as_bytes())?;
            crate::store::write_atomic(&out.join("ca.crt.pem"), ca.cert_pem()?.as_bytes())?;
            println!(
                "{}",
                serde_json::json!({
                    "tls_dir": out,
                    "hosts": hosts,
                    "expires_at_unix_ms": palyra_proto::time::unix_ms(issued.cert.not_after),
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
            let newly = crate::store::TrustRecords::revoke_device(
                &ids,
                SystemTime::now(),
                &device_id,
                &reason,
            )?;
            let daemon = tell_daemon(&state_dir);
            println!(
                "{}",
                serde_json::json!({ "device_id": device_id, "revoked": true, "already_revoked": !newly, "daemon": daemon })
            );
            Ok(())
        }
    }
}

/// Tells a daemon running on `state_dir` that the trust file changed (it reloads before
/// answering): `reloaded`, `not running`, or why it could not be told (the change takes effect
/// at its next periodic reload then).
fn tell_daemon(state_dir: &std::path::Path) -> String {
    #[cfg(unix)]
    {
        match crate::control::notify_trust_changed(state_dir) {
            Ok(crate::control::Notified::Reloaded) => "reloaded".into(),
            Ok(crate::control::Notified::NoDaemon) => "not running".into(),
            Err(e) => {
                eprintln!("palyrad: warning: {e}; the daemon picks the change up within a second");
                "not told".into()
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = state_dir;
        "not told".into()
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

/// Opens the daemon and serves every listener on `rt` until SIGINT or SIGTERM, then shuts down
/// gracefully (connections get an application close or GOAWAY; state is saved). The state is
/// in files; a configuration asking for another backend is refused (see [`serve_with`]).
pub async fn serve(rt: Rt, config: Config) -> anyhow::Result<()> {
    serve_with(rt, config, None).await
}

/// As [`serve`], over `stores` the adapter opened for the configured backend (`None`: the
/// state directory's files, which is all a `[store] backend = "nats"` configuration may not
/// use: the JetStream client runs on tokio, so only `palyrad` has it).
pub async fn serve_with(rt: Rt, config: Config, stores: Option<Stores>) -> anyhow::Result<()> {
    if matches!(config.store, StoreConfig::Nats(_)) && stores.is_none() {
        anyhow::bail!(
            "store.backend = \"nats\" needs the JetStream client, which runs on tokio: run palyrad \
             (this daemon has no NATS client), or use backend = \"file\""
        );
    }
    let signals = crate::signals::termination()?;
    let nofile = crate::limits::raise_nofile_limit();
    let listener_limits = ListenerLimits {
        max_connections: config
            .max_connections_per_listener
            .unwrap_or_else(|| crate::limits::default_connection_cap(nofile)),
        ..ListenerLimits::default()
    };
    tracing::info!(
        open_files = nofile,
        max_connections_per_listener = listener_limits.max_connections,
        "limits"
    );
    let random: crate::util::RandomFill =
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
        runs: RunsConfig {
            provider: config.model.as_ref().map(|m| m.provider()).transpose()?,
            model: config
                .model
                .as_ref()
                .map(|m| m.model.clone())
                .unwrap_or_default(),
            policy: config.tools.clone(),
            detach_grace: config.detach_grace,
            gateway: match &config.store {
                StoreConfig::Nats(nats) => Some(nats.gateway_name.clone()),
                StoreConfig::File => None,
            },
        },
        openai: config.openai.clone(),
        browser: config.browser.clone(),
    };
    let mut daemon = match stores {
        Some(stores) => Daemon::open_with(settings, stores, random, &mut OsRng)?,
        None => Daemon::open(settings, random, &mut OsRng)?,
    };
    if daemon.first_start {
        tracing::info!(state_dir = %config.state_dir.display(), ca_spki_sha256 = %daemon.ca_fingerprint, "first start: created the gateway CA and server certificate");
    }
    if let Some(token) = daemon.new_admin_token.take() {
        // Shown once: only its hash is stored. Not logged.
        eprintln!("palyrad: admin token (shown once, store it now): {token}");
    }
    let addrs = ListenAddrs {
        node: config.node_addr,
        grpc: config.grpc_addr,
        http: config.http_addr,
    };
    let ca_fingerprint = daemon.ca_fingerprint.clone();
    let running = daemon.serve(&rt, &addrs, listener_limits)?;
    let bound = running.endpoints;
    tracing::info!(
        node_quic = %bound.node_quic,
        node_tcp = %bound.node_tcp,
        http = %bound.http,
        grpc = %bound.grpc,
        grpc_tls = config.grpc_tls,
        http_tls = config.http_tls,
        endpoints = %running.endpoints_path.display(),
        ca_spki_sha256 = %ca_fingerprint,
        "palyrad listening"
    );
    let signal = signals.recv().await;
    tracing::info!(signal = signal.unwrap_or(0), "shutting down");
    running.shutdown(&rt).await?;
    tracing::info!("stopped");
    Ok(())
}
