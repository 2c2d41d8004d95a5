//! The sans-IO TLS server wrapper (node TLS listener) fed arbitrary bytes: never panics, never
//! builds the inner connection without a handshake, ends closed with bounded output.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::store::IdentityDir;
use palyra_proto::grpc::service::{Router, ServerConnection};
use palyra_proto::identity::cert::ServerKeyKind;
use palyra_proto::quic::tls::{self, ServerCertSlot};
use palyra_proto::transport::tls::{TlsStream, HANDSHAKE_TIMEOUT};
use palyra_proto::transport::StreamMachine;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

fn config() -> Arc<rustls::ServerConfig> {
    static CONFIG: OnceLock<Arc<rustls::ServerConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let dir = tempfile::tempdir().expect("temp dir");
            let ids = IdentityDir::open(dir.path()).expect("identity dir");
            let mut rng = ChaCha20Rng::seed_from_u64(1);
            let now = SystemTime::now();
            let ca = ids.load_or_create_ca(&mut rng, now).expect("ca");
            let server = ids
                .load_or_issue_server_cert(
                    &mut rng,
                    now,
                    ServerKeyKind::EcdsaP256,
                    &[],
                    Duration::from_secs(86_400),
                    Duration::from_secs(3600),
                )
                .expect("server cert");
            let key =
                tls::certified_key(vec![server.cert.der], server.key.pkcs8_der().expect("key"))
                    .expect("certified key");
            Arc::new(
                tls::node_tcp_server_config(ca.cert_der(), ServerCertSlot::new(key))
                    .expect("config"),
            )
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut conn = TlsStream::server(config(), now, |peer, now| {
        ServerConnection::with_peer(Default::default(), Router::new(Vec::new()), peer, now)
    })
    .expect("server");
    let mut out = 0usize;
    for chunk in data.chunks(509) {
        conn.handle_input(now, chunk);
        while let Some(bytes) = conn.poll_transmit() {
            out += bytes.len();
        }
    }
    assert!(
        conn.inner().is_none(),
        "no handshake can complete from one side's bytes"
    );
    conn.handle_timeout(now + HANDSHAKE_TIMEOUT);
    while let Some(bytes) = conn.poll_transmit() {
        out += bytes.len();
    }
    assert!(conn.is_closed());
    assert!(out <= 16 * 1024, "{out} bytes out");
});
