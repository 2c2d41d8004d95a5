//! The standard services, called over the gRPC server machine from an HTTP/2 client machine.

use super::*;
use crate::grpc::codec::{self, MessageDecoder};
use crate::grpc::server::{GrpcServer, ServerConfig};
use crate::grpc::service::Router;
use crate::h2::conn::{Config, Connection, Event as H2, Role};
use crate::h2::hpack::Field;
use bytes::BytesMut;
use std::time::{Duration, Instant};

const GATEWAY: &str = "palyra.gateway.v1.GatewayService";
const HEALTH: &str = "grpc.health.v1.Health";
const REFLECTION: &str = "grpc.reflection.v1.ServerReflection";

/// A service named like the gateway's, so reflection has a real descriptor to serve: GetHealth
/// decodes its request and answers an empty response.
struct StandIn;

impl Service for StandIn {
    fn name(&self) -> &'static str {
        GATEWAY
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        (call.method == "GetHealth").then(|| {
            Unary::boxed(|bytes: Bytes| {
                let request: crate::pb::palyra::gateway::v1::HealthRequest = decode(&bytes)?;
                Ok(crate::pb::palyra::gateway::v1::HealthResponse {
                    v: request.v,
                    ..Default::default()
                }
                .encode_to_vec())
            })
        })
    }
}

struct Harness {
    now: Instant,
    client: Connection,
    server: GrpcServer,
    router: Router,
}

impl Harness {
    fn new() -> Self {
        let now = Instant::now();
        let names = [GATEWAY, HEALTH, REFLECTION];
        let router = Router::new(vec![
            Box::new(StandIn),
            Box::new(HealthService::new(&names)),
            Box::new(ReflectionService::new(crate::pb::DESCRIPTOR_SET, &names).unwrap()),
        ]);
        Self {
            now: now + Duration::from_secs(42),
            client: Connection::new(Role::Client, Config::default(), now),
            server: GrpcServer::new(ServerConfig::default(), now),
            router,
        }
    }

    /// Calls `path` with `requests`; returns (messages, grpc-status, grpc-message).
    fn call(
        &mut self,
        path: &str,
        requests: &[Vec<u8>],
        half_close: bool,
    ) -> (Vec<Bytes>, Option<String>, String) {
        let fields: Vec<Field> = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| Field::new(n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
        let id = self.client.open_stream(&fields, false).unwrap();
        let mut body = BytesMut::new();
        for request in requests {
            codec::encode_message(request, &mut body);
        }
        self.client
            .send_data(id, body.freeze(), half_close)
            .unwrap();
        loop {
            let mut moved = false;
            while let Some(bytes) = self.client.poll_transmit() {
                self.server.handle_input(self.now, &bytes);
                moved = true;
            }
            self.router.dispatch(&mut self.server, self.now);
            while let Some(bytes) = self.server.poll_transmit() {
                self.client.handle_input(self.now, &bytes);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        let mut decoder = MessageDecoder::new(1 << 24);
        let mut messages = Vec::new();
        let (mut status, mut message) = (None, String::new());
        while let Some(event) = self.client.poll_event() {
            match event {
                H2::Data { stream, data, .. } if stream == id => {
                    decoder.handle_input(&data);
                    while let Some(m) = decoder.poll_message().unwrap() {
                        messages.push(m);
                    }
                }
                H2::Headers { stream, fields, .. } if stream == id => {
                    for f in fields {
                        if f.name == "grpc-status" {
                            status = Some(String::from_utf8(f.value.to_vec()).unwrap());
                        }
                        if f.name == "grpc-message" {
                            message = codec::percent_decode(&f.value);
                        }
                    }
                }
                _ => {}
            }
        }
        (messages, status, message)
    }
}

#[test]
fn health_check_and_unknown_services() {
    let mut h = Harness::new();
    let (messages, status, _) = h.call(
        "/grpc.health.v1.Health/Check",
        &[HealthCheckRequest {
            service: String::new(),
        }
        .encode_to_vec()],
        true,
    );
    assert_eq!(status.as_deref(), Some("0"));
    assert_eq!(
        HealthCheckResponse::decode(messages[0].as_ref())
            .unwrap()
            .status,
        ServingStatus::Serving as i32
    );
    let (_, status, _) = h.call(
        "/grpc.health.v1.Health/Check",
        &[HealthCheckRequest {
            service: "nope".into(),
        }
        .encode_to_vec()],
        true,
    );
    assert_eq!(status.as_deref(), Some("5"));
    let (messages, status, _) = h.call(
        "/grpc.health.v1.Health/Watch",
        &[HealthCheckRequest {
            service: GATEWAY.into(),
        }
        .encode_to_vec()],
        false,
    );
    assert_eq!(status, None, "Watch stays open");
    assert_eq!(
        HealthCheckResponse::decode(messages[0].as_ref())
            .unwrap()
            .status,
        ServingStatus::Serving as i32
    );
}

#[test]
fn unknown_services_and_methods_are_unimplemented() {
    let mut h = Harness::new();
    let (_, status, message) = h.call("/no.Such/Thing", &[vec![]], true);
    assert_eq!(status.as_deref(), Some("12"));
    assert!(message.contains("unknown service no.Such"), "{message}");
    let (_, status, message) = h.call("/palyra.gateway.v1.GatewayService/Explode", &[vec![]], true);
    assert_eq!(status.as_deref(), Some("12"));
    assert!(message.contains("unknown method Explode"), "{message}");
    let (_, status, _) = h.call(
        "/palyra.gateway.v1.GatewayService/GetHealth",
        &[vec![0xff, 0xff]],
        true,
    );
    assert_eq!(status.as_deref(), Some("3"));
}

#[test]
fn reflection_lists_services_and_serves_descriptors() {
    let mut h = Harness::new();
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let symbol = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(GATEWAY.into())),
    };
    let missing = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("x.Y".into())),
    };
    let (messages, status, _) = h.call(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &[
            list.encode_to_vec(),
            symbol.encode_to_vec(),
            missing.encode_to_vec(),
        ],
        true,
    );
    assert_eq!(status.as_deref(), Some("0"));
    let responses: Vec<ServerReflectionResponse> = messages
        .iter()
        .map(|m| ServerReflectionResponse::decode(m.as_ref()).unwrap())
        .collect();
    let Some(MessageResponse::ListServicesResponse(list)) = &responses[0].message_response else {
        panic!()
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, vec![GATEWAY, HEALTH, REFLECTION]);
    let Some(MessageResponse::FileDescriptorResponse(files)) = &responses[1].message_response
    else {
        panic!()
    };
    let file = FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.name(), "palyra/v1/gateway.proto");
    assert_eq!(file.service[0].method[0].name(), "GetHealth");
    let Some(MessageResponse::ErrorResponse(error)) = &responses[2].message_response else {
        panic!()
    };
    assert_eq!(error.error_code, Code::NotFound as i32);
}
