//! `enroll-bench`: identity and enrollment figures.
//!
//! 1. Pairing round trip in process (mint + Begin + Complete + approval + issuance and delivery
//!    of the certificate, checked by the device side), through the daemon's own code path:
//!    protobuf-encoded RPCs, the durable enrollment store (`state.json` and the trust file
//!    written and fsynced at every step), the CA on disk. Also the same exchange on the
//!    IO-free machine with the CA in memory, the closest shape to the original's measurement
//!    (0.67 ms per round trip, in memory, which also built a new CA every time).
//! 2. Handshakes per second on the mTLS QUIC listener (palyrad vs the quinn reference server,
//!    same quinn client; each handshake ends with a `node.health` answer, which proves the
//!    server accepted the client certificate) and on the node TLS listener (palyrad vs a
//!    tokio-rustls server with the same certificate and client-certificate policy; each
//!    handshake ends with the server's first HTTP/2 SETTINGS frame). With `--before PATH`
//!    another build's `palyrad` (on a copy of the same state) takes its turns too.
//!
//! Build first: `cargo build --release -p palyra-tokio -p quinn-peer -p palyra-bench`, then
//! `target/release/enroll-bench`.

use anyhow::Context;
use clap::Parser;
use palyra_bench::{
    bin_dir, builds, median, medians, require, start_palyrad_exe, start_printing_addr, Server,
    Table,
};
use palyra_gateway::enroll;
use palyra_gateway::store::{unix_ms, IdentityDir, CA_VALIDITY};
use palyra_proto::enroll::device::{CaTrust, DeviceKeys, DevicePairing, Progress};
use palyra_proto::enroll::gateway::{
    Authority, Begin, EnrollState, Enrollment, GatewayConfig, SignError, SignedCert, Standing,
};
use palyra_proto::enroll::Method;
use palyra_proto::identity::cert::{self, CertAuthority, Profile};
use palyra_proto::pb::palyra::node::v1::{
    BeginPairingSessionResponse, GetPairingRequestStatusResponse,
};
use palyra_proto::transport::PeerIdentity;
use prost::Message;
use rand_core::{OsRng, RngCore};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Identity and enrollment benchmark.
#[derive(Parser)]
struct Args {
    /// Pairing round trips per run.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// Handshakes per run on each listener.
    #[arg(long, default_value_t = 1000)]
    handshakes: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Another build's `palyrad` executable, measured alongside as "before" (handshakes).
    #[arg(long)]
    before: Option<PathBuf>,
}

fn ulid() -> String {
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    ulid::Ulid::from_parts(unix_ms(SystemTime::now()), u128::from_be_bytes(id)).to_string()
}

/// Waits for an enrollment operation's durable answer.
fn settle<T>(
    pending: palyra_gateway::enroll::Enrolled<T>,
) -> Result<T, palyra_proto::enroll::gateway::EnrollError> {
    pending
        .wait_blocking(Duration::from_secs(30))
        .unwrap_or_else(|| {
            Err(palyra_proto::enroll::gateway::EnrollError::Unsaved(
                "no answer within 30 s".into(),
            ))
        })
}

/// Polls an RPC's answer until it arrives (it completes once the change is durable).
fn answered(
    mut answer: palyra_gateway::grpc::Answer,
) -> Result<Vec<u8>, palyra_proto::grpc::Status> {
    loop {
        if let Some(result) = answer() {
            return result;
        }
        std::thread::sleep(Duration::from_micros(20));
    }
}

