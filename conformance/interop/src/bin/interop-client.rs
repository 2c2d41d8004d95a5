//! Our gRPC client (the `palyra` CLI's channel: palyra-tokio over our HTTP/2 machines) running
//! the standard interop cases against any grpc.testing.TestService, e.g. tonic's.

use anyhow::{ensure, Context};
use bytes::Bytes;
use clap::Parser;
use palyra_gateway::serve::grpc_channel::{CallEvent, GrpcChannel, StreamingCall};
use palyra_interop::cases::{self, *};
use palyra_interop::pb::{
    EchoStatus, Empty, ResponseParameters, SimpleRequest, SimpleResponse,
    StreamingInputCallRequest, StreamingInputCallResponse, StreamingOutputCallRequest,
    StreamingOutputCallResponse,
};
use palyra_interop::{zeros, ECHO_INITIAL, ECHO_TRAILING};
use palyra_proto::grpc::codec::{base64_decode, base64_encode};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use prost::Message;
use std::net::SocketAddr;
use std::time::Duration;

/// Interop client on our stack.
#[derive(Parser)]
struct Args {
    /// Server address (h2c).
    #[arg(long)]
    addr: SocketAddr,
    /// Label printed in the first column.
    #[arg(long, default_value = "palyra")]
    label: String,
}

const SVC: &str = "/grpc.testing.TestService/";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a streaming call reported until it ended.
#[derive(Default)]
struct Outcome {
    headers: Vec<Field>,
    messages: Vec<Bytes>,
    status: Option<Status>,
    trailers: Vec<Field>,
}

async fn drain(call: &mut StreamingCall) -> Outcome {
    let mut outcome = Outcome::default();
    while let Some(event) = call.next().await {
        match event {
            CallEvent::Headers(h) => outcome.headers = h,
            CallEvent::Message(m) => outcome.messages.push(m),
            CallEvent::Finished(status, trailers) => {
                outcome.status = Some(status);
                outcome.trailers = trailers;
                break;
            }
        }
    }
    outcome
}

fn code(outcome: &Outcome) -> Code {
    outcome.status.as_ref().map_or(Code::Unknown, |s| s.code)
}

fn sizes(messages: &[Bytes]) -> anyhow::Result<Vec<i32>> {
    messages
        .iter()
        .map(|m| {
            let r = StreamingOutputCallResponse::decode(m.as_ref())?;
            Ok(r.payload.map_or(0, |p| p.body.len() as i32))
        })
        .collect()
}

fn out_request(size: i32, body: i32) -> Vec<u8> {
    StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters {
            size,
            ..Default::default()
        }],
        payload: zeros(body),
        ..Default::default()
    }
    .encode_to_vec()
}

fn field(name: &str, value: impl Into<Bytes>) -> Field {
    Field::new(Bytes::copy_from_slice(name.as_bytes()), value)
}

fn find<'a>(fields: &'a [Field], name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .find(|f| f.name.as_ref() == name.as_bytes())
        .map(|f| f.value.as_ref())
}

