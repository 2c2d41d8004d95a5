//! `palyra.node.v1.NodeService` on the node TLS listener: RegisterNode, StreamNodeEvents (bidi,
//! with capability dispatches pushed as soon as they are queued) and ExecuteCapability, over the
//! shared [`NodeHub`].
//!
//! Every RPC here needs the TLS client certificate of a paired device in good standing, checked
//! against the live trust index at each call (and at each message of a stream):
//! no certificate is UNAUTHENTICATED, an unknown or revoked one or a `device_id` naming another
//! device is PERMISSION_DENIED. The pairing RPCs (see [`crate::enroll`]): Begin, Complete and
//! GetPairingRequestStatus accept callers without a certificate; RotateDeviceCertificate and
//! RevokeDevicePairing need the device's own.

use super::hub::{CapabilityRecord, CapabilityResult, Dispatch, HubError, NodeHub};
use crate::enroll::{self, EnrollmentStore};
use crate::grpc::{bind_device, check_version};
use crate::grpc::{Answer, Deferred};
use crate::store::{pending, Pending, StoreError};
use bytes::Bytes;
use palyra_proto::frame::DEFAULT_MAX_FRAME_BYTES;
use palyra_proto::grpc::codec::{Code, Status};
use palyra_proto::grpc::service::{decode, CallHandler, CallInfo, PollContext, Reply, Service};
use palyra_proto::identity::trust::TrustDecision;
use palyra_proto::node::engine;
use palyra_proto::node::message::validate_event_name;
use palyra_proto::node::message::PublishEvent;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    ExecuteCapabilityRequest, ExecuteCapabilityResponse, NodeCapabilityDispatch, NodeEventRequest,
    NodeEventResponse, RegisterNodeRequest, RegisterNodeResponse,
};
use palyra_proto::transport::PeerIdentity;
use prost::Message;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fully qualified service name.
pub const SERVICE: &str = "palyra.node.v1.NodeService";
/// The only protocol version of these messages.
pub use crate::grpc::MESSAGE_VERSION as VERSION;
/// How long ExecuteCapability waits for the node's result.
pub const CAPABILITY_TIMEOUT: Duration = Duration::from_secs(30);
/// `max_payload_bytes` when the caller sends 0.
pub const DEFAULT_MAX_PAYLOAD: u64 = 64 * 1024;
/// The largest `max_payload_bytes` honoured (a gRPC message is at most 4 MiB).
pub const MAX_PAYLOAD: u64 = 4 * 1024 * 1024 - 1024;
/// Largest capability input.
pub const MAX_INPUT_BYTES: usize = 1024 * 1024;
/// Largest event payload accepted on StreamNodeEvents (it must fit a node-plane event frame).
pub const MAX_EVENT_PAYLOAD: usize = 60 * 1024;
/// Responses a stream may owe before the node is told to slow down.
pub const MAX_OUTSTANDING: usize = 256;
/// Response bytes queued behind flow control before pushes wait.
const PUSH_HIGH_WATER: usize = 64 * 1024;
/// Longest capability description.
pub const MAX_CAPABILITY_DESCRIPTION: usize = 1024;
/// Longest capability input schema.
pub const MAX_CAPABILITY_SCHEMA: usize = 16 * 1024;
/// Longest `platform` string.
const MAX_PLATFORM: usize = 64;

/// Event names with a meaning to the gateway; others are stored in the event log.
const HEARTBEAT: &str = "node.heartbeat";
const STARTED: &str = "node.started";
const MEDIATION: &str = "capability.awaiting_local_mediation";
const RESULT: &str = "capability.result";

pub use crate::util::WallClock;

/// `palyra.node.v1.NodeService`.
pub struct NodeService {
    hub: Arc<NodeHub>,
    clock: WallClock,
    enrollment: Option<Arc<EnrollmentStore>>,
}

impl NodeService {
    /// The service over `hub`, time-stamping with `clock`; the pairing RPCs are served when
    /// `enrollment` is given (UNIMPLEMENTED otherwise).
    pub fn new(
        hub: Arc<NodeHub>,
        clock: WallClock,
        enrollment: Option<Arc<EnrollmentStore>>,
    ) -> Self {
        Self {
            hub,
            clock,
            enrollment,
        }
    }
}

