//! `palyrad-smol`: the node plane served by the smol driver, from the same state directory
//! layout as `palyrad`. Used by the conformance suite to test the smol driver over real sockets.
//!
//! Usage: `palyrad-smol --state-dir DIR [--node-addr 127.0.0.1:7444]`; writes `DIR/endpoints.json`
//! and serves until SIGINT/SIGTERM (or stdin closes when `--exit-on-stdin-eof` is given).

use palyra_gateway::daemon::{Daemon, DaemonSettings, Endpoints};
use palyra_gateway::node::NodePlaneOptions;
use palyra_smol::grpc::GrpcHandle;
use palyra_smol::NodePlaneHandle;
use rand_core::OsRng;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

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
    let random: palyra_gateway::operator::RandomFill =
        std::sync::Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
    let settings = DaemonSettings {
        state_dir,
        node: NodePlaneOptions::default(),
        grpc_tls: false,
        http_tls,
        enrollment: Default::default(),
        advertise_addr: None,
        console_origins: Vec::new(),
        admin_token: std::env::var("PALYRA_ADMIN_TOKEN").ok(),
        version: env!("CARGO_PKG_VERSION").into(),
        git_hash: "unknown".into(),
    };
    let mut daemon = Daemon::open(settings, random, &mut OsRng).map_err(|e| e.to_string())?;
    if let Some(token) = daemon.new_admin_token.take() {
        eprintln!("palyrad-smol: admin token (shown once, store it now): {token}");
    }
    let plane = daemon.plane.take().ok_or("node plane already taken")?;
    smol::block_on(async {
        let handle = NodePlaneHandle::start(node_addr, plane)
            .map_err(|e| format!("bind {node_addr}: {e}"))?;
        let grpc = GrpcHandle::start(grpc_addr, daemon.gateway.clone())
            .map_err(|e| format!("bind {grpc_addr}: {e}"))?;
        // TCP on the QUIC socket's port number; any free port if that one is taken.
        let node_tcp = GrpcHandle::start(handle.local_addr, daemon.node.clone())
            .or_else(|_| {
                GrpcHandle::start(
                    std::net::SocketAddr::new(handle.local_addr.ip(), 0),
                    daemon.node.clone(),
                )
            })
            .map_err(|e| format!("bind node TLS listener: {e}"))?;
        let operator = daemon
            .operator(node_tcp.local_addr)
            .map_err(|e| e.to_string())?;
        let http = GrpcHandle::serve(http_addr, operator, Some(daemon.notifier()))
            .map_err(|e| format!("bind {http_addr}: {e}"))?;
        daemon
            .write_endpoints(&Endpoints {
                http: http.local_addr,
                node_quic: handle.local_addr,
                node_tcp: node_tcp.local_addr,
                grpc: grpc.local_addr,
            })
            .map_err(|e| e.to_string())?;
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
