//! The peer client: tonic (hyper + h2) running the standard interop cases against a
//! grpc.testing.TestService, here ours.

use anyhow::{ensure, Context};
use clap::Parser;
use palyra_interop::cases::{self, *};
use palyra_interop::pb::test_service_client::TestServiceClient;
use palyra_interop::pb::unimplemented_service_client::UnimplementedServiceClient;
use palyra_interop::pb::{
    EchoStatus, Empty, ResponseParameters, SimpleRequest, StreamingInputCallRequest,
    StreamingOutputCallRequest,
};
use palyra_interop::{zeros, ECHO_INITIAL, ECHO_TRAILING};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{BinaryMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};

/// tonic interop client.
#[derive(Parser)]
struct Args {
    /// Server URL, e.g. http://127.0.0.1:7000.
    #[arg(long)]
    url: String,
    /// Label printed in the first column.
    #[arg(long, default_value = "tonic")]
    label: String,
}

fn out_request(size: i32, body: i32) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters {
            size,
            ..Default::default()
        }],
        payload: zeros(body),
        ..Default::default()
    }
}

fn timed<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

async fn run(channel: Channel, case: &str) -> anyhow::Result<String> {
    let mut client = TestServiceClient::new(channel.clone());
    let t = Duration::from_secs(10);
    match case {
        "empty_unary" => {
            client.empty_call(timed(Empty {}, t)).await?;
            Ok("empty in, empty out".into())
        }
        "large_unary" => {
            let r = client
                .unary_call(timed(
                    SimpleRequest {
                        response_size: LARGE_RESPONSE,
                        payload: zeros(LARGE_REQUEST),
                        ..Default::default()
                    },
                    t,
                ))
                .await?
                .into_inner();
            ensure!(r.payload.unwrap_or_default().body.len() == LARGE_RESPONSE as usize);
            Ok(format!(
                "{LARGE_REQUEST} bytes in, {LARGE_RESPONSE} bytes out"
            ))
        }
        "client_streaming" => {
            let requests: Vec<_> = CLIENT_STREAM_SIZES
                .iter()
                .map(|&n| StreamingInputCallRequest {
                    payload: zeros(n),
                    ..Default::default()
                })
                .collect();
            let r = client
                .streaming_input_call(timed(tokio_stream::iter(requests), t))
                .await?
                .into_inner();
            ensure!(r.aggregated_payload_size == CLIENT_STREAM_TOTAL, "{r:?}");
            Ok(format!("aggregated {}", r.aggregated_payload_size))
        }
        "server_streaming" => {
            let request = StreamingOutputCallRequest {
                response_parameters: SERVER_STREAM_SIZES
                    .iter()
                    .map(|&size| ResponseParameters {
                        size,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            };
            let mut stream = client
                .streaming_output_call(timed(request, t))
                .await?
                .into_inner();
            let mut got = Vec::new();
            while let Some(r) = stream.message().await? {
                got.push(r.payload.map_or(0, |p| p.body.len() as i32));
            }
            ensure!(got == SERVER_STREAM_SIZES, "{got:?}");
            Ok(format!("sizes {got:?}"))
        }
        "ping_pong" => {
            let (tx, rx) = mpsc::channel(1);
            let mut stream = client
                .full_duplex_call(timed(ReceiverStream::new(rx), t))
                .await?
                .into_inner();
            let mut got = Vec::new();
            for (size, body) in PING_PONG {
                tx.send(out_request(size, body)).await?;
                let r = stream.message().await?.context("stream ended early")?;
                got.push(r.payload.map_or(0, |p| p.body.len() as i32));
            }
            drop(tx);
            ensure!(stream.message().await?.is_none());
            ensure!(got == PING_PONG.map(|p| p.0), "{got:?}");
            Ok(format!("4 round trips {got:?}"))
        }
        "empty_stream" => {
            let mut stream = client
                .full_duplex_call(timed(tokio_stream::empty(), t))
                .await?
                .into_inner();
            ensure!(stream.message().await?.is_none());
            Ok("no responses".into())
        }
        "timeout_on_sleeping_server" => {
            let (tx, rx) = mpsc::channel(1);
            tx.send(out_request(0, 27_182)).await?;
            let result = async {
                let mut stream = client
                    .full_duplex_call(timed(ReceiverStream::new(rx), Duration::from_millis(1)))
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
            .await;
            drop(tx);
            let status = result.err().context("call succeeded")?;
            ensure!(status.code() == Code::DeadlineExceeded, "{status:?}");
            Ok("DEADLINE_EXCEEDED".into())
        }
        "cancel_after_begin" => {
            let (_tx, rx) = mpsc::channel::<StreamingInputCallRequest>(1);
            let call = tokio::spawn(async move {
                client
                    .streaming_input_call(timed(ReceiverStream::new(rx), t))
                    .await
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            call.abort();
            ensure!(call.await.is_err_and(|e| e.is_cancelled()));
            // tonic cancels by dropping the call (RST_STREAM CANCEL); the server must go on.
            TestServiceClient::new(channel)
                .empty_call(timed(Empty {}, t))
                .await?;
            Ok("CANCELLED (dropped); connection still serves".into())
        }
        "cancel_after_first_response" => {
            let (tx, rx) = mpsc::channel(1);
            let mut stream = client
                .full_duplex_call(timed(ReceiverStream::new(rx), t))
                .await?
                .into_inner();
            tx.send(out_request(31_415, 27_182)).await?;
            let first = stream.message().await?.context("no response")?;
            ensure!(first.payload.map_or(0, |p| p.body.len()) == 31_415);
            drop(stream);
            drop(tx);
            TestServiceClient::new(channel)
                .empty_call(timed(Empty {}, t))
                .await?;
            Ok("CANCELLED after 1 response (dropped)".into())
        }
        "status_code_and_message" | "special_status_message" => {
            let message = if case == "status_code_and_message" {
                STATUS_MESSAGE
            } else {
                SPECIAL_STATUS_MESSAGE
            };
            let echo = Some(EchoStatus {
                code: 2,
                message: message.into(),
            });
            let status = client
                .unary_call(timed(
                    SimpleRequest {
                        response_status: echo.clone(),
                        ..Default::default()
                    },
                    t,
                ))
                .await
                .err()
                .context("unary call succeeded")?;
            ensure!(
                status.code() == Code::Unknown && status.message() == message,
                "{status:?}"
            );
            let request = StreamingOutputCallRequest {
                response_status: echo,
                ..Default::default()
            };
            let result = async {
                let mut stream = client
                    .full_duplex_call(timed(tokio_stream::iter([request]), t))
                    .await?
                    .into_inner();
                while stream.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
            .await;
            let status = result.err().context("bidi call succeeded")?;
            ensure!(
                status.code() == Code::Unknown && status.message() == message,
                "{status:?}"
            );
            Ok(format!("UNKNOWN {message:?}"))
        }
        "custom_metadata" => {
            let decorate = |request: &mut tonic::metadata::MetadataMap| {
                request.insert(ECHO_INITIAL, MetadataValue::from_static(INITIAL_VALUE));
                request.insert_bin(
                    ECHO_TRAILING,
                    BinaryMetadataValue::from_bytes(TRAILING_VALUE),
                );
            };
            let mut request = timed(
                SimpleRequest {
                    response_size: LARGE_RESPONSE,
                    payload: zeros(LARGE_REQUEST),
                    ..Default::default()
                },
                t,
            );
            decorate(request.metadata_mut());
            let response = client.unary_call(request).await?;
            ensure!(
                response.metadata().get(ECHO_INITIAL).map(|v| v.as_bytes())
                    == Some(INITIAL_VALUE.as_bytes()),
                "unary: initial metadata not echoed"
            );
            // Unary trailers are merged into the response metadata by tonic.
            ensure!(
                response
                    .metadata()
                    .get_bin(ECHO_TRAILING)
                    .and_then(|v| v.to_bytes().ok())
                    .as_deref()
                    == Some(TRAILING_VALUE),
                "unary: trailing metadata not echoed"
            );
            let mut request = timed(
                tokio_stream::iter([out_request(LARGE_RESPONSE, LARGE_REQUEST)]),
                t,
            );
            decorate(request.metadata_mut());
            let response = client.full_duplex_call(request).await?;
            ensure!(
                response.metadata().get(ECHO_INITIAL).map(|v| v.as_bytes())
                    == Some(INITIAL_VALUE.as_bytes()),
                "bidi: initial metadata not echoed"
            );
            let mut stream = response.into_inner();
            while stream.message().await?.is_some() {}
            let trailers = stream.trailers().await?.context("no trailers")?;
            ensure!(
                trailers
                    .get_bin(ECHO_TRAILING)
                    .and_then(|v| v.to_bytes().ok())
                    .as_deref()
                    == Some(TRAILING_VALUE),
                "bidi: trailing metadata not echoed"
            );
            Ok("initial and trailing-bin echoed (unary, bidi)".into())
        }
        "unimplemented_method" => {
            let status = client
                .unimplemented_call(timed(Empty {}, t))
                .await
                .err()
                .context("call succeeded")?;
            ensure!(status.code() == Code::Unimplemented, "{status:?}");
            Ok(format!("UNIMPLEMENTED: {}", status.message()))
        }
        "unimplemented_service" => {
            let status = UnimplementedServiceClient::new(channel)
                .unimplemented_call(timed(Empty {}, t))
                .await
                .err()
                .context("call succeeded")?;
            ensure!(status.code() == Code::Unimplemented, "{status:?}");
            Ok(format!("UNIMPLEMENTED: {}", status.message()))
        }
        other => anyhow::bail!("unknown case {other}"),
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channel = Channel::from_shared(args.url)?.connect().await?;
    let mut ok = true;
    for case in cases::ALL {
        ok &= report(&args.label, case, run(channel.clone(), case).await);
    }
    std::process::exit(if ok { 0 } else { 1 })
}