impl Service for NodeService {
    fn name(&self) -> &'static str {
        SERVICE
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        let hub = Arc::clone(&self.hub);
        let clock = Arc::clone(&self.clock);
        let peer = Arc::clone(&call.peer);
        match call.method.as_str() {
            "RegisterNode" => Some(Deferred::boxed(move |bytes: Bytes| {
                register_node(&hub, &peer, clock(), &bytes)
            })),
            "ExecuteCapability" => Some(Box::new(ExecuteCapability {
                hub,
                peer,
                request: None,
                request_id: None,
                remote: None,
                timeout_at: call.started + CAPABILITY_TIMEOUT,
            })),
            "StreamNodeEvents" => Some(Box::new(EventStream::new(hub, clock, peer))),
            method => {
                let store = Arc::clone(self.enrollment.as_ref()?);
                type Rpc = fn(
                    &Arc<EnrollmentStore>,
                    &NodeHub,
                    &PeerIdentity,
                    u64,
                    &[u8],
                ) -> Result<Answer, Status>;
                let rpc: Rpc = match method {
                    "BeginPairingSession" => |s, _, p, now, b| enroll::begin(s, p, now, b),
                    "CompletePairingSession" => |s, _, _, now, b| enroll::complete(s, now, b),
                    "GetPairingRequestStatus" => |s, _, _, now, b| enroll::status(s, now, b),
                    "RotateDeviceCertificate" => |s, hub, p, now, b| {
                        let device = authenticate(hub, p)?;
                        enroll::rotate(s, &device, p, now, b)
                    },
                    "RevokeDevicePairing" => |s, hub, p, now, b| {
                        let device = authenticate(hub, p)?;
                        enroll::revoke(s, &device, now, b)
                    },
                    _ => return None,
                };
                Some(Deferred::boxed(move |bytes: Bytes| {
                    rpc(&store, &hub, &peer, clock(), &bytes)
                }))
            }
        }
    }
}

/// The device of the caller's certificate, if it is paired and not revoked.
pub fn authenticate(hub: &NodeHub, peer: &PeerIdentity) -> Result<Arc<str>, Status> {
    let Some(fingerprint) = peer.spki_sha256 else {
        return Err(Status::new(
            Code::Unauthenticated,
            "node RPC requires the client certificate of a paired device",
        ));
    };
    match hub.check(&fingerprint) {
        TrustDecision::Trusted(device) => Ok(device),
        TrustDecision::Revoked(_) => Err(Status::new(
            Code::PermissionDenied,
            "client certificate belongs to a revoked device",
        )),
        TrustDecision::Unknown => Err(Status::new(
            Code::PermissionDenied,
            "client certificate does not map to a paired device",
        )),
    }
}

fn hub_status(e: HubError) -> Status {
    let code = match e {
        HubError::Overloaded(_) => Code::ResourceExhausted,
        HubError::UnknownRequest(_) => Code::NotFound,
        HubError::NotRegistered => Code::FailedPrecondition,
        HubError::Store(_) => Code::Unavailable,
    };
    Status::new(code, e.to_string())
}

fn canonical_id(ulid: impl Into<String>) -> Option<CanonicalId> {
    Some(CanonicalId { ulid: ulid.into() })
}

