//! The benchmark peer: `palyra.gateway.v1.GatewayService/GetHealth` served by tonic (hyper + h2),
//! with the same prost messages as palyrad. Prints its bound address on stdout.

use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

#[derive(Clone)]
struct Gateway {
    started: Instant,
}

struct GetHealth {
    started: Instant,
}

impl tonic::server::UnaryService<HealthRequest> for GetHealth {
    type Response = HealthResponse;
    type Future = BoxFuture<Result<tonic::Response<HealthResponse>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HealthRequest>) -> Self::Future {
        let uptime = self.started.elapsed().as_secs();
        Box::pin(async move {
            Ok(tonic::Response::new(HealthResponse {
                v: request.into_inner().v.max(1),
                service: "palyrad".into(),
                status: "ok".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                git_hash: "unknown".into(),
                build_profile: "release".into(),
                uptime_seconds: uptime,
            }))
        })
    }
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Gateway {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let started = self.started;
        match request.uri().path() {
            "/palyra.gateway.v1.GatewayService/GetHealth" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                Ok(grpc.unary(GetHealth { started }, request).await)
            }),
            _ => Box::pin(
                async move { Ok(tonic::Status::unimplemented("unknown method").into_http()) },
            ),
        }
    }
}

impl tonic::server::NamedService for Gateway {
    const NAME: &'static str = "palyra.gateway.v1.GatewayService";
}

#[tokio::main(worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    // TCP_NODELAY as palyrad sets it, so both servers write small frames at once.
    let incoming = tonic::transport::server::TcpIncoming::bind(addr)?.with_nodelay(Some(true));
    println!("{}", incoming.local_addr()?);
    tonic::transport::Server::builder()
        .add_service(Gateway {
            started: Instant::now(),
        })
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
