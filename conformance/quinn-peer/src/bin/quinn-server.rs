//! Reference palyra-quic-v1 server built on quinn: the same framing and methods (health, publish,
//! stream_events with resume and follow) over an in-memory log. Used to test our client against
//! another implementation and as the benchmark baseline.

use anyhow::Context;
use clap::Parser;
use quinn_peer::{read_frame, server_config, write_frame};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Serves the node plane with quinn.
#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Gateway CA certificate (client certificates must chain to it).
    #[arg(long)]
    ca: PathBuf,
    /// Server certificate (PEM).
    #[arg(long)]
    cert: PathBuf,
    /// Server key (PKCS#8 PEM).
    #[arg(long)]
    key: PathBuf,
    /// Pre-fill the log with this many events (benchmarks).
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Payload bytes of prefilled events.
    #[arg(long, default_value_t = 256)]
    prefill_payload: usize,
}

#[derive(Default)]
struct Log {
    events: Mutex<Vec<Arc<Vec<u8>>>>,
    appended: Notify,
}

fn body(name: &str, device: &str, payload: &Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"name": name, "device_id": device, "occurred_at_unix_ms": 0, "payload": payload}),
    )
    .unwrap_or_default()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = server_config(&args.ca, &args.cert, &args.key)?;
    let endpoint = quinn::Endpoint::server(config, args.addr).context("bind")?;
    let log = Arc::new(Log::default());
    {
        let filler = Value::String("x".repeat(args.prefill_payload));
        let mut events = log.events.lock().unwrap();
        for _ in 0..args.prefill {
            events.push(Arc::new(body(
                "bench",
                "01ARZ3NDEKTSV4RRFFQ69G5FAV",
                &filler,
            )));
        }
    }
    println!("{}", endpoint.local_addr()?);
    while let Some(incoming) = endpoint.accept().await {
        let log = log.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve_stream(send, recv, log.clone()));
            }
        });
    }
    Ok(())
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream, log: Arc<Log>) {
    let Ok(Some(frame)) = read_frame(&mut recv).await else {
        return;
    };
    let Ok(request) = serde_json::from_slice::<Value>(&frame) else {
        let _ = write_frame(
            &mut send,
            br#"{"protocol_version":1,"kind":"error","ok":false,"error":"invalid_request"}"#,
        )
        .await;
        let _ = send.finish();
        return;
    };
    match request["method"].as_str() {
        Some("node.health") => {
            let _ = write_frame(&mut send, br#"{"protocol_version":1,"kind":"health","ok":true,"node_rpc_mtls_required":true}"#).await;
        }
        Some("node.publish_event") => {
            let event = &request["event"];
            let seq = {
                let mut events = log.events.lock().unwrap();
                events.push(Arc::new(body(
                    event["name"].as_str().unwrap_or(""),
                    "quinn-peer",
                    &event["payload"],
                )));
                events.len() as u64
            };
            log.appended.notify_waiters();
            let _ = write_frame(
                &mut send,
                json!({"protocol_version":1,"kind":"ack","ok":true,"seq":seq})
                    .to_string()
                    .as_bytes(),
            )
            .await;
        }
        Some("node.stream_events") => {
            let mut next = request["resume_from"].as_u64().unwrap_or(0);
            let follow = request["follow"].as_bool().unwrap_or(false);
            let mut out = Vec::with_capacity(64 * 1024);
            loop {
                let notified = log.appended.notified();
                let batch: Vec<Arc<Vec<u8>>> = {
                    let events = log.events.lock().unwrap();
                    events
                        .iter()
                        .skip(next as usize)
                        .take(512)
                        .cloned()
                        .collect()
                };
                if batch.is_empty() {
                    if !follow {
                        break;
                    }
                    notified.await;
                    continue;
                }
                out.clear();
                for body in batch {
                    next += 1;
                    let head = format!(
                        r#"{{"protocol_version":1,"kind":"event","ok":true,"seq":{next},"event":"#
                    );
                    let len = head.len() + body.len() + 1;
                    out.extend_from_slice(&(len as u32).to_be_bytes());
                    out.extend_from_slice(head.as_bytes());
                    out.extend_from_slice(&body);
                    out.push(b'}');
                }
                if send.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
        _ => {
            let _ = write_frame(
                &mut send,
                br#"{"protocol_version":1,"kind":"error","ok":false,"error":"unsupported_method"}"#,
            )
            .await;
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
}