/// RegisterNode: checks the request and registers; answered once the registry is durable.
fn register_node(
    hub: &NodeHub,
    peer: &PeerIdentity,
    now_ms: u64,
    bytes: &[u8],
) -> Result<Answer, Status> {
    let device = authenticate(hub, peer)?;
    let request: RegisterNodeRequest = decode(bytes)?;
    check_version(request.v)?;
    bind_device(&device, request.device_id.as_ref())?;
    let platform = request.platform.trim();
    if platform.len() > MAX_PLATFORM {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("platform must be at most {MAX_PLATFORM} bytes"),
        ));
    }
    if request.capabilities.len() > super::hub::MAX_CAPABILITIES {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "at most {} capabilities may be advertised",
                super::hub::MAX_CAPABILITIES
            ),
        ));
    }
    let mut capabilities: Vec<CapabilityRecord> = Vec::with_capacity(request.capabilities.len());
    for capability in &request.capabilities {
        let name = capability.name.trim();
        validate_event_name(name).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!(
                    "capability name {name:?}: {}",
                    e.to_string().replace("event.name", "it")
                ),
            )
        })?;
        if capabilities.iter().any(|c| c.name == name) {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("capability {name:?} is listed twice"),
            ));
        }
        if capability.description.len() > MAX_CAPABILITY_DESCRIPTION {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "capability {name:?}: description exceeds {MAX_CAPABILITY_DESCRIPTION} bytes"
                ),
            ));
        }
        let input_schema = match capability.input_schema_json.as_slice() {
            [] => None,
            json if json.len() > MAX_CAPABILITY_SCHEMA => {
                return Err(Status::new(
                    Code::InvalidArgument,
                    format!(
                    "capability {name:?}: input_schema_json exceeds {MAX_CAPABILITY_SCHEMA} bytes"
                ),
                ))
            }
            json => match serde_json::from_slice::<Value>(json) {
                Ok(schema) if schema.is_object() => Some(schema),
                _ => {
                    return Err(Status::new(
                        Code::InvalidArgument,
                        format!("capability {name:?}: input_schema_json is not a JSON object"),
                    ))
                }
            },
        };
        capabilities.push(CapabilityRecord {
            name: name.to_owned(),
            available: capability.available,
            description: capability.description.clone(),
            input_schema,
        });
    }
    let registration = hub.register(&device, platform, capabilities, now_ms);
    let mut device_id = request.device_id;
    Ok(Box::new(move || {
        let result = registration.take()?;
        Some(result.map_err(hub_status).map(|()| {
            RegisterNodeResponse {
                v: VERSION,
                device_id: device_id.take(),
                accepted: true,
                reason: "registered".into(),
            }
            .encode_to_vec()
        }))
    }))
}

/// A call carried to the gateway holding the node, and the largest output it accepts.
type RemoteAnswer = (Pending<Result<CapabilityResult, StoreError>>, u64);

/// ExecuteCapability: queue the work for the caller's own node (through the gateway of the
/// cluster that holds its connection, when that is another one), wait for its result.
struct ExecuteCapability {
    hub: Arc<NodeHub>,
    peer: Arc<PeerIdentity>,
    request: Option<Bytes>,
    request_id: Option<(String, u64)>,
    remote: Option<RemoteAnswer>,
    timeout_at: Instant,
}

/// The answer to a capability result, refused when its output is larger than `max_payload`.
fn capability_response(result: CapabilityResult, max_payload: u64) -> ExecuteCapabilityResponse {
    if result.output_json.len() as u64 > max_payload {
        return ExecuteCapabilityResponse {
            v: VERSION,
            success: false,
            output_json: Vec::new(),
            error: format!("capability output exceeds max_payload_bytes={max_payload}"),
        };
    }
    ExecuteCapabilityResponse {
        v: VERSION,
        success: result.success,
        output_json: result.output_json,
        error: result.error,
    }
}

impl ExecuteCapability {
    /// Starts the work: queued here (its request ID), or carried to another gateway (`None`).
    fn begin(&mut self, bytes: &[u8], now: Instant) -> Result<Option<(String, u64)>, Status> {
        let device = authenticate(&self.hub, &self.peer)?;
        let request: ExecuteCapabilityRequest = decode(bytes)?;
        check_version(request.v)?;
        bind_device(&device, request.device_id.as_ref())?;
        validate_event_name(&request.capability).map_err(|e| {
            Status::new(
                Code::InvalidArgument,
                format!("capability: {}", e.to_string().replace("event.name", "it")),
            )
        })?;
        if request.input_json.len() > MAX_INPUT_BYTES {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("input_json exceeds {MAX_INPUT_BYTES} bytes"),
            ));
        }
        if !request.input_json.is_empty()
            && serde_json::from_slice::<Value>(&request.input_json).is_err()
        {
            return Err(Status::new(
                Code::InvalidArgument,
                "input_json is not valid JSON",
            ));
        }
        let max_payload = match request.max_payload_bytes {
            0 => DEFAULT_MAX_PAYLOAD,
            n => n.min(MAX_PAYLOAD),
        };
        if let Some((peers, gateway)) = self.hub.remote(&device) {
            let (answer, done) = pending(Some(self.hub.notifier()));
            let call = crate::node::peers::RemoteCall {
                device_id: device.to_string(),
                capability: request.capability,
                input_json: request.input_json,
                max_payload_bytes: max_payload,
                timeout: self.timeout_at.saturating_duration_since(now),
            };
            peers.call(&gateway, call, Box::new(move |r| done.complete(r)));
            self.remote = Some((answer, max_payload));
            return Ok(None);
        }
        let id = self
            .hub
            .enqueue(
                &device,
                &request.capability,
                request.input_json,
                max_payload,
            )
            .map_err(hub_status)?;
        Ok(Some((id, max_payload)))
    }

    /// Whether the work was started.
    fn started(&self) -> bool {
        self.request_id.is_some() || self.remote.is_some()
    }
}

