//! The CLI commands of the run plane, written once for any runtime: `palyra agent run`,
//! `palyra runs ...`, `palyra sessions ...`, `palyra approvals ...` (gateway gRPC listener) and
//! `palyra tokens ...` (admin API).

use super::operator::Daemon;
use super::runs::{agent_run, canonical, event_json, replay, AgentRun, Approve, RunsClient};
use crate::runtime::{self, Rt};
use anyhow::Context;
use palyra_proto::grpc::Code;
use palyra_proto::pb::palyra::common::v1::{
    journal_event::EventKind, run_stream_event::Body, stream_status::StatusKind,
};
use palyra_proto::pb::palyra::gateway::v1::{
    AbortRunRequest, AbortRunResponse, ApprovalExportFormat, CleanupSessionRequest,
    CleanupSessionResponse, ExportApprovalsRequest, ExportApprovalsResponse, GetApprovalRequest,
    GetApprovalResponse, ListApprovalsRequest, ListApprovalsResponse, ListRunsRequest,
    ListRunsResponse, ListSessionsRequest, ListSessionsResponse, ResolveSessionRequest,
    ResolveSessionResponse, SessionSummary,
};
use prost::Message;
use std::io::Write;
use std::path::PathBuf;

/// How run-plane commands reach the gateway listener.
#[derive(clap::Args, Debug, Clone)]
pub struct GrpcArgs {
    /// Gateway gRPC listener, HOST:PORT.
    #[arg(long, env = "PALYRA_GRPC", default_value = "127.0.0.1:7443")]
    pub grpc: String,
    /// File holding the bearer token (default: PALYRA_TOKEN, else PALYRA_ADMIN_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Act as this narrower principal (`x-palyra-principal`): a sub-principal of the token's
    /// (`user:alice/editor`), or any principal with the admin token.
    #[arg(long)]
    pub principal: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

impl GrpcArgs {
    fn token(&self) -> anyhow::Result<String> {
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            None => std::env::var("PALYRA_TOKEN")
                .or_else(|_| std::env::var("PALYRA_ADMIN_TOKEN"))
                .context("set PALYRA_TOKEN (an API token from `palyra tokens create`), PALYRA_ADMIN_TOKEN, or pass --token-file")?,
        };
        let token = token.trim().to_owned();
        anyhow::ensure!(!token.is_empty(), "the token is empty");
        Ok(token)
    }

    async fn client(&self, rt: &Rt) -> anyhow::Result<RunsClient> {
        RunsClient::connect(rt, &self.grpc, &self.token()?, self.principal.as_deref()).await
    }
}

/// How `agent run` answers approvals.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApproveArg {
    /// Ask for each call (on the terminal; answers are read from stdin).
    Ask,
    /// Allow every call once.
    Always,
    /// Deny every call.
    Never,
}

/// `palyra agent run`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentRunArgs {
    #[command(flatten)]
    pub grpc: GrpcArgs,
    /// Session key: runs with the same key continue one conversation.
    #[arg(long, default_value = "main")]
    pub session: String,
    /// Start the session's conversation afresh (and forget its cached approvals).
    #[arg(long)]
    pub reset: bool,
    /// How tool approvals are answered.
    #[arg(long, value_enum, default_value_t = ApproveArg::Ask)]
    pub approve: ApproveArg,
    /// Let the run call tools marked sensitive.
    #[arg(long)]
    pub allow_sensitive_tools: bool,
    /// The prompt.
    pub prompt: String,
}

