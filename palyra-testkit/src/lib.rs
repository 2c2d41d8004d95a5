//! The node-plane integration suite, written once and run against every driver.
//!
//! A driver crate implements [`Driver`] in its tests (blocking wrappers over its async API) and
//! instantiates the suite with [`node_plane_suite!`]. Every test starts a real server on a
//! loopback UDP port and talks to it with the driver's own client over real sockets.

pub mod browser;
pub mod flood;
pub mod grpc;
pub mod limits;
pub mod node_service;
pub mod offline;
pub mod operator;
pub mod operator_client;
pub mod pairing;
pub mod provider;
pub mod runs;
pub mod slow_store;

use palyra_gateway::grpc::GrpcListener;
use palyra_gateway::grpc::{gateway_router, DaemonInfo};
use palyra_gateway::node::{open_file_log, open_node_plane, NodePlane, NodePlaneOptions};
use palyra_gateway::node_client::Responses;
use palyra_gateway::notify::Notifier;
use palyra_gateway::runtime::{self, Rt};
use palyra_gateway::serve::node_connection::NodeConnection;
use palyra_gateway::serve::node_plane::NodePlaneHandle;
use palyra_gateway::serve::tcp::TcpHandle;
use palyra_gateway::store::{DeviceBundle, IdentityDir, TrustRecords};
use palyra_gateway::store::{DocStore, FileDocStore};
use palyra_proto::grpc::service::RouterFactory;
use palyra_proto::identity::cert::{key_to_der, CertAuthority};
use palyra_proto::node::{ErrorCode, NodeRequest, PublishEvent, ResponseFrame, ResponseKind};
use palyra_proto::pb::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use palyra_proto::pb::grpc::reflection::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ServerReflectionRequest, ServerReflectionResponse,
};
use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
use palyra_proto::quic::tls;
use palyra_proto::quic::ClientLimits;
use prost::Message;
use rand_core::OsRng;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A runtime adapter under test: its runtime and a way to block on futures. The suite's
/// blocking helpers (start, connect, request, ...) are written once here, over the gateway's
/// serve loops running on that runtime.
pub trait Driver {
    /// Name used in messages.
    const NAME: &'static str;

    /// The runtime the listeners and clients run on.
    fn runtime() -> Rt;

    /// Runs `future` to completion on the calling thread.
    fn block_on<F: Future>(future: F) -> F::Output;

