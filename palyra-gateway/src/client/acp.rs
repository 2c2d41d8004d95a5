//! `palyra acp`: an Agent Client Protocol v1 agent on stdio (newline-delimited JSON-RPC 2.0;
//! stdout carries only ACP messages, logs go to stderr) bridging an editor to the gateway's
//! runs over RunStream.
//!
//! | ACP | Gateway |
//! |---|---|
//! | `initialize` | (answered here: protocol 1, `loadSession`, `sessionCapabilities.list`) |
//! | `authenticate` (`palyra-token`) | the token of the environment, checked with a call |
//! | `session/new` | ResolveSession (a new session keyed `acp/<ULID>`, labelled with `cwd`) |
//! | `session/load` | ResolveSession, then each run of the session replayed as updates |
//! | `session/list` | ListSessions (the `acp/` ones) |
//! | `session/prompt` | RunStream: tokens → `agent_message_chunk`, proposals → `tool_call`, decisions and results → `tool_call_update`, approval requests → `session/request_permission` |
//! | `session/cancel` | `/cancel` on the run's stream; the prompt answers `cancelled` |

use super::runs::{canonical, RunsClient};
use crate::runtime::{self, Rt};
use crate::serve::grpc_channel::CallEvent;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::jsonrpc::{self, Id, LineReader, Message, RpcError};
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, stream_status::StatusKind, tool_decision::DecisionKind,
    ApprovalDecisionScope, MessageContent, MessageEnvelope, RunStreamEvent, RunStreamRequest,
    ToolApprovalResponse,
};
use palyra_proto::pb::palyra::gateway::v1::{
    ListRunsRequest, ListRunsResponse, ListSessionsRequest, ListSessionsResponse,
    ResolveSessionRequest, ResolveSessionResponse,
};
use prost::Message as _;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

/// The protocol version spoken.
pub const PROTOCOL_VERSION: u64 = 1;
/// The authentication method offered.
pub const AUTH_METHOD: &str = "palyra-token";
/// Prefix of the keys of sessions made through ACP.
pub const SESSION_PREFIX: &str = "acp/";
/// JSON-RPC code of an authentication failure (ACP's `auth_required`).
pub const AUTH_REQUIRED: i64 = -32000;

/// How `palyra acp` reaches the gateway.
#[derive(Clone)]
pub struct AcpOptions {
    /// The gateway gRPC listener, HOST:PORT.
    pub grpc: String,
    /// The bearer token.
    pub token: String,
    /// A narrower principal, if any.
    pub principal: Option<String>,
}

enum Control {
    Cancel,
}

struct Shared {
    out: async_channel::Sender<Vec<u8>>,
    client: RunsClient,
    /// Our requests to the editor waiting for their answers.
    pending: Mutex<HashMap<i64, async_channel::Sender<Result<Value, RpcError>>>>,
    next_id: Mutex<i64>,
    /// The prompt in progress per session.
    prompts: Mutex<HashMap<String, async_channel::Sender<Control>>>,
}

impl Shared {
    fn send(&self, bytes: Vec<u8>) {
        let _ = self.out.try_send(bytes);
    }

    fn update(&self, session: &str, update: Value) {
        self.send(jsonrpc::notification(
            "session/update",
            json!({"sessionId": session, "update": update}),
        ));
    }

    /// Sends a request to the editor; the receiver gets its answer.
    fn request(
        &self,
        method: &str,
        params: Value,
    ) -> async_channel::Receiver<Result<Value, RpcError>> {
        let id = {
            let mut next = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let (tx, rx) = async_channel::bounded(1);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        self.send(jsonrpc::request(&Id::Number(id), method, params));
        rx
    }
}

fn rpc_status(status: Status) -> RpcError {
    let code = match status.code {
        Code::Unauthenticated => AUTH_REQUIRED,
        Code::InvalidArgument | Code::NotFound => jsonrpc::INVALID_PARAMS,
        _ => jsonrpc::INTERNAL_ERROR,
    };
    RpcError::new(code, format!("{} ({:?})", status.message, status.code))
}

fn param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params.get(name).and_then(Value::as_str).ok_or_else(|| {
        RpcError::new(
            jsonrpc::INVALID_PARAMS,
            format!("params.{name} (a string) is required"),
        )
    })
}

