//! `palyra`: the Palyra command-line client.

use anyhow::Context;
use clap::{Parser, Subcommand};
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseFrame, ResponseKind};
use palyra_proto::quic::{tls, ClientLimits};
use palyra_proto::store::DeviceIdentityFiles;
use palyra_tokio::NodeConnection;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// The Palyra command-line client.
#[derive(Parser)]
#[command(name = "palyra", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node-plane commands over palyra-quic-v1 (QUIC, mutual TLS).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Checks the gateway over gRPC (GatewayService/GetHealth) and prints the answer as JSON.
    Health {
        /// Gateway gRPC address, HOST:PORT (e.g. 127.0.0.1:7443).
        #[arg(long, env = "PALYRA_GRPC")]
        grpc: String,
        /// Deadline of the call in milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

#[derive(clap::Args)]
struct Target {
    /// Gateway node-plane address, HOST:PORT (e.g. 127.0.0.1:7444).
    #[arg(long, env = "PALYRA_GATEWAY")]
    gateway: String,
    /// Identity directory holding device.crt.pem, device.key.pem and ca.crt.pem.
    #[arg(long, env = "PALYRA_IDENTITY")]
    identity: PathBuf,
    /// TLS server name to verify (default: the gateway host).
    #[arg(long)]
    server_name: Option<String>,
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Checks the gateway and prints the health answer as JSON.
    Health {
        #[command(flatten)]
        target: Target,
    },
    /// Publishes one event; prints its sequence number once the gateway has stored it.
    Publish {
        #[command(flatten)]
        target: Target,
        /// Event name (printable ASCII, no spaces, at most 128 bytes).
        #[arg(long)]
        name: String,
        /// Event payload as JSON.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Address the event to one device (ULID) instead of every node.
        #[arg(long)]
        to: Option<String>,
    },
    /// Prints events after --resume-from, one JSON object per line; --follow keeps streaming.
    Events {
        #[command(flatten)]
        target: Target,
        /// Last sequence number already processed (0: from the start).
        #[arg(long)]
        resume_from: Option<u64>,
        /// Keep the stream open and print new events as they arrive.
        #[arg(long)]
        follow: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("palyra: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palyra: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(target: &Target) -> anyhow::Result<NodeConnection> {
    let identity = DeviceIdentityFiles::load(&target.identity)
        .with_context(|| format!("cannot load identity from {}", target.identity.display()))?;
    let (host, _) = target
        .gateway
        .rsplit_once(':')
        .context("--gateway must be HOST:PORT")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr: SocketAddr = tokio::net::lookup_host(&target.gateway)
        .await
        .with_context(|| format!("cannot resolve {}", target.gateway))?
        .next()
        .with_context(|| format!("{} resolves to no address", target.gateway))?;
    let server_name = target
        .server_name
        .clone()
        .unwrap_or_else(|| match host.parse::<IpAddr>() {
            Ok(_) => host.to_owned(),
            Err(_) => host.to_ascii_lowercase(),
        });
    let tls = tls::client_config(
        &identity.ca_der,
        Some((vec![identity.cert_der], identity.key_der)),
        tls::ALPN,
    )?;
    Ok(NodeConnection::connect(addr, &server_name, Arc::new(tls), ClientLimits::default()).await?)
}

fn check(frame: &ResponseFrame) -> anyhow::Result<()> {
    if frame.kind == ResponseKind::Error || !frame.ok {
        let code = frame
            .error
            .map(|c| c.to_string())
            .unwrap_or_else(|| "error".into());
        let mut line = format!("gateway answered {code}");
        if let Some(message) = &frame.message {
            line.push_str(": ");
            line.push_str(message);
        }
        if let Some(first) = frame.first_seq {
            line.push_str(&format!(" (first_seq {first})"));
        }
        anyhow::bail!(line);
    }
    Ok(())
}

async fn health(grpc: &str, timeout_ms: u64) -> anyhow::Result<()> {
    use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
    use prost::Message;
    let addr: SocketAddr = tokio::net::lookup_host(grpc)
        .await
        .with_context(|| format!("cannot resolve {grpc}"))?
        .next()
        .with_context(|| format!("{grpc} resolves to no address"))?;
    let channel = palyra_tokio::grpc::GrpcChannel::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let response = channel
        .unary(
            "/palyra.gateway.v1.GatewayService/GetHealth",
            HealthRequest { v: 1 }.encode_to_vec(),
            std::time::Duration::from_millis(timeout_ms),
        )
        .await
        .map_err(|status| anyhow::anyhow!("GetHealth failed: {status}"))?;
    let health = HealthResponse::decode(response.as_ref()).context("malformed HealthResponse")?;
    println!(
        "{}",
        serde_json::json!({
            "service": health.service,
            "status": health.status,
            "version": health.version,
            "git_hash": health.git_hash,
            "build_profile": health.build_profile,
            "uptime_seconds": health.uptime_seconds,
        })
    );
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Health { grpc, timeout_ms } => return health(&grpc, timeout_ms).await,
        Command::Node(command) => command,
    };
    match command {
        NodeCommand::Health { target } => {
            let conn = connect(&target).await?;
            let frames = conn.request(&NodeRequest::Health).await?.collect().await?;
            let frame = frames.first().context("gateway sent no health answer")?;
            check(frame)?;
            println!("{}", serde_json::to_string(frame)?);
            conn.close().await;
        }
        NodeCommand::Publish {
            target,
            name,
            payload,
            to,
        } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            palyra_proto::node::validate_event_name(&name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let conn = connect(&target).await?;
            let request = NodeRequest::PublishEvent(PublishEvent { name, payload, to });
            let frames = conn.request(&request).await?.collect().await?;
            let frame = frames.first().context("gateway sent no acknowledgement")?;
            check(frame)?;
            println!("{}", serde_json::json!({ "seq": frame.seq }));
            conn.close().await;
        }
        NodeCommand::Events {
            target,
            resume_from,
            follow,
        } => {
            let conn = connect(&target).await?;
            let mut responses = conn
                .request(&NodeRequest::StreamEvents {
                    resume_from,
                    follow,
                })
                .await?;
            while let Some(frame) = responses.next().await? {
                check(&frame)?;
                let Some(event) = frame.event else { continue };
                let mut line = serde_json::json!({
                    "seq": frame.seq,
                    "name": event.name,
                    "device_id": event.device_id,
                    "occurred_at_unix_ms": event.occurred_at_unix_ms,
                    "payload": event.payload,
                });
                if let Some(to) = event.to {
                    line["to"] = serde_json::Value::String(to);
                }
                println!("{line}");
            }
            conn.close().await;
        }
    }
    Ok(())
}