    /// Serves `plane` on `127.0.0.1:0`; returns the server and its address.
    fn start(plane: NodePlane) -> (NodePlaneHandle, SocketAddr) {
        let handle = NodePlaneHandle::start(&Self::runtime(), loopback(), plane).expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    /// Graceful shutdown; returns when the server task ended.
    fn stop(server: NodePlaneHandle) {
        Self::block_on(server.shutdown()).expect("shutdown");
    }

    /// Connects with `tls` (ALPN and identity inside), verifying the server as `localhost`.
    fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<NodeConnection, String> {
        let rt = Self::runtime();
        Self::block_on(NodeConnection::connect(
            &rt,
            addr,
            "localhost",
            tls,
            ClientLimits::default(),
        ))
        .map_err(|e| e.to_string())
    }

    /// Sends a raw request payload; returns its response stream.
    fn open(conn: &NodeConnection, payload: Vec<u8>) -> Responses {
        Self::block_on(conn.request_raw(payload)).expect("request")
    }

    /// Next frame within `timeout`: `Ok(Some)` a frame, `Ok(None)` stream finished,
    /// `Err` failure or timeout (the message says which).
    fn next(stream: &mut Responses, timeout: Duration) -> Result<Option<ResponseFrame>, String> {
        let rt = Self::runtime();
        Self::block_on(async {
            match runtime::timeout(rt.as_ref(), timeout, stream.next()).await {
                Some(result) => result.map_err(|e| e.to_string()),
                None => Err("timeout".into()),
            }
        })
    }

    /// Closes the connection.
    fn close(conn: NodeConnection) {
        Self::block_on(conn.close());
    }

    /// Serves gRPC on `127.0.0.1:0` with the services `routers` builds, over TLS when `tls` is
    /// set (h2c otherwise), waking connections when `notifier` fires.
    fn start_grpc(
        routers: RouterFactory,
        tls: Option<Arc<rustls::ServerConfig>>,
        notifier: Option<Arc<Notifier>>,
    ) -> (TcpHandle, SocketAddr) {
        let listener = GrpcListener {
            tls,
            notifier,
            ..GrpcListener::h2c(routers)
        };
        let handle = TcpHandle::start(&Self::runtime(), loopback(), listener).expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    /// Graceful shutdown of a TCP listener.
    fn stop_grpc(server: TcpHandle) {
        let rt = Self::runtime();
        Self::block_on(server.shutdown(&rt));
    }

    /// Serves on `127.0.0.1:0` whatever machine `acceptor` builds per connection (HTTP/1.1 ...).
    fn start_listener(
        acceptor: Arc<dyn palyra_proto::transport::Acceptor>,
        notifier: Option<Arc<Notifier>>,
    ) -> (TcpHandle, SocketAddr) {
        let handle =
            TcpHandle::serve(&Self::runtime(), loopback(), acceptor, notifier).expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }
}

pub(crate) fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub(crate) fn gateway_routers() -> RouterFactory {
    gateway_router(Arc::new(DaemonInfo {
        version: "test".into(),
        git_hash: "unknown".into(),
        build_profile: "debug".into(),
        started: Instant::now(),
    }))
    .expect("descriptor set")
}

/// GetHealth, health checking, reflection and UNIMPLEMENTED over real TCP, several clients at once.
pub fn grpc_gateway_services<D: Driver>() {
    let (server, addr) = D::start_grpc(gateway_routers(), None, None);
    let health = grpc::call(
        addr,
        "/palyra.gateway.v1.GatewayService/GetHealth",
        &[HealthRequest { v: 1 }.encode_to_vec()],
    )
    .expect("GetHealth");
    assert_eq!(health.status, Some(0), "[{}] {health:?}", D::NAME);
    let response = HealthResponse::decode(health.messages[0].as_ref()).expect("HealthResponse");
    assert_eq!(
        (response.service.as_str(), response.status.as_str()),
        ("palyrad", "ok")
    );
    let check = grpc::call(
        addr,
        "/grpc.health.v1.Health/Check",
        &[HealthCheckRequest {
            service: String::new(),
        }
        .encode_to_vec()],
    )
    .expect("Check");
    assert_eq!(
        HealthCheckResponse::decode(check.messages[0].as_ref())
            .expect("decode")
            .status,
        1
    );
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let reflection = grpc::call(
        addr,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &[list.encode_to_vec()],
    )
    .expect("reflection");
    let answer = ServerReflectionResponse::decode(reflection.messages[0].as_ref()).expect("decode");
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("{answer:?}")
    };
    assert!(services
        .service
        .iter()
        .any(|s| s.name == "palyra.gateway.v1.GatewayService"));
    let missing =
        grpc::call(addr, "/palyra.gateway.v1.GatewayService/Nope", &[vec![]]).expect("call");
    assert_eq!(missing.status, Some(12));
    // Concurrent clients on separate connections.
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                grpc::call(
                    addr,
                    "/palyra.gateway.v1.GatewayService/GetHealth",
                    &[vec![]],
                )
                .map(|r| r.status)
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().expect("thread").expect("call"), Some(0));
    }
    D::stop_grpc(server);
    assert!(
        grpc::call(
            addr,
            "/palyra.gateway.v1.GatewayService/GetHealth",
            &[vec![]]
        )
        .is_err(),
        "listener closed after shutdown"
    );
}

/// Device IDs used by the suite.
pub const DEV_A: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
/// Second device.
pub const DEV_B: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";

