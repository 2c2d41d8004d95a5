//! The gateway's own gRPC services and what a gRPC listener serves: `palyra.gateway.v1.GatewayService`
//! (GetHealth) with health checking and reflection on the gateway listener, and
//! [`GrpcListener`], the description of a listener the serve loop binds.

use crate::notify::Notifier;
use bytes::Bytes;
use palyra_proto::grpc::service::{
    decode, CallHandler, CallInfo, GrpcAcceptor, PollContext, Reply, Router, RouterFactory,
    Service, Unary,
};
use palyra_proto::grpc::services::{HealthService, ReflectionService};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
use palyra_proto::transport::Acceptor;
use prost::Message;
use std::sync::Arc;
use std::time::Instant;

/// The version of the Palyra messages this gateway speaks (`v` in every request).
pub const MESSAGE_VERSION: u32 = 1;

/// Checks a request's `device_id` is a canonical ULID and names the authenticated device.
pub fn bind_device(authenticated: &str, device_id: Option<&CanonicalId>) -> Result<(), Status> {
    let id = device_id.map(|d| d.ulid.as_str()).unwrap_or("");
    if !palyra_proto::identity::is_canonical_device_id(id) {
        return Err(Status::new(
            Code::InvalidArgument,
            "device_id must be a canonical ULID (26 characters, Crockford base32, upper case)",
        ));
    }
    if id != authenticated {
        return Err(Status::new(
            Code::PermissionDenied,
            "device_id does not match the authenticated client certificate",
        ));
    }
    Ok(())
}

/// Checks a Palyra message's version field.
pub fn check_version(v: u32) -> Result<(), Status> {
    if v == MESSAGE_VERSION {
        Ok(())
    } else {
        Err(Status::new(
            Code::InvalidArgument,
            format!("unsupported message version v={v}; this gateway speaks v={MESSAGE_VERSION}"),
        ))
    }
}

/// Daemon facts reported by GetHealth.
#[derive(Debug, Clone)]
pub struct DaemonInfo {
    /// Version string.
    pub version: String,
    /// Git hash (or `unknown`).
    pub git_hash: String,
    /// `debug` or `release`.
    pub build_profile: String,
    /// When the daemon started (uptime is measured to the time each call arrived).
    pub started: Instant,
}

/// `palyra.gateway.v1.GatewayService` (GetHealth; no authentication).
pub struct GatewayService {
    info: Arc<DaemonInfo>,
}

impl GatewayService {
    /// A service reporting `info`.
    pub fn new(info: Arc<DaemonInfo>) -> Self {
        Self { info }
    }
}

impl Service for GatewayService {
    fn name(&self) -> &'static str {
        "palyra.gateway.v1.GatewayService"
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        if call.method != "GetHealth" {
            return None;
        }
        let info = Arc::clone(&self.info);
        let uptime = call
            .started
            .saturating_duration_since(info.started)
            .as_secs();
        Some(Unary::boxed(move |bytes: Bytes| {
            let request: HealthRequest = decode(&bytes)?;
            Ok(HealthResponse {
                v: request.v.max(1),
                service: "palyrad".into(),
                status: "ok".into(),
                version: info.version.clone(),
                git_hash: info.git_hash.clone(),
                build_profile: info.build_profile.clone(),
                uptime_seconds: uptime,
            }
            .encode_to_vec())
        }))
    }
}

