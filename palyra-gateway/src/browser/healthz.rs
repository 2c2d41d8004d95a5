//! browserd's HTTP listener: `GET /healthz` (no credential, nothing secret: status, uptime,
//! sessions, Chromium state) for load balancers and supervisors; everything else is 404.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use palyra_proto::http1::server::{Event, Http1Server, ResponseBody, ServerConfig};
use palyra_proto::transport::{Acceptor, StreamMachine};
use std::sync::Arc;
use std::time::Instant;

/// The health document: `(healthy, JSON body)`.
pub type Report = Arc<dyn Fn() -> (bool, String) + Send + Sync>;

/// Accepts health-check connections.
pub struct HealthzAcceptor {
    /// Produces the answer.
    pub report: Report,
}

impl Acceptor for HealthzAcceptor {
    fn accept(
        &self,
        now: Instant,
        _peer: std::net::SocketAddr,
    ) -> Result<Box<dyn StreamMachine>, String> {
        let config = ServerConfig::default();
        Ok(Box::new(Healthz {
            http: Http1Server::new(config, now),
            report: Arc::clone(&self.report),
        }))
    }
}

struct Healthz {
    http: Http1Server,
    report: Report,
}

impl Healthz {
    fn serve(&mut self, now: Instant) {
        while let Some(event) = self.http.poll_event() {
            let Event::Request(head) = event else {
                continue;
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
            let (status, body) = match (
                head.method == Method::GET || head.method == Method::HEAD,
                head.uri.path(),
            ) {
                (true, "/healthz") => {
                    let (ok, body) = (self.report)();
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    let status = if ok {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, body)
                }
                (false, "/healthz") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into()),
                _ => (
                    StatusCode::NOT_FOUND,
                    "palyra-browserd serves /healthz here; BrowserService is on its gRPC port\n"
                        .into(),
                ),
            };
            let _ = self
                .http
                .respond(now, status, &headers, ResponseBody::Full(Bytes::from(body)));
        }
    }
}

impl StreamMachine for Healthz {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.http.handle_input(now, bytes);
        self.serve(now);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.http.handle_timeout(now);
    }
    fn handle_wake(&mut self, now: Instant) {
        self.serve(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.http.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.http.poll_transmit()
    }
    fn is_closed(&self) -> bool {
        self.http.is_closed()
    }
    fn handle_eof(&mut self) {
        self.http.handle_eof();
    }
    fn go_away(&mut self) {
        self.http.handle_eof();
    }
    fn wants_input(&self) -> bool {
        self.http.wants_input()
    }
    fn is_idle(&self) -> bool {
        self.http.is_idle()
    }
}