/// Waits for whichever of two futures finishes first.
async fn first<A: Future, B: Future>(a: A, b: B) -> Result<A::Output, B::Output> {
    let mut a = std::pin::pin!(a);
    let mut b = std::pin::pin!(b);
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
            return std::task::Poll::Ready(Ok(v));
        }
        b.as_mut().poll(cx).map(Err)
    })
    .await
}

/// Serves ACP on this process's stdin and stdout until stdin closes.
pub async fn serve_stdio(rt: Rt, options: AcpOptions) -> anyhow::Result<()> {
    let (out, out_rx) = async_channel::unbounded::<Vec<u8>>();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        while let Ok(bytes) = out_rx.recv_blocking() {
            if stdout
                .write_all(&bytes)
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return;
            }
        }
    });
    let (input, input_rx) = async_channel::bounded::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if input.send_blocking(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let client = RunsClient::connect(
        &rt,
        &options.grpc,
        &options.token,
        options.principal.as_deref(),
    )
    .await?;
    let shared = Arc::new(Shared {
        out,
        client,
        pending: Mutex::new(HashMap::new()),
        next_id: Mutex::new(0),
        prompts: Mutex::new(HashMap::new()),
    });
    let mut reader = LineReader::new(jsonrpc::DEFAULT_MAX_LINE);
    loop {
        let chunk = input_rx.recv().await.ok();
        match &chunk {
            Some(bytes) => reader.handle_input(bytes),
            None => reader.handle_end(),
        }
        while let Some(message) = reader.poll_message() {
            handle(&rt, &shared, message);
        }
        if chunk.is_none() {
            break;
        }
    }
    // Stdin closed: the editor is gone; in-progress runs end with their streams.
    shared
        .prompts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    drop(shared);
    let _ = runtime::unblock(rt.as_ref(), move || writer.join()).await;
    Ok(())
}

fn handle(rt: &Rt, shared: &Arc<Shared>, message: Message) {
    match message {
        Message::Invalid { id, error } => shared.send(jsonrpc::response(id.as_ref(), Err(error))),
        Message::Response { id, result } => {
            let Id::Number(n) = id else { return };
            let waiter = shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&n);
            if let Some(waiter) = waiter {
                let _ = waiter.try_send(result);
            }
        }
        Message::Notification { method, params } => {
            if method == "session/cancel" {
                if let Ok(session) = param(&params, "sessionId") {
                    let prompt = shared
                        .prompts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(session)
                        .cloned();
                    if let Some(prompt) = prompt {
                        let _ = prompt.try_send(Control::Cancel);
                    }
                }
            }
        }
        Message::Request { id, method, params } => {
            let shared = Arc::clone(shared);
            let task_rt = Rt::clone(rt);
            rt.spawn(Box::pin(async move {
                let result = match method.as_str() {
                    "initialize" => Ok(initialize()),
                    "authenticate" => authenticate(&shared, &params).await,
                    "session/new" => new_session(&shared, &params).await,
                    "session/load" => load_session(&shared, &params).await,
                    "session/list" => list_sessions(&shared).await,
                    "session/prompt" => prompt(&task_rt, &shared, &params).await,
                    other => Err(RpcError::new(
                        jsonrpc::METHOD_NOT_FOUND,
                        format!("method {other} is not supported by palyra acp"),
                    )),
                };
                shared.send(jsonrpc::response(Some(&id), result));
            }));
        }
    }
}

fn initialize() -> Value {
    json!({
        "protocolVersion": PROTOCOL_VERSION,
        "agentCapabilities": {
            "loadSession": true,
            "promptCapabilities": {"image": false, "audio": false, "embeddedContext": true},
            "sessionCapabilities": {"list": {}},
        },
        "authMethods": [{
            "id": AUTH_METHOD,
            "name": "Palyra API token",
            "description": "The token in PALYRA_TOKEN (or PALYRA_ADMIN_TOKEN) of the palyra acp process",
        }],
        "agentInfo": {"name": "palyra", "title": "Palyra gateway agent", "version": env!("CARGO_PKG_VERSION")},
    })
}