/// The services of the gateway listener: GetHealth, health and reflection.
pub fn gateway_router(info: Arc<DaemonInfo>) -> Result<RouterFactory, prost::DecodeError> {
    const NAMES: [&str; 4] = [
        "palyra.gateway.v1.GatewayService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let reflection = ReflectionService::new(palyra_proto::pb::DESCRIPTOR_SET, &NAMES)?;
    Ok(Arc::new(move || {
        Router::new(vec![
            Box::new(GatewayService::new(Arc::clone(&info))),
            Box::new(HealthService::new(&NAMES)),
            Box::new(reflection.clone()),
            Box::new(reflection.v1alpha()),
        ])
    }))
}

/// A call refused at once with a status.
struct Refuse(Option<Status>);

impl CallHandler for Refuse {
    fn on_message(&mut self, _: Bytes, _: &mut Reply) {}
    fn on_half_close(&mut self, _: &mut Reply) {}
    fn poll(&mut self, _: &PollContext, reply: &mut Reply) {
        if let Some(status) = self.0.take() {
            reply.finish(status);
        }
    }
}

/// A handler that ends its call with `status` (an authentication failure, say).
pub fn refuse(status: Status) -> Box<dyn CallHandler> {
    Box::new(Refuse(Some(status)))
}

/// Polls for the answer of a call waiting on a store: `None` while waiting.
pub type Answer = Box<dyn FnMut() -> Option<Result<Vec<u8>, Status>> + Send>;

/// A unary call answered once a store write it started completes: `start` checks the request
/// and hands its write over, returning how to poll for the answer (or the status at once). The
/// connection's task polls it whenever the call's notifier fires.
pub struct Deferred<F> {
    request: Option<Bytes>,
    start: Option<F>,
    answer: Option<Answer>,
}

impl<F> Deferred<F>
where
    F: FnOnce(Bytes) -> Result<Answer, Status> + Send + 'static,
{
    /// Wraps `start`.
    pub fn boxed(start: F) -> Box<dyn CallHandler> {
        Box::new(Self {
            request: None,
            start: Some(start),
            answer: None,
        })
    }
}

impl<F> CallHandler for Deferred<F>
where
    F: FnOnce(Bytes) -> Result<Answer, Status> + Send + 'static,
{
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.request.is_some() || self.start.is_none() {
            reply.finish(Status::new(
                Code::Unimplemented,
                "unary method received more than one request message",
            ));
            return;
        }
        self.request = Some(message);
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        let (Some(request), Some(start)) = (self.request.take(), self.start.take()) else {
            if self.answer.is_none() {
                reply.finish(Status::new(
                    Code::Unimplemented,
                    "unary method received no request message",
                ));
            }
            return;
        };
        match start(request) {
            Ok(answer) => self.answer = Some(answer),
            Err(status) => reply.finish(status),
        }
    }

    fn poll(&mut self, _cx: &PollContext, reply: &mut Reply) {
        let Some(answer) = self.answer.as_mut() else {
            return;
        };
        match answer() {
            None => {}
            Some(Ok(response)) => {
                self.answer = None;
                reply.message(response);
                reply.finish(Status::ok());
            }
            Some(Err(status)) => {
                self.answer = None;
                reply.finish(status);
            }
        }
    }
}

/// What a gRPC listener serves and how; drivers bind it with their `GrpcHandle::start`.
#[derive(Clone)]
pub struct GrpcListener {
    /// HTTP/2 and gRPC limits.
    pub config: palyra_proto::grpc::server::ServerConfig,
    /// Builds the services of each connection.
    pub routers: RouterFactory,
    /// TLS configuration; cleartext HTTP/2 (h2c) when absent.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Shared state whose changes wake the connections (pushing streams).
    pub notifier: Option<Arc<Notifier>>,
}

impl GrpcListener {
    /// Cleartext HTTP/2 with default limits.
    pub fn h2c(routers: RouterFactory) -> Self {
        Self {
            config: palyra_proto::grpc::server::ServerConfig::default(),
            routers,
            tls: None,
            notifier: None,
        }
    }

    /// The acceptor building each connection's machine, and the notifier to wake them with.
    pub fn into_parts(self) -> (Arc<dyn Acceptor>, Option<Arc<Notifier>>) {
        let acceptor = GrpcAcceptor {
            config: self.config,
            routers: self.routers,
            tls: self.tls,
        };
        (Arc::new(acceptor), self.notifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palyra_proto::grpc::client::{Event, GrpcClient};
    use palyra_proto::grpc::server::ServerConfig;
    use palyra_proto::grpc::service::ServerConnection;
    use palyra_proto::grpc::Code;
    use palyra_proto::transport::StreamMachine;
    use std::time::Duration;

    #[test]
    fn get_health_reports_the_daemon_and_its_uptime() {
        let started = Instant::now();
        let info = Arc::new(DaemonInfo {
            version: "1.2.3".into(),
            git_hash: "abc".into(),
            build_profile: "debug".into(),
            started,
        });
        let now = started + Duration::from_secs(42);
        let router = (gateway_router(info).unwrap())();
        let mut server = ServerConnection::new(ServerConfig::default(), router, now);
        let mut client = GrpcClient::new("localhost", None, now);
        let call = client
            .start_call(
                now,
                "/palyra.gateway.v1.GatewayService/GetHealth",
                &[],
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        client
            .send_message(call, &HealthRequest { v: 1 }.encode_to_vec())
            .unwrap();
        client.close_send(call).unwrap();
        loop {
            let mut moved = false;
            while let Some(bytes) = client.poll_transmit() {
                server.handle_input(now, &bytes);
                moved = true;
            }
            while let Some(bytes) = server.poll_transmit() {
                client.handle_input(now, &bytes);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        let events: Vec<Event> = std::iter::from_fn(|| client.poll_event()).collect();
        let message = events
            .iter()
            .find_map(|e| match e {
                Event::Message { message, .. } => Some(message.clone()),
                _ => None,
            })
            .expect("a response message");
        let response = HealthResponse::decode(message.as_ref()).unwrap();
        assert_eq!(
            (
                response.service.as_str(),
                response.status.as_str(),
                response.version.as_str(),
                response.uptime_seconds,
                response.v
            ),
            ("palyrad", "ok", "1.2.3", 42, 1)
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Finished { status, .. } if status.code == Code::Ok)));
    }
}
