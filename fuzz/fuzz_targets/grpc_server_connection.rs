//! The HTTP/2 + gRPC server connection (with the gateway services) fed arbitrary bytes after a
//! valid preface: never panics, keeps its output bounded, and answers bad input with GOAWAY or
//! RST_STREAM rather than growing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::grpc::{gateway_router, DaemonInfo};
use palyra_proto::grpc::server::ServerConfig;
use palyra_proto::grpc::service::{RouterFactory, ServerConnection};
use palyra_proto::h2::frame::PREFACE;
use palyra_proto::transport::StreamMachine;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

fn routers() -> &'static RouterFactory {
    static ROUTERS: OnceLock<RouterFactory> = OnceLock::new();
    ROUTERS.get_or_init(|| {
        let info = Arc::new(DaemonInfo {
            version: "f".into(),
            git_hash: "f".into(),
            build_profile: "f".into(),
            started: Instant::now(),
        });
        gateway_router(info).expect("descriptors")
    })
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let router = routers()();
    let mut conn = ServerConnection::new(ServerConfig::default(), router, now);
    conn.handle_input(now, PREFACE);
    // Feed in two halves with a timer tick between them.
    let (a, b) = data.split_at(data.len() / 2);
    conn.handle_input(now, a);
    let mut out = 0usize;
    while let Some(bytes) = conn.poll_transmit() {
        out += bytes.len();
    }
    conn.handle_timeout(now + Duration::from_millis(10));
    conn.handle_input(now, b);
    while let Some(bytes) = conn.poll_transmit() {
        out += bytes.len();
    }
    conn.handle_timeout(now + Duration::from_secs(60));
    while let Some(bytes) = conn.poll_transmit() {
        out += bytes.len();
    }
    // Output stays proportional to input (no amplification beyond fixed per-frame answers).
    assert!(
        out <= 64 * 1024 + data.len() * 64,
        "{out} bytes out for {} in",
        data.len()
    );
});
