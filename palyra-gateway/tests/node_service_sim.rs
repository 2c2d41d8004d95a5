//! NodeService over the sans-IO TLS wrapper, client and server machines wired back to back in
//! memory with a simulated clock: authentication from the TLS layer, capability timeouts and
//! size limits, TLS failures, and chunking invariance of the whole stack.

use palyra_gateway::node::hub::NodeHub;
use palyra_gateway::node::service::{node_router, WallClock, CAPABILITY_TIMEOUT};
use palyra_gateway::store::{DeviceBundle, IdentityDir};
use palyra_proto::grpc::client::{ClientMachine, Event, GrpcClient};
use palyra_proto::grpc::service::ServerConnection;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::identity::cert::{cert_pem_to_der, key_from_pem, key_to_der};
use palyra_proto::identity::trust::TrustIndex;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    ExecuteCapabilityRequest, ExecuteCapabilityResponse, NodeEventRequest, NodeEventResponse,
    RegisterNodeRequest, RegisterNodeResponse,
};
use palyra_proto::quic::tls::{self, ServerCertSlot, ALPN_H2};
use palyra_proto::transport::tls::{TlsStream, HANDSHAKE_TIMEOUT};
use palyra_proto::transport::StreamMachine;
use proptest::prelude::*;
use prost::Message;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const DEV_A: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

struct Pki {
    _dir: tempfile::TempDir,
    device: DeviceBundle,
    ca_der: Vec<u8>,
    server_tls: Arc<rustls::ServerConfig>,
    hub: Arc<NodeHub>,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityDir::open(dir.path()).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let now = SystemTime::now();
        let ca = ids.load_or_create_ca(&mut rng, now).unwrap();
        let server = ids
            .load_or_issue_server_cert(
                &mut rng,
                now,
                palyra_proto::identity::cert::ServerKeyKind::EcdsaP256,
                &[],
                Duration::from_secs(86_400),
                Duration::from_secs(3600),
            )
            .unwrap();
        let key = tls::certified_key(
            vec![server.cert.der.clone()],
            server.key.pkcs8_der().unwrap(),
        )
        .unwrap();
        let device = ids
            .issue_device(&mut rng, now, DEV_A, Duration::from_secs(3600))
            .unwrap();
        let trust = Arc::new(TrustIndex::new(&ids.load_trust().unwrap()));
        let ca_der = ca.cert_der().to_vec();
        let server_tls =
            Arc::new(tls::node_tcp_server_config(&ca_der, ServerCertSlot::new(key)).unwrap());
        Self {
            _dir: dir,
            device,
            ca_der,
            server_tls,
            hub: Arc::new(NodeHub::in_memory(trust)),
        }
    }

    fn client_tls(&self, with_cert: bool) -> Arc<rustls::ClientConfig> {
        let identity = with_cert.then(|| {
            let cert = cert_pem_to_der(&self.device.cert_pem).unwrap();
            let key = key_to_der(&key_from_pem(&self.device.key_pem).unwrap()).unwrap();
            (vec![cert], key)
        });
        Arc::new(tls::client_config(&self.ca_der, identity, ALPN_H2).unwrap())
    }
}

/// A client and a server connection joined by an in-memory pipe.
struct Sim {
    now: Instant,
    client: TlsStream<GrpcClient>,
    server: TlsStream<ServerConnection>,
    /// Bytes in flight from the client, delivered in chunks of this size (0 = all at once).
    chunk: usize,
}

impl Sim {
    fn new(pki: &Pki, with_cert: bool) -> Self {
        let now = Instant::now();
        let clock: WallClock = Arc::new(|| 1_700_000_000_000);
        let routers = node_router(Arc::clone(&pki.hub), clock, None, None).unwrap();
        let server = TlsStream::server(Arc::clone(&pki.server_tls), now, move |peer, now| {
            ServerConnection::with_peer(Default::default(), routers(), peer, now)
        })
        .unwrap();
        let grpc = GrpcClient::new("localhost", None, now).with_tls();
        let client = TlsStream::client(pki.client_tls(with_cert), "localhost", grpc, now).unwrap();
        Self {
            now,
            client,
            server,
            chunk: 0,
        }
    }