impl CallHandler for ExecuteCapability {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.request.is_some() || self.started() {
            reply.finish(Status::new(
                Code::InvalidArgument,
                "ExecuteCapability takes exactly one request message",
            ));
            return;
        }
        self.request = Some(message);
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        let Some(bytes) = self.request.take() else {
            if !self.started() {
                reply.finish(Status::new(
                    Code::InvalidArgument,
                    "ExecuteCapability takes exactly one request message",
                ));
            }
            return;
        };
        match self.begin(&bytes, Instant::now()) {
            Ok(started) => self.request_id = started,
            Err(status) => reply.finish(status),
        }
    }

    fn poll(&mut self, cx: &PollContext, reply: &mut Reply) {
        if let Some((answer, max_payload)) = &self.remote {
            let Some(outcome) = answer.take() else {
                if cx.now >= self.timeout_at {
                    reply.finish(Status::new(
                        Code::DeadlineExceeded,
                        "timed out waiting for node capability result",
                    ));
                }
                return;
            };
            let max_payload = *max_payload;
            self.remote = None;
            match outcome {
                Ok(result) => {
                    reply.message(capability_response(result, max_payload).encode_to_vec());
                    reply.finish(Status::ok());
                }
                Err(e) => reply.finish(Status::new(Code::Unavailable, e.to_string())),
            }
            return;
        }
        let Some((id, max_payload)) = &self.request_id else {
            return;
        };
        if let Some(result) = self.hub.take_result(id) {
            let response = capability_response(result, *max_payload);
            self.request_id = None;
            reply.message(response.encode_to_vec());
            reply.finish(Status::ok());
        } else if cx.now >= self.timeout_at {
            reply.finish(Status::new(
                Code::DeadlineExceeded,
                "timed out waiting for node capability result",
            ));
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.started().then_some(self.timeout_at)
    }
}

impl Drop for ExecuteCapability {
    fn drop(&mut self) {
        if let Some((id, _)) = self.request_id.take() {
            self.hub.abandon(&id);
        }
    }
}

/// A response a stream owes, in arrival order.
enum Owed {
    Ready(NodeEventResponse),
    /// Waiting for the event log: answered once the event is durable.
    Stored {
        stored: Pending<Result<u64, StoreError>>,
        event_id: String,
    },
}

/// StreamNodeEvents: answers every event in order and pushes dispatches as they are queued.
struct EventStream {
    hub: Arc<NodeHub>,
    clock: WallClock,
    peer: Arc<PeerIdentity>,
    /// The device of the certificate, or why the stream is refused.
    device: Result<Arc<str>, Status>,
    owed: VecDeque<Owed>,
    half_closed: bool,
    failed: Option<Status>,
    trust_generation: u64,
    headers_sent: bool,
    /// Set once the node sent `node.started` or `node.heartbeat`: it is a node host that runs
    /// capabilities, so dispatches may go to this stream. Streams that only publish (the CLI)
    /// never take work.
    takes_work: bool,
}

impl EventStream {
    fn new(hub: Arc<NodeHub>, clock: WallClock, peer: Arc<PeerIdentity>) -> Self {
        let device = authenticate(&hub, &peer);
        let trust_generation = hub.trust().generation();
        Self {
            hub,
            clock,
            peer,
            device,
            owed: VecDeque::new(),
            half_closed: false,
            failed: None,
            trust_generation,
            headers_sent: false,
            takes_work: false,
        }
    }

    fn accepted(&self, event_id: String, reason: &str) -> NodeEventResponse {
        NodeEventResponse {
            v: VERSION,
            event_id: canonical_id(event_id),
            accepted: true,
            reason: reason.into(),
            dispatch: None,
        }
    }

    fn refused(&self, event_id: String, reason: String) -> NodeEventResponse {
        NodeEventResponse {
            v: VERSION,
            event_id: canonical_id(event_id),
            accepted: false,
            reason,
            dispatch: None,
        }
    }

