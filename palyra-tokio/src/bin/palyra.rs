//! `palyra`: the Palyra command-line client.

use anyhow::Context;
use clap::{Parser, Subcommand};
use palyra_gateway::client::commands;
use palyra_gateway::client::node::{self, NodeTarget};
use palyra_gateway::runtime::{self, Rt};
use palyra_proto::node::{NodeRequest, PublishEvent};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// palyra: the command line of a Palyra gateway. Pair a node and keep it running (node enroll,
/// node run), talk to the gateway as a node (node health, publish, events, register), and operate
/// it (pairing codes and requests, devices, the demo agent, gateway health).
///
/// Operator commands reach palyrad's operator plane at --daemon (PALYRA_DAEMON_URL) with the admin
/// token (PALYRA_ADMIN_TOKEN or --token-file); node commands use an identity directory.
#[derive(Parser)]
#[command(name = "palyra", version)]
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
    /// Pairing codes and requests (operator; through palyrad's admin API).
    #[command(subcommand)]
    Pairing(PairingCommand),
    /// Paired devices: list, revoke, ask to rotate (operator; through palyrad's admin API).
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Agent runs: list, show a run's tape, abort (gateway gRPC listener).
    #[command(subcommand)]
    Runs(commands::RunsCommand),
    /// Sessions of agent runs: list, show, clean up (gateway gRPC listener).
    #[command(subcommand)]
    Sessions(commands::SessionsCommand),
    /// Approval records of agent runs: list, show, export (gateway gRPC listener).
    #[command(subcommand)]
    Approvals(commands::ApprovalsCommand),
    /// Browser sessions and actions on a palyra-browserd (BrowserService over TLS).
    Browser(palyra_gateway::client::browser::BrowserArgs),
    /// An Agent Client Protocol agent on stdio for editors (newline-delimited JSON-RPC; stdout
    /// carries only ACP messages): sessions and prompts become the gateway's runs.
    Acp(commands::GrpcArgs),
    /// API tokens: create, list, revoke (operator; through palyrad's admin API).
    Tokens {
        #[command(flatten)]
        op: OperatorArgs,
        #[command(subcommand)]
        command: commands::TokensCommand,
    },
    /// Approves the tool call a run waits for (operator; through palyrad's admin API): how
    /// an operator decides for runs whose caller cannot, such as the OpenAI-compatible API's.
    Approve {
        #[command(flatten)]
        op: OperatorArgs,
        /// The run ID (`palyra runs list`).
        run_id: String,
    },
    /// Denies the tool call a run waits for (operator; through palyrad's admin API).
    Deny {
        #[command(flatten)]
        op: OperatorArgs,
        /// The run ID (`palyra runs list`).
        run_id: String,
    },
    /// The gateways of a cluster and their nodes, the NATS servers and the health of the
    /// shared streams (operator; through palyrad's admin API).
    #[command(subcommand)]
    Cluster(ClusterCommand),
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
enum ClusterCommand {
    /// Gateways (heard within 20 s) with the nodes each holds, the NATS server this gateway
    /// uses, and each stream's leader and replicas (`BAD`: no leader, or a replica offline or
    /// behind).
    Status {
        #[command(flatten)]
        op: OperatorArgs,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Runs the gateway's agent on PROMPT: the reply streams to stdout, tool calls ask for an
    /// approval (--approve), --json prints every event as one JSON line.
    Run(commands::AgentRunArgs),
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

#[derive(Subcommand)]
enum PairingCommand {
    /// Mints a pairing code and prints it (a QR code as an invite for palyra node enroll).
    Code {
        #[command(flatten)]
        op: OperatorArgs,
        /// pin: 6 digits to type; qr: a token carried by an invite with the gateway address
        /// and CA fingerprint.
        #[arg(long, value_enum, default_value_t = CodeMethod::Qr)]
        method: CodeMethod,
        /// Lifetime of the code: 30s .. 24h, as 90s, 10m, 2h or plain seconds.
        #[arg(long, default_value = "10m", value_parser = parse_ttl)]
        ttl: Duration,
    },
    /// Lists pairing requests (pending ones first in the table).
    List {
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Approves a pairing request: the gateway signs a certificate for the device's own key.
    Approve {
        #[command(flatten)]
        op: OperatorArgs,
        /// Request ID (from palyra pairing list, or printed by palyra node enroll).
        id: String,
        /// The device ID is already paired: replace its certificates with this device's.
        #[arg(long)]
        replace: bool,
        /// Reason recorded with the decision.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Rejects a pairing request awaiting a decision or delivery.
    Reject {
        #[command(flatten)]
        op: OperatorArgs,
        /// Request ID.
        id: String,
        /// Reason recorded with the decision (the device is told).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// Kind of pairing code.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CodeMethod {
    /// 6 digits.
    Pin,
    /// A token inside an invite.
    Qr,
}

#[derive(Subcommand)]
enum DevicesCommand {
    /// Lists paired and revoked devices with their certificates and presence.
    List {
        #[command(flatten)]
        op: OperatorArgs,
    },
    /// Revokes a device: every certificate it holds; its connections close within a second.
    Revoke {
        #[command(flatten)]
        op: OperatorArgs,
        /// Device ID.
        id: String,
        /// Reason recorded with the revocation.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Asks a running node (palyra node run) to rotate to a new key and certificate.
    Rotate {
        #[command(flatten)]
        op: OperatorArgs,
        /// Device ID.
        id: String,
    },
}

/// Parses `90`, `90s`, `10m`, `2h` into a duration.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 10m or 2h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Flags of every operator command.
#[derive(clap::Args)]
struct OperatorArgs {
    #[command(flatten)]
    daemon: DaemonArgs,
    /// Print the daemon's JSON answer.
    #[arg(long)]
    json: bool,
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
    fn daemon(&self) -> anyhow::Result<palyra_gateway::client::operator::Daemon> {
        let token = palyra_gateway::client::operator::admin_token(self.token_file.as_deref())?;
        palyra_gateway::client::operator::Daemon::new(&self.daemon, self.ca_file.as_deref(), token)
    }
}

#[derive(clap::Args)]
struct Target {
    /// Gateway node-plane address, HOST:PORT (default: the one the identity was enrolled with).
    #[arg(long, env = "PALYRA_GATEWAY")]
    gateway: Option<String>,
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
    /// Pairs this node with a gateway: makes its key (which never leaves this machine), proves
    /// the code, waits for the operator's approval and writes the identity directory. Run it
    /// again with only --identity to resume a pairing that is still waiting.
    Enroll {
        /// Identity directory to create (mode 0700).
        #[arg(long, env = "PALYRA_IDENTITY")]
        identity: PathBuf,
        /// Invite from palyra pairing code --method qr (carries gateway, CA fingerprint, code).
        #[arg(long, conflicts_with_all = ["pin", "ca_fingerprint", "ca_file"])]
        invite: Option<String>,
        /// PIN from palyra pairing code --method pin (needs --gateway and the CA).
        #[arg(long)]
        pin: Option<String>,
        /// The gateway CA fingerprint, sha256:HEX (what palyra pairing code prints).
        #[arg(long)]
        ca_fingerprint: Option<String>,
        /// The gateway CA certificate (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Gateway node TLS address, HOST:PORT (default: the invite's).
        #[arg(long, env = "PALYRA_GATEWAY")]
        gateway: Option<String>,
        /// TLS server name to verify (default: the gateway host).
        #[arg(long)]
        server_name: Option<String>,
        /// Seconds to wait for the operator's decision.
        #[arg(long, default_value_t = 3600)]
        wait_secs: u64,
    },
    /// Keeps the node connected over QUIC: checks in, renews its certificate when a third of
    /// its lifetime is left or when the operator asks, reconnects with backoff. Prints one JSON
    /// object per change.
    Run {
        /// Identity directory written by palyra node enroll.
        #[arg(long, env = "PALYRA_IDENTITY")]
        identity: PathBuf,
        /// Stop after this many seconds (default: run until interrupted).
        #[arg(long)]
        run_for_secs: Option<u64>,
        /// Serve a capability to the gateway's runs: NAME=COMMAND runs COMMAND (sh -c) with
        /// the call's input JSON on stdin and returns its stdout (JSON, or text). Repeatable.
        #[arg(long = "capability")]
        capabilities: Vec<String>,
        /// JSON file describing the capabilities for the model:
        /// {"NAME": {"description": "...", "input_schema": {...}, "timeout_secs": 25}}.
        #[arg(long)]
        capability_spec: Option<PathBuf>,
    },
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
        /// An ID for the event (1 to 64 letters, digits, '.', '_', ':' or '-'): publishing it
        /// again with the same ID, through any gateway of a cluster, stores it once.
        #[arg(long)]
        id: Option<String>,
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
    palyra_gateway::signals::default_sigpipe();
    let cli = Cli::parse();
    let runtime = match palyra_tokio::build_runtime(1) {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("palyra: error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let rt: Rt = palyra_tokio::Tokio::new(runtime.handle().clone());
    match runtime.block_on(run(rt, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("palyra: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

impl Target {
    fn node(&self) -> NodeTarget {
        NodeTarget {
            gateway: self.gateway.clone(),
            identity: self.identity.clone(),
            server_name: self.server_name.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        }
    }
}

async fn run(rt: Rt, cli: Cli) -> anyhow::Result<()> {
    let command = match cli.command {
        Command::Health { grpc, timeout_ms } => {
            let health =
                node::gateway_health(&rt, &grpc, Duration::from_millis(timeout_ms)).await?;
            println!("{health}");
            return Ok(());
        }
        Command::Agent(AgentCommand::Demo {
            daemon,
            session,
            name,
            word_delay_ms,
            run_for_secs,
        }) => {
            let options = palyra_gateway::client::demo_agent::DemoOptions {
                daemon: daemon.daemon()?,
                session,
                name,
                word_delay: Duration::from_millis(word_delay_ms),
                run_for: run_for_secs.map(Duration::from_secs),
            };
            return runtime::unblock(rt.as_ref(), move || {
                palyra_gateway::client::demo_agent::run_demo(options)
            })
            .await;
        }
        Command::Agent(AgentCommand::Run(args)) => {
            return commands::agent_run_command(&rt, args).await
        }
        Command::Runs(command) => return commands::runs_command(&rt, command).await,
        Command::Acp(grpc) => return commands::acp_command(&rt, grpc).await,
        Command::Browser(args) => {
            return palyra_gateway::client::browser::browser_command(&rt, args).await
        }
        Command::Sessions(command) => return commands::sessions_command(&rt, command).await,
        Command::Approvals(command) => return commands::approvals_command(&rt, command).await,
        Command::Tokens { op, command } => {
            return runtime::unblock(rt.as_ref(), move || {
                commands::tokens_command(&op.daemon.daemon()?, op.json, command)
            })
            .await
        }
        Command::Pairing(command) => {
            return runtime::unblock(rt.as_ref(), move || pairing(command)).await
        }
        Command::Cluster(ClusterCommand::Status { op }) => {
            return runtime::unblock(rt.as_ref(), move || {
                commands::cluster_status_command(&op.daemon.daemon()?, op.json)
            })
            .await
        }
        Command::Approve { op, run_id } => {
            return runtime::unblock(rt.as_ref(), move || {
                commands::decide_command(&op.daemon.daemon()?, op.json, &run_id, true)
            })
            .await;
        }
        Command::Deny { op, run_id } => {
            return runtime::unblock(rt.as_ref(), move || {
                commands::decide_command(&op.daemon.daemon()?, op.json, &run_id, false)
            })
            .await;
        }
        Command::Devices(command) => {
            return runtime::unblock(rt.as_ref(), move || devices(command)).await
        }
        Command::Node(command) => command,
    };
    match command {
        NodeCommand::Enroll {
            identity,
            invite,
            pin,
            ca_fingerprint,
            ca_file,
            gateway,
            server_name,
            wait_secs,
        } => {
            use palyra_gateway::client::identity::{enroll, EnrollOptions, Pairing};
            let pairing = match (invite, pin) {
                (Some(invite), _) => Some(Pairing::Invite(invite)),
                (None, Some(code)) => Some(Pairing::Pin {
                    code,
                    ca_fingerprint,
                    ca_file,
                }),
                (None, None) => None,
            };
            let options = EnrollOptions {
                identity,
                gateway,
                server_name,
                pairing,
                wait: Duration::from_secs(wait_secs),
                poll: Duration::from_millis(500),
            };
            let summary = enroll(&rt, options, |line| eprintln!("palyra: {line}")).await?;
            println!("{summary}");
        }
        NodeCommand::Run {
            identity,
            run_for_secs,
            capabilities,
            capability_spec,
        } => {
            use palyra_gateway::client::capabilities;
            use palyra_gateway::client::identity::{run_node, RunOptions};
            let served = capabilities::parse(&capabilities, capability_spec.as_deref())?;
            if !served.is_empty() {
                let target = NodeTarget {
                    gateway: None,
                    identity: identity.clone(),
                    server_name: None,
                    timeout: Duration::from_secs(10),
                };
                let report = std::sync::Arc::new(|line: serde_json::Value| println!("{line}"));
                rt.spawn(Box::pin(capabilities::serve(
                    rt.clone(),
                    target,
                    served,
                    report,
                )));
            }
            let options = RunOptions {
                identity,
                run_for: run_for_secs.map(Duration::from_secs),
            };
            run_node(&rt, options, |line| println!("{line}")).await?;
        }
        NodeCommand::Health { target } if target.transport == Transport::Grpc => {
            let node = node::connect_grpc(&rt, &target.node()).await?;
            println!("{}", node.health().await?);
        }
        NodeCommand::Publish {
            target,
            name,
            payload,
            to,
            id,
        } if target.transport == Transport::Grpc => {
            if to.is_some() || id.is_some() {
                anyhow::bail!(
                    "--to and --id need --transport quic (NodeService events have neither)"
                );
            }
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            palyra_proto::node::validate_event_name(&name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let node = node::connect_grpc(&rt, &target.node()).await?;
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
            let node = node::connect_grpc(&rt, &target.node()).await?;
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
            let conn = node::connect(&rt, &target.node()).await?;
            let frames = conn.request(&NodeRequest::Health).await?.collect().await?;
            let frame = frames.first().context("gateway sent no health answer")?;
            node::check(frame)?;
            println!("{}", serde_json::to_string(frame)?);
            conn.close().await;
        }
        NodeCommand::Publish {
            target,
            name,
            payload,
            to,
            id,
        } => {
            let payload: serde_json::Value =
                serde_json::from_str(&payload).context("--payload is not valid JSON")?;
            palyra_proto::node::validate_event_name(&name)
                .map_err(|e| anyhow::anyhow!("--name: {e}"))?;
            let conn = node::connect(&rt, &target.node()).await?;
            if let Some(id) = id
                .as_deref()
                .filter(|id| !palyra_proto::node::valid_event_id(id))
            {
                anyhow::bail!("--id {id:?} must be 1 to 64 letters, digits, '.', '_', ':' or '-'");
            }
            let request = NodeRequest::PublishEvent(PublishEvent {
                name,
                payload,
                to,
                id,
            });
            let frames = conn.request(&request).await?.collect().await?;
            let frame = frames.first().context("gateway sent no acknowledgement")?;
            node::check(frame)?;
            println!("{}", serde_json::json!({ "seq": frame.seq }));
            conn.close().await;
        }
        NodeCommand::Events {
            target,
            resume_from,
            follow,
        } => {
            let conn = node::connect(&rt, &target.node()).await?;
            let mut responses = conn
                .request(&NodeRequest::StreamEvents {
                    resume_from,
                    follow,
                })
                .await?;
            while let Some(frame) = responses.next().await? {
                node::check(&frame)?;
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

/// `palyra pairing ...` (blocking: the admin client is synchronous).
fn pairing(command: PairingCommand) -> anyhow::Result<()> {
    use palyra_gateway::operator::api::{
        Approve, CodeMethod as Wire, ListRequests, MintCode, Reject,
    };
    match command {
        PairingCommand::Code { op, method, ttl } => {
            let method = match method {
                CodeMethod::Pin => Wire::Pin,
                CodeMethod::Qr => Wire::Qr,
            };
            let answer = op.send(&MintCode {
                method: Some(method),
                ttl_seconds: Some(ttl.as_secs()),
            })?;
            if op.json {
                println!("{}", answer.raw);
                return Ok(());
            }
            let minted = answer.value;
            if let Some(invite) = &minted.invite {
                println!("{invite}");
                eprintln!(
                    "palyra: on the node: palyra node enroll --invite '{invite}' --identity DIR"
                );
            } else {
                println!("{}", minted.code);
                eprintln!(
                    "palyra: on the node: palyra node enroll --gateway {} --pin {} --ca-fingerprint {} --identity DIR",
                    minted.gateway, minted.code, minted.ca_fingerprint
                );
            }
            eprintln!(
                "palyra: single use, expires in {} s",
                ttl_left(minted.expires_at_unix_ms)
            );
        }
        PairingCommand::List { op } => {
            let answer = op.send(&ListRequests)?;
            if op.json {
                println!("{}", answer.raw);
                return Ok(());
            }
            let mut requests = answer.value.requests;
            requests.sort_by_key(|r| r.state != "pending_approval");
            println!(
                "{:<26}  {:<26}  {:<16}  {:<7}  REASON",
                "REQUEST", "DEVICE", "STATE", "KIND"
            );
            for r in requests {
                println!(
                    "{:<26}  {:<26}  {:<16}  {:<7}  {}{}",
                    r.request_id,
                    r.device_id,
                    r.state,
                    r.client_kind,
                    r.reason,
                    if r.replaces_device {
                        " (replaces a paired device)"
                    } else {
                        ""
                    },
                );
            }
        }
        PairingCommand::Approve {
            op,
            id,
            replace,
            reason,
        } => {
            let answer = op.send(&Approve {
                request_id: path_segment(&id)?.to_owned(),
                replace,
                reason,
            })?;
            print_request(&answer, op.json);
        }
        PairingCommand::Reject { op, id, reason } => {
            let answer = op.send(&Reject {
                request_id: path_segment(&id)?.to_owned(),
                reason,
            })?;
            print_request(&answer, op.json);
        }
    }
    Ok(())
}

impl OperatorArgs {
    /// A typed admin API call.
    fn send<E: palyra_gateway::operator::api::Endpoint>(
        &self,
        request: &E,
    ) -> anyhow::Result<palyra_gateway::client::operator::Answer<E::Response>> {
        self.daemon.daemon()?.send(request)
    }
}

/// An ID as one path segment (IDs are ULIDs: refuse anything that would change the path).
fn path_segment(id: &str) -> anyhow::Result<&str> {
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        anyhow::bail!("{id:?} is not an ID (a 26-character ULID)");
    }
    Ok(id)
}

fn ttl_left(expires_at_unix_ms: u64) -> u64 {
    let now = palyra_gateway::store::unix_ms(std::time::SystemTime::now());
    expires_at_unix_ms.saturating_sub(now) / 1000
}

fn print_request(
    answer: &palyra_gateway::client::operator::Answer<palyra_gateway::operator::api::Decided>,
    json: bool,
) {
    if json {
        println!("{}", answer.raw);
        return;
    }
    let r = &answer.value.request;
    println!(
        "request {} of device {}: {} ({})",
        r.request_id, r.device_id, r.state, r.reason
    );
}

/// `palyra devices ...` (blocking: the admin client is synchronous).
fn devices(command: DevicesCommand) -> anyhow::Result<()> {
    use palyra_gateway::operator::api::{ListDevices, RevokeDevice, RotateDevice};
    match command {
        DevicesCommand::List { op } => {
            let answer = op.send(&ListDevices)?;
            if op.json {
                println!("{}", answer.raw);
                return Ok(());
            }
            println!(
                "{:<26}  {:<8}  {:<10}  {:>5}  CERT EXPIRES IN",
                "DEVICE", "STATE", "PRESENCE", "CERTS"
            );
            for d in &answer.value.devices {
                println!(
                    "{:<26}  {:<8}  {:<10}  {:>5}  {}",
                    d.device_id,
                    d.state,
                    d.presence,
                    d.certificates.len(),
                    d.active_until()
                        .map_or("-".into(), |e| format!("{} d", ttl_left(e) / 86_400)),
                );
            }
        }
        DevicesCommand::Revoke { op, id, reason } => {
            let answer = op.send(&RevokeDevice {
                device_id: path_segment(&id)?.to_owned(),
                reason,
            })?;
            if op.json {
                println!("{}", answer.raw);
            } else if answer.value.newly_revoked {
                println!("device {id} revoked; its connections close within a second");
            } else {
                println!("device {id} was already revoked");
            }
        }
        DevicesCommand::Rotate { op, id } => {
            let answer = op.send(&RotateDevice {
                device_id: path_segment(&id)?.to_owned(),
            })?;
            if op.json {
                println!("{}", answer.raw);
            } else {
                println!(
                    "asked device {id} to rotate (event seq {}); a running palyra node run rotates within seconds",
                    answer.value.seq
                );
            }
        }
    }
    Ok(())
}