    /// Moves bytes both ways until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            while let Some(bytes) = self.client.poll_transmit() {
                moved = true;
                if self.chunk == 0 {
                    self.server.handle_input(self.now, &bytes);
                } else {
                    for piece in bytes.chunks(self.chunk) {
                        self.server.handle_input(self.now, piece);
                    }
                }
            }
            while let Some(bytes) = self.server.poll_transmit() {
                moved = true;
                self.client.handle_input(self.now, &bytes);
            }
            if !moved {
                return;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.pump();
    }

    fn wake(&mut self) {
        self.server.handle_wake(self.now);
        self.pump();
    }

    fn start(&mut self, path: &str, request: &[u8]) -> u32 {
        let client = self.client.client();
        let call = client
            .start_call(self.now, path, &[], Some(Duration::from_secs(60)))
            .unwrap();
        client.send_message(call, request).unwrap();
        client.close_send(call).unwrap();
        self.pump();
        call
    }

    /// Messages and final status of `call` reported so far.
    fn outcome(&mut self, call: u32) -> (Vec<bytes::Bytes>, Option<Status>) {
        let mut messages = Vec::new();
        let mut status = None;
        let mut others = Vec::new();
        while let Some(event) = self.client.client().poll_event() {
            match event {
                Event::Message { call: c, message } if c == call => messages.push(message),
                Event::Finished {
                    call: c, status: s, ..
                } if c == call => status = Some(s),
                other => others.push(other),
            }
        }
        (messages, status)
    }
}

fn register() -> Vec<u8> {
    RegisterNodeRequest {
        v: 1,
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        platform: "linux-aarch64".into(),
        capabilities: vec![],
        replay: None,
    }
    .encode_to_vec()
}

fn execute(max_payload_bytes: u64) -> Vec<u8> {
    ExecuteCapabilityRequest {
        v: 1,
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        capability: "system.health".into(),
        input_json: Vec::new(),
        max_payload_bytes,
    }
    .encode_to_vec()
}

#[test]
fn the_certificate_from_tls_authenticates_calls() {
    let pki = Pki::new();
    let mut anonymous = Sim::new(&pki, false);
    let call = anonymous.start("/palyra.node.v1.NodeService/RegisterNode", &register());
    let (_, status) = anonymous.outcome(call);
    assert_eq!(status.unwrap().code, Code::Unauthenticated);

    let mut device = Sim::new(&pki, true);
    let call = device.start("/palyra.node.v1.NodeService/RegisterNode", &register());
    let (messages, status) = device.outcome(call);
    assert_eq!(status.unwrap().code, Code::Ok);
    let response = RegisterNodeResponse::decode(messages[0].as_ref()).unwrap();
    assert!(response.accepted);
    assert_eq!(pki.hub.node(DEV_A).unwrap().platform, "linux-aarch64");
}

#[test]
fn capability_calls_time_out_and_are_forgotten() {
    let pki = Pki::new();
    let mut sim = Sim::new(&pki, true);
    let call = sim.start("/palyra.node.v1.NodeService/RegisterNode", &register());
    assert_eq!(sim.outcome(call).1.unwrap().code, Code::Ok);
    let call = sim.start("/palyra.node.v1.NodeService/ExecuteCapability", &execute(0));
    assert!(pki.hub.has_dispatch(DEV_A));
    sim.advance(CAPABILITY_TIMEOUT - Duration::from_millis(1));
    assert_eq!(sim.outcome(call).1, None, "still waiting");
    sim.advance(Duration::from_millis(2));
    let status = sim.outcome(call).1.unwrap();
    assert_eq!(status.code, Code::DeadlineExceeded);
    assert!(
        !pki.hub.has_dispatch(DEV_A),
        "abandoned work leaves the queue"
    );
}

#[test]
fn oversized_capability_output_is_refused() {
    let pki = Pki::new();
    let mut sim = Sim::new(&pki, true);
    let call = sim.start("/palyra.node.v1.NodeService/RegisterNode", &register());
    assert_eq!(sim.outcome(call).1.unwrap().code, Code::Ok);
    // The node's event stream on the same connection.
    let events = {
        let client = sim.client.client();
        client
            .start_call(
                sim.now,
                "/palyra.node.v1.NodeService/StreamNodeEvents",
                &[],
                None,
            )
            .unwrap()
    };
    // A node host announces itself with a heartbeat; from then on work is pushed to it.
    let heartbeat = NodeEventRequest {
        v: 1,
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        event_name: "node.heartbeat".into(),
        payload_json: Vec::new(),
        replay: None,
    };
    sim.client
        .client()
        .send_message(events, &heartbeat.encode_to_vec())
        .unwrap();
    sim.pump();
    let (answered, _) = sim.outcome(events);
    assert_eq!(answered.len(), 1, "heartbeat answered");
    let exec = sim.start("/palyra.node.v1.NodeService/ExecuteCapability", &execute(8));
    sim.wake();
    let (pushed, _) = sim.outcome(events);
    let dispatch = NodeEventResponse::decode(pushed[0].as_ref())
        .unwrap()
        .dispatch
        .expect("pushed dispatch");
    assert_eq!(dispatch.max_payload_bytes, 8);
    let result = NodeEventRequest {
        v: 1,
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        event_name: "capability.result".into(),
        payload_json: serde_json::to_vec(&serde_json::json!({
            "request_id": dispatch.request_id.unwrap().ulid,
            "success": true,
            "output_json": {"much": "more than eight bytes"},
        }))
        .unwrap(),
        replay: None,
    };
    sim.client
        .client()
        .send_message(events, &result.encode_to_vec())
        .unwrap();
    sim.pump();
    sim.wake();
    let (messages, status) = sim.outcome(exec);
    assert_eq!(status.unwrap().code, Code::Ok);
    let response = ExecuteCapabilityResponse::decode(messages[0].as_ref()).unwrap();
    assert!(!response.success);
    assert!(response.output_json.is_empty());
    assert_eq!(
        response.error,
        "capability output exceeds max_payload_bytes=8"
    );
}

