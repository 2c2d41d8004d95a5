//! NodeService on the node TLS listener, over real sockets: authentication per call, RegisterNode,
//! StreamNodeEvents (events into the node-plane log, dispatches pushed), ExecuteCapability, and
//! live revocation.

use crate::grpc::{Client, Reply};
use crate::{call, client_tls, device_tls, Driver, Gateway, DEV_A, DEV_B};
use palyra_gateway::node::service::{node_router, WallClock};
use palyra_gateway::node::NodePlaneOptions;
use palyra_gateway::store::{unix_ms, DeviceBundle};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::node::NodeRequest;
use palyra_proto::pb::grpc::reflection::v1::{
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    ServerReflectionRequest, ServerReflectionResponse,
};
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    DeviceCapability, ExecuteCapabilityRequest, ExecuteCapabilityResponse, NodeEventRequest,
    NodeEventResponse, RegisterNodeRequest, RegisterNodeResponse,
};
use palyra_proto::quic::tls::ALPN_H2;
use prost::Message;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const REGISTER: &str = "/palyra.node.v1.NodeService/RegisterNode";
const EVENTS: &str = "/palyra.node.v1.NodeService/StreamNodeEvents";
const EXECUTE: &str = "/palyra.node.v1.NodeService/ExecuteCapability";

fn id(ulid: &str) -> Option<CanonicalId> {
    Some(CanonicalId { ulid: ulid.into() })
}

fn register(device: &str) -> Vec<u8> {
    RegisterNodeRequest {
        v: 1,
        device_id: id(device),
        platform: "linux-x86_64".into(),
        capabilities: vec![DeviceCapability {
            name: "echo".into(),
            available: true,
            ..DeviceCapability::default()
        }],
        replay: None,
    }
    .encode_to_vec()
}

fn event(device: &str, name: &str, payload: serde_json::Value) -> Vec<u8> {
    NodeEventRequest {
        v: 1,
        device_id: id(device),
        event_name: name.into(),
        payload_json: serde_json::to_vec(&payload).expect("json"),
        replay: None,
    }
    .encode_to_vec()
}

fn code(result: Result<bytes::Bytes, Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code,
    }
}

/// A node plane (QUIC) plus its node TLS listener, as palyrad runs them.
struct Node<D: Driver> {
    driver: std::marker::PhantomData<D>,
    quic: palyra_gateway::serve::node_plane::NodePlaneHandle,
    quic_addr: SocketAddr,
    tcp: palyra_gateway::serve::tcp::TcpHandle,
    tcp_addr: SocketAddr,
}

fn start<D: Driver>(gw: &Gateway) -> Node<D> {
    let plane = gw.plane(&NodePlaneOptions::default());
    let hub = Arc::clone(&plane.hub);
    let tls = Arc::clone(&plane.tcp_tls);
    let (quic, quic_addr) = D::start(plane);
    let clock: WallClock = Arc::new(|| unix_ms(SystemTime::now()));
    let routers = node_router(Arc::clone(&hub), clock, None, None).expect("descriptors");
    let (tcp, tcp_addr) = D::start_grpc(routers, Some(tls), Some(hub.notifier()));
    Node {
        driver: std::marker::PhantomData,
        quic,
        quic_addr,
        tcp,
        tcp_addr,
    }
}

fn stop<D: Driver>(node: Node<D>) {
    D::stop_grpc(node.tcp);
    D::stop(node.quic);
}

fn tls_client(addr: SocketAddr, bundle: Option<&DeviceBundle>, ca_pem: &str) -> Client {
    Client::tls(addr, client_tls(bundle, ca_pem, ALPN_H2)).expect("TLS connect")
}

fn next_response(client: &mut Client, call: u32) -> NodeEventResponse {
    match client.next(call, Duration::from_secs(5)) {
        Some(Reply::Message(m)) => NodeEventResponse::decode(m.as_ref()).expect("decode"),
        other => panic!("expected a NodeEventResponse, got {other:?}"),
    }
}