/// A gateway state directory plus helpers to issue and revoke devices.
pub struct Gateway {
    /// The state directory.
    pub dir: tempfile::TempDir,
    /// Its identity directory.
    pub ids: IdentityDir,
    /// Its document store (node registry, console state, ...), shared by what the suite opens.
    pub docs: Arc<dyn DocStore>,
}

impl Gateway {
    /// A fresh state directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ids = IdentityDir::open(dir.path().join("identity")).expect("identity dir");
        let docs = Arc::new(FileDocStore::open(dir.path()).expect("document store"));
        Self { dir, ids, docs }
    }

    /// Opens the node plane on the state directory.
    pub fn plane(&self, options: &NodePlaneOptions) -> NodePlane {
        let docs = Arc::new(FileDocStore::open(self.dir.path()).expect("document store"));
        let log = open_file_log(self.dir.path(), options).expect("event log");
        open_node_plane(
            self.dir.path(),
            options,
            docs,
            log,
            None,
            &mut OsRng,
            SystemTime::now(),
        )
        .expect("node plane")
    }

    /// Issues a device certificate (as `palyrad cert issue-device` does).
    pub fn issue(&self, device_id: &str) -> DeviceBundle {
        self.ids
            .issue_device(
                &mut OsRng,
                SystemTime::now(),
                device_id,
                Duration::from_secs(3600),
            )
            .expect("issue device")
    }

    /// Revokes a device (as `palyrad cert revoke` does).
    pub fn revoke(&self, device_id: &str) {
        self.ids
            .revoke_device(SystemTime::now(), device_id, "suite")
            .expect("revoke");
    }

    /// The state directory path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for Gateway {
    fn default() -> Self {
        Self::new()
    }
}

/// Client TLS configuration for a device bundle.
pub fn client_tls(
    bundle: Option<&DeviceBundle>,
    ca_pem: &str,
    alpn: &[u8],
) -> Arc<rustls::ClientConfig> {
    let ca = palyra_proto::identity::cert::cert_pem_to_der(ca_pem).expect("ca pem");
    let identity = bundle.map(|b| {
        let cert = palyra_proto::identity::cert::cert_pem_to_der(&b.cert_pem).expect("cert pem");
        let key = palyra_proto::identity::cert::key_from_pem(&b.key_pem).expect("key pem");
        (vec![cert], key_to_der(&key).expect("key der"))
    });
    Arc::new(tls::client_config(&ca, identity, alpn).expect("client tls"))
}

fn device_tls(bundle: &DeviceBundle) -> Arc<rustls::ClientConfig> {
    client_tls(Some(bundle), &bundle.ca_pem, tls::ALPN)
}

pub(crate) fn payload(request: &NodeRequest) -> Vec<u8> {
    palyra_proto::node::RequestFrame::from_request(request).to_json()
}

/// Sends a request and collects every frame until the stream finishes.
pub fn call<D: Driver>(
    conn: &palyra_gateway::serve::node_connection::NodeConnection,
    request: &NodeRequest,
) -> Vec<ResponseFrame> {
    call_raw::<D>(conn, payload(request))
}

/// Sends a raw payload and collects every frame until the stream finishes.
pub fn call_raw<D: Driver>(
    conn: &palyra_gateway::serve::node_connection::NodeConnection,
    payload: Vec<u8>,
) -> Vec<ResponseFrame> {
    let mut stream = D::open(conn, payload);
    let mut frames = Vec::new();
    loop {
        match D::next(&mut stream, Duration::from_secs(10)) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return frames,
            Err(e) => panic!("[{}] request failed: {e}", D::NAME),
        }
    }
}

fn publish(name: &str, n: u64, to: Option<&str>) -> NodeRequest {
    NodeRequest::PublishEvent(PublishEvent {
        name: name.into(),
        payload: serde_json::json!({ "n": n }),
        to: to.map(str::to_owned),
        id: None,
    })
}

fn seqs(frames: &[ResponseFrame]) -> Vec<u64> {
    frames.iter().filter_map(|f| f.seq).collect()
}