async fn authenticate(shared: &Shared, params: &Value) -> Result<Value, RpcError> {
    let method = param(params, "methodId")?;
    if method != AUTH_METHOD {
        return Err(RpcError::new(
            jsonrpc::INVALID_PARAMS,
            format!("unknown auth method {method}; use {AUTH_METHOD}"),
        ));
    }
    match list_runs(shared, 1, String::new()).await {
        Ok(_) => Ok(json!({})),
        // A valid credential without runs:read still authenticates.
        Err(s) if s.code == Code::PermissionDenied => Ok(json!({})),
        Err(s) => Err(rpc_status(s)),
    }
}

async fn list_runs(
    shared: &Shared,
    limit: u32,
    session_id: String,
) -> Result<ListRunsResponse, Status> {
    let request = ListRunsRequest {
        v: 1,
        limit,
        session_id,
    };
    shared
        .client
        .unary("GatewayService", "ListRuns", &request)
        .await
}

async fn resolve(
    shared: &Shared,
    request: ResolveSessionRequest,
) -> Result<ResolveSessionResponse, RpcError> {
    shared
        .client
        .unary("GatewayService", "ResolveSession", &request)
        .await
        .map_err(rpc_status)
}

async fn new_session(shared: &Shared, params: &Value) -> Result<Value, RpcError> {
    let cwd = param(params, "cwd")?;
    let key = format!("{SESSION_PREFIX}{}", ulid::Ulid::new());
    let resolved = resolve(
        shared,
        ResolveSessionRequest {
            v: 1,
            session_key: key,
            session_label: cwd.chars().take(256).collect(),
            ..ResolveSessionRequest::default()
        },
    )
    .await?;
    let id = resolved
        .session
        .and_then(|s| s.session_id)
        .map(|i| i.ulid)
        .unwrap_or_default();
    Ok(json!({"sessionId": id}))
}

async fn load_session(shared: &Shared, params: &Value) -> Result<Value, RpcError> {
    let session = param(params, "sessionId")?.to_owned();
    resolve(
        shared,
        ResolveSessionRequest {
            v: 1,
            session_id: canonical(&session),
            require_existing: true,
            ..ResolveSessionRequest::default()
        },
    )
    .await?;
    let runs = list_runs(shared, 500, session.clone())
        .await
        .map_err(rpc_status)?;
    // Oldest first: the conversation as it happened.
    for run in runs.runs.iter().rev() {
        let run_id = run
            .run_id
            .as_ref()
            .map(|i| i.ulid.clone())
            .unwrap_or_default();
        shared.update(
            &session,
            json!({"sessionUpdate": "user_message_chunk",
                                       "content": {"type": "text", "text": run.prompt}}),
        );
        let mut text = String::new();
        super::runs::replay(&shared.client, &run_id, 0, |event| {
            if let Some(Body::ModelToken(t)) = &event.body {
                text.push_str(&t.token);
            }
            Ok(())
        })
        .await
        .map_err(|e| RpcError::new(jsonrpc::INTERNAL_ERROR, format!("{e:#}")))?;
        if !text.is_empty() {
            shared.update(
                &session,
                json!({"sessionUpdate": "agent_message_chunk",
                                           "content": {"type": "text", "text": text}}),
            );
        }
    }
    Ok(Value::Null)
}

async fn list_sessions(shared: &Shared) -> Result<Value, RpcError> {
    let listed: ListSessionsResponse = shared
        .client
        .unary(
            "GatewayService",
            "ListSessions",
            &ListSessionsRequest {
                v: 1,
                limit: 500,
                ..Default::default()
            },
        )
        .await
        .map_err(rpc_status)?;
    let sessions: Vec<Value> = listed
        .sessions
        .iter()
        .filter(|s| s.session_key.starts_with(SESSION_PREFIX))
        .map(|s| {
            let cwd = if s.session_label.starts_with('/') { s.session_label.as_str() } else { "/" };
            let mut info = json!({"sessionId": s.session_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or(""),
                                  "cwd": cwd});
            if !s.preview.is_empty() {
                info["title"] = json!(s.preview.chars().take(80).collect::<String>());
            }
            info
        })
        .collect();
    Ok(json!({"sessions": sessions}))
}