async fn run(ch: &GrpcChannel, case: &str) -> anyhow::Result<String> {
    match case {
        "empty_unary" => {
            let r = ch
                .unary(
                    &format!("{SVC}EmptyCall"),
                    Empty {}.encode_to_vec(),
                    TIMEOUT,
                )
                .await?;
            ensure!(Empty::decode(r.as_ref())? == Empty {});
            Ok("empty in, empty out".into())
        }
        "large_unary" => {
            let request = SimpleRequest {
                response_size: LARGE_RESPONSE,
                payload: zeros(LARGE_REQUEST),
                ..Default::default()
            };
            let r = ch
                .unary(&format!("{SVC}UnaryCall"), request.encode_to_vec(), TIMEOUT)
                .await?;
            let body = SimpleResponse::decode(r.as_ref())?
                .payload
                .unwrap_or_default()
                .body;
            ensure!(body.len() == LARGE_RESPONSE as usize && body.iter().all(|b| *b == 0));
            Ok(format!(
                "{LARGE_REQUEST} bytes in, {LARGE_RESPONSE} bytes out"
            ))
        }
        "client_streaming" => {
            let mut call = ch
                .open(&format!("{SVC}StreamingInputCall"), vec![], Some(TIMEOUT))
                .await?;
            for size in CLIENT_STREAM_SIZES {
                let m = StreamingInputCallRequest {
                    payload: zeros(size),
                    ..Default::default()
                };
                call.send(m.encode_to_vec()).await?;
            }
            call.close_send().await?;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Ok, "{:?}", o.status);
            let r = StreamingInputCallResponse::decode(o.messages[0].as_ref())?;
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
            let mut call = ch
                .open(&format!("{SVC}StreamingOutputCall"), vec![], Some(TIMEOUT))
                .await?;
            call.send(request.encode_to_vec()).await?;
            call.close_send().await?;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Ok, "{:?}", o.status);
            let got = sizes(&o.messages)?;
            ensure!(got == SERVER_STREAM_SIZES, "{got:?}");
            Ok(format!("sizes {got:?}"))
        }
        "ping_pong" => {
            let mut call = ch
                .open(&format!("{SVC}FullDuplexCall"), vec![], Some(TIMEOUT))
                .await?;
            let mut got = Vec::new();
            for (size, body) in PING_PONG {
                call.send(out_request(size, body)).await?;
                loop {
                    match call.next().await {
                        Some(CallEvent::Message(m)) => {
                            got.extend(sizes(&[m])?);
                            break;
                        }
                        Some(CallEvent::Headers(_)) => {}
                        other => anyhow::bail!("round {}: {other:?}", got.len()),
                    }
                }
            }
            call.close_send().await?;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Ok && o.messages.is_empty());
            ensure!(got == PING_PONG.map(|p| p.0), "{got:?}");
            Ok(format!("4 round trips {got:?}"))
        }
        "empty_stream" => {
            let mut call = ch
                .open(&format!("{SVC}FullDuplexCall"), vec![], Some(TIMEOUT))
                .await?;
            call.close_send().await?;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Ok && o.messages.is_empty());
            Ok("no responses".into())
        }
        "timeout_on_sleeping_server" => {
            let mut call = ch
                .open(
                    &format!("{SVC}FullDuplexCall"),
                    vec![],
                    Some(Duration::from_millis(1)),
                )
                .await?;
            let _ = call.send(out_request(0, 27_182)).await;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::DeadlineExceeded, "{:?}", o.status);
            Ok("DEADLINE_EXCEEDED".into())
        }
        "cancel_after_begin" => {
            let mut call = ch
                .open(&format!("{SVC}StreamingInputCall"), vec![], Some(TIMEOUT))
                .await?;
            call.cancel().await;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Cancelled, "{:?}", o.status);
            Ok("CANCELLED".into())
        }
        "cancel_after_first_response" => {
            let mut call = ch
                .open(&format!("{SVC}FullDuplexCall"), vec![], Some(TIMEOUT))
                .await?;
            call.send(out_request(31_415, 27_182)).await?;
            loop {
                match call.next().await {
                    Some(CallEvent::Message(m)) => {
                        ensure!(sizes(&[m])? == [31_415]);
                        break;
                    }
                    Some(CallEvent::Headers(_)) => {}
                    other => anyhow::bail!("{other:?}"),
                }
            }
            call.cancel().await;
            let o = drain(&mut call).await;
            ensure!(code(&o) == Code::Cancelled, "{:?}", o.status);
            Ok("CANCELLED after 1 response".into())
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
            let unary = SimpleRequest {
                response_status: echo.clone(),
                ..Default::default()
            };
            let err = ch
                .unary(&format!("{SVC}UnaryCall"), unary.encode_to_vec(), TIMEOUT)
                .await
                .err()
                .context("unary call succeeded")?;
            ensure!(
                err.code == Code::Unknown && err.message == message,
                "{err:?}"
            );
            let mut call = ch
                .open(&format!("{SVC}FullDuplexCall"), vec![], Some(TIMEOUT))
                .await?;
            let bidi = StreamingOutputCallRequest {
                response_status: echo,
                ..Default::default()
            };
            call.send(bidi.encode_to_vec()).await?;
            call.close_send().await?;
            let o = drain(&mut call).await;
            let status = o.status.context("no status")?;
            ensure!(
                status.code == Code::Unknown && status.message == message,
                "{status:?}"
            );
            Ok(format!("UNKNOWN {message:?}"))
        }
        "custom_metadata" => {
            let metadata = vec![
                field(ECHO_INITIAL, INITIAL_VALUE),
                field(ECHO_TRAILING, base64_encode(TRAILING_VALUE)),
            ];
            let mut checked = Vec::new();
            for method in ["UnaryCall", "FullDuplexCall"] {
                let mut call = ch
                    .open(&format!("{SVC}{method}"), metadata.clone(), Some(TIMEOUT))
                    .await?;
                let request = if method == "UnaryCall" {
                    SimpleRequest {
                        response_size: LARGE_RESPONSE,
                        payload: zeros(LARGE_REQUEST),
                        ..Default::default()
                    }
                    .encode_to_vec()
                } else {
                    out_request(LARGE_RESPONSE, LARGE_REQUEST)
                };
                call.send(request).await?;
                call.close_send().await?;
                let o = drain(&mut call).await;
                ensure!(code(&o) == Code::Ok, "{method}: {:?}", o.status);
                ensure!(
                    find(&o.headers, ECHO_INITIAL) == Some(INITIAL_VALUE.as_bytes()),
                    "{method}: initial metadata not echoed"
                );
                match find(&o.trailers, ECHO_TRAILING) {
                    Some(v) => {
                        ensure!(
                            base64_decode(v).as_deref() == Some(TRAILING_VALUE),
                            "{method}: wrong trailer"
                        );
                        checked.push(format!("{method}: initial+trailing"));
                    }
                    None => checked.push(format!("{method}: initial (no trailer echo)")),
                }
            }
            Ok(checked.join(", "))
        }
        "unimplemented_method" | "unimplemented_service" => {
            let path = if case == "unimplemented_method" {
                format!("{SVC}UnimplementedCall")
            } else {
                "/grpc.testing.UnimplementedService/UnimplementedCall".into()
            };
            let err = ch
                .unary(&path, Empty {}.encode_to_vec(), TIMEOUT)
                .await
                .err()
                .context("call succeeded")?;
            ensure!(err.code == Code::Unimplemented, "{err:?}");
            Ok(format!("UNIMPLEMENTED: {}", err.message))
        }
        other => anyhow::bail!("unknown case {other}"),
    }
}

#[tokio::main(worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = palyra_tokio::Tokio::current();
    let channel = GrpcChannel::connect(&(rt as palyra_gateway::runtime::Rt), args.addr).await?;
    let mut ok = true;
    for case in cases::ALL {
        ok &= report(&args.label, case, run(&channel, case).await);
    }
    std::process::exit(if ok { 0 } else { 1 })
}
