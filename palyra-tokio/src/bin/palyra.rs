//! `palyra`: the Palyra command-line client.

use anyhow::Context;
use clap::{Parser, Subcommand};
use palyra_proto::grpc::Code;
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseFrame, ResponseKind};
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    DeviceCapability, NodeEventRequest, NodeEventResponse, RegisterNodeRequest,
    RegisterNodeResponse,
};
use palyra_proto::quic::{tls, ClientLimits};
use palyra_proto::store::DeviceIdentityFiles;
use palyra_tokio::NodeConnection;
use prost::Message;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The Palyra command-line client.
#[derive(Parser)]
#[command(name = "palyra", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Node commands: over palyra-quic-v1 (QUIC, mutual TLS) by default, or over the node TLS
    /// listener's NodeService with --transport grpc.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Agents on the console stream.
    #[command(subcommand)]
    Agent(AgentCommand),
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

#[derive(Subcommand)]
enum AgentCommand {
    /// Runs the demo agent: streamed chat replies, a live status surface and a deploy form whose
    /// submissions it answers. Open http://127.0.0.1:8080/ to watch.
    Demo {
        #[command(flatten)]
        daemon: DaemonArgs,
        /// Chat session to talk in.
        #[arg(long, default_value = "main")]
        session: String,
        /// Agent name: owner of its surfaces.
        #[arg(long, default_value = "demo")]
        name: String,
        /// Milliseconds between streamed words.
        #[arg(long, default_value_t = 60)]
        word_delay_ms: u64,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        run_for_secs: Option<u64>,
    },
}

/// How operator commands reach palyrad's operator plane (the admin API).
#[derive(clap::Args)]
struct DaemonArgs {
    /// palyrad's operator-plane URL: http://HOST:PORT, or https://HOST:PORT when palyrad runs
    /// with --http-tls.
    #[arg(
        long,
        env = "PALYRA_DAEMON_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    daemon: String,
    /// File holding the admin token (default: the PALYRA_ADMIN_TOKEN environment variable).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// The gateway CA (PEM) that verifies an https:// daemon (default: the local gateway's
    /// STATE/identity/ca.crt.pem when it exists).
    #[arg(long, env = "PALYRA_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl DaemonArgs {
    fn daemon(&self) -> anyhow::Result<palyra_tokio::operator_client::Daemon> {
        let token = palyra_tokio::operator_client::admin_token(self.token_file.as_deref())?;
        palyra_tokio::operator_client::Daemon::new(&self.daemon, self.ca_file.as_deref(), token)
    }
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
    /// quic: palyra-quic-v1 on UDP; grpc: palyra.node.v1.NodeService on the node TLS listener
    /// (TCP, same port number by default).
    #[arg(long, value_enum, default_value_t = Transport::Quic)]
    transport: Transport,
    /// Deadline of gRPC calls in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

/// How node commands reach the gateway.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// palyra-quic-v1 (QUIC, mutual TLS).
    Quic,
    /// gRPC over TLS (HTTP/2): NodeService.
    Grpc,
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
    /// Registers the node and its capabilities (gRPC RegisterNode; needs --transport grpc).
    Register {
        #[command(flatten)]
        target: Target,
        /// Platform reported to the gateway (default: this machine's os-arch).
        #[arg(long)]
        platform: Option<String>,
        /// Capability the node offers (repeatable).
        #[arg(long = "capability")]
        capabilities: Vec<String>,
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

/// The loaded identity, the resolved address and the TLS server name of a target.
async fn resolve(target: &Target) -> anyhow::Result<(DeviceIdentityFiles, SocketAddr, String)> {
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
    Ok((identity, addr, server_name))
}

async fn connect(target: &Target) -> anyhow::Result<NodeConnection> {
    let (identity, addr, server_name) = resolve(target).await?;
    let tls = tls::client_config(
        &identity.ca_der,
        Some((vec![identity.cert_der], identity.key_der)),
        tls::ALPN,
    )?;
    Ok(NodeConnection::connect(addr, &server_name, Arc::new(tls), ClientLimits::default()).await?)
}

/// A NodeService session over the node TLS listener.
struct GrpcNode {
    channel: palyra_tokio::grpc::GrpcChannel,
    device_id: String,
    timeout: Duration,
}

async fn connect_grpc(target: &Target) -> anyhow::Result<GrpcNode> {
    let (identity, addr, server_name) = resolve(target).await?;
    let device_id = identity
        .device_id
        .clone()
        .context("the identity's certificate names no device ID")?;
    let tls = tls::client_config(
        &identity.ca_der,
        Some((vec![identity.cert_der], identity.key_der)),
        tls::ALPN_H2,
    )?;
    let channel = palyra_tokio::grpc::GrpcChannel::connect_tls(addr, &server_name, Arc::new(tls))
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(GrpcNode {
        channel,
        device_id,
        timeout: Duration::from_millis(target.timeout_ms),
    })
}

fn canonical(device_id: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: device_id.to_owned(),
    })
}