/// Health, durable publish with acks, stream with and without resume.
pub fn health_publish_and_resume<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    let health = call::<D>(&conn, &NodeRequest::Health);
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].kind, ResponseKind::Health);
    assert_eq!(health[0].node_rpc_mtls_required, Some(true));
    assert_eq!(health[0].device_id.as_deref(), Some(DEV_A));
    assert!(health[0].server_time_unix_ms.unwrap_or(0) > 1_600_000_000_000);
    for n in 1..=10 {
        let ack = call::<D>(&conn, &publish("sensor.temp", n, None));
        assert_eq!(ack.len(), 1, "{ack:?}");
        assert_eq!((ack[0].kind, ack[0].seq), (ResponseKind::Ack, Some(n)));
    }
    let all = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    assert_eq!(seqs(&all), (1..=10).collect::<Vec<_>>());
    let event = all[4].event.as_ref().expect("event body");
    assert_eq!(event.device_id, DEV_A);
    assert_eq!(event.payload["n"], 5);
    let resumed = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(7),
            follow: false,
        },
    );
    assert_eq!(seqs(&resumed), vec![8, 9, 10]);
    D::close(conn);
    D::stop(server);
}

/// Events survive a restart; sequence numbers continue; old cursors still resume.
pub fn restart_keeps_events_and_sequence<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    for n in 1..=3 {
        call::<D>(&conn, &publish("before", n, None));
    }
    D::close(conn);
    D::stop(server);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("reconnect");
    let ack = call::<D>(&conn, &publish("after", 4, None));
    assert_eq!(ack[0].seq, Some(4));
    let resumed = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(2),
            follow: false,
        },
    );
    assert_eq!(seqs(&resumed), vec![3, 4]);
    assert_eq!(
        resumed[0].event.as_ref().map(|e| e.name.as_str()),
        Some("before")
    );
    D::close(conn);
    D::stop(server);
}

/// A follow stream gets live events; addressed events reach only their device.
pub fn follow_and_addressing<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let b = gw.issue(DEV_B);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn_a = D::connect(addr, device_tls(&a)).expect("connect a");
    let conn_b = D::connect(addr, device_tls(&b)).expect("connect b");
    let mut follow = D::open(
        &conn_b,
        payload(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: true,
        }),
    );
    call::<D>(&conn_a, &publish("all", 1, None));
    call::<D>(&conn_a, &publish("for.a", 2, Some(DEV_A)));
    call::<D>(&conn_a, &publish("for.b", 3, Some(DEV_B)));
    let mut names = Vec::new();
    for _ in 0..2 {
        let frame = D::next(&mut follow, Duration::from_secs(5))
            .expect("live event")
            .expect("open stream");
        names.push(frame.event.expect("event").name);
    }
    assert_eq!(names, vec!["all", "for.b"]);
    // Nothing else arrives, and the stream stays open.
    let quiet = D::next(&mut follow, Duration::from_millis(300));
    assert!(
        matches!(&quiet, Err(e) if e.contains("timeout")),
        "{quiet:?}"
    );
    let a_view = call::<D>(
        &conn_a,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    let a_names: Vec<_> = a_view
        .iter()
        .filter_map(|f| f.event.as_ref().map(|e| e.name.clone()))
        .collect();
    assert_eq!(a_names, vec!["all", "for.a"]);
    D::close(conn_a);
    D::close(conn_b);
    D::stop(server);
}

