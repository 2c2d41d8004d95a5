//! Conformance client built on quinn: runs the node-plane cases against a palyra-quic-v1 server
//! and prints one row per case. Exit status 1 if any case fails.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use quinn_peer::{call, client_config, ALPN};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Runs the conformance cases.
#[derive(Parser)]
struct Args {
    /// Server address.
    #[arg(long)]
    addr: SocketAddr,
    /// TLS server name.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Identity directory of a paired device.
    #[arg(long)]
    identity: PathBuf,
    /// Identity directory issued by a different CA.
    #[arg(long)]
    foreign_identity: PathBuf,
    /// Identity directory of a revoked device.
    #[arg(long)]
    revoked_identity: PathBuf,
    /// Label printed in the first column.
    #[arg(long, default_value = "quinn")]
    label: String,
}

async fn connect(
    args: &Args,
    identity: Option<&Path>,
    ca: &Path,
    alpn: &[u8],
) -> anyhow::Result<quinn::Connection> {
    let config = client_config(
        ca,
        identity
            .map(|d| (d.join("device.crt.pem"), d.join("device.key.pem")))
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path())),
        alpn,
    )?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let connecting = endpoint.connect(args.addr, &args.server_name)?;
    let conn = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .map_err(|_| anyhow!("handshake timed out"))??;
    Ok(conn)
}

fn expect_ok(frames: &[Value], kind: &str) -> anyhow::Result<Value> {
    let frame = frames
        .first()
        .ok_or_else(|| anyhow!("no response frame"))?
        .clone();
    if frame["protocol_version"] != 1 || frame["kind"] != kind || frame["ok"] != true {
        bail!("unexpected frame {frame}");
    }
    Ok(frame)
}

/// A connection attempt that must not yield a working session: the handshake fails, or (TLS 1.3,
/// where the client finishes first) the server closes the connection before answering. The close
/// reason must name one of `want` (TLS alert numbers appear as "error N").
async fn expect_rejected(
    args: &Args,
    identity: Option<&Path>,
    ca: &Path,
    alpn: &[u8],
    want: &[&str],
) -> anyhow::Result<String> {
    let conn = match connect(args, identity, ca, alpn).await {
        Err(e) => return check_reason(e.to_string(), want),
        Ok(conn) => conn,
    };
    let health = json!({"protocol_version":1,"method":"node.health","resume_from":null});
    match tokio::time::timeout(Duration::from_secs(5), call(&conn, &health)).await {
        Ok(Ok(frames)) => bail!("server answered {frames:?}"),
        Ok(Err(_)) => {
            let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
                .await
                .map_err(|_| anyhow!("request failed but the connection stayed open"))?;
            check_reason(reason.to_string(), want)
        }
        Err(_) => bail!("neither rejected nor answered within 5s"),
    }
}

fn check_reason(reason: String, want: &[&str]) -> anyhow::Result<String> {
    let lower = reason.to_lowercase();
    if want.is_empty() || want.iter().any(|w| lower.contains(w)) {
        Ok(reason)
    } else {
        bail!("rejected for an unexpected reason: {reason}")
    }
}

async fn publish(conn: &quinn::Connection, name: &str, n: u64) -> anyhow::Result<u64> {
    let frames = call(conn, &json!({"protocol_version":1,"method":"node.publish_event","event":{"name":name,"payload":{"n":n}}})).await?;
    let ack = expect_ok(&frames, "ack")?;
    ack["seq"]
        .as_u64()
        .ok_or_else(|| anyhow!("ack without seq: {ack}"))
}

async fn run_case(args: &Args, case: &str) -> anyhow::Result<String> {
    let ca = args.identity.join("ca.crt.pem");
    match case {
        "health" => {
            let conn = connect(args, Some(&args.identity), &ca, ALPN).await?;
            let frame = expect_ok(
                &call(
                    &conn,
                    &json!({"protocol_version":1,"method":"node.health","resume_from":null}),
                )
                .await?,
                "health",
            )?;
            if frame["node_rpc_mtls_required"] != true
                || frame["device_id"].as_str().map(str::len) != Some(26)
            {
                bail!("bad health frame {frame}");
            }
            Ok(format!("device_id {}", frame["device_id"]))
        }
        "publish" => {
            let conn = connect(args, Some(&args.identity), &ca, ALPN).await?;
            let seq = publish(&conn, "conformance.publish", 1).await?;
            Ok(format!("acked seq {seq}"))
        }
        "stream_resume" => {
            let conn = connect(args, Some(&args.identity), &ca, ALPN).await?;
            let mut seqs = Vec::new();
            for n in 0..3 {
                seqs.push(publish(&conn, "conformance.resume", n).await?);
            }
            let frames = call(
                &conn,
                &json!({"protocol_version":1,"method":"node.stream_events","resume_from":seqs[0]}),
            )
            .await?;
            let got: Vec<u64> = frames
                .iter()
                .map(|f| f["seq"].as_u64().unwrap_or(0))
                .collect();
            if got.first() != Some(&(seqs[0] + 1))
                || !got.windows(2).all(|w| w[0] < w[1])
                || !got.contains(&seqs[1])
                || !got.contains(&seqs[2])
            {
                bail!("resume_from {} gave {got:?}", seqs[0]);
            }
            if frames
                .iter()
                .any(|f| f["kind"] != "event" || f["event"]["device_id"].as_str().is_none())
            {
                bail!("bad event frame in {frames:?}");
            }
            Ok(format!("resume_from {} -> {} events", seqs[0], got.len()))
        }
        "protocol_mismatch" => {
            let conn = connect(args, Some(&args.identity), &ca, ALPN).await?;
            let frames = call(
                &conn,
                &json!({"protocol_version":2,"method":"node.health","added_later":true}),
            )
            .await?;
            match frames.as_slice() {
                [f] if f["kind"] == "error"
                    && f["error"] == "protocol_mismatch"
                    && f["ok"] == false =>
                {
                    Ok("error protocol_mismatch".into())
                }
                other => bail!("got {other:?}"),
            }
        }
        "wrong_alpn" => {
            expect_rejected(
                args,
                Some(&args.identity),
                &ca,
                b"h3",
                &["no_application_protocol", "120", "0x178"],
            )
            .await
        }
        // TLS alerts: certificate_required (116), unknown_ca (48), certificate_revoked (44).
        "no_client_cert" => expect_rejected(args, None, &ca, ALPN, &["error 116"]).await,
        "foreign_ca_cert" => {
            expect_rejected(args, Some(&args.foreign_identity), &ca, ALPN, &["error 48"]).await
        }
        "revoked_cert" => {
            expect_rejected(args, Some(&args.revoked_identity), &ca, ALPN, &["error 44"]).await
        }
        other => bail!("unknown case {other}"),
    }
}

const CASES: [&str; 8] = [
    "health",
    "publish",
    "stream_resume",
    "protocol_mismatch",
    "wrong_alpn",
    "no_client_cert",
    "foreign_ca_cert",
    "revoked_cert",
];

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut failed = 0;
    for case in CASES {
        let outcome = run_case(&args, case).await.context(case);
        let (status, detail) = match outcome {
            Ok(detail) => ("PASS", detail),
            Err(e) => {
                failed += 1;
                ("FAIL", format!("{e:#}"))
            }
        };
        let detail: String = detail.chars().take(90).collect();
        println!("{:<10} {:<18} {:<5} {}", args.label, case, status, detail);
    }
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}
