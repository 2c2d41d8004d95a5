//! The CLI's client of the run plane on the gateway gRPC listener: `palyra agent run` (a
//! RunStream that prints tokens as they arrive and answers approval requests), `palyra runs`,
//! `palyra sessions` and `palyra approvals`. Every call carries the caller's bearer token (an API
//! token, or the admin token) and, when given, an `x-palyra-principal` narrowing it.

pub use crate::run::tape::event_json;
use crate::runtime::{self, Rt};
use crate::serve::grpc_channel::{CallEvent, GrpcChannel};
use anyhow::Context;
use bytes::Bytes;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, stream_status::StatusKind, tool_decision::DecisionKind,
    ApprovalDecisionScope, CanonicalId, MessageContent, MessageEnvelope, RunStreamEvent,
    RunStreamRequest, ToolApprovalRequest, ToolApprovalResponse,
};
use prost::Message;
use std::io::Write;
use std::time::Duration;

/// Deadline of unary calls.
const UNARY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to the gateway listener with the caller's credential.
pub struct RunsClient {
    channel: GrpcChannel,
    metadata: Vec<Field>,
}

fn field(name: &str, value: &str) -> Field {
    Field {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        sensitive: name == "authorization",
    }
}

/// A CanonicalId.
pub fn canonical(id: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: id.to_owned(),
    })
}

fn status_error(what: &str, status: Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", status.message, status.code)
}

impl RunsClient {
    /// Connects to the gateway listener at `grpc` (`HOST:PORT`) with `token`, narrowed to
    /// `principal` when given.
    pub async fn connect(
        rt: &Rt,
        grpc: &str,
        token: &str,
        principal: Option<&str>,
    ) -> anyhow::Result<Self> {
        let channel = super::node::h2c_channel(rt, grpc).await?;
        Ok(Self::over(channel, Some(token), principal))
    }

    /// Calls over `channel` with `token` (`None`: the channel's TLS client certificate is the
    /// credential, as for a paired device on the node TLS listener), narrowed to `principal`.
    pub fn over(channel: GrpcChannel, token: Option<&str>, principal: Option<&str>) -> Self {
        let mut metadata = Vec::new();
        if let Some(token) = token {
            metadata.push(field("authorization", &format!("Bearer {}", token.trim())));
        }
        if let Some(principal) = principal {
            metadata.push(field(crate::access::PRINCIPAL_HEADER, principal));
        }
        Self { channel, metadata }
    }

    /// A unary call of `palyra.gateway.v1.{service}/{method}` with the credential.
    pub async fn unary<R: Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &impl Message,
    ) -> Result<R, Status> {
        let path = format!("/palyra.gateway.v1.{service}/{method}");
        let mut call = self
            .channel
            .open(&path, self.metadata.clone(), Some(UNARY_TIMEOUT))
            .await?;
        call.send(request.encode_to_vec()).await?;
        call.close_send().await?;
        let mut answer = None;
        while let Some(event) = call.next().await {
            match event {
                CallEvent::Message(bytes) => answer = Some(bytes),
                CallEvent::Finished(status, _) if status.code != Code::Ok => return Err(status),
                CallEvent::Finished(..) => break,
                CallEvent::Headers(_) => {}
            }
        }
        let bytes = answer.ok_or_else(|| Status::new(Code::Internal, "no answer"))?;
        R::decode(bytes.as_ref())
            .map_err(|e| Status::new(Code::Internal, format!("malformed answer: {e}")))
    }

    /// Opens a server- or bidi-streaming call of `palyra.gateway.v1.{service}/{method}`.
    pub async fn open(
        &self,
        service: &str,
        method: &str,
    ) -> Result<crate::serve::grpc_channel::StreamingCall, Status> {
        let path = format!("/palyra.gateway.v1.{service}/{method}");
        self.channel.open(&path, self.metadata.clone(), None).await
    }
}

/// How `agent run` answers approval requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approve {
    /// Ask on the terminal (answers are read from stdin).
    Ask,
    /// Allow every call once.
    Always,
    /// Deny every call.
    Never,
}

