//! `palyrad-smol`: the node plane served by the smol driver, from the same state directory
//! layout as `palyrad`. Used by the conformance suite to test the smol driver over real sockets.
//!
//! Usage: `palyrad-smol --state-dir DIR [--node-addr 127.0.0.1:7444]`; writes `DIR/endpoints.json`
//! and serves until SIGINT/SIGTERM (or stdin closes when `--exit-on-stdin-eof` is given).

use palyra_proto::gateway::{open_node_plane, write_endpoints, NodePlaneOptions};
use palyra_smol::grpc::{GrpcHandle, GrpcListener};
use palyra_smol::NodePlaneHandle;
use rand_core::OsRng;
use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

const USAGE: &str =
    "usage: palyrad-smol --state-dir DIR [--node-addr ADDR] [--grpc-addr ADDR] [--http-addr ADDR] [--http-tls] [--exit-on-stdin-eof]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("palyrad-smol: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut state_dir: Option<PathBuf> = None;
    let mut node_addr: SocketAddr = "127.0.0.1:7444".parse().map_err(|e| format!("{e}"))?;
    let mut grpc_addr: SocketAddr = "127.0.0.1:7443".parse().map_err(|e| format!("{e}"))?;
    let mut http_addr: SocketAddr = "127.0.0.1:8080".parse().map_err(|e| format!("{e}"))?;
    let mut stdin_eof = false;
    let mut http_tls = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--state-dir" => state_dir = args.next().map(PathBuf::from),
            "--node-addr" => {
                let value = args.next().ok_or(USAGE)?;
                node_addr = value
                    .parse()
                    .map_err(|e| format!("--node-addr {value:?}: {e}"))?;
            }
            "--grpc-addr" => {
                let value = args.next().ok_or(USAGE)?;
                grpc_addr = value
                    .parse()
                    .map_err(|e| format!("--grpc-addr {value:?}: {e}"))?;
            }
            "--http-addr" => {
                let value = args.next().ok_or(USAGE)?;
                http_addr = value
                    .parse()
                    .map_err(|e| format!("--http-addr {value:?}: {e}"))?;
            }
            "--http-tls" => http_tls = true,
            "--exit-on-stdin-eof" => stdin_eof = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let state_dir = state_dir.ok_or(USAGE)?;
    let plane = open_node_plane(
        &state_dir,
        &NodePlaneOptions::default(),
        &mut OsRng,
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    let hub = std::sync::Arc::clone(&plane.hub);
    let http_tls = if http_tls {
        let config = palyra_proto::quic::tls::tcp_server_config(
            plane.identity.tcp_cert_slot(),
            palyra_proto::quic::tls::ALPN_HTTP1,
        )
        .map_err(|e| e.to_string())?;
        Some(std::sync::Arc::new(config))
    } else {
        None
    };
    let node_tls = std::sync::Arc::clone(&plane.tcp_tls);
    smol::block_on(async {
        let handle = NodePlaneHandle::start(node_addr, plane)
            .map_err(|e| format!("bind {node_addr}: {e}"))?;
        let info = std::sync::Arc::new(palyra_proto::grpc::services::DaemonInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            git_hash: "unknown".into(),
            build_profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .into(),
            started: std::time::Instant::now(),
        });
        let routers =
            palyra_proto::grpc::services::gateway_router(info).map_err(|e| e.to_string())?;
        let grpc = GrpcHandle::start(grpc_addr, GrpcListener::h2c(routers))
            .map_err(|e| format!("bind {grpc_addr}: {e}"))?;
        let clock: palyra_proto::gateway::node_service::WallClock =
            std::sync::Arc::new(|| palyra_proto::store::unix_ms(SystemTime::now()));
        let random: palyra_proto::operator::RandomFill =
            std::sync::Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
        let enrollment = palyra_proto::gateway::pairing::EnrollmentStore::open(
            &state_dir,
            Default::default(),
            std::sync::Arc::clone(&random),
        )
        .map_err(|e| format!("enrollment state: {e}"))?
        .with_trust_index(hub.trust_index());
        let enrollment = std::sync::Arc::new(enrollment);
        let node_routers = palyra_proto::gateway::node_service::node_router(
            hub.clone(),
            clock.clone(),
            Some(std::sync::Arc::clone(&enrollment)),
        )
        .map_err(|e| e.to_string())?;
        let node_listener = GrpcListener {
            tls: Some(node_tls),
            notifier: Some(hub.notifier()),
            ..GrpcListener::h2c(node_routers)
        };
        // TCP on the QUIC socket's port number; any free port if that one is taken.
        let node_tcp = GrpcHandle::start(handle.local_addr, node_listener.clone())
            .or_else(|_| {
                GrpcHandle::start(
                    std::net::SocketAddr::new(handle.local_addr.ip(), 0),
                    node_listener,
                )
            })
            .map_err(|e| format!("bind node TLS listener: {e}"))?;
        let admin_token = std::env::var("PALYRA_ADMIN_TOKEN").ok();
        let (auth, new_token) = palyra_proto::operator::auth::AdminAuth::load_or_create(
            &state_dir,
            admin_token.as_deref(),
            &mut OsRng,
        )
        .map_err(|e| format!("admin token: {e}"))?;
        if let Some(token) = new_token {
            eprintln!("palyrad-smol: admin token (shown once, store it now): {token}");
        }
        let clock: palyra_proto::gateway::node_service::WallClock =
            std::sync::Arc::new(|| palyra_proto::store::unix_ms(SystemTime::now()));
        let mut admin = palyra_proto::operator::Admin::open(
            &state_dir,
            auth,
            std::sync::Arc::clone(&hub),
            clock,
            random,
            Vec::new(),
        )
        .map_err(|e| format!("operator-plane stores: {e}"))?;
        admin.pairing = Some(palyra_proto::operator::pairing::PairingAdmin::new(
            enrollment,
            None,
            node_tcp.local_addr,
        ));
        let operator = palyra_proto::operator::Operator::daemon(
            env!("CARGO_PKG_VERSION"),
            std::time::Instant::now(),
            admin,
            http_tls.is_some(),
        );
        let http = GrpcHandle::serve(
            http_addr,
            std::sync::Arc::new(palyra_proto::operator::OperatorAcceptor {
                operator,
                config: Default::default(),
                tls: http_tls,
            }),
            Some(hub.notifier()),
        )
        .map_err(|e| format!("bind {http_addr}: {e}"))?;
        let mut endpoints = BTreeMap::new();
        endpoints.insert("http", http.local_addr.to_string());
        endpoints.insert("node_quic", handle.local_addr.to_string());
        endpoints.insert("node_tcp", node_tcp.local_addr.to_string());
        endpoints.insert("grpc", grpc.local_addr.to_string());
        write_endpoints(&state_dir, &endpoints).map_err(|e| e.to_string())?;
        let (tx, rx) = async_channel::bounded::<()>(1);
        if stdin_eof {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
                let _ = tx.send_blocking(());
            });
        } else {
            std::thread::spawn(move || {
                wait_for_termination();
                let _ = tx.send_blocking(());
            });
        }
        let _ = rx.recv().await;
        http.shutdown().await;
        grpc.shutdown().await;
        node_tcp.shutdown().await;
        handle.shutdown().await.map_err(|e| e.to_string())
    })
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_termination() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(mut signals) => {
            signals.forever().next();
        }
        Err(e) => eprintln!("palyrad-smol: cannot listen for signals: {e}"),
    }
}
