//! gRPC interop (the standard cases of gRPC's interop-test-descriptions) across implementations:
//! `grpc.testing.TestService` served by our stack ([`test_service_router`]) and by tonic, driven
//! by grpcio (Python), tonic and our own client.

pub mod cases;

use bytes::Bytes;
use palyra_proto::grpc::codec::{Code, Status};
use palyra_proto::grpc::service::{
    decode, CallHandler, CallInfo, PollContext, Reply, Router, RouterFactory, Service,
};
use palyra_proto::grpc::services::{HealthService, ReflectionService};
use palyra_proto::h2::hpack::Field;
use prost::Message;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generated grpc.testing messages, tonic client and tonic server.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/grpc.testing.rs"));
}

use pb::{
    Empty, Payload, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
    StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
};

/// Descriptor set of the grpc.testing protos (for reflection).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testing_descriptors.bin"));

/// Metadata key echoed in response headers.
pub const ECHO_INITIAL: &str = "x-grpc-test-echo-initial";
/// Binary metadata key echoed in trailers.
pub const ECHO_TRAILING: &str = "x-grpc-test-echo-trailing-bin";

/// The largest response a request may ask for (bounds memory like any server limit).
const MAX_RESPONSE: usize = 4 * 1024 * 1024 - 64;

/// `grpc.testing.TestService`, health and reflection, on our gRPC server.
pub fn test_service_router() -> RouterFactory {
    const NAMES: [&str; 4] = [
        "grpc.testing.TestService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let reflection = ReflectionService::new(DESCRIPTORS, &NAMES).expect("descriptor set");
    Arc::new(move || {
        Router::new(vec![
            Box::new(TestService),
            Box::new(HealthService::new(&NAMES)),
            Box::new(reflection.clone()),
            Box::new(reflection.v1alpha()),
        ])
    })
}

/// A payload of `size` zero bytes.
pub fn zeros(size: i32) -> Option<Payload> {
    Some(Payload {
        r#type: 0,
        body: vec![0; size.max(0) as usize],
    })
}

struct TestService;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Empty,
    Unary,
    StreamingOutput,
    StreamingInput,
    FullDuplex,
    HalfDuplex,
}

impl Service for TestService {
    fn name(&self) -> &'static str {
        "grpc.testing.TestService"
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        let kind = match call.method.as_str() {
            "EmptyCall" => Kind::Empty,
            "UnaryCall" | "CacheableUnaryCall" => Kind::Unary,
            "StreamingOutputCall" => Kind::StreamingOutput,
            "StreamingInputCall" => Kind::StreamingInput,
            "FullDuplexCall" => Kind::FullDuplex,
            "HalfDuplexCall" => Kind::HalfDuplex,
            _ => return None,
        };
        let find = |name: &str| {
            call.metadata
                .iter()
                .filter(|f| f.name.as_ref() == name.as_bytes())
                .cloned()
                .collect::<Vec<Field>>()
        };
        let initial = find(ECHO_INITIAL);
        Some(Box::new(TestCall {
            kind,
            initial: (!initial.is_empty()).then_some(initial),
            trailing: find(ECHO_TRAILING),
            plan: VecDeque::new(),
            due: None,
            buffered: Vec::new(),
            aggregated: 0,
            half_closed: false,
            done: false,
            headers_sent: false,
        }))
    }
}

/// What a call still has to do, in order.
enum Step {
    /// Send a payload of `size` bytes after `delay`.
    Send { delay: Duration, size: i32 },
    /// Send this message now.
    Message(Vec<u8>),
    /// End the call.
    Finish(Status),
}

struct TestCall {
    kind: Kind,
    initial: Option<Vec<Field>>,
    trailing: Vec<Field>,
    plan: VecDeque<Step>,
    due: Option<Instant>,
    buffered: Vec<StreamingOutputCallRequest>,
    aggregated: usize,
    half_closed: bool,
    done: bool,
    headers_sent: bool,
}

fn echo_status(status: &Option<pb::EchoStatus>) -> Option<Status> {
    status
        .as_ref()
        .filter(|s| s.code != 0)
        .map(|s| Status::new(Code::from_u32(s.code as u32), s.message.clone()))
}

fn check_size(size: i32) -> Result<i32, Status> {
    if size < 0 || size as usize > MAX_RESPONSE {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("response size {size} outside 0..={MAX_RESPONSE}"),
        ));
    }
    Ok(size)
}

impl TestCall {
    fn plan_streaming(&mut self, request: StreamingOutputCallRequest) -> Result<(), Status> {
        for p in &request.response_parameters {
            self.plan.push_back(Step::Send {
                delay: Duration::from_micros(p.interval_us.max(0) as u64),
                size: check_size(p.size)?,
            });
        }
        if let Some(status) = echo_status(&request.response_status) {
            self.plan.push_back(Step::Finish(status));
        }
        Ok(())
    }