/// Many streams of one connection are served at once, not one after another.
pub fn streams_are_concurrent<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    let mut followers: Vec<_> = (0..8)
        .map(|_| {
            D::open(
                &conn,
                payload(&NodeRequest::StreamEvents {
                    resume_from: None,
                    follow: true,
                }),
            )
        })
        .collect();
    assert_eq!(call::<D>(&conn, &NodeRequest::Health).len(), 1);
    let mut publishes: Vec<_> = (0..16)
        .map(|n| D::open(&conn, payload(&publish("burst", n, None))))
        .collect();
    let mut acked: Vec<u64> = publishes
        .iter_mut()
        .map(|s| {
            D::next(s, Duration::from_secs(5))
                .expect("ack")
                .expect("frame")
                .seq
                .expect("seq")
        })
        .collect();
    acked.sort_unstable();
    assert_eq!(acked, (1..=16).collect::<Vec<_>>());
    for follower in followers.iter_mut() {
        let got: Vec<u64> = (0..16)
            .map(|_| {
                D::next(follower, Duration::from_secs(5))
                    .expect("event")
                    .expect("frame")
                    .seq
                    .expect("seq")
            })
            .collect();
        assert_eq!(got, (1..=16).collect::<Vec<_>>());
    }
    D::close(conn);
    D::stop(server);
}

/// Bad requests get the protocol's error frames and the connection stays usable.
pub fn protocol_errors<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    let cases: [(&[u8], ErrorCode); 4] = [
        (
            br#"{"protocol_version":2,"method":"node.health","added_in_v2":true}"#,
            ErrorCode::ProtocolMismatch,
        ),
        (
            br#"{"protocol_version":1,"method":"node.teleport"}"#,
            ErrorCode::UnsupportedMethod,
        ),
        (
            br#"{"protocol_version":1,"method":"node.publish_event","event":{"name":""}}"#,
            ErrorCode::InvalidRequest,
        ),
        (b"\xff\xfe", ErrorCode::InvalidRequest),
    ];
    for (raw, code) in cases {
        let frames = call_raw::<D>(&conn, raw.to_vec());
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(
            (frames[0].kind, frames[0].ok, frames[0].error),
            (ResponseKind::Error, false, Some(code))
        );
        assert!(frames[0].message.as_deref().is_some_and(|m| !m.is_empty()));
    }
    let ahead = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(1000),
            follow: false,
        },
    );
    assert_eq!(ahead[0].error, Some(ErrorCode::ResumeGap));
    assert_eq!(call::<D>(&conn, &NodeRequest::Health).len(), 1);
    D::close(conn);
    D::stop(server);
}

/// Retention drops old events; a node asking for them gets `resume_gap` with the first seq.
pub fn retention_reports_resume_gap<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let mut options = NodePlaneOptions::default();
    options.log.segment_bytes = 4096;
    options.log.max_total_bytes = 16 * 1024;
    let (server, addr) = D::start(gw.plane(&options));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    for n in 0..200 {
        call::<D>(&conn, &publish("filler", n, None));
    }
    let gap = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(0),
            follow: false,
        },
    );
    assert_eq!(gap.len(), 1);
    assert_eq!(gap[0].error, Some(ErrorCode::ResumeGap));
    let first = gap[0].first_seq.expect("first_seq");
    assert!(first > 1 && first <= 200, "first_seq {first}");
    let rest = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(first - 1),
            follow: false,
        },
    );
    assert_eq!(seqs(&rest), (first..=200).collect::<Vec<_>>());
    D::close(conn);
    D::stop(server);
}

/// Handshakes with the wrong ALPN, no certificate or another CA's certificate fail.
pub fn handshake_rejections<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let wrong_alpn = D::connect(addr, client_tls(Some(&a), &a.ca_pem, b"h3"));
    assert!(
        matches!(&wrong_alpn, Err(e) if e.contains("120")),
        "[{}] wrong ALPN: {:?}",
        D::NAME,
        wrong_alpn.as_ref().err()
    );
    assert!(
        D::connect(addr, client_tls(None, &a.ca_pem, tls::ALPN)).is_err(),
        "no client certificate"
    );
    // A certificate from another CA, for the same device ID.
    let other = Gateway::new();
    let foreign = other.issue(DEV_A);
    assert!(
        D::connect(addr, client_tls(Some(&foreign), &a.ca_pem, tls::ALPN)).is_err(),
        "foreign CA"
    );
    // A client that does not trust our CA refuses the server.
    let _ = CertAuthority::generate(
        &mut OsRng,
        SystemTime::now(),
        Duration::from_secs(60),
        "Other CA",
    );
    assert!(
        D::connect(addr, client_tls(Some(&a), &foreign.ca_pem, tls::ALPN)).is_err(),
        "untrusted server"
    );
    // The server still serves good clients.
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    assert_eq!(call::<D>(&conn, &NodeRequest::Health).len(), 1);
    D::close(conn);
    D::stop(server);
}