/// The prompt's text: its text blocks, and the text of embedded resources.
fn prompt_text(params: &Value) -> Result<String, RpcError> {
    let blocks = params
        .get("prompt")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            RpcError::new(
                jsonrpc::INVALID_PARAMS,
                "params.prompt (an array of content blocks) is required",
            )
        })?;
    let mut parts = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(
                block
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            Some("resource") => {
                if let Some(text) = block.pointer("/resource/text").and_then(Value::as_str) {
                    parts.push(text.to_owned());
                }
            }
            Some("resource_link") => {
                if let Some(uri) = block.get("uri").and_then(Value::as_str) {
                    parts.push(format!("<{uri}>"));
                }
            }
            _ => {}
        }
    }
    let text = parts.join("\n");
    if text.trim().is_empty() {
        return Err(RpcError::new(
            jsonrpc::INVALID_PARAMS,
            "the prompt has no text",
        ));
    }
    Ok(text)
}

fn text_content(text: &str) -> Value {
    json!([{"type": "content", "content": {"type": "text", "text": text}}])
}

fn permission_options() -> Value {
    json!([
        {"optionId": "allow-once", "name": "Allow once", "kind": "allow_once"},
        {"optionId": "allow-always", "name": "Allow for this session", "kind": "allow_always"},
        {"optionId": "reject-once", "name": "Reject", "kind": "reject_once"},
        {"optionId": "reject-always", "name": "Reject for this session", "kind": "reject_always"},
    ])
}

async fn prompt(rt: &Rt, shared: &Arc<Shared>, params: &Value) -> Result<Value, RpcError> {
    let session = param(params, "sessionId")?.to_owned();
    let text = prompt_text(params)?;
    let (control, controls) = async_channel::unbounded();
    {
        let mut prompts = shared.prompts.lock().unwrap_or_else(|p| p.into_inner());
        if prompts.get(&session).is_some_and(|c| !c.is_closed()) {
            return Err(RpcError::new(
                jsonrpc::INVALID_PARAMS,
                "a prompt of this session is in progress",
            ));
        }
        prompts.insert(session.clone(), control);
    }
    let outcome = run_prompt(rt, shared, &session, text, &controls).await;
    shared
        .prompts
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&session);
    outcome
}