/// Authentication per call, registration, events into the log, pushed dispatches and
/// ExecuteCapability round trips.
pub fn node_service_over_tls<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let node = start::<D>(&gw);

    // Without a certificate: TLS succeeds (pairing must be reachable), the RPC does not.
    let mut anonymous = tls_client(node.tcp_addr, None, &a.ca_pem);
    let refused = anonymous.unary(REGISTER, &register(DEV_A));
    assert_eq!(code(refused), Code::Unauthenticated, "[{}]", D::NAME);
    // Reflection lists NodeService on this listener.
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = anonymous
        .unary(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            &list.encode_to_vec(),
        )
        .expect("reflection");
    let answer = ServerReflectionResponse::decode(answer.as_ref()).expect("decode");
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("{answer:?}")
    };
    assert!(services
        .service
        .iter()
        .any(|s| s.name == "palyra.node.v1.NodeService"));

    // With device A's certificate.
    let mut client = tls_client(node.tcp_addr, Some(&a), &a.ca_pem);
    assert_eq!(
        code(client.unary(REGISTER, &register(DEV_B))),
        Code::PermissionDenied,
        "another device's ID"
    );
    let mut bad_version = RegisterNodeRequest::decode(register(DEV_A).as_slice()).expect("own");
    bad_version.v = 0;
    assert_eq!(
        code(client.unary(REGISTER, &bad_version.encode_to_vec())),
        Code::InvalidArgument
    );
    // Before registering, capabilities cannot be executed.
    let execute = ExecuteCapabilityRequest {
        v: 1,
        device_id: id(DEV_A),
        capability: "echo".into(),
        input_json: br#"{"text":"hi"}"#.to_vec(),
        max_payload_bytes: 0,
    }
    .encode_to_vec();
    assert_eq!(
        code(client.unary(EXECUTE, &execute)),
        Code::FailedPrecondition
    );
    let registered = client.unary(REGISTER, &register(DEV_A)).expect("register");
    let registered = RegisterNodeResponse::decode(registered.as_ref()).expect("decode");
    assert!(registered.accepted);
    assert_eq!(registered.reason, "registered");

    // The event stream: a heartbeat and an application event, answered in order.
    let stream = client.start(EVENTS, None).expect("stream");
    client
        .send(
            stream,
            &event(DEV_A, "node.heartbeat", serde_json::json!({})),
        )
        .expect("send");
    client
        .send(
            stream,
            &event(
                DEV_A,
                "sensor.reading",
                serde_json::json!({"celsius": 21.5}),
            ),
        )
        .expect("send");
    let heartbeat = next_response(&mut client, stream);
    assert!(heartbeat.accepted && heartbeat.reason == "accepted");
    let stored = next_response(&mut client, stream);
    assert!(stored.accepted, "{stored:?}");
    assert_eq!(stored.reason, "stored");
    // The event is in the node-plane log: a QUIC client reads it back.
    let conn = D::connect(node.quic_addr, device_tls(&a)).expect("QUIC connect");
    let frames = call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    let body = frames
        .iter()
        .filter_map(|f| f.event.as_ref())
        .find(|e| e.name == "sensor.reading")
        .expect("event in the log");
    assert_eq!(body.device_id, DEV_A);
    assert_eq!(body.payload["celsius"], 21.5);
    D::close(conn);

    // ExecuteCapability on a second connection: the dispatch is pushed to the open stream
    // without the node sending anything.
    let mut caller = tls_client(node.tcp_addr, Some(&a), &a.ca_pem);
    let exec = caller
        .start(EXECUTE, Some(Duration::from_secs(10)))
        .expect("execute");
    caller.send(exec, &execute).expect("send");
    caller.close_send(exec);
    let started = Instant::now();
    // Drive the caller's connection so the request leaves, then wait on the node's stream.
    assert!(caller.next(exec, Duration::from_millis(50)).is_none());
    let pushed = next_response(&mut client, stream);
    let latency = started.elapsed();
    let dispatch = pushed.dispatch.expect("dispatch pushed");
    assert_eq!(dispatch.capability, "echo");
    assert_eq!(dispatch.input_json, br#"{"text":"hi"}"#);
    assert_eq!(dispatch.max_payload_bytes, 64 * 1024);
    assert!(
        latency < Duration::from_millis(900),
        "[{}] push took {latency:?}",
        D::NAME
    );
    let request_id = dispatch.request_id.expect("request id").ulid;
    client
        .send(
            stream,
            &event(
                DEV_A,
                "capability.result",
                serde_json::json!({"request_id": request_id, "success": true, "output_json": {"text": "hi"}}),
            ),
        )
        .expect("send result");
    let ack = next_response(&mut client, stream);
    assert!(ack.accepted, "{ack:?}");
    let response = match caller.next(exec, Duration::from_secs(5)) {
        Some(Reply::Message(m)) => ExecuteCapabilityResponse::decode(m.as_ref()).expect("decode"),
        other => panic!("[{}] {other:?}", D::NAME),
    };
    assert!(response.success);
    assert_eq!(response.output_json, br#"{"text":"hi"}"#);
    assert!(matches!(
        caller.next(exec, Duration::from_secs(5)),
        Some(Reply::Finished(s)) if s.code == Code::Ok
    ));
    // A result for an unknown request is refused without ending the stream.
    client
        .send(
            stream,
            &event(
                DEV_A,
                "capability.result",
                serde_json::json!({"request_id": request_id, "success": true}),
            ),
        )
        .expect("send");
    let late = next_response(&mut client, stream);
    assert!(!late.accepted);
    // Malformed JSON ends the stream with INVALID_ARGUMENT.
    let bad = NodeEventRequest {
        v: 1,
        device_id: id(DEV_A),
        event_name: "sensor.reading".into(),
        payload_json: b"{not json".to_vec(),
        replay: None,
    };
    client.send(stream, &bad.encode_to_vec()).expect("send");
    assert!(matches!(
        client.next(stream, Duration::from_secs(5)),
        Some(Reply::Finished(s)) if s.code == Code::InvalidArgument
    ));
    stop::<D>(node);
}

/// Revoking a device ends its open event stream within a second; its next call is refused.
pub fn node_service_revocation_ends_streams<D: Driver>() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let b = gw.issue(DEV_B);
    let node = start::<D>(&gw);
    let mut client = tls_client(node.tcp_addr, Some(&a), &a.ca_pem);
    let mut other = tls_client(node.tcp_addr, Some(&b), &b.ca_pem);
    client.unary(REGISTER, &register(DEV_A)).expect("register");
    let stream = client.start(EVENTS, None).expect("stream");
    client
        .send(
            stream,
            &event(DEV_A, "node.heartbeat", serde_json::json!({})),
        )
        .expect("send");
    assert!(next_response(&mut client, stream).accepted);
    let revoked_at = Instant::now();
    gw.revoke(DEV_A);
    let ended = client.next(stream, Duration::from_secs(3));
    let elapsed = revoked_at.elapsed();
    assert!(
        matches!(&ended, Some(Reply::Finished(s)) if s.code == Code::PermissionDenied),
        "[{}] {ended:?}",
        D::NAME
    );
    assert!(
        elapsed < Duration::from_secs(1),
        "[{}] stream ended after {elapsed:?}",
        D::NAME
    );
    assert_eq!(
        code(client.unary(REGISTER, &register(DEV_A))),
        Code::PermissionDenied
    );
    // Device B is unaffected.
    other
        .unary(REGISTER, &register(DEV_B))
        .expect("B registers");
    stop::<D>(node);
}