/// Revoking a device (in the state directory, as `palyrad cert revoke` does) closes its live
/// connection within a second and fails its next handshake.
pub fn revocation_is_live<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let b = gw.issue(DEV_B);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    let other = D::connect(addr, device_tls(&b)).expect("connect b");
    let mut follow = D::open(
        &conn,
        payload(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: true,
        }),
    );
    assert_eq!(call::<D>(&conn, &NodeRequest::Health).len(), 1);
    let revoked_at = Instant::now();
    gw.revoke(DEV_A);
    let outcome = D::next(&mut follow, Duration::from_secs(3));
    let elapsed = revoked_at.elapsed();
    assert!(
        matches!(&outcome, Err(e) if !e.contains("timeout")),
        "[{}] {outcome:?}",
        D::NAME
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "[{}] closed after {elapsed:?}",
        D::NAME
    );
    assert!(
        D::connect(addr, device_tls(&a)).is_err(),
        "revoked device reconnected"
    );
    // Other devices are unaffected.
    assert_eq!(call::<D>(&other, &NodeRequest::Health).len(), 1);
    D::close(other);
    D::stop(server);
}

/// Graceful shutdown closes connections with an application close.
pub fn shutdown_closes_connections<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let (server, addr) = D::start(gw.plane(&NodePlaneOptions::default()));
    let conn = D::connect(addr, device_tls(&a)).expect("connect");
    let mut follow = D::open(
        &conn,
        payload(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: true,
        }),
    );
    assert_eq!(call::<D>(&conn, &NodeRequest::Health).len(), 1);
    let started = Instant::now();
    D::stop(server);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        started.elapsed()
    );
    let outcome = D::next(&mut follow, Duration::from_secs(2));
    assert!(
        matches!(&outcome, Err(e) if e.contains("shutting down")),
        "{outcome:?}"
    );
}