async fn run_prompt(
    _rt: &Rt,
    shared: &Arc<Shared>,
    session: &str,
    text: String,
    controls: &async_channel::Receiver<Control>,
) -> Result<Value, RpcError> {
    let run_id = ulid::Ulid::new().to_string();
    let mut call = shared
        .client
        .open("GatewayService", "RunStream")
        .await
        .map_err(rpc_status)?;
    let message = |body: RunStreamRequest| body.encode_to_vec();
    call.send(message(RunStreamRequest {
        v: 1,
        session_id: canonical(session),
        run_id: canonical(&run_id),
        require_existing: true,
        origin_kind: "acp".into(),
        input: Some(MessageEnvelope {
            v: 1,
            content: Some(MessageContent {
                text,
                attachments: Vec::new(),
            }),
            ..MessageEnvelope::default()
        }),
        ..RunStreamRequest::default()
    }))
    .await
    .map_err(rpc_status)?;
    let cancel_message = RunStreamRequest {
        v: 1,
        session_id: canonical(session),
        run_id: canonical(&run_id),
        input: Some(MessageEnvelope {
            v: 1,
            content: Some(MessageContent {
                text: "/cancel".into(),
                attachments: Vec::new(),
            }),
            ..MessageEnvelope::default()
        }),
        ..RunStreamRequest::default()
    };
    let mut cancelled = false;
    let mut ending: Option<(StatusKind, String)> = None;
    loop {
        let next = first(call.next(), controls.recv()).await;
        let event = match next {
            Err(_) => {
                if !cancelled {
                    cancelled = true;
                    let _ = call.send(message(cancel_message.clone())).await;
                }
                continue;
            }
            Ok(None) => break,
            Ok(Some(CallEvent::Headers(_))) => continue,
            Ok(Some(CallEvent::Finished(status, _))) => {
                if ending.is_none() && status.code != Code::Ok {
                    return Err(rpc_status(status));
                }
                break;
            }
            Ok(Some(CallEvent::Message(bytes))) => {
                RunStreamEvent::decode(bytes.as_ref()).map_err(|e| {
                    RpcError::new(jsonrpc::INTERNAL_ERROR, format!("malformed event: {e}"))
                })?
            }
        };
        let id_of = |i: &Option<palyra_proto::pb::palyra::common::v1::CanonicalId>| {
            i.as_ref().map(|i| i.ulid.clone()).unwrap_or_default()
        };
        match event.body {
            Some(Body::ModelToken(t)) if !t.token.is_empty() => shared.update(
                session,
                json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": t.token}}),
            ),
            Some(Body::ToolProposal(p)) => {
                let input: Value = serde_json::from_slice(&p.input_json).unwrap_or(Value::Null);
                shared.update(session, json!({"sessionUpdate": "tool_call", "toolCallId": id_of(&p.proposal_id),
                    "title": p.tool_name, "kind": "other", "status": "pending", "rawInput": input}));
            }
            Some(Body::ToolApprovalRequest(r)) => {
                let tool_call = json!({"toolCallId": id_of(&r.proposal_id), "title": r.tool_name,
                    "rawInput": serde_json::from_slice::<Value>(&r.input_json).unwrap_or(Value::Null)});
                let answer = shared.request(
                    "session/request_permission",
                    json!({"sessionId": session, "toolCall": tool_call, "options": permission_options()}),
                );
                let decided = first(answer.recv(), controls.recv()).await;
                let (approved, scope, reason) = match decided {
                    Ok(Ok(Ok(outcome))) => match outcome.pointer("/outcome/outcome").and_then(Value::as_str) {
                        Some("selected") => match outcome.pointer("/outcome/optionId").and_then(Value::as_str) {
                            Some("allow-once") => (true, ApprovalDecisionScope::Once, "allowed once in the editor"),
                            Some("allow-always") => (true, ApprovalDecisionScope::Session, "allowed for the session in the editor"),
                            Some("reject-always") => (false, ApprovalDecisionScope::Session, "rejected for the session in the editor"),
                            _ => (false, ApprovalDecisionScope::Once, "rejected in the editor"),
                        },
                        _ => (false, ApprovalDecisionScope::Once, "the permission request was cancelled"),
                    },
                    Ok(_) => (false, ApprovalDecisionScope::Once, "the editor did not answer the permission request"),
                    Err(_) => {
                        cancelled = true;
                        let _ = call.send(message(cancel_message.clone())).await;
                        continue;
                    }
                };
                let response = RunStreamRequest {
                    v: 1,
                    session_id: canonical(session),
                    run_id: canonical(&run_id),
                    tool_approval_response: Some(ToolApprovalResponse {
                        proposal_id: r.proposal_id.clone(),
                        approved,
                        reason: reason.into(),
                        approval_id: r.approval_id.clone(),
                        decision_scope: scope as i32,
                        decision_scope_ttl_ms: 0,
                    }),
                    ..RunStreamRequest::default()
                };
                let _ = call.send(message(response)).await;
            }
            Some(Body::ToolDecision(d)) if d.kind == DecisionKind::Allow as i32 => shared.update(
                session,
                json!({"sessionUpdate": "tool_call_update", "toolCallId": id_of(&d.proposal_id), "status": "in_progress"}),
            ),
            Some(Body::ToolResult(r)) => {
                let (status, shown) = if r.success {
                    ("completed", String::from_utf8_lossy(&r.output_json).into_owned())
                } else {
                    ("failed", r.error.clone())
                };
                let mut update = json!({"sessionUpdate": "tool_call_update", "toolCallId": id_of(&r.proposal_id),
                    "status": status, "content": text_content(&shown)});
                if r.success {
                    update["rawOutput"] = serde_json::from_slice(&r.output_json).unwrap_or(Value::Null);
                }
                shared.update(session, update);
            }
            Some(Body::Status(s)) => {
                let kind = StatusKind::try_from(s.kind).unwrap_or(StatusKind::Unspecified);
                if matches!(kind, StatusKind::Done | StatusKind::Failed | StatusKind::Cancelled) {
                    ending = Some((kind, s.message));
                }
            }
            _ => {}
        }
    }
    match ending {
        Some((StatusKind::Done, _)) => Ok(json!({"stopReason": "end_turn"})),
        Some((StatusKind::Cancelled, _)) => Ok(json!({"stopReason": "cancelled"})),
        _ if cancelled => Ok(json!({"stopReason": "cancelled"})),
        Some((_, message)) => Err(RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            format!("the run failed: {message}"),
        )),
        None => Err(RpcError::new(
            jsonrpc::INTERNAL_ERROR,
            "the run's stream ended before the run did",
        )),
    }
}