impl GrpcNode {
    async fn health(&self) -> anyhow::Result<serde_json::Value> {
        use palyra_proto::pb::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
        let request = HealthCheckRequest {
            service: "palyra.node.v1.NodeService".into(),
        };
        let response = self
            .channel
            .unary(
                "/grpc.health.v1.Health/Check",
                request.encode_to_vec(),
                self.timeout,
            )
            .await
            .map_err(|status| anyhow::anyhow!("health check failed: {status}"))?;
        let status = HealthCheckResponse::decode(response.as_ref())?.status;
        Ok(serde_json::json!({
            "transport": "grpc",
            "service": "palyra.node.v1.NodeService",
            "status": if status == 1 { "SERVING" } else { "NOT_SERVING" },
            "device_id": self.device_id,
        }))
    }

    async fn publish(
        &self,
        name: &str,
        payload: &serde_json::Value,
    ) -> anyhow::Result<NodeEventResponse> {
        use palyra_tokio::grpc::CallEvent;
        let mut call = self
            .channel
            .open(
                "/palyra.node.v1.NodeService/StreamNodeEvents",
                Vec::new(),
                Some(self.timeout),
            )
            .await
            .map_err(|status| anyhow::anyhow!("cannot open the event stream: {status}"))?;
        let request = NodeEventRequest {
            v: 1,
            device_id: canonical(&self.device_id),
            event_name: name.to_owned(),
            payload_json: serde_json::to_vec(payload)?,
            replay: None,
        };
        call.send(request.encode_to_vec())
            .await
            .map_err(|status| anyhow::anyhow!("{status}"))?;
        call.close_send()
            .await
            .map_err(|status| anyhow::anyhow!("{status}"))?;
        let mut answer = None;
        while let Some(event) = call.next().await {
            match event {
                CallEvent::Message(bytes) => {
                    let response = NodeEventResponse::decode(bytes.as_ref())?;
                    // Pushed capability work is not this command's business.
                    if response.dispatch.is_none() || response.reason != "dispatch" {
                        answer.get_or_insert(response);
                    }
                }
                CallEvent::Finished(status, _) if status.code != Code::Ok => {
                    anyhow::bail!("gateway answered {status}")
                }
                CallEvent::Finished(..) => break,
                CallEvent::Headers(_) => {}
            }
        }
        answer.context("gateway sent no answer")
    }

    async fn register(
        &self,
        platform: &str,
        capabilities: &[String],
    ) -> anyhow::Result<RegisterNodeResponse> {
        let request = RegisterNodeRequest {
            v: 1,
            device_id: canonical(&self.device_id),
            platform: platform.to_owned(),
            capabilities: capabilities
                .iter()
                .map(|name| DeviceCapability {
                    name: name.clone(),
                    available: true,
                })
                .collect(),
            replay: None,
        };
        let response = self
            .channel
            .unary(
                "/palyra.node.v1.NodeService/RegisterNode",
                request.encode_to_vec(),
                self.timeout,
            )
            .await
            .map_err(|status| anyhow::anyhow!("RegisterNode failed: {status}"))?;
        Ok(RegisterNodeResponse::decode(response.as_ref())?)
    }
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
        Command::Agent(AgentCommand::Demo {
            daemon,
            session,
            name,
            word_delay_ms,
            run_for_secs,
        }) => {
            let options = palyra_tokio::agent::DemoOptions {
                daemon: daemon.daemon()?,
                session,
                name,
                word_delay: Duration::from_millis(word_delay_ms),
                run_for: run_for_secs.map(Duration::from_secs),
            };
            return tokio::task::spawn_blocking(move || palyra_tokio::agent::run_demo(options))
                .await
                .context("agent task")?;
        }
        Command::Node(command) => command,
    };
    match command {
        NodeCommand::Health { target } if target.transport == Transport::Grpc => {
            let node = connect_grpc(&target).await?;
            println!("{}", node.health().await?);
        }
        NodeCommand::Publish {
            target,
            name,
            payload,
            to,
        } if target.transport == Transport::Grpc => {
            if to.is_some() {
                anyhow::bail!("--to needs --transport quic (NodeService events have no addressee)");
            }
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            palyra_proto::node::validate_event_name(&name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let node = connect_grpc(&target).await?;
            let answer = node.publish(&name, &payload).await?;
            if !answer.accepted {
                anyhow::bail!("gateway refused the event: {}", answer.reason);
            }
            println!(
                "{}",
                serde_json::json!({
                    "accepted": answer.accepted,
                    "reason": answer.reason,
                    "event_id": answer.event_id.map(|id| id.ulid),
                })
            );
        }
        NodeCommand::Register {
            target,
            platform,
            capabilities,
        } => {
            if target.transport != Transport::Grpc {
                anyhow::bail!("node register is a NodeService RPC: add --transport grpc");
            }
            let platform = platform
                .unwrap_or_else(|| format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH));
            let node = connect_grpc(&target).await?;
            let answer = node.register(&platform, &capabilities).await?;
            println!(
                "{}",
                serde_json::json!({
                    "accepted": answer.accepted,
                    "reason": answer.reason,
                    "device_id": node.device_id,
                    "platform": platform,
                    "capabilities": capabilities,
                })
            );
        }
        NodeCommand::Events { target, .. } if target.transport == Transport::Grpc => {
            anyhow::bail!(
                "node events reads the node-plane log: use --transport quic (NodeService has no log reader)"
            );
        }
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