    /// Handles one event; `Err` ends the stream.
    fn handle(&mut self, device: &str, bytes: &[u8]) -> Result<Owed, Status> {
        // Revocation takes effect on the next message (and on the next trust reload).
        authenticate(&self.hub, &self.peer)?;
        let request: NodeEventRequest = decode(bytes)?;
        check_version(request.v)?;
        bind_device(device, request.device_id.as_ref())?;
        validate_event_name(&request.event_name)
            .map_err(|e| Status::new(Code::InvalidArgument, format!("event_name: {e}")))?;
        if request.payload_json.len() > MAX_EVENT_PAYLOAD {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("payload_json exceeds {MAX_EVENT_PAYLOAD} bytes"),
            ));
        }
        let payload: Value = if request.payload_json.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&request.payload_json).map_err(|e| {
                Status::new(
                    Code::InvalidArgument,
                    format!("payload_json is not valid JSON: {e}"),
                )
            })?
        };
        let now_ms = (self.clock)();
        let event_id = ulid::Ulid::new().to_string();
        self.hub.touch(device, &request.event_name, now_ms);
        if matches!(request.event_name.as_str(), HEARTBEAT | STARTED) {
            self.takes_work = true;
        }
        match request.event_name.as_str() {
            HEARTBEAT => Ok(Owed::Ready(self.accepted(event_id, "accepted"))),
            MEDIATION => {
                let request_id = request_id_of(&payload)?;
                Ok(Owed::Ready(
                    match self.hub.awaiting_mediation(device, &request_id) {
                        Ok(()) => self.accepted(event_id, "accepted"),
                        Err(e) => self.refused(event_id, e.to_string()),
                    },
                ))
            }
            RESULT => {
                let request_id = request_id_of(&payload)?;
                let result = capability_result(&payload)?;
                Ok(Owed::Ready(
                    match self.hub.complete(device, &request_id, result) {
                        Ok(()) => self.accepted(event_id, "accepted"),
                        Err(e) => self.refused(event_id, e.to_string()),
                    },
                ))
            }
            name => {
                let publish = PublishEvent {
                    name: name.to_owned(),
                    payload,
                    to: None,
                    id: None,
                };
                let event = engine::publish(Some(device), publish, now_ms, DEFAULT_MAX_FRAME_BYTES)
                    .map_err(|refusal| Status::new(Code::InvalidArgument, refusal.message))?;
                let (stored, done) = pending(Some(self.hub.notifier()));
                self.hub.log().append(
                    vec![event],
                    None,
                    Box::new(move |result| done.complete(crate::store::only_seq(result))),
                );
                Ok(Owed::Stored { stored, event_id })
            }
        }
    }

    /// Sends owed responses that are ready, in order, each carrying a queued dispatch if any.
    fn flush(&mut self, device: &str, reply: &mut Reply) {
        loop {
            let stored = match self.owed.front() {
                None => return,
                Some(Owed::Ready(_)) => None,
                Some(Owed::Stored { stored, .. }) => match stored.take() {
                    None => return,
                    Some(result) => Some(result),
                },
            };
            let mut response = match (self.owed.pop_front(), stored) {
                (Some(Owed::Ready(response)), _) => response,
                (Some(Owed::Stored { event_id, .. }), Some(Ok(_))) => {
                    self.accepted(event_id, "stored")
                }
                (Some(Owed::Stored { event_id, .. }), Some(Err(e))) => {
                    self.refused(event_id, format!("not stored: {e}"))
                }
                _ => return,
            };
            if self.takes_work && !self.half_closed {
                response.dispatch = self.hub.take_dispatch(device).map(dispatch_message);
            }
            reply.message(response.encode_to_vec());
        }
    }

    fn fail(&mut self, status: Status, reply: &mut Reply) {
        self.failed = Some(status.clone());
        reply.finish(status);
    }
}

fn dispatch_message(d: Dispatch) -> NodeCapabilityDispatch {
    NodeCapabilityDispatch {
        request_id: canonical_id(d.request_id),
        capability: d.capability,
        input_json: d.input_json,
        max_payload_bytes: d.max_payload_bytes,
    }
}

fn request_id_of(payload: &Value) -> Result<String, Status> {
    match payload
        .get("request_id")
        .and_then(Value::as_str)
        .map(str::trim)
    {
        Some(id) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(Status::new(
            Code::InvalidArgument,
            "capability payload missing request_id",
        )),
    }
}