/// Instantiates the suite for a driver type implementing [`Driver`].
#[macro_export]
macro_rules! node_plane_suite {
    ($driver:ty) => {
        #[test]
        fn slow_store_delays_nobody_else() {
            $crate::slow_store::slow_store_delays_nobody_else::<$driver>();
        }
        #[test]
        fn health_publish_and_resume() {
            $crate::health_publish_and_resume::<$driver>();
        }
        #[test]
        fn restart_keeps_events_and_sequence() {
            $crate::restart_keeps_events_and_sequence::<$driver>();
        }
        #[test]
        fn follow_and_addressing() {
            $crate::follow_and_addressing::<$driver>();
        }
        #[test]
        fn streams_are_concurrent() {
            $crate::streams_are_concurrent::<$driver>();
        }
        #[test]
        fn protocol_errors() {
            $crate::protocol_errors::<$driver>();
        }
        #[test]
        fn retention_reports_resume_gap() {
            $crate::retention_reports_resume_gap::<$driver>();
        }
        #[test]
        fn handshake_rejections() {
            $crate::handshake_rejections::<$driver>();
        }
        #[test]
        fn revocation_is_live() {
            $crate::revocation_is_live::<$driver>();
        }
        #[test]
        fn shutdown_closes_connections() {
            $crate::shutdown_closes_connections::<$driver>();
        }
        #[test]
        fn run_streams_and_replays() {
            $crate::runs::run_streams_and_replays::<$driver>();
        }
        #[test]
        fn approvals_decide_tool_calls() {
            $crate::runs::approvals_decide_tool_calls::<$driver>();
        }
        #[test]
        fn every_cancellation_path() {
            $crate::runs::every_cancellation_path::<$driver>();
        }
        #[test]
        fn principals_and_scopes() {
            $crate::runs::principals_and_scopes::<$driver>();
        }
        #[test]
        fn gateway_tools_reach_the_other_planes() {
            $crate::runs::gateway_tools_reach_the_other_planes::<$driver>();
        }

        #[test]
        fn console_chat_is_a_run() {
            $crate::runs::console_chat_is_a_run::<$driver>();
        }
        #[test]
        fn a_connection_serves_any_number_of_runs() {
            $crate::runs::a_connection_serves_any_number_of_runs::<$driver>();
        }
        #[test]
        fn chromium_over_the_devtools_pipe() {
            $crate::browser::chromium_over_the_devtools_pipe::<$driver>();
        }
        #[test]
        fn tabs_wait_for_actionable_elements() {
            $crate::browser::tabs_wait_for_actionable_elements::<$driver>();
        }
        #[test]
        fn invented_cdp_fields_and_events_never_break_a_session() {
            $crate::browser::invented_cdp_fields_and_events_never_break_a_session::<$driver>();
        }
        #[test]
        fn browserd_sessions_survive_a_chromium_kill() {
            $crate::browser::browserd_sessions_survive_a_chromium_kill::<$driver>();
        }
        #[test]
        fn openai_api_is_a_run() {
            $crate::runs::openai_api_is_a_run::<$driver>();
        }
        #[test]
        fn a_slow_openai_reader_holds_the_provider_back() {
            $crate::runs::a_slow_openai_reader_holds_the_provider_back::<$driver>();
        }
        #[test]
        fn devices_are_node_principals() {
            $crate::runs::devices_are_node_principals::<$driver>();
        }
        #[test]
        fn run_failures_are_reported() {
            $crate::runs::failures_are_reported::<$driver>();
        }
        #[test]
        fn grpc_gateway_services() {
            $crate::grpc_gateway_services::<$driver>();
        }
        #[test]
        fn node_service_over_tls() {
            $crate::node_service::node_service_over_tls::<$driver>();
        }
        #[test]
        fn operator_http_basics() {
            $crate::operator::operator_http_basics::<$driver>();
        }
        #[test]
        fn operator_admin_api() {
            $crate::operator::operator_admin_api::<$driver>();
        }
        #[test]
        fn operator_console_stream() {
            $crate::operator::operator_console_stream::<$driver>();
        }
        #[test]
        fn pairing_over_node_tls() {
            $crate::pairing::pairing_over_node_tls::<$driver>();
        }
        #[test]
        fn rotation_and_revocation_over_node_tls() {
            $crate::pairing::rotation_and_revocation_over_node_tls::<$driver>();
        }
        #[test]
        fn operator_over_tls() {
            $crate::operator::operator_over_tls::<$driver>();
        }
        #[test]
        fn operator_websocket_echo() {
            $crate::operator::operator_websocket_echo::<$driver>();
        }
        #[test]
        fn provider_against_scripted_upstream() {
            $crate::provider::provider_against_scripted_upstream::<$driver>();
        }
        #[test]
        fn gateway_listener_over_tls() {
            $crate::node_service::gateway_listener_over_tls::<$driver>();
        }
        #[test]
        fn operator_client_calls() {
            $crate::operator_client::operator_client_calls::<$driver>();
        }
        #[test]
        fn operator_client_verifies_the_ca() {
            $crate::operator_client::operator_client_verifies_the_ca::<$driver>();
        }
        #[test]
        fn http_cap_refuses_then_sheds() {
            $crate::limits::http_cap_refuses_then_sheds::<$driver>();
        }
        #[test]
        fn grpc_cap_answers_goaway() {
            $crate::limits::grpc_cap_answers_goaway::<$driver>();
        }
        #[test]
        fn node_service_revocation_ends_streams() {
            $crate::node_service::node_service_revocation_ends_streams::<$driver>();
        }
    };
}