    fn handle(&mut self, message: &[u8]) -> Result<(), Status> {
        match self.kind {
            Kind::Empty => {
                decode::<Empty>(message)?;
                self.plan.push_back(Step::Message(Empty {}.encode_to_vec()));
            }
            Kind::Unary => {
                let request: SimpleRequest = decode(message)?;
                if let Some(status) = echo_status(&request.response_status) {
                    self.plan.push_back(Step::Finish(status));
                } else {
                    let response = SimpleResponse {
                        payload: zeros(check_size(request.response_size)?),
                        ..Default::default()
                    };
                    self.plan.push_back(Step::Message(response.encode_to_vec()));
                }
            }
            Kind::StreamingInput => {
                let request: StreamingInputCallRequest = decode(message)?;
                self.aggregated += request.payload.map_or(0, |p| p.body.len());
            }
            Kind::StreamingOutput | Kind::FullDuplex => {
                self.plan_streaming(decode(message)?)?;
            }
            Kind::HalfDuplex => {
                if self.buffered.len() >= 1024 {
                    return Err(Status::new(
                        Code::ResourceExhausted,
                        "at most 1024 requests are buffered",
                    ));
                }
                self.buffered.push(decode(message)?);
            }
        }
        Ok(())
    }
}

impl CallHandler for TestCall {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.done {
            return;
        }
        if let Err(status) = self.handle(&message) {
            self.done = true;
            reply.finish = Some((status, self.trailing.clone()));
        }
    }

    fn on_half_close(&mut self, _reply: &mut Reply) {
        self.half_closed = true;
        match self.kind {
            Kind::StreamingInput => {
                let response = StreamingInputCallResponse {
                    aggregated_payload_size: self.aggregated as i32,
                };
                self.plan.push_back(Step::Message(response.encode_to_vec()));
            }
            Kind::HalfDuplex => {
                for request in std::mem::take(&mut self.buffered) {
                    if let Err(status) = self.plan_streaming(request) {
                        self.plan.push_back(Step::Finish(status));
                        break;
                    }
                }
            }
            _ => {}
        }
    }

    fn poll(&mut self, cx: &PollContext, reply: &mut Reply) {
        if self.done {
            return;
        }
        if !self.headers_sent {
            // Streaming responses start with headers at once: clients such as tonic wait for
            // them before they send their first message.
            self.headers_sent = true;
            let streaming = matches!(
                self.kind,
                Kind::StreamingOutput | Kind::FullDuplex | Kind::HalfDuplex
            );
            if streaming || self.initial.is_some() {
                reply.headers = Some(self.initial.take().unwrap_or_default());
            }
        }
        while let Some(step) = self.plan.front() {
            match step {
                Step::Send { delay, size } => {
                    let due = *self.due.get_or_insert(cx.now + *delay);
                    if cx.now < due {
                        return;
                    }
                    let response = StreamingOutputCallResponse {
                        payload: zeros(*size),
                    };
                    reply.message(response.encode_to_vec());
                    self.due = None;
                }
                Step::Message(bytes) => reply.message(bytes.clone()),
                Step::Finish(status) => {
                    self.done = true;
                    reply.finish = Some((status.clone(), self.trailing.clone()));
                    return;
                }
            }
            self.plan.pop_front();
        }
        if self.half_closed {
            self.done = true;
            reply.finish = Some((Status::ok(), self.trailing.clone()));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }
}

/// Runs a listener on the runtime adapter named `driver` (`tokio` or `smol`): `start` binds it,
/// its address is printed on stdout, and it serves until stdin closes (then shuts down).
pub fn serve_until_stdin_eof(
    driver: &str,
    start: impl FnOnce(
        &palyra_gateway::runtime::Rt,
    ) -> std::io::Result<palyra_gateway::serve::tcp::TcpHandle>,
) -> anyhow::Result<()> {
    use palyra_gateway::runtime::{self, Rt};
    let serve = |rt: Rt| async move {
        let handle = start(&rt)?;
        println!("{}", handle.local_addr);
        runtime::unblock(rt.as_ref(), || {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
        handle.shutdown(&rt).await;
        anyhow::Ok(())
    };
    match driver {
        "tokio" => {
            let runtime = palyra_tokio::build_runtime(2)?;
            let rt = palyra_tokio::Tokio::new(runtime.handle().clone());
            runtime.block_on(serve(rt))
        }
        "smol" => smol::block_on(serve(palyra_smol::Smol::new())),
        other => anyhow::bail!("unknown driver {other:?} (tokio or smol)"),
    }
}
