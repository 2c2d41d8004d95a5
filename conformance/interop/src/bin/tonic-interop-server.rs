//! The peer server: grpc.testing.TestService on tonic (hyper + h2), for our client's interop run.
//! Prints the bound address on stdout and serves until stdin closes.
//!
//! tonic's service API sets initial metadata but not trailers on successful calls, so
//! `x-grpc-test-echo-trailing-bin` is echoed only when a call ends with an error status.

use palyra_interop::pb::test_service_server::{TestService, TestServiceServer};
use palyra_interop::pb::{
    EchoStatus, Empty, SimpleRequest, SimpleResponse, StreamingInputCallRequest,
    StreamingInputCallResponse, StreamingOutputCallRequest, StreamingOutputCallResponse,
};
use palyra_interop::{zeros, ECHO_INITIAL, ECHO_TRAILING};
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

type Responses = Pin<Box<dyn Stream<Item = Result<StreamingOutputCallResponse, Status>> + Send>>;

struct Interop;

fn status_of(echo: &Option<EchoStatus>, trailing: &MetadataMap) -> Option<Status> {
    echo.as_ref().filter(|s| s.code != 0).map(|s| {
        let mut status = Status::new(tonic::Code::from(s.code), s.message.clone());
        if let Some(value) = trailing.get_bin(ECHO_TRAILING) {
            status
                .metadata_mut()
                .insert_bin(ECHO_TRAILING, value.clone());
        }
        status
    })
}

fn echo_initial<T>(request_metadata: &MetadataMap, response: &mut Response<T>) {
    if let Some(value) = request_metadata.get(ECHO_INITIAL) {
        response.metadata_mut().insert(ECHO_INITIAL, value.clone());
    }
}

/// Answers a stream of requests in order, sleeping `interval_us` before each response.
fn respond(
    mut requests: impl Stream<Item = Result<StreamingOutputCallRequest, Status>>
        + Send
        + Unpin
        + 'static,
    trailing: MetadataMap,
) -> Responses {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let request = match request {
                Ok(r) => r,
                Err(_) => return,
            };
            for p in &request.response_parameters {
                if p.interval_us > 0 {
                    tokio::time::sleep(Duration::from_micros(p.interval_us as u64)).await;
                }
                let response = StreamingOutputCallResponse {
                    payload: zeros(p.size),
                };
                if tx.send(Ok(response)).await.is_err() {
                    return;
                }
            }
            if let Some(status) = status_of(&request.response_status, &trailing) {
                let _ = tx.send(Err(status)).await;
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl TestService for Interop {
    async fn empty_call(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }

    async fn unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        if let Some(status) = status_of(&request.response_status, &metadata) {
            return Err(status);
        }
        let mut response = Response::new(SimpleResponse {
            payload: zeros(request.response_size),
            ..Default::default()
        });
        echo_initial(&metadata, &mut response);
        Ok(response)
    }

    async fn cacheable_unary_call(
        &self,
        request: Request<SimpleRequest>,
    ) -> Result<Response<SimpleResponse>, Status> {
        self.unary_call(request).await
    }

    type StreamingOutputCallStream = Responses;

    async fn streaming_output_call(
        &self,
        request: Request<StreamingOutputCallRequest>,
    ) -> Result<Response<Responses>, Status> {
        let metadata = request.metadata().clone();
        let one = tokio_stream::iter([Ok(request.into_inner())]);
        let mut response = Response::new(respond(one, metadata.clone()));
        echo_initial(&metadata, &mut response);
        Ok(response)
    }

    async fn streaming_input_call(
        &self,
        request: Request<Streaming<StreamingInputCallRequest>>,
    ) -> Result<Response<StreamingInputCallResponse>, Status> {
        let mut stream = request.into_inner();
        let mut total = 0usize;
        while let Some(message) = stream.message().await? {
            total += message.payload.map_or(0, |p| p.body.len());
        }
        Ok(Response::new(StreamingInputCallResponse {
            aggregated_payload_size: total as i32,
        }))
    }

    type FullDuplexCallStream = Responses;

    async fn full_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let metadata = request.metadata().clone();
        let mut response = Response::new(respond(request.into_inner(), metadata.clone()));
        echo_initial(&metadata, &mut response);
        Ok(response)
    }

    type HalfDuplexCallStream = Responses;

    async fn half_duplex_call(
        &self,
        request: Request<Streaming<StreamingOutputCallRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let metadata = request.metadata().clone();
        let all: Vec<_> = request.into_inner().collect().await;
        Ok(Response::new(respond(tokio_stream::iter(all), metadata)))
    }

    async fn unimplemented_call(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Empty>, Status> {
        Err(Status::unimplemented(
            "UnimplementedCall is not implemented",
        ))
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into())
        .parse()?;
    let incoming = tonic::transport::server::TcpIncoming::bind(addr)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_nodelay(Some(true));
    println!("{}", incoming.local_addr()?);
    let stdin_closed = async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    };
    tonic::transport::Server::builder()
        .add_service(TestServiceServer::new(Interop))
        .serve_with_incoming_shutdown(incoming, stdin_closed)
        .await?;
    Ok(())
}