/// Durable pairing round trips in `dir`; returns milliseconds per round trip.
fn durable_rounds(dir: &Path, rounds: usize) -> anyhow::Result<Vec<f64>> {
    let ca = IdentityDir::open(dir.join("identity"))?
        .load_or_create_ca(&mut OsRng, SystemTime::now())?;
    let pin = cert::cert_spki_fingerprint(ca.cert_der())?;
    let random: palyra_gateway::operator::RandomFill = Arc::new(|b: &mut [u8]| OsRng.fill_bytes(b));
    let docs: Arc<dyn palyra_gateway::store::DocStore> =
        Arc::new(palyra_gateway::store::FileDocStore::open(dir)?);
    let trust = IdentityDir::open(dir.join("identity"))?.load_trust()?;
    let hub = Arc::new(palyra_gateway::node::hub::NodeHub::in_memory(Arc::new(
        palyra_proto::identity::trust::TrustIndex::new(&trust),
    )));
    let (store, _trust) = palyra_gateway::node::open_enrollment(
        dir,
        None,
        docs,
        GatewayConfig::default(),
        &hub,
        random,
    )?;
    let peer = PeerIdentity::default();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let now = unix_ms(SystemTime::now());
        let (_, code) =
            settle(store.with(move |m, _, r| m.mint(now, Method::Qr, 600_000, "bench", r)))
                .map_err(|e| anyhow::anyhow!("mint: {e}"))?;
        let mut device = DevicePairing::new(
            DeviceKeys::generate(&mut OsRng),
            &ulid(),
            Method::Qr,
            &code,
            CaTrust::Pinned(pin),
        )
        .map_err(anyhow::Error::msg)?;
        let offer = enroll::begin(
            &store,
            &peer,
            now,
            &device.begin_request(None).encode_to_vec(),
        )
        .and_then(answered)
        .map_err(|s| anyhow::anyhow!("Begin: {s}"))?;
        let offer = BeginPairingSessionResponse::decode(offer.as_slice())?;
        let complete = device.complete_request(&offer)?.encode_to_vec();
        enroll::complete(&store, now, &complete)
            .and_then(answered)
            .map_err(|s| anyhow::anyhow!("Complete: {s}"))?;
        let session = offer.session_id.clone();
        settle(store.with(move |m, a, _| m.approve(a, now, &session, false, None)))
            .map_err(|e| anyhow::anyhow!("approve: {e}"))?;
        let status = enroll::status(&store, now, &device.status_request().encode_to_vec())
            .and_then(answered)
            .map_err(|s| anyhow::anyhow!("status: {s}"))?;
        let status = GetPairingRequestStatusResponse::decode(status.as_slice())?;
        match device.on_status(&status)? {
            Progress::Issued(_) => {}
            other => anyhow::bail!("no certificate: {other:?}"),
        }
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// The CA in memory as the machine's authority.
struct MemoryCa(CertAuthority);

impl Authority for MemoryCa {
    fn standing(&self, _device_id: &str) -> Standing {
        Standing::Unknown
    }

    fn sign(
        &self,
        device_id: &str,
        key: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, SignError> {
        let now = SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms);
        let spki = cert::spki_of_public(key)?;
        let issued = self.0.issue(
            &mut OsRng,
            &Profile::Device { device_id },
            spki,
            now,
            Duration::from_millis(validity_ms),
        )?;
        Ok(SignedCert {
            pem: issued.pem,
            ca_pem: self.0.cert_pem()?,
            expires_at_unix_ms: unix_ms(issued.not_after),
        })
    }
}

/// The same exchange on the IO-free machine, CA in memory; milliseconds per round trip.
fn memory_rounds(rounds: usize) -> anyhow::Result<Vec<f64>> {
    let ca = CertAuthority::generate(&mut OsRng, SystemTime::now(), CA_VALIDITY, "bench CA")?;
    let ca_der = ca.cert_der().to_vec();
    let authority = MemoryCa(ca);
    let mut machine = Enrollment::new(GatewayConfig::default(), EnrollState::default());
    let mut random = OsRng;
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let started = Instant::now();
        let now = unix_ms(SystemTime::now());
        let (_, code) = machine.mint(now, Method::Qr, 600_000, "bench", &mut random)?;
        let mut device = DevicePairing::new(
            DeviceKeys::generate(&mut OsRng),
            &ulid(),
            Method::Qr,
            &code,
            CaTrust::Certificate(ca_der.clone()),
        )
        .map_err(anyhow::Error::msg)?;
        let begin = Begin {
            version: 1,
            client_kind: "node",
            method: Method::Qr,
            code: &code,
            replay: None,
        };
        let begun = machine.begin(now, None, &begin, &mut random)?;
        let offer = palyra_proto::enroll::wire::offer_response(1, &begun);
        let c = device.complete_request(&offer)?;
        let hello = palyra_proto::enroll::wire::hello_of(&c).map_err(|s| anyhow::anyhow!("{s}"))?;
        machine.complete(&authority, now, &hello)?;
        machine.approve(&authority, now, &c.session_id, false, None)?;
        let status = machine.status(&authority, now, &c.session_id, device.device_id())?;
        let delivered = status.delivered.context("no certificate delivered")?;
        let answer = GetPairingRequestStatusResponse {
            v: 1,
            status: status.request.state.as_str().into(),
            mtls_client_certificate_pem: delivered.pem,
            gateway_ca_certificate_pem: delivered.ca_pem,
            ..Default::default()
        };
        match device.on_status(&answer)? {
            Progress::Issued(_) => {}
            other => anyhow::bail!("no certificate: {other:?}"),
        }
        while machine.poll_event().is_some() {}
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// A gateway state with one device identity (`palyrad cert issue-device`).
fn prepare_state(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let status = Command::new(bin.join("palyrad"))
        .args([
            "cert",
            "issue-device",
            "--device-id",
            "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "--state-dir",
        ])
        .arg(dir)
        .arg("--out")
        .arg(dir.join("node"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "palyrad cert issue-device failed");
    Ok(())
}

/// QUIC handshakes/s: each connection answers one node.health, then closes.
async fn quic_handshakes(
    server: &Server,
    state: &Path,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let node = state.join("node");
    let config = quinn_peer::client_config(
        &node.join("ca.crt.pem"),
        Some((&node.join("device.crt.pem"), &node.join("device.key.pem"))),
        quinn_peer::ALPN,
    )?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (endpoint, config, addr) = (endpoint.clone(), config.clone(), server.addr);
        let share = total / concurrency + usize::from(worker < total % concurrency);
        tasks.spawn(async move {
            for _ in 0..share {
                let conn = endpoint
                    .connect_with(config.clone(), addr, "localhost")?
                    .await?;
                let answer = quinn_peer::call(
                    &conn,
                    &serde_json::json!({"protocol_version": 1, "method": "node.health"}),
                )
                .await?;
                anyhow::ensure!(!answer.is_empty(), "no health answer");
                conn.close(0u32.into(), b"done");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    endpoint.wait_idle().await;
    Ok(rate)
}

/// TLS handshakes/s: mTLS, HTTP/2 preface out, the server's first SETTINGS frame in.
async fn tls_handshakes(
    addr: std::net::SocketAddr,
    state: &Path,
    total: usize,
    concurrency: usize,
) -> anyhow::Result<f64> {
    let node = state.join("node");
    let mut roots = rustls::RootCertStore::empty();
    for c in quinn_peer::certs(&node.join("ca.crt.pem"))? {
        roots.add(c)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        quinn_peer::certs(&node.join("device.crt.pem"))?,
        quinn_peer::key(&node.join("device.key.pem"))?,
    )?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let connector = connector.clone();
        let share = total / concurrency + usize::from(worker < total % concurrency);
        tasks.spawn(async move {
            for _ in 0..share {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let mut stream = connector.connect(name, tcp).await?;
                let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
                hello.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
                stream.write_all(&hello).await?;
                let mut head = [0u8; 9];
                stream.read_exact(&mut head).await?;
                anyhow::ensure!(head[3] == 4, "the server's first frame is not SETTINGS");
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    require(
        &bin,
        &["palyrad", "quinn-server", "tls-peer"],
        "cargo build --release -p palyra-tokio -p quinn-peer -p palyra-bench",
    )?;
    let work = tempfile::tempdir()?;

    // 1. Pairing round trips.
    let (mut durable, mut memory) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let dir = work.path().join(format!("pairing-{run}"));
        durable.push(median(durable_rounds(&dir, args.rounds)?));
        memory.push(median(memory_rounds(args.rounds)?));
    }
    let (durable, memory) = (median(durable), median(memory));
    println!(
        "pairing round trip, durable store    median {durable:.3} ms ({:.0}/s)   original (in memory) 0.67 ms   original/ours {:.2}",
        1e3 / durable,
        0.67 / durable
    );
    println!(
        "pairing round trip, machine in memory median {memory:.3} ms ({:.0}/s)   original (in memory) 0.67 ms   original/ours {:.2}",
        1e3 / memory,
        0.67 / memory
    );

    // 2. Handshakes: every build's palyrad (each on its own copy of one state, so the same
    //    device certificates work everywhere), then the peer (last); warm-up, then turns.
    let state = work.path().join("gateway");
    prepare_state(&bin, &state)?;
    let builds = builds(&bin, args.before.as_deref())?;
    let mut palyrads = Vec::new();
    let mut node_tcp = Vec::new();
    for (name, dir) in &builds {
        let copy = work.path().join(name);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&state)
            .arg(&copy)
            .status()?;
        anyhow::ensure!(status.success(), "copying the gateway state failed");
        let server = start_palyrad_exe(&dir.join("palyrad"), &copy, "node_quic")?;
        let endpoints: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(copy.join("endpoints.json"))?)?;
        node_tcp.push(
            endpoints["node_tcp"]
                .as_str()
                .context("endpoints.json has no node_tcp")?
                .parse::<std::net::SocketAddr>()?,
        );
        palyrads.push(server);
    }
    // The peers serve the certificates our palyrad made at its start (the CA is the same).
    let id = work.path().join("ours").join("identity");
    let mut quinn = Command::new(bin.join("quinn-server"));
    quinn
        .arg("--ca")
        .arg(id.join("ca.crt.pem"))
        .arg("--cert")
        .arg(id.join("server.crt.pem"))
        .arg("--key")
        .arg(id.join("server.key.pem"))
        .stdin(std::process::Stdio::piped());
    let quinn = start_printing_addr(quinn)?;
    let mut tls_peer = Command::new(bin.join("tls-peer"));
    tls_peer
        .arg("--ca")
        .arg(id.join("ca.crt.pem"))
        .arg("--cert")
        .arg(id.join("server-ecdsa.crt.pem"))
        .arg("--key")
        .arg(id.join("server-ecdsa.key.pem"))
        .stdin(std::process::Stdio::piped());
    let tls_peer = start_printing_addr(tls_peer)?;
    let quic: Vec<&Server> = palyrads.iter().chain([&quinn]).collect();
    let tls: Vec<(&Server, std::net::SocketAddr)> = palyrads
        .iter()
        .zip(node_tcp)
        .chain([(&tls_peer, tls_peer.addr)])
        .collect();
    for server in &quic {
        quic_handshakes(server, &state, 50, 4).await?;
    }
    for (_, addr) in &tls {
        tls_handshakes(*addr, &state, 50, 4).await?;
    }
    let (mut quic_rates, mut tls_rates) =
        (vec![Vec::new(); quic.len()], vec![Vec::new(); tls.len()]);
    // Server CPU ticks spent in the measured runs.
    let (mut quic_cpu, mut tls_cpu) = (vec![0u64; quic.len()], vec![0u64; tls.len()]);
    let ticks = |s: &Server| s.cpu_ticks().unwrap_or(0);
    for _ in 0..args.runs {
        for (i, server) in quic.iter().enumerate() {
            let t = ticks(server);
            quic_rates[i]
                .push(quic_handshakes(server, &state, args.handshakes, args.concurrency).await?);
            quic_cpu[i] += ticks(server) - t;
        }
        for (i, (server, addr)) in tls.iter().enumerate() {
            let t = ticks(server);
            tls_rates[i]
                .push(tls_handshakes(*addr, &state, args.handshakes, args.concurrency).await?);
            tls_cpu[i] += ticks(server) - t;
        }
    }
    // Milliseconds of server CPU per handshake (a tick is 10 ms).
    let per = |ticks: Vec<u64>| -> Vec<f64> {
        ticks
            .into_iter()
            .map(|t| t as f64 * 10.0 / (args.runs * args.handshakes) as f64)
            .collect()
    };
    println!(
        "handshakes: medians of {} runs of {} taken in turns, {} in flight; the peer is quinn \
         for QUIC and tokio-rustls for TLS",
        args.runs, args.handshakes, args.concurrency
    );
    let mut table = Table::for_builds(&builds, "peer");
    table.row(
        "mTLS QUIC handshakes (+node.health)",
        &medians(quic_rates),
        0,
        "/s",
    );
    table.row("  server CPU per handshake", &per(quic_cpu), 3, "ms");
    table.row(
        "mTLS TLS handshakes (+h2 SETTINGS)",
        &medians(tls_rates),
        0,
        "/s",
    );
    table.row("  server CPU per handshake", &per(tls_cpu), 3, "ms");
    table.print();
    Ok(())
}