/// What `agent run` does.
#[derive(Debug, Clone)]
pub struct AgentRun {
    /// The prompt.
    pub prompt: String,
    /// The session key (default `main`).
    pub session_key: String,
    /// Start the session's conversation afresh.
    pub reset: bool,
    /// How approvals are answered.
    pub approve: Approve,
    /// Print every event as one JSON line instead of the reply text.
    pub json: bool,
    /// Let the run call sensitive tools.
    pub allow_sensitive_tools: bool,
}

/// How a run ended, as its last status said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The run.
    pub run_id: String,
    /// `done`, `failed`, `cancelled`.
    pub state: String,
    /// The status message.
    pub message: String,
}

/// A person's answer to an approval request.
fn ask(request: &ToolApprovalRequest) -> ToolApprovalResponse {
    let mut err = std::io::stderr();
    let input = String::from_utf8_lossy(&request.input_json);
    let _ = write!(
        err,
        "\n[approval] the agent wants to run {} with {}\n  allow? [y] once, [s] for this session, [n] deny: ",
        request.tool_name, input
    );
    let _ = err.flush();
    let mut line = String::new();
    let read = std::io::stdin().read_line(&mut line).unwrap_or(0);
    let answer = line.trim().to_ascii_lowercase();
    let (approved, scope, reason) = match answer.as_str() {
        "y" | "yes" => (
            true,
            ApprovalDecisionScope::Once,
            "approved at the terminal",
        ),
        "s" | "session" => (
            true,
            ApprovalDecisionScope::Session,
            "approved for the session at the terminal",
        ),
        _ if read == 0 => (
            false,
            ApprovalDecisionScope::Once,
            "no answer (stdin closed)",
        ),
        _ => (false, ApprovalDecisionScope::Once, "denied at the terminal"),
    };
    ToolApprovalResponse {
        proposal_id: request.proposal_id.clone(),
        approved,
        reason: reason.into(),
        approval_id: request.approval_id.clone(),
        decision_scope: scope as i32,
        decision_scope_ttl_ms: 0,
    }
}

/// Prints a human line for an event that is not reply text.
fn describe(event: &RunStreamEvent, err: &mut dyn Write) {
    let text = |b: &[u8]| {
        String::from_utf8_lossy(b)
            .chars()
            .take(500)
            .collect::<String>()
    };
    let line = match &event.body {
        Some(Body::ToolProposal(p)) => format!("[tool] {} {}", p.tool_name, text(&p.input_json)),
        Some(Body::ToolDecision(d)) if d.kind == DecisionKind::Deny as i32 => {
            format!("[tool] denied: {}", d.reason)
        }
        Some(Body::ToolResult(r)) if r.success => format!("[tool] result {}", text(&r.output_json)),
        Some(Body::ToolResult(r)) => format!("[tool] failed: {}", r.error),
        _ => return,
    };
    let _ = writeln!(err, "{line}");
}