/// The gateway listener with TLS enabled (palyrad --grpc-tls): GetHealth over TLS with the
/// gateway CA, no client certificate needed; a cleartext client gets nothing.
pub fn gateway_listener_over_tls<D: Driver>() {
    use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let plane = gw.plane(&NodePlaneOptions::default());
    let tls = Arc::new(
        palyra_proto::quic::tls::tcp_server_config(
            plane.identity.tcp_cert_slot(),
            palyra_proto::quic::tls::ALPN_H2,
        )
        .expect("gateway TLS"),
    );
    let (server, addr) = D::start_grpc(crate::gateway_routers(), Some(tls), None);
    let mut client = tls_client(addr, None, &a.ca_pem);
    let response = client
        .unary(
            "/palyra.gateway.v1.GatewayService/GetHealth",
            &HealthRequest { v: 1 }.encode_to_vec(),
        )
        .expect("GetHealth over TLS");
    let health = HealthResponse::decode(response.as_ref()).expect("decode");
    assert_eq!(health.status, "ok", "[{}]", D::NAME);
    assert!(
        crate::grpc::call(
            addr,
            "/palyra.gateway.v1.GatewayService/GetHealth",
            &[HealthRequest { v: 1 }.encode_to_vec()]
        )
        .map_or(true, |r| r.status.is_none()),
        "cleartext HTTP/2 must not be answered on a TLS listener"
    );
    D::stop_grpc(server);
}