/// `palyra runs ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum RunsCommand {
    /// Lists runs, newest first.
    List {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// Only runs of this session ID.
        #[arg(long)]
        session_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Prints a run's tape (following it while it runs).
    Show {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// The run ID.
        id: String,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Cancels a run.
    Abort {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// The run ID.
        id: String,
        /// Why (recorded in the run's status).
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `palyra sessions ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum SessionsCommand {
    /// Lists sessions by key.
    List {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// Include cleaned-up sessions.
        #[arg(long)]
        archived: bool,
        /// Only sessions whose key, label or preview contains this.
        #[arg(long, default_value = "")]
        query: String,
    },
    /// Shows one session (by key, or by ID).
    Show {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// The session key or ID.
        session: String,
    },
    /// Archives a session: its key is free for a new one, its cached approvals are forgotten.
    Cleanup {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// The session key or ID.
        session: String,
    },
}

/// `palyra approvals ...`.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ApprovalsCommand {
    /// Lists approval records, oldest first.
    List {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Shows one approval record.
    Show {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// The approval ID.
        id: String,
    },
    /// Exports approval records: hash-chained NDJSON (default) or a JSON array.
    Export {
        #[command(flatten)]
        grpc: GrpcArgs,
        /// ndjson or json.
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Write to this file (default stdout).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// `palyra tokens ...` (admin API).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TokensCommand {
    /// Mints an API token and prints it once.
    Create {
        /// Whom it proves, kind:name (e.g. user:alice).
        #[arg(long)]
        principal: String,
        /// A scope it grants; repeat for more (runs:write, runs:read, sessions:read,
        /// sessions:write, approvals:read, approvals:write, openai:use, openai:tools).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// A label for people.
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Lists tokens (never their secrets).
    List,
    /// Provider tokens each API key used through the OpenAI-compatible API (from the tapes of
    /// its completions).
    Usage,
    /// Revokes a token: it stops working at once.
    Revoke {
        /// The token ID.
        id: String,
    },
}

fn status(what: &str, s: palyra_proto::grpc::Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", s.message, s.code)
}

/// `palyra agent run`: streams the reply; errors when the run fails or is cancelled.
pub async fn agent_run_command(rt: &Rt, args: AgentRunArgs) -> anyhow::Result<()> {
    let client = args.grpc.client(rt).await?;
    let run = AgentRun {
        prompt: args.prompt,
        session_key: args.session,
        reset: args.reset,
        approve: match args.approve {
            ApproveArg::Ask => Approve::Ask,
            ApproveArg::Always => Approve::Always,
            ApproveArg::Never => Approve::Never,
        },
        json: args.grpc.json,
        allow_sensitive_tools: args.allow_sensitive_tools,
    };
    let mut out = std::io::stdout();
    let outcome = agent_run(rt, &client, run, &mut out).await?;
    out.flush()?;
    match outcome.state.as_str() {
        "done" => {
            eprintln!("palyra: run {} done", outcome.run_id);
            Ok(())
        }
        state => anyhow::bail!("run {} {state}: {}", outcome.run_id, outcome.message),
    }
}

fn ms(t: i64) -> String {
    if t <= 0 {
        return "-".into();
    }
    let secs = crate::store::unix_ms(std::time::SystemTime::now()).saturating_sub(t as u64) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

/// `palyra runs ...`.
pub async fn runs_command(rt: &Rt, command: RunsCommand) -> anyhow::Result<()> {
    match command {
        RunsCommand::List {
            grpc,
            session_id,
            limit,
        } => {
            let client = grpc.client(rt).await?;
            let request = ListRunsRequest {
                v: 1,
                limit,
                session_id: session_id.unwrap_or_default(),
            };
            let answer: ListRunsResponse = client
                .unary("GatewayService", "ListRuns", &request)
                .await
                .map_err(|s| status("ListRuns", s))?;
            let id = |i: &Option<palyra_proto::pb::palyra::common::v1::CanonicalId>| {
                i.as_ref().map(|i| i.ulid.clone()).unwrap_or_default()
            };
            if grpc.json {
                for r in &answer.runs {
                    let line = serde_json::json!({"run_id": id(&r.run_id), "session_id": id(&r.session_id),
                        "principal": r.principal, "origin": r.origin, "state": r.state,
                        "started_at_unix_ms": r.started_at_unix_ms, "prompt": r.prompt, "events": r.event_count});
                    println!("{line}");
                }
                return Ok(());
            }
            println!(
                "{:<26}  {:<11}  {:>6}  {:<9}  {:<20}  PROMPT",
                "RUN", "STATE", "EVENTS", "STARTED", "PRINCIPAL"
            );
            for r in &answer.runs {
                println!(
                    "{:<26}  {:<11}  {:>6}  {:<9}  {:<20}  {}",
                    id(&r.run_id),
                    r.state,
                    r.event_count,
                    ms(r.started_at_unix_ms),
                    r.principal,
                    r.prompt
                        .chars()
                        .take(60)
                        .collect::<String>()
                        .replace('\n', " ")
                );
            }
        }
        RunsCommand::Show { grpc, id, after } => {
            let client = grpc.client(rt).await?;
            let json = grpc.json;
            let end = replay(&client, &id, after, |event| {
                if json {
                    println!("{}", event_json(event));
                } else {
                    println!("{}", tape_line(event));
                }
                Ok(())
            })
            .await?;
            // A run that failed or was cancelled still shows its tape; other statuses are errors.
            if end.code != Code::Ok && !end.message.starts_with("the run") {
                return Err(status("cannot show the run", end));
            }
        }
        RunsCommand::Abort { grpc, id, reason } => {
            let client = grpc.client(rt).await?;
            let request = AbortRunRequest {
                v: 1,
                run_id: canonical(&id),
                reason: reason.unwrap_or_default(),
            };
            let answer: AbortRunResponse = client
                .unary("GatewayService", "AbortRun", &request)
                .await
                .map_err(|s| status("AbortRun", s))?;
            if answer.cancel_requested {
                println!("run {id}: cancellation requested ({})", answer.reason);
            } else {
                println!("run {id} had already ended");
            }
        }
    }
    Ok(())
}

/// One tape event as a readable line: `seq  type  detail`.
pub fn tape_line(event: &palyra_proto::pb::palyra::common::v1::RunStreamEvent) -> String {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .chars()
            .take(200)
            .collect::<String>()
    };
    let detail = match &event.body {
        Some(Body::Status(s)) => format!(
            "status {} {}",
            StatusKind::try_from(s.kind)
                .map(|k| k.as_str_name().trim_start_matches("STATUS_KIND_"))
                .unwrap_or("?"),
            s.message
        ),
        Some(Body::ModelToken(t)) if t.is_final => "model_token (final)".into(),
        Some(Body::ModelToken(t)) => format!("model_token {:?}", t.token),
        Some(Body::ToolProposal(p)) => {
            format!("tool_proposal {} {}", p.tool_name, text(&p.input_json))
        }
        Some(Body::ToolApprovalRequest(r)) => format!(
            "tool_approval_request {} ({})",
            r.tool_name, r.request_summary
        ),
        Some(Body::ToolApprovalResponse(r)) => format!(
            "tool_approval_response {} {}",
            if r.approved { "approved" } else { "denied" },
            r.reason
        ),
        Some(Body::ToolDecision(d)) => format!(
            "tool_decision {} {}",
            if d.kind == 1 { "allow" } else { "deny" },
            d.reason
        ),
        Some(Body::ToolResult(r)) if r.success => {
            format!("tool_result ok {}", text(&r.output_json))
        }
        Some(Body::ToolResult(r)) => format!("tool_result failed {}", r.error),
        Some(Body::ToolAttestation(a)) => format!(
            "tool_attestation sha256={} by {}",
            a.execution_sha256, a.executor
        ),
        Some(Body::A2uiUpdate(u)) => format!("a2ui_update {} {}", u.surface, text(&u.patch_json)),
        Some(Body::JournalEvent(j)) => format!(
            "journal_event {} {}",
            EventKind::try_from(j.kind)
                .map(|k| k.as_str_name().trim_start_matches("EVENT_KIND_"))
                .unwrap_or("?"),
            text(&j.payload_json)
        ),
        None => "unknown".into(),
    };
    format!("{:>5}  {detail}", event.seq)
}

fn session_line(s: &SessionSummary) -> String {
    let id = s.session_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or("");
    format!(
        "{:<26}  {:<20}  {:<11}  {:<9}  {}",
        id,
        s.session_key,
        if s.archived_at_unix_ms > 0 {
            "archived"
        } else {
            s.last_run_state.as_str()
        },
        ms(s.updated_at_unix_ms),
        s.preview
            .chars()
            .take(60)
            .collect::<String>()
            .replace('\n', " ")
    )
}

fn session_json(s: &SessionSummary) -> serde_json::Value {
    serde_json::json!({
        "session_id": s.session_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or(""),
        "session_key": s.session_key, "session_label": s.session_label,
        "created_at_unix_ms": s.created_at_unix_ms, "updated_at_unix_ms": s.updated_at_unix_ms,
        "archived_at_unix_ms": s.archived_at_unix_ms,
        "last_run_id": s.last_run_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or(""),
        "last_run_state": s.last_run_state, "preview": s.preview,
    })
}

/// A session named on the command line: a ULID is an ID, anything else a key.
fn session_ref(
    session: &str,
) -> (
    Option<palyra_proto::pb::palyra::common::v1::CanonicalId>,
    String,
) {
    if palyra_proto::identity::is_canonical_device_id(session) {
        (canonical(session), String::new())
    } else {
        (None, session.to_owned())
    }
}

/// `palyra sessions ...`.
pub async fn sessions_command(rt: &Rt, command: SessionsCommand) -> anyhow::Result<()> {
    match command {
        SessionsCommand::List {
            grpc,
            archived,
            query,
        } => {
            let client = grpc.client(rt).await?;
            let mut after = String::new();
            if !grpc.json {
                println!(
                    "{:<26}  {:<20}  {:<11}  {:<9}  PREVIEW",
                    "SESSION", "KEY", "LAST RUN", "UPDATED"
                );
            }
            loop {
                let request = ListSessionsRequest {
                    v: 1,
                    after_session_key: after.clone(),
                    limit: 500,
                    include_archived: archived,
                    q: query.clone(),
                };
                let answer: ListSessionsResponse = client
                    .unary("GatewayService", "ListSessions", &request)
                    .await
                    .map_err(|s| status("ListSessions", s))?;
                for s in &answer.sessions {
                    match grpc.json {
                        true => println!("{}", session_json(s)),
                        false => println!("{}", session_line(s)),
                    }
                }
                if answer.next_after_session_key.is_empty() {
                    break;
                }
                after = answer.next_after_session_key;
            }
        }
        SessionsCommand::Show { grpc, session } => {
            let client = grpc.client(rt).await?;
            let (session_id, session_key) = session_ref(&session);
            let request = ResolveSessionRequest {
                v: 1,
                session_id,
                session_key,
                require_existing: true,
                ..ResolveSessionRequest::default()
            };
            let answer: ResolveSessionResponse = client
                .unary("GatewayService", "ResolveSession", &request)
                .await
                .map_err(|s| status("ResolveSession", s))?;
            let s = answer.session.unwrap_or_default();
            println!("{}", serde_json::to_string_pretty(&session_json(&s))?);
        }
        SessionsCommand::Cleanup { grpc, session } => {
            let client = grpc.client(rt).await?;
            let (session_id, session_key) = session_ref(&session);
            let request = CleanupSessionRequest {
                v: 1,
                session_id,
                session_key,
            };
            let answer: CleanupSessionResponse = client
                .unary("GatewayService", "CleanupSession", &request)
                .await
                .map_err(|s| status("CleanupSession", s))?;
            match answer.newly_archived {
                true => println!("session {session} archived ({} runs)", answer.run_count),
                false => println!("session {session} was already archived"),
            }
        }
    }
    Ok(())
}

/// `palyra approvals ...`.
pub async fn approvals_command(rt: &Rt, command: ApprovalsCommand) -> anyhow::Result<()> {
    match command {
        ApprovalsCommand::List { grpc, limit } => {
            let client = grpc.client(rt).await?;
            let request = ListApprovalsRequest {
                v: 1,
                limit,
                ..ListApprovalsRequest::default()
            };
            let answer: ListApprovalsResponse = client
                .unary("ApprovalsService", "ListApprovals", &request)
                .await
                .map_err(|s| status("ListApprovals", s))?;
            if !grpc.json {
                println!(
                    "{:<26}  {:<24}  {:<20}  {:<9}  SUMMARY",
                    "APPROVAL", "DECISION", "PRINCIPAL", "ASKED"
                );
            }
            for r in &answer.approvals {
                let value = crate::run::approvals::record_json(r);
                match grpc.json {
                    true => println!("{value}"),
                    false => println!(
                        "{:<26}  {:<24}  {:<20}  {:<9}  {}",
                        value["approval_id"].as_str().unwrap_or(""),
                        value["decision"]
                            .as_str()
                            .unwrap_or("")
                            .trim_start_matches("APPROVAL_DECISION_"),
                        r.principal,
                        ms(r.requested_at_unix_ms),
                        r.request_summary.chars().take(60).collect::<String>()
                    ),
                }
            }
        }
        ApprovalsCommand::Show { grpc, id } => {
            let client = grpc.client(rt).await?;
            let request = GetApprovalRequest {
                v: 1,
                approval_id: canonical(&id),
            };
            let answer: GetApprovalResponse = client
                .unary("ApprovalsService", "GetApproval", &request)
                .await
                .map_err(|s| status("GetApproval", s))?;
            let record = answer.approval.unwrap_or_default();
            println!(
                "{}",
                serde_json::to_string_pretty(&crate::run::approvals::record_json(&record))?
            );
        }
        ApprovalsCommand::Export {
            grpc,
            format,
            output,
        } => {
            let format = match format.as_str() {
                "ndjson" => ApprovalExportFormat::Ndjson,
                "json" => ApprovalExportFormat::Json,
                other => anyhow::bail!("--format {other:?}: use ndjson or json"),
            };
            let client = grpc.client(rt).await?;
            let mut call = client
                .open("ApprovalsService", "ExportApprovals")
                .await
                .map_err(|s| status("ExportApprovals", s))?;
            let request = ExportApprovalsRequest {
                v: 1,
                format: format as i32,
                ..ExportApprovalsRequest::default()
            };
            call.send(request.encode_to_vec())
                .await
                .map_err(|s| status("ExportApprovals", s))?;
            call.close_send().await.ok();
            let mut body = Vec::new();
            while let Some(event) = call.next().await {
                match event {
                    crate::serve::grpc_channel::CallEvent::Message(bytes) => {
                        let chunk = ExportApprovalsResponse::decode(bytes.as_ref())?;
                        body.extend_from_slice(&chunk.chunk);
                    }
                    crate::serve::grpc_channel::CallEvent::Finished(s, _) if s.code != Code::Ok => {
                        return Err(status("ExportApprovals", s))
                    }
                    crate::serve::grpc_channel::CallEvent::Finished(..) => break,
                    crate::serve::grpc_channel::CallEvent::Headers(_) => {}
                }
            }
            match output {
                Some(path) => {
                    let write = {
                        let path = path.clone();
                        move || std::fs::write(&path, &body)
                    };
                    runtime::unblock(rt.as_ref(), write)
                        .await
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("palyra: wrote {}", path.display());
                }
                None => std::io::stdout().write_all(&body)?,
            }
        }
    }
    Ok(())
}

/// `palyra tokens ...` (blocking: the admin client is synchronous).
pub fn tokens_command(daemon: &Daemon, json: bool, command: TokensCommand) -> anyhow::Result<()> {
    use crate::operator::api::{ListTokens, MintToken, RevokeToken, TokenUsage};
    match command {
        TokensCommand::Create {
            principal,
            scopes,
            label,
            ttl_secs,
        } => {
            let answer = daemon.send(&MintToken {
                principal,
                scopes: scopes
                    .iter()
                    .flat_map(|s| s.split(','))
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
                label,
                ttl_seconds: ttl_secs,
            })?;
            if json {
                println!("{}", answer.raw);
                return Ok(());
            }
            println!("{}", answer.value.token);
            eprintln!(
                "palyra: token {} for {} ({}); shown once: store it now (e.g. PALYRA_TOKEN)",
                answer.value.record.token_id,
                answer.value.record.principal,
                answer.value.record.scopes.join(", ")
            );
        }
        TokensCommand::List => {
            let answer = daemon.send(&ListTokens)?;
            if json {
                println!("{}", answer.raw);
                return Ok(());
            }
            println!(
                "{:<26}  {:<8}  {:<24}  {:<40}  LABEL",
                "TOKEN", "STATE", "PRINCIPAL", "SCOPES"
            );
            for t in &answer.value.tokens {
                println!(
                    "{:<26}  {:<8}  {:<24}  {:<40}  {}",
                    t.token_id,
                    t.state,
                    t.principal,
                    t.scopes.join(","),
                    t.label
                );
            }
        }
        TokensCommand::Usage => {
            let answer = daemon.send(&TokenUsage)?;
            if json {
                println!("{}", answer.raw);
                return Ok(());
            }
            println!(
                "{:<26}  {:<24}  {:>6}  {:>12}  {:>12}  LABEL",
                "TOKEN", "PRINCIPAL", "RUNS", "PROMPT", "COMPLETION"
            );
            for u in &answer.value.usage {
                println!(
                    "{:<26}  {:<24}  {:>6}  {:>12}  {:>12}  {}",
                    u.token_id, u.principal, u.runs, u.prompt_tokens, u.completion_tokens, u.label
                );
            }
        }
        TokensCommand::Revoke { id } => {
            let answer = daemon.send(&RevokeToken {
                token_id: id.clone(),
            })?;
            if json {
                println!("{}", answer.raw);
            } else if answer.value.newly_revoked {
                println!("token {id} revoked; it is refused from now on");
            } else {
                println!("token {id} was already revoked");
            }
        }
    }
    Ok(())
}

/// `palyra acp`: an ACP agent on stdio until stdin closes.
pub async fn acp_command(rt: &Rt, grpc: GrpcArgs) -> anyhow::Result<()> {
    let options = super::acp::AcpOptions {
        grpc: grpc.grpc.clone(),
        token: grpc.token()?,
        principal: grpc.principal.clone(),
    };
    super::acp::serve_stdio(rt.clone(), options).await
}

/// `palyra approve RUN_ID` / `palyra deny RUN_ID`: the operator answers the approval a run
/// waits for (through the admin API; for runs whose caller cannot answer, such as the
/// OpenAI-compatible API's).
pub fn decide_command(
    daemon: &Daemon,
    json: bool,
    run_id: &str,
    approve: bool,
) -> anyhow::Result<()> {
    use crate::operator::api::DecideApproval;
    anyhow::ensure!(
        palyra_proto::identity::is_canonical_device_id(run_id),
        "{run_id:?} is not a run ID (a ULID; `palyra runs list` shows them)"
    );
    let answer = daemon.send(&DecideApproval {
        run_id: run_id.to_owned(),
        approve,
    })?;
    if json {
        println!("{}", answer.raw);
    } else {
        let d = &answer.value;
        let verb = if d.approved { "approved" } else { "denied" };
        println!(
            "run {}: {} {verb} (proposal {})",
            d.run_id, d.tool, d.proposal_id
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use palyra_proto::pb::palyra::common::v1::{JournalEvent, RunStreamEvent};

    #[test]
    fn a_run_outcome_reads_as_its_kind_and_payload() {
        let event = RunStreamEvent {
            seq: 7,
            body: Some(Body::JournalEvent(JournalEvent {
                kind: EventKind::RunCompleted as i32,
                payload_json: br#"{"finish_reason":"stop"}"#.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        assert_eq!(
            tape_line(&event),
            r#"    7  journal_event RUN_COMPLETED {"finish_reason":"stop"}"#
        );
    }
}

/// `palyra cluster status`: the gateway's report of the cluster, as text (or its JSON).
pub fn cluster_status_command(daemon: &Daemon, json: bool) -> anyhow::Result<()> {
    let report = daemon.call(http::Method::GET, "/admin/v1/cluster", None)?;
    if json {
        println!("{report}");
    } else {
        print!("{}", cluster_status_text(&report));
    }
    Ok(())
}

/// The cluster report for a person: gateways and their nodes, NATS, then one line per stream
/// (documents summed up unless one is unhealthy).
pub fn cluster_status_text(report: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    let mut out = String::new();
    if report["backend"] == "file" {
        let _ = writeln!(out, "backend: file (this gateway alone; no cluster)");
    } else {
        let _ = writeln!(
            out,
            "backend: nats · prefix {} · {} replicas · this gateway: {}",
            text(&report["prefix"]),
            report["replicas"],
            text(&report["gateway"])
        );
    }
    let gateways = report["gateways"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "\ngateways ({}):", gateways.len());
    for g in &gateways {
        let nodes: Vec<String> = g["nodes"]
            .as_array()
            .map(|n| n.iter().map(text).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<20} {:<6} heard {:>5.1} s ago  version {:<8} nodes {}{}",
            text(&g["name"]),
            if g["this"] == true { "(this)" } else { "" },
            g["age_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            text(&g["version"]),
            nodes.len(),
            if nodes.is_empty() {
                String::new()
            } else {
                format!(": {}", nodes.join(", "))
            },
        );
    }
    let nats = &report["nats"];
    if nats.is_object() {
        let known: Vec<String> = nats["known_servers"]
            .as_array()
            .map(|n| n.iter().map(text).collect())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\nNATS: {} to {} (nats-server {}) at {}; max payload {} bytes\n  servers it announces: {}",
            text(&nats["state"]),
            text(&nats["server_name"]),
            text(&nats["server_version"]),
            text(&nats["server"]),
            nats["max_payload"],
            if known.is_empty() { "-".into() } else { known.join(", ") },
        );
    }
    let streams = &report["streams"];
    if let Some(error) = streams["error"].as_str() {
        let _ = writeln!(out, "\nstreams: cannot list them: {error}");
    } else if let Some(streams) = streams.as_array() {
        let _ = writeln!(out, "\nstreams:");
        let (docs, others): (Vec<_>, Vec<_>) = streams
            .iter()
            .partition(|s| text(&s["name"]).contains("_DOC_"));
        let line = |s: &serde_json::Value| {
            let followers: Vec<String> = s["followers"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|p| {
                            let state = if p["offline"] == true {
                                "offline".to_owned()
                            } else if p["current"] == true {
                                "current".to_owned()
                            } else {
                                format!("behind {}", p["lag"])
                            };
                            format!("{} {state}", text(&p["name"]))
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "  {:<4} {:<32} R{} leader {:<8} {:<28} {} msgs, seq {}..{}\n",
                if s["ok"] == true { "ok" } else { "BAD" },
                text(&s["name"]),
                s["replicas"],
                text(&s["leader"]),
                followers.join(", "),
                s["messages"],
                s["first_seq"],
                s["last_seq"],
            )
        };
        for s in &others {
            out.push_str(&line(s));
        }
        let bad: Vec<&&serde_json::Value> = docs.iter().filter(|s| s["ok"] != true).collect();
        let _ = writeln!(
            out,
            "  {:<4} {} document streams, {} healthy",
            if bad.is_empty() { "ok" } else { "BAD" },
            docs.len(),
            docs.len() - bad.len()
        );
        for s in bad {
            out.push_str(&line(s));
        }
    }
    out
}

#[cfg(test)]
mod cluster_status_tests {
    use super::cluster_status_text;
    use serde_json::json;

    #[test]
    fn a_report_reads_as_gateways_nats_and_stream_health() {
        let report = json!({"backend":"nats","gateway":"gw-a","prefix":"palyra","replicas":3,
            "gateways":[{"name":"gw-a","this":true,"age_ms":1200,"version":"0.1.0","nodes":["N1"]},
                        {"name":"gw-b","this":false,"age_ms":300,"version":"0.1.0","nodes":[]}],
            "nats":{"state":"connected","server_name":"n1","server_version":"2.9.11","server":"127.0.0.1:4222",
                    "known_servers":["127.0.0.1:4223"],"max_payload":8388608},
            "streams":[
                {"name":"palyra_EVENTS","ok":true,"replicas":3,"leader":"n2","messages":40,"first_seq":1,"last_seq":40,
                 "followers":[{"name":"n1","current":true,"offline":false,"lag":0},{"name":"n3","current":false,"offline":false,"lag":4}]},
                {"name":"palyra_DOC_a","ok":true,"replicas":3,"leader":"n1","followers":[]},
                {"name":"palyra_DOC_b","ok":false,"replicas":3,"leader":null,"followers":[]}]});
        let text = cluster_status_text(&report);
        assert!(text.contains("this gateway: gw-a"), "{text}");
        assert!(
            text.contains("gw-a") && text.contains("(this)") && text.contains("nodes 1: N1"),
            "{text}"
        );
        assert!(
            text.contains("connected to n1 (nats-server 2.9.11)"),
            "{text}"
        );
        assert!(
            text.contains("palyra_EVENTS") && text.contains("n3 behind 4"),
            "{text}"
        );
        assert!(text.contains("2 document streams, 1 healthy"), "{text}");
        assert!(text.contains("BAD  palyra_DOC_b"), "{text}");
        let file = cluster_status_text(&json!({"backend":"file","gateways":[]}));
        assert!(file.starts_with("backend: file"), "{file}");
    }
}