#[test]
fn tls_garbage_and_silence_close_the_connection() {
    let pki = Pki::new();
    let mut sim = Sim::new(&pki, true);
    sim.server
        .handle_input(sim.now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let alert = sim.server.poll_transmit().expect("an alert");
    assert_eq!(alert[0], 0x15, "TLS alert record");
    assert!(sim.server.is_closed());
    assert!(sim.server.failure().is_some());

    let mut silent = Sim::new(&pki, true);
    assert_eq!(
        silent.server.poll_timeout(),
        Some(silent.now + HANDSHAKE_TIMEOUT)
    );
    silent.now += HANDSHAKE_TIMEOUT;
    silent.server.handle_timeout(silent.now);
    assert!(silent.server.is_closed());
    assert_eq!(silent.server.failure(), Some("TLS handshake timed out"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// Any chunking of the client's TLS bytes gives the same answer.
    #[test]
    fn chunking_does_not_change_the_outcome(chunk in 1usize..700) {
        let pki = Pki::new();
        let mut sim = Sim::new(&pki, true);
        sim.chunk = chunk;
        let call = sim.start("/palyra.node.v1.NodeService/RegisterNode", &register());
        let (messages, status) = sim.outcome(call);
        prop_assert_eq!(status.map(|s| s.code), Some(Code::Ok));
        prop_assert!(RegisterNodeResponse::decode(messages[0].as_ref()).unwrap().accepted);
    }
}

#[test]
fn only_node_hosts_take_work() {
    let pki = Pki::new();
    let mut sim = Sim::new(&pki, true);
    let call = sim.start("/palyra.node.v1.NodeService/RegisterNode", &register());
    assert_eq!(sim.outcome(call).1.unwrap().code, Code::Ok);
    pki.hub
        .enqueue(DEV_A, "echo", Vec::new(), 1024)
        .expect("queued");
    let stream = sim
        .client
        .client()
        .start_call(
            sim.now,
            "/palyra.node.v1.NodeService/StreamNodeEvents",
            &[],
            None,
        )
        .unwrap();
    let event = |name: &str, payload: serde_json::Value| {
        NodeEventRequest {
            v: 1,
            device_id: Some(CanonicalId { ulid: DEV_A.into() }),
            event_name: name.into(),
            payload_json: serde_json::to_vec(&payload).unwrap(),
            replay: None,
        }
        .encode_to_vec()
    };
    // A publisher (no heartbeat yet) gets its answer without the queued work.
    let stale = event(
        "capability.result",
        serde_json::json!({"request_id": "nope"}),
    );
    sim.client.client().send_message(stream, &stale).unwrap();
    sim.pump();
    sim.wake();
    let (messages, _) = sim.outcome(stream);
    assert_eq!(messages.len(), 1);
    let answer = NodeEventResponse::decode(messages[0].as_ref()).unwrap();
    assert!(!answer.accepted && answer.dispatch.is_none(), "{answer:?}");
    assert!(pki.hub.has_dispatch(DEV_A), "work stays queued");
    // Once it heartbeats, it is a node host: the work comes with the answer.
    let heartbeat = event("node.heartbeat", serde_json::json!({}));
    sim.client
        .client()
        .send_message(stream, &heartbeat)
        .unwrap();
    sim.pump();
    let (messages, _) = sim.outcome(stream);
    let answer = NodeEventResponse::decode(messages[0].as_ref()).unwrap();
    assert_eq!(answer.dispatch.expect("dispatch").capability, "echo");
    assert!(!pki.hub.has_dispatch(DEV_A));
}
