//! Several gateways, one fleet: three real `palyrad` processes sharing their state on a real
//! three-server NATS JetStream cluster (Debian's nats-server) on loopback. Nodes pair, publish,
//! stream, fail over and are revoked across gateways, through the same node plane and CLI a
//! user has.

use palyra_gateway::serve::node_connection::NodeConnection;
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseKind};
use palyra_proto::quic::ClientLimits;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{fixed_port, Daemon};

const ADMIN_TOKEN: &str = "cluster-suite-admin-token-0123456789abcdef";

/// The suite's tests run one at a time: each runs three NATS servers and three gateways, and two
/// cores shared by several such fleets would measure the machine, not the cluster.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONE.lock().await
}

fn rt() -> palyra_gateway::runtime::Rt {
    palyra_tokio::Tokio::current()
}

/// A NATS JetStream cluster of three servers on loopback, each killable and restartable.
struct Nats {
    dir: tempfile::TempDir,
    servers: Vec<Option<Child>>,
    client: Vec<u16>,
    monitor: Vec<u16>,
}

fn nats_server() -> &'static str {
    let found = Command::new("nats-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "nats-server is not installed: apt-get install nats-server (.ci/run does)"
    );
    "nats-server"
}

impl Nats {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let client: Vec<u16> = (0..3).map(|_| fixed_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| fixed_port()).collect();
        let monitor: Vec<u16> = (0..3).map(|_| fixed_port()).collect();
        let route_urls = routes
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for i in 0..3 {
            let config = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\n\
                 jetstream {{ store_dir: \"{}\" }}\n\
                 cluster {{ name: palyra-suite, listen: 127.0.0.1:{}, routes: [{route_urls}] }}\n",
                client[i],
                monitor[i],
                dir.path().join(format!("js{i}")).display(),
                routes[i],
            );
            std::fs::write(dir.path().join(format!("n{i}.conf")), config).expect("nats config");
        }
        let mut nats = Self {
            dir,
            servers: (0..3).map(|_| None).collect(),
            client,
            monitor,
        };
        for i in 0..3 {
            nats.spawn(i);
        }
        for i in 0..3 {
            nats.wait_ready(i);
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let child = Command::new(nats_server())
            .arg("-c")
            .arg(self.dir.path().join(format!("n{i}.conf")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.servers[i] = Some(child);
    }

    /// Waits until server `i` says JetStream is healthy (its meta leader is known).
    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(body) = http_get(self.monitor[i], "/healthz") {
                if body.contains("\"ok\"") {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server n{i} not healthy in 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn urls(&self) -> String {
        self.client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill(i);
        }
    }
}

/// A plain HTTP/1.1 GET on loopback (with the admin token); the body, or `None` if nothing answered.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// One gateway of the fleet.
struct Gateway {
    name: String,
    state: PathBuf,
    daemon: Option<Daemon>,
    node: SocketAddr,
    node_tcp: SocketAddr,
    http: String,
    grpc: String,
}

impl Gateway {
    fn start(name: &str, state: &Path, nats: &Nats, extra: &[&str]) -> Self {
        let urls = nats.urls();
        let mut args = vec![
            "--store-backend",
            "nats",
            "--nats-server",
            &urls,
            "--gateway-name",
            name,
        ];
        args.extend_from_slice(extra);
        let (daemon, endpoints) = common::spawn_daemon_args(
            state,
            "127.0.0.1:0",
            &args,
            &[("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)],
        );
        let endpoint = |key: &str| endpoints[key].as_str().expect("endpoint").to_owned();
        Self {
            name: name.to_owned(),
            state: state.to_owned(),
            daemon: Some(daemon),
            node: endpoint("node_quic").parse().expect("node addr"),
            node_tcp: endpoint("node_tcp").parse().expect("node TLS addr"),
            http: format!("http://{}", endpoint("http")),
            grpc: endpoint("grpc"),
        }
    }

    fn sigkill(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            daemon.sigkill();
        }
    }
}

/// Three gateways on `nats` sharing one CA (the first one's, copied before the others start).
fn fleet(nats: &Nats, dir: &Path) -> Vec<Gateway> {
    fleet_with(nats, dir, &[])
}

/// [`fleet`] with more `palyrad` arguments for every gateway.
fn fleet_with(nats: &Nats, dir: &Path, extra: &[&str]) -> Vec<Gateway> {
    let first = Gateway::start("gw-a", &dir.join("a"), nats, extra);
    let mut fleet = vec![first];
    for name in ["b", "c"] {
        let identity = dir.join(name).join("identity");
        std::fs::create_dir_all(&identity).expect("identity dir");
        for file in ["ca.crt.pem", "ca.key.pem"] {
            std::fs::copy(
                fleet[0].state.join("identity").join(file),
                identity.join(file),
            )
            .expect("copy the CA");
        }
        fleet.push(Gateway::start(
            &format!("gw-{name}"),
            &dir.join(name),
            nats,
            extra,
        ));
    }
    fleet
}

/// Runs the `palyra` CLI; its stdout, or a panic with its stderr.
fn palyra(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args(args)
        .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("run palyra");
    assert!(
        out.status.success(),
        "palyra {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Starts `palyra node enroll` with the invite of a code minted on `mint`, through `via`.
fn begin_enroll(mint: &Gateway, via: &Gateway, identity: &Path) -> Child {
    let code = json(&palyra(&[
        "pairing", "code", "--daemon", &mint.http, "--method", "qr", "--json",
    ]));
    let invite = code["invite"].as_str().expect("invite").to_owned();
    Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args(["node", "enroll", "--invite", &invite, "--gateway"])
        .arg(via.node.to_string())
        .arg("--identity")
        .arg(identity)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(enroll_log(identity)).expect("enroll log"))
        .spawn()
        .expect("palyra node enroll")
}

/// Where `palyra node enroll` for `identity` writes its stderr.
fn enroll_log(identity: &Path) -> PathBuf {
    identity.with_extension("enroll.log")
}

/// The pending pairing request, as `on` lists it.
fn pending_request(on: &Gateway, identity: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = json(&palyra(&[
            "pairing", "list", "--daemon", &on.http, "--json",
        ]));
        if let Some(request) = list["requests"]
            .as_array()
            .expect("requests")
            .iter()
            .find(|r| r["state"] == "pending_approval")
        {
            return request["request_id"].as_str().expect("id").to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no pending request on {}; palyra node enroll said: {}",
            on.name,
            std::fs::read_to_string(enroll_log(identity)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn finish_enroll(mut child: Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("enroll") {
            assert!(status.success(), "palyra node enroll failed: {status}");
            return;
        }
        assert!(Instant::now() < deadline, "enrollment did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Pairs a node: code minted on `mint`, enrolled through `via`, approved on `approve`.
fn pair(mint: &Gateway, via: &Gateway, approve: &Gateway, identity: &Path) -> String {
    let child = begin_enroll(mint, via, identity);
    let request = pending_request(approve, identity);
    palyra(&["pairing", "approve", &request, "--daemon", &approve.http]);
    finish_enroll(child);
    palyra_gateway::store::DeviceIdentityFiles::load(identity)
        .expect("identity")
        .device_id
        .expect("device id")
}

async fn connect(identity: &Path, gateway: SocketAddr) -> NodeConnection {
    let files = palyra_gateway::store::DeviceIdentityFiles::load(identity).expect("identity");
    let tls = palyra_proto::quic::tls::client_config(
        &files.ca_der,
        Some((vec![files.cert_der.clone()], files.key_der.clone())),
        palyra_proto::quic::ALPN,
    )
    .expect("client tls");
    NodeConnection::connect(
        &rt(),
        gateway,
        "localhost",
        Arc::new(tls),
        ClientLimits::default(),
    )
    .await
    .expect("connect")
}

fn publish(name: &str, payload: serde_json::Value, id: Option<String>) -> NodeRequest {
    NodeRequest::PublishEvent(PublishEvent {
        name: name.into(),
        payload,
        to: None,
        id,
    })
}

/// Publishes and returns the acknowledged seq.
async fn publish_acked(conn: &NodeConnection, payload: serde_json::Value) -> Result<u64, String> {
    publish_with_id(conn, payload, None).await
}

/// Publishes with the event ID `id` and returns the acknowledged seq.
async fn publish_with_id(
    conn: &NodeConnection,
    payload: serde_json::Value,
    id: Option<String>,
) -> Result<u64, String> {
    let frames = conn
        .request(&publish("cluster.test", payload, id))
        .await
        .map_err(|e| e.to_string())?
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let frame = frames.first().ok_or("no answer")?;
    match frame.kind {
        ResponseKind::Ack => frame.seq.ok_or_else(|| "ack without seq".into()),
        _ => Err(format!("{frame:?}")),
    }
}

/// Every stored event from the start, as `conn`'s gateway serves them: seq -> payload.
async fn all_events(conn: &NodeConnection) -> BTreeMap<u64, serde_json::Value> {
    let frames = conn
        .request(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        })
        .await
        .expect("stream")
        .collect()
        .await
        .expect("events");
    let mut out = BTreeMap::new();
    for frame in frames {
        let seq = frame.seq.expect("seq");
        let previous = out.insert(seq, frame.event.expect("event").payload);
        assert!(previous.is_none(), "seq {seq} delivered twice");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_gateways_acts_as_one() {
    let _one = one_at_a_time().await;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let gws = fleet(&nats, dir.path());
    let (a, b, c) = (&gws[0], &gws[1], &gws[2]);

    // A code minted on A is used through B; the request is approved on C.
    let alice = dir.path().join("alice");
    let alice_id = pair(a, b, c, &alice);
    let bob = dir.path().join("bob");
    pair(b, c, a, &bob);

    // Alice publishes through A while Bob follows through B: every event once, in order.
    let follower = connect(&bob, b.node).await;
    let mut follow = follower
        .request(&NodeRequest::StreamEvents {
            resume_from: Some(0),
            follow: true,
        })
        .await
        .expect("follow");
    let publisher = connect(&alice, a.node).await;
    let mut acked = Vec::new();
    for k in 0..40 {
        acked.push(
            publish_acked(&publisher, serde_json::json!({ "k": k }))
                .await
                .expect("published"),
        );
    }
    assert_eq!(acked, (1..=40).collect::<Vec<u64>>(), "gap-free seqs");
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let frame = tokio::time::timeout(Duration::from_secs(10), follow.next())
            .await
            .expect("live events within 10 s")
            .expect("stream open")
            .expect("a frame");
        let payload = frame.event.expect("event").payload;
        seen.push((frame.seq.expect("seq"), payload["k"].as_u64().expect("k")));
    }
    let expected: Vec<(u64, u64)> = (0..40).map(|k| (k + 1, k)).collect();
    assert_eq!(seen, expected, "B delivered A's events once each, in order");
    // The same log from C.
    let reader = connect(&bob, c.node).await;
    assert_eq!(all_events(&reader).await.len(), 40);
    reader.close().await;

    // `palyra cluster status` on C: the three gateways and healthy streams.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = json(&palyra(&[
            "cluster", "status", "--json", "--daemon", &c.http,
        ]));
        let names: Vec<&str> = report["gateways"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["name"].as_str()).collect())
            .unwrap_or_default();
        if names == ["gw-a", "gw-b", "gw-c"] || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(report["gateway"], "gw-c", "{report}");
    assert_eq!(report["gateways"][2]["this"], true, "{report}");
    let events = report["streams"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "palyra_EVENTS"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(events["ok"], true, "{report}");
    assert_eq!(events["replicas"], 3, "{report}");
    assert!(events["last_seq"].as_u64() >= Some(40), "{report}");
    let text = palyra(&["cluster", "status", "--daemon", &a.http]);
    assert!(
        text.contains("gateways (3)") && text.contains("palyra_EVENTS"),
        "{text}"
    );

    // Revocation on C closes Alice's connection on A within a second.
    let revoked_at = Instant::now();
    palyra(&["devices", "revoke", &alice_id, "--daemon", &c.http]);
    let mut closed = None;
    while revoked_at.elapsed() < Duration::from_secs(3) {
        if publish_acked(&publisher, serde_json::json!({ "after": "revoke" }))
            .await
            .is_err()
        {
            closed = Some(revoked_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = closed.expect("A still served the revoked device 3 s later");
    assert!(
        closed < Duration::from_secs(1),
        "closed after {closed:?} (more than a second)"
    );
    follower.close().await;

    // A fourth gateway started with a CA of its own (the copy forgotten) refuses to serve.
    let urls = nats.urls();
    let out = Command::new(env!("CARGO_BIN_EXE_palyrad"))
        .arg("--state-dir")
        .arg(dir.path().join("d"))
        .args(["--node-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"])
        .args(["--http-addr", "127.0.0.1:0", "--store-backend", "nats"])
        .args(["--nats-server", &urls, "--gateway-name", "gw-d"])
        .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .expect("palyrad");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with another CA: {stderr}");
    assert!(
        stderr.contains("is not the one the cluster's gateways use"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_approving_one_request_issue_one_certificate() {
    let _one = one_at_a_time().await;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let gws = fleet(&nats, dir.path());
    let identity = dir.path().join("node");
    let child = begin_enroll(&gws[0], &gws[1], &identity);
    let request = pending_request(&gws[2], &identity);
    // B and C approve at once.
    let approvals: Vec<_> = [&gws[1], &gws[2]]
        .into_iter()
        .map(|gw| {
            Command::new(env!("CARGO_BIN_EXE_palyra"))
                .args(["pairing", "approve", &request, "--daemon", &gw.http])
                .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("approve")
        })
        .collect();
    let outcomes: Vec<_> = approvals
        .into_iter()
        .map(|c| c.wait_with_output().expect("approve"))
        .collect();
    let won = outcomes.iter().filter(|o| o.status.success()).count();
    assert!(won >= 1, "no approval succeeded: {outcomes:?}");
    finish_enroll(child);
    // Exactly one certificate is recorded for the device, whichever approval won.
    let devices = json(&palyra(&[
        "devices",
        "list",
        "--daemon",
        &gws[0].http,
        "--json",
    ]));
    let listed = devices.to_string();
    let device = palyra_gateway::store::DeviceIdentityFiles::load(&identity)
        .expect("identity")
        .device_id
        .expect("device id");
    let entry = devices["devices"]
        .as_array()
        .unwrap_or_else(|| panic!("devices: {listed}"))
        .iter()
        .find(|d| d["device_id"] == device.as_str())
        .unwrap_or_else(|| panic!("{device} not listed: {listed}"))
        .clone();
    let certs = entry["certificates"].as_array().map_or(0, Vec::len);
    assert_eq!(certs, 1, "one certificate for {device}: {listed}");
    assert_eq!(won, 1, "exactly one approval won: {outcomes:?}");
}

type Acked = Arc<Mutex<BTreeMap<u64, serde_json::Value>>>;

/// The ID a test node gives its `k`th event.
fn event_id(node: u32, k: u64) -> String {
    format!("n{node}-k{k}")
}

/// Publishes until told to stop or the connection dies, recording every acknowledged event;
/// returns the `k` of the event that got no answer.
async fn keep_publishing(conn: NodeConnection, node: u32, acked: Acked, from: u64) -> u64 {
    let mut k = from;
    loop {
        k += 1;
        let payload = serde_json::json!({ "node": node, "k": k });
        match publish_with_id(&conn, payload.clone(), Some(event_id(node, k))).await {
            Ok(seq) => {
                let previous = acked.lock().unwrap().insert(seq, payload);
                assert!(previous.is_none(), "seq {seq} acknowledged twice");
            }
            Err(_) => return k,
        }
    }
}

/// Checks that every acknowledged event is stored under its seq and seqs are gap-free.
fn assert_nothing_lost(stored: &BTreeMap<u64, serde_json::Value>, acked: &Acked) {
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        expected,
        "gap-free"
    );
    for (seq, payload) in acked.lock().unwrap().iter() {
        assert_eq!(
            stored.get(seq),
            Some(payload),
            "acknowledged seq {seq} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_publish_loses_nothing_acknowledged() {
    let _one = one_at_a_time().await;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gws = fleet(&nats, dir.path());
    let node = dir.path().join("node");
    pair(&gws[0], &gws[0], &gws[0], &node);
    let acked: Acked = Arc::default();

    // A subscriber on B follows from the start; the publisher is on A.
    let subscriber = connect(&node, gws[1].node).await;
    let publisher = connect(&node, gws[0].node).await;
    let task = tokio::spawn(keep_publishing(publisher, 1, acked.clone(), 0));
    tokio::time::sleep(Duration::from_millis(700)).await;
    gws[0].sigkill();
    let last_k = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the publisher noticed")
        .expect("publisher");
    assert!(
        acked.lock().unwrap().len() > 5,
        "too few events acknowledged before the kill to mean anything"
    );
    // It reconnects to C and carries on, first publishing again the event A never answered
    // (which A may have stored): with its ID, it is stored once either way.
    let again = connect(&node, gws[2].node).await;
    for k in last_k..last_k + 10 {
        let payload = serde_json::json!({ "node": 1, "k": k });
        let seq = publish_with_id(&again, payload.clone(), Some(event_id(1, k)))
            .await
            .expect("published through C");
        acked.lock().unwrap().insert(seq, payload);
    }
    // A subscriber resuming on B from a cursor in the middle gets every later event once.
    let middle = acked.lock().unwrap().len() as u64 / 2;
    let frames = subscriber
        .request(&NodeRequest::StreamEvents {
            resume_from: Some(middle),
            follow: false,
        })
        .await
        .expect("resume")
        .collect()
        .await
        .expect("events");
    let seqs: Vec<u64> = frames.iter().map(|f| f.seq.expect("seq")).collect();
    let total = all_events(&subscriber).await;
    let expected: Vec<u64> = (middle + 1..=total.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "resumed once each, in order, from the cursor"
    );
    assert_nothing_lost(&total, &acked);
    let mut ks: Vec<u64> = total
        .values()
        .map(|p| p["k"].as_u64().expect("k"))
        .collect();
    let stored = ks.len();
    ks.sort_unstable();
    ks.dedup();
    assert_eq!(
        ks.len(),
        stored,
        "each event stored once, the retried one too"
    );
    again.close().await;
    subscriber.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_killed_and_restarted_mid_publish_loses_nothing_acknowledged() {
    let _one = one_at_a_time().await;
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let gws = fleet(&nats, dir.path());
    let node = dir.path().join("node");
    pair(&gws[0], &gws[1], &gws[2], &node);
    let acked: Acked = Arc::default();
    let publishers = [0usize, 1]
        .into_iter()
        .map(|i| {
            let acked = acked.clone();
            let addr = gws[i].node;
            let node = node.clone();
            tokio::spawn(async move {
                let conn = connect(&node, addr).await;
                tokio::time::timeout(
                    Duration::from_secs(6),
                    keep_publishing(conn, i as u32, acked, 0),
                )
                .await
            })
        })
        .collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    nats.kill(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.spawn(0);
    nats.wait_ready(0);
    for publisher in publishers {
        // They publish through the whole outage: a timeout (still publishing) is the success.
        assert!(
            publisher.await.expect("publisher").is_err(),
            "a publisher stopped: its gateway refused while two of three servers were up"
        );
    }
    let reader = connect(&node, gws[2].node).await;
    let total = all_events(&reader).await;
    assert!(acked.lock().unwrap().len() > 20);
    assert_nothing_lost(&total, &acked);
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_publishes_fail_retryably_and_nothing_acknowledged_is_lost() {
    let _one = one_at_a_time().await;
    let mut nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let gws = fleet(&nats, dir.path());
    let node = dir.path().join("node");
    pair(&gws[0], &gws[0], &gws[0], &node);
    let conn = connect(&node, gws[1].node).await;
    let acked: Acked = Arc::default();
    for k in 0..5 {
        let payload = serde_json::json!({ "k": k });
        let seq = publish_acked(&conn, payload.clone())
            .await
            .expect("published");
        acked.lock().unwrap().insert(seq, payload);
    }
    // Two of three servers gone: no stream has a quorum.
    nats.kill(1);
    nats.kill(2);
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        publish_acked(&conn, serde_json::json!({ "k": "lost quorum" })),
    )
    .await
    .expect("answered within 30 s");
    let error = refused.expect_err("a publish without a quorum is refused");
    assert!(error.contains("Unavailable"), "{error}");
    assert!(error.contains("retry"), "says to retry: {error}");
    // What the gateway holds can still be read.
    assert_eq!(all_events(&conn).await.len(), 5, "reads are still served");
    // The quorum returns: publishing works again and nothing acknowledged is lost.
    nats.spawn(1);
    nats.spawn(2);
    nats.wait_ready(1);
    nats.wait_ready(2);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let payload = serde_json::json!({ "k": "back" });
        match publish_acked(&conn, payload.clone()).await {
            Ok(seq) => {
                acked.lock().unwrap().insert(seq, payload);
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "still refused: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every gateway catches up (their consumers resubscribe after the outage).
    for gw in &gws {
        let reader = connect(&node, gw.node).await;
        let want = acked.lock().unwrap().len();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut events = all_events(&reader).await;
        while events.len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
            events = all_events(&reader).await;
        }
        assert_nothing_lost(&events, &acked);
        reader.close().await;
    }
    conn.close().await;
}

/// A child process killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_on_one_gateway_calls_a_node_connected_to_another() {
    use std::io::{BufRead, Write};
    let _one = one_at_a_time().await;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = palyra_testkit::provider::Upstream::start("");
    let config = dir.path().join("palyrad.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbase_url = \"http://{}/v1\"\nmodel = \"scripted\"\n",
            upstream.addr
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();
    let gws = fleet_with(&nats, dir.path(), &["--config", &config]);
    let (a, b) = (&gws[0], &gws[1]);
    // The node pairs through B and serves a capability there.
    let identity = dir.path().join("node");
    pair(b, b, b, &identity);
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"system.echo": {"description": "Echoes its input", "input_schema": {"type": "object"}}}"#,
    )
    .expect("spec");
    let mut node = Killed(
        Command::new(env!("CARGO_BIN_EXE_palyra"))
            .args(["node", "run", "--identity"])
            .arg(&identity)
            .args(["--capability", "system.echo=cat", "--capability-spec"])
            .arg(&spec)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("palyra node run"),
    );
    let mut lines = std::io::BufReader::new(node.0.stdout.take().expect("stdout")).lines();
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("capabilities_registered")),
        "the node registered its capability on B"
    );
    // A run started on A calls it (approved on the terminal).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (out, err) = loop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_palyra"))
            .args([
                "agent",
                "run",
                "--session",
                "cluster",
                r#"check [[tool:system_echo {"text":"hi"}]]"#,
            ])
            .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PALYRA_DAEMON_URL", &a.http)
            .env("PALYRA_GRPC", &a.grpc)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("palyra agent run");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"y\n")
            .expect("approve");
        let output = child.wait_with_output().expect("agent run");
        let out = String::from_utf8_lossy(&output.stdout).into_owned();
        let err = String::from_utf8_lossy(&output.stderr).into_owned();
        // Until A has heard B's presence for the node, the model is offered no such tool.
        if out.contains(r#"Tool system_echo said: {"text":"hi"}"#) || Instant::now() > deadline {
            break (out, err);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        out.contains(r#"Tool system_echo said: {"text":"hi"}"#),
        "stdout: {out}\nstderr: {err}"
    );
    assert!(err.contains("[tool] result"), "{err}");
    // The run's tape is shared: B and C list it as A ran it and replay its events.
    // The CLI may see the run's last event before A's listing has it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let run = loop {
        let on_a = palyra(&["runs", "list", "--json", "--grpc", &a.grpc]);
        let run = json(on_a.lines().next().expect("a run on A"));
        if run["state"] == "done" || Instant::now() > deadline {
            break run;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let run_id = run["run_id"].as_str().expect("run id").to_owned();
    assert_eq!(run["state"], "done", "{run}");
    for gw in [&gws[1], &gws[2]] {
        let deadline = Instant::now() + Duration::from_secs(5);
        // The follower brings the run's records shortly after A wrote them.
        let (listed, seen) = loop {
            let listed = palyra(&["runs", "list", "--json", "--grpc", &gw.grpc]);
            let seen = json(listed.lines().find(|l| l.contains(&run_id)).unwrap_or("{}"));
            if seen["events"] == run["events"] || Instant::now() > deadline {
                break (listed, seen);
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(
            (&seen["state"], &seen["events"]),
            (&run["state"], &run["events"]),
            "{} lists {listed}",
            gw.name
        );
        let tape = palyra(&["runs", "show", &run_id, "--grpc", &gw.grpc]);
        assert!(
            tape.contains("hi"),
            "{} replays the tool result: {tape}",
            gw.name
        );
        // In A's order: seqs 1, 2, ... and the terminal status last.
        let seqs: Vec<u64> = tape
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<u64>>(),
            "{tape}"
        );
        assert!(tape.trim_end().ends_with("status DONE completed"), "{tape}");
    }
    // The node's own ExecuteCapability through A reaches its host on B too.
    let files = palyra_gateway::store::DeviceIdentityFiles::load(&identity).expect("identity");
    let device = files.device_id.clone().expect("device id");
    // `palyra cluster status` on A names B as the node's gateway.
    let report = json(&palyra(&[
        "cluster", "status", "--json", "--daemon", &a.http,
    ]));
    let holder = report["gateways"]
        .as_array()
        .and_then(|g| {
            g.iter().find(|g| {
                g["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|d| d == device.as_str()))
            })
        })
        .map(|g| g["name"].clone());
    assert_eq!(holder, Some(serde_json::json!("gw-b")), "{report}");
    let tls = palyra_proto::quic::tls::client_config(
        &files.ca_der,
        Some((vec![files.cert_der.clone()], files.key_der.clone())),
        palyra_proto::quic::tls::ALPN_H2,
    )
    .expect("client tls");
    let node_tcp = a.node_tcp;
    let answer = tokio::task::spawn_blocking(move || {
        use prost::Message;
        let mut client =
            palyra_testkit::grpc::Client::tls(node_tcp, Arc::new(tls)).expect("TLS connect");
        let request = palyra_proto::pb::palyra::node::v1::ExecuteCapabilityRequest {
            v: 1,
            device_id: Some(palyra_proto::pb::palyra::common::v1::CanonicalId { ulid: device }),
            capability: "system.echo".into(),
            input_json: br#"{"via":"gw-a"}"#.to_vec(),
            max_payload_bytes: 0,
        };
        let bytes = client
            .unary(
                "/palyra.node.v1.NodeService/ExecuteCapability",
                &request.encode_to_vec(),
            )
            .expect("ExecuteCapability");
        palyra_proto::pb::palyra::node::v1::ExecuteCapabilityResponse::decode(bytes)
            .expect("response")
    })
    .await
    .expect("call");
    assert!(answer.success, "{answer:?}");
    assert_eq!(answer.output_json, br#"{"via":"gw-a"}"#.to_vec());

    // A chat message on B's console is one run (B's), not one per gateway; its approval card
    // is decided from a console on C.
    tokio::task::block_in_place(|| {
        use serde_json::json;
        let mut person = gws[1].console(serde_json::Value::Null);
        person.until("snapshot.done");
        let mut other = gws[2].console(serde_json::Value::Null);
        other.until("snapshot.done");
        person.send(
            json!({"type":"chat.send","session_id":"cl","client_msg_id":"c1",
            "text": r#"check [[tool:system_echo {"text":"from the console"}]]"#}),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let card = loop {
            let m = other
                .next_before(deadline)
                .expect("an approval card within 60 s");
            if m["type"] == "a2ui.snapshot" && m["owner"] == "palyrad.runs" {
                break m;
            }
        };
        let surface = card["surface"].as_str().expect("surface").to_owned();
        other.send(
            json!({"type":"a2ui.action","surface":surface,"component":"decide",
            "action":"allow_once","value":{}}),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut replies = String::new();
        while !replies.contains("from the console") {
            let Some(m) = person.next_before(deadline) else {
                panic!("no tool result in the chat within 60 s: {replies}");
            };
            if m["session_id"] == "cl" && m["type"] != "chat.message" || m["role"] == "agent" {
                replies.push_str(m["text"].as_str().unwrap_or_default());
            }
        }
        // The other gateways did not try to run the message too.
        assert!(!replies.contains("could not start"), "{replies}");
    });
    std::thread::sleep(Duration::from_secs(1));
    for gw in &gws {
        let listed = palyra(&["runs", "list", "--json", "--grpc", &gw.grpc]);
        let console_runs = listed
            .lines()
            .filter(|l| l.contains("\"origin\":\"console\""))
            .count();
        assert_eq!(console_runs, 1, "{} lists {listed}", gw.name);
    }
}

impl Gateway {
    /// The operator listener's address.
    fn http_addr(&self) -> SocketAddr {
        self.http
            .trim_start_matches("http://")
            .parse()
            .expect("HTTP address")
    }

    /// A console stream on this gateway as an agent (the admin token), past its snapshot.
    fn agent(&self) -> StreamClient {
        let bearer = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
        let mut agent = StreamClient::connect(self.http_addr(), &bearer);
        agent.send(serde_json::json!({"type": "hello", "resume": null, "agent": "cluster"}));
        agent.until("snapshot.done");
        agent
    }

    /// A person's console stream on this gateway (logged in), saying hello with `resume`.
    fn console(&self, resume: serde_json::Value) -> StreamClient {
        let headers = console_login(self.http_addr(), ADMIN_TOKEN);
        let mut person = StreamClient::connect(self.http_addr(), &headers);
        person.send(serde_json::json!({"type": "hello", "resume": resume}));
        person
    }
}

use palyra_testkit::operator::{console_login, StreamClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_on_one_gateway_sees_what_was_posted_through_another_and_resumes_on_a_third() {
    use serde_json::json;
    let _one = one_at_a_time().await;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut gws = fleet(&nats, dir.path());
    tokio::task::block_in_place(|| {
        let mut person = gws[1].console(serde_json::Value::Null);
        person.until("snapshot.done");
        // An agent on A streams a reply and puts up a form; the person on B sees it live.
        let mut agent = gws[0].agent();
        agent.send(json!({"type":"chat.message","session_id":"main","message_id":"r1","text":"Hel","streaming":true}));
        agent.send(json!({"type":"chat.delta","message_id":"r1","text":"lo"}));
        agent.send(json!({"type":"chat.done","message_id":"r1"}));
        let form = json!({"v":1,"surface":"ask","components":[{"id":"f","type":"form",
            "props":{"title":"Go?","fields":[{"id":"n","label":"N","type":"number"}]}}]});
        agent.send(json!({"type":"a2ui.snapshot","document":form}));
        agent.send(json!({"type":"a2ui.patch","surface":"ask","base_version":1,
            "ops":[{"op":"replace","path":"/components/0/props/title","value":"Ready?"}]}));
        let got = person.until("a2ui.patch");
        let kinds: Vec<&str> = got.iter().filter_map(|m| m["type"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "chat.message",
                "chat.delta",
                "chat.done",
                "a2ui.snapshot",
                "a2ui.patch"
            ]
        );
        assert_eq!(got[4]["version"], 2);
        // The person's action on B reaches the agent on A.
        person.send(json!({"type":"a2ui.action","surface":"ask","component":"f","action":"submit","value":{"n":3}}));
        let action = agent.until("a2ui.action").pop().expect("action");
        assert_eq!(action["value"], json!({"n": 3}));
        // B dies; what the agent posts meanwhile reaches the person reconnecting to C with
        // the cursor B gave: exactly the missed records.
        let cursor = got.last().expect("records")["cursor"].clone();
        drop(person);
        gws[1].sigkill();
        for i in 0..3 {
            agent.send(json!({"type":"chat.message","session_id":"main","message_id":format!("m{i}"),"text":format!("missed {i}")}));
        }
        agent.send(json!({"type":"ping"}));
        agent.until("pong");
        let mut again = gws[2].console(cursor);
        again.send(json!({"type":"ping"}));
        let got = again.until("pong");
        assert_eq!(got[0]["resumed"], true, "{got:?}");
        let texts: Vec<&str> = got
            .iter()
            .filter(|m| m["type"] == "chat.message")
            .map(|m| m["text"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(texts, ["missed 0", "missed 1", "missed 2"], "{got:?}");
        // The person's action was logged after the cursor too; nothing else is replayed.
        assert_eq!(got[1]["type"], "a2ui.action", "{got:?}");
        assert_eq!(got.len(), 1 + 1 + 3 + 1, "{got:?}");
    });
    // A's /metrics times its console writes (on JetStream) like any store's.
    let metrics = http_get(gws[0].http_addr().port(), "/metrics").unwrap_or_default();
    let appends = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"palyra_store_seconds_count{store="console",op="append"} "#))
        .and_then(|n| n.trim().parse::<u64>().ok());
    assert!(
        appends.is_some_and(|n| n >= 8),
        "console appends measured: {metrics}"
    );
    // Agents on A and C patch one surface at once, each against the version it knows: every
    // patch lands once, in one order all gateways agree on.
    let (a, c) = (gws[0].http_addr(), gws[2].http_addr());
    let patcher = move |addr: SocketAddr, who: &'static str| {
        std::thread::spawn(move || {
            let bearer = [("authorization", format!("Bearer {ADMIN_TOKEN}"))];
            let mut agent = StreamClient::connect(addr, &bearer);
            agent.send(json!({"type": "hello", "resume": null, "agent": who}));
            agent.until("snapshot.done");
            for i in 0..20 {
                agent.send(json!({"type":"a2ui.patch","surface":"ask","ref":i,
                    "ops":[{"op":"replace","path":"/components/0/props/title","value":format!("{who} {i}")}]}));
            }
            agent.send(json!({"type": "ping"}));
            let acks = agent.until("pong");
            acks.iter()
                .filter(|m| m["type"] == "ack")
                .filter_map(|m| m["version"].as_u64())
                .collect::<Vec<u64>>()
        })
    };
    let (from_a, from_c) = (patcher(a, "a"), patcher(c, "c"));
    let mut versions: Vec<u64> = from_a.join().expect("agent on A");
    versions.extend(from_c.join().expect("agent on C"));
    versions.sort_unstable();
    assert_eq!(
        versions,
        (3..43).collect::<Vec<u64>>(),
        "each patch got its own version"
    );
    for gw in [&gws[0], &gws[2]] {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let port = gw.http_addr().port();
            let out = http_get(port, "/admin/v1/surfaces/ask").unwrap_or_default();
            let version = serde_json::from_str::<serde_json::Value>(&out).unwrap_or_default()
                ["version"]
                .clone();
            if version == 42 || Instant::now() > deadline {
                assert_eq!(version, 42, "{} agrees: {out}", gw.name);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