/// Runs `run` on a RunStream: the reply text goes to `out` as it streams (or every event as a
/// JSON line with `--json`), tool activity to stderr; approval requests are answered as
/// `run.approve` says. Returns how the run ended.
pub async fn agent_run(
    rt: &Rt,
    client: &RunsClient,
    run: AgentRun,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<Outcome> {
    let run_id = ulid::Ulid::new().to_string();
    let mut call = client
        .open("GatewayService", "RunStream")
        .await
        .map_err(|s| status_error("cannot open RunStream", s))?;
    let first = RunStreamRequest {
        v: 1,
        run_id: canonical(&run_id),
        input: Some(MessageEnvelope {
            v: 1,
            content: Some(MessageContent {
                text: run.prompt.clone(),
                attachments: Vec::new(),
            }),
            ..MessageEnvelope::default()
        }),
        allow_sensitive_tools: run.allow_sensitive_tools,
        session_key: run.session_key.clone(),
        reset_session: run.reset,
        origin_kind: "cli".into(),
        ..RunStreamRequest::default()
    };
    call.send(first.encode_to_vec())
        .await
        .map_err(|s| status_error("cannot start the run", s))?;
    let mut session_id = String::new();
    let mut outcome = Outcome {
        run_id: run_id.clone(),
        state: String::new(),
        message: String::new(),
    };
    let mut err = std::io::stderr();
    while let Some(event) = call.next().await {
        let bytes = match event {
            CallEvent::Message(bytes) => bytes,
            CallEvent::Finished(status, _) => {
                if outcome.state.is_empty() && status.code != Code::Ok {
                    return Err(status_error("the gateway refused the run", status));
                }
                break;
            }
            CallEvent::Headers(_) => continue,
        };
        let event = RunStreamEvent::decode(bytes.as_ref()).context("malformed RunStreamEvent")?;
        if run.json {
            writeln!(out, "{}", event_json(&event))?;
        }
        match &event.body {
            Some(Body::ModelToken(token)) if !run.json => {
                write!(out, "{}", token.token)?;
                if token.is_final {
                    writeln!(out)?;
                }
                out.flush()?;
            }
            Some(Body::Status(status)) => {
                let kind = StatusKind::try_from(status.kind).unwrap_or(StatusKind::Unspecified);
                if kind == StatusKind::Accepted {
                    session_id = status
                        .message
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("session="))
                        .unwrap_or("")
                        .to_owned();
                }
                outcome.message = status.message.clone();
                outcome.state = match kind {
                    StatusKind::Done => "done",
                    StatusKind::Failed => "failed",
                    StatusKind::Cancelled => "cancelled",
                    _ => "",
                }
                .into();
            }
            Some(Body::ToolApprovalRequest(request)) => {
                let answer = match run.approve {
                    Approve::Ask => {
                        let request = request.clone();
                        runtime::unblock(rt.as_ref(), move || ask(&request)).await
                    }
                    Approve::Always | Approve::Never => ToolApprovalResponse {
                        proposal_id: request.proposal_id.clone(),
                        approved: run.approve == Approve::Always,
                        reason: format!("--approve {:?}", run.approve).to_lowercase(),
                        approval_id: request.approval_id.clone(),
                        decision_scope: ApprovalDecisionScope::Once as i32,
                        decision_scope_ttl_ms: 0,
                    },
                };
                let message = RunStreamRequest {
                    v: 1,
                    session_id: canonical(&session_id),
                    run_id: canonical(&run_id),
                    tool_approval_response: Some(answer),
                    ..RunStreamRequest::default()
                };
                call.send(message.encode_to_vec())
                    .await
                    .map_err(|s| status_error("cannot answer the approval", s))?;
            }
            _ if !run.json => describe(&event, &mut err),
            _ => {}
        }
    }
    if outcome.state.is_empty() {
        anyhow::bail!("the stream ended before the run did (run {run_id})");
    }
    Ok(outcome)
}

/// Replays a run's tape (RunStream with `attach`), handing each event to `each`, until the run
/// ends (following it live while it runs).
pub async fn replay(
    client: &RunsClient,
    run_id: &str,
    after_seq: u64,
    mut each: impl FnMut(&RunStreamEvent) -> anyhow::Result<()>,
) -> anyhow::Result<Status> {
    let mut call = client
        .open("GatewayService", "RunStream")
        .await
        .map_err(|s| status_error("cannot open RunStream", s))?;
    let request = RunStreamRequest {
        v: 1,
        run_id: canonical(run_id),
        attach: true,
        attach_after_seq: after_seq,
        ..RunStreamRequest::default()
    };
    call.send(request.encode_to_vec())
        .await
        .map_err(|s| status_error("cannot attach", s))?;
    call.close_send().await.ok();
    while let Some(event) = call.next().await {
        match event {
            CallEvent::Message(bytes) => {
                each(&RunStreamEvent::decode(bytes.as_ref()).context("malformed RunStreamEvent")?)?
            }
            CallEvent::Finished(status, _) => return Ok(status),
            CallEvent::Headers(_) => {}
        }
    }
    Ok(Status::new(
        Code::Unavailable,
        "the stream ended without a status",
    ))
}