fn capability_result(payload: &Value) -> Result<CapabilityResult, Status> {
    let success = match payload.get("success") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(Status::new(
                Code::InvalidArgument,
                "invalid capability result payload: success must be a boolean",
            ))
        }
    };
    let error = match payload.get("error") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Status::new(
                Code::InvalidArgument,
                "invalid capability result payload: error must be a string",
            ))
        }
    };
    let output_json = match payload.get("output_json") {
        None => Vec::new(),
        Some(value) => serde_json::to_vec(value).unwrap_or_default(),
    };
    Ok(CapabilityResult {
        success,
        output_json,
        error,
    })
}

impl CallHandler for EventStream {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.failed.is_some() {
            return;
        }
        let device = match &self.device {
            Ok(device) => Arc::clone(device),
            Err(status) => return self.fail(status.clone(), reply),
        };
        if self.owed.len() >= MAX_OUTSTANDING {
            return self.fail(
                Status::new(
                    Code::ResourceExhausted,
                    "too many events awaiting their response; read responses before sending more",
                ),
                reply,
            );
        }
        match self.handle(&device, &message) {
            Ok(owed) => {
                self.owed.push_back(owed);
                self.flush(&device, reply);
            }
            Err(status) => self.fail(status, reply),
        }
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        self.half_closed = true;
        if self.failed.is_none() && self.owed.is_empty() {
            reply.finish(Status::ok());
        }
    }

    fn poll(&mut self, cx: &PollContext, reply: &mut Reply) {
        if self.failed.is_some() {
            return;
        }
        let device = match &self.device {
            Ok(device) => Arc::clone(device),
            Err(status) => return self.fail(status.clone(), reply),
        };
        if !self.headers_sent {
            // The stream is open: say so now, since clients may wait for response headers
            // before sending their first event.
            self.headers_sent = true;
            reply.headers = Some(Vec::new());
        }
        let generation = self.hub.trust().generation();
        if generation != self.trust_generation {
            self.trust_generation = generation;
            if let Err(status) = authenticate(&self.hub, &self.peer) {
                return self.fail(status, reply);
            }
        }
        self.flush(&device, reply);
        if self.half_closed {
            if self.owed.is_empty() {
                reply.finish(Status::ok());
            }
            return;
        }
        // Push: queued work goes out now, not on the node's next event.
        let mut queued = cx.queued_bytes;
        while self.takes_work && queued < PUSH_HIGH_WATER {
            let Some(dispatch) = self.hub.take_dispatch(&device) else {
                break;
            };
            let response = NodeEventResponse {
                v: VERSION,
                event_id: canonical_id(ulid::Ulid::new().to_string()),
                accepted: true,
                reason: "dispatch".into(),
                dispatch: Some(dispatch_message(dispatch)),
            }
            .encode_to_vec();
            queued += response.len();
            reply.message(response);
        }
    }
}

/// More services a listener serves beside its own: their names (for health and reflection)
/// and a maker of one set per connection.
#[derive(Clone)]
pub struct MoreServices {
    /// Fully qualified service names.
    pub names: Vec<&'static str>,
    /// Makes the services for one connection.
    pub make: Arc<dyn Fn() -> Vec<Box<dyn palyra_proto::grpc::service::Service>> + Send + Sync>,
}

/// The services of the node TLS listener: NodeService, `more` (the run services, for devices
/// calling as `node:<device_id>`), health and reflection.
pub fn node_router(
    hub: Arc<NodeHub>,
    clock: WallClock,
    enrollment: Option<Arc<EnrollmentStore>>,
    more: Option<MoreServices>,
) -> Result<palyra_proto::grpc::service::RouterFactory, prost::DecodeError> {
    use palyra_proto::grpc::services::{HealthService, ReflectionService};
    let mut names = vec![SERVICE];
    names.extend(more.iter().flat_map(|m| m.names.iter().copied()));
    names.extend([
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]);
    let reflection = ReflectionService::new(palyra_proto::pb::DESCRIPTOR_SET, &names)?;
    Ok(Arc::new(move || {
        let mut services: Vec<Box<dyn palyra_proto::grpc::service::Service>> = vec![Box::new(
            NodeService::new(Arc::clone(&hub), Arc::clone(&clock), enrollment.clone()),
        )];
        if let Some(more) = &more {
            services.extend((more.make)());
        }
        services.push(Box::new(HealthService::new(&names)));
        services.push(Box::new(reflection.clone()));
        services.push(Box::new(reflection.v1alpha()));
        palyra_proto::grpc::service::Router::new(services)
    }))
}
