//! One agent run as a machine without IO: model turns, tool proposals, approvals, tool results
//! and the run's end. The engine feeds it what happened (tokens, the model's finish, the
//! client's approval answers, tool results, cancellation, time) and carries out what it asks
//! ([`Action`]); every event it emits goes to the run's tape before anyone sees it.
//!
//! The event order of one tool call (reference section 4): `tool_proposal`, then, when an
//! approval is needed and no cached decision applies, `tool_approval_request`; then the
//! `tool_approval_response` echo of what was decided, `tool_decision`, `tool_result` and, for a
//! tool that ran, `tool_attestation` (SHA-256 of the tool name, its input and its output).

use palyra_proto::grpc::Code;
use palyra_proto::openai::chat::{FinishReason, ToolCall, Usage};
use palyra_proto::pb::palyra::common::v1::{
    journal_event::{EventActor, EventKind},
    run_stream_event::Body,
    stream_status::StatusKind,
    tool_decision::DecisionKind,
    ApprovalDecisionScope, ApprovalOption, ApprovalPrompt, ApprovalRiskLevel, CanonicalId,
    JournalEvent, ModelToken, StreamStatus, ToolApprovalRequest, ToolApprovalResponse,
    ToolAttestation, ToolDecision, ToolProposal, ToolResult,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long an approval request waits for its answer by default.
pub const APPROVAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Tool calls a run may make by default.
pub const DEFAULT_MAX_TOOL_CALLS: u32 = 16;
/// Model turns a run may take (each tool round trip is one).
pub const MAX_TURNS: u32 = 64;
/// Longest text of one model turn: a provider that streams on without end fails the run here
/// instead of growing its tape without bound.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Largest tool output fed back to the model and kept on the tape.
pub const MAX_TOOL_OUTPUT: usize = 256 * 1024;

/// A tool a run may call, as the model is told of it and as policy treats it.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// Its name (a node capability or a gateway tool).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON schema of its input.
    pub parameters: Value,
    /// An operator must approve each call (unless a cached decision applies).
    pub approval_required: bool,
    /// Only runs with `allow_sensitive_tools` may call it.
    pub sensitive: bool,
}

impl ToolSpec {
    /// The OpenAI function-tool description.
    pub fn openai(&self) -> Value {
        json!({"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}})
    }
}

/// A decision remembered for later calls of a tool in the same session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CachedDecision {
    /// The tool.
    pub tool: String,
    /// Allowed or denied.
    pub allow: bool,
    /// Until when (Unix ms); for the rest of the session when absent.
    pub until_unix_ms: Option<u64>,
}

/// The cached decision for `tool` at `now_ms`, if any.
pub fn cached(decisions: &[CachedDecision], tool: &str, now_ms: u64) -> Option<bool> {
    decisions
        .iter()
        .rev()
        .find(|d| d.tool == tool && d.until_unix_ms.is_none_or(|t| now_ms < t))
        .map(|d| d.allow)
}

/// What the engine must do for the machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask the model for its next turn with this conversation.
    CallModel {
        /// OpenAI chat messages.
        messages: Vec<Value>,
        /// OpenAI function tools.
        tools: Vec<Value>,
        /// Further request parameters (`max_tokens`, `temperature`, `tool_choice`, ...).
        options: serde_json::Map<String, Value>,
    },
    /// Run an approved tool call.
    RunTool {
        /// The proposal.
        proposal_id: String,
        /// The tool.
        name: String,
        /// Its input.
        input_json: Vec<u8>,
    },
    /// Remember a decision for the session.
    Remember(CachedDecision),
    /// Stop the model call and any tool work (the run ended).
    Stop,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The model finished.
    Done,
    /// It failed, with the gRPC code the stream ends with.
    Failed(Code, String),
    /// Someone cancelled it.
    Cancelled(String),
}

/// The run's settings.
pub struct RunSettings {
    /// Tools the model may call.
    pub tools: Vec<ToolSpec>,
    /// Tool calls allowed per run.
    pub max_tool_calls: u32,
    /// Sensitive tools may be called.
    pub allow_sensitive: bool,
    /// How long an approval request waits.
    pub approval_timeout: Duration,
    /// The run's caller may answer approval requests (`approvals:write`); without it, calls
    /// that need an approval are denied at once instead of waiting for an answer that cannot
    /// come.
    pub can_approve: bool,
    /// Decisions cached in the session when the run started.
    pub cached: Vec<CachedDecision>,
    /// Makes IDs (ULIDs) for proposals, approvals and attestations.
    pub new_id: Box<dyn FnMut() -> String + Send>,
    /// Functions of the caller (the OpenAI-compatible API's `tools`): the model may call them,
    /// and such a call ends the run with the calls for the caller to run.
    pub client_tools: Vec<ToolSpec>,
    /// An answer cut at the token limit ends the run as done (`finish_reason: length`) rather
    /// than failed: the caller set the limit.
    pub length_is_done: bool,
    /// Further parameters of every model request.
    pub options: serde_json::Map<String, Value>,
}

impl RunSettings {
    /// Settings with these tools and IDs, and the defaults for the rest.
    pub fn new(tools: Vec<ToolSpec>, new_id: Box<dyn FnMut() -> String + Send>) -> Self {
        Self {
            tools,
            max_tool_calls: DEFAULT_MAX_TOOL_CALLS,
            allow_sensitive: false,
            approval_timeout: APPROVAL_TIMEOUT,
            can_approve: true,
            cached: Vec::new(),
            new_id,
            client_tools: Vec::new(),
            length_is_done: false,
            options: serde_json::Map::new(),
        }
    }
}

/// How a finished run's answer ended, and what it cost: the payload of its closing journal
/// event (`EVENT_KIND_RUN_COMPLETED`, or `EVENT_KIND_RUN_FAILED` for a run that did not finish).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// `stop`, `length` or `tool_calls`; empty for a run that did not finish.
    #[serde(default)]
    pub finish_reason: String,
    /// Prompt tokens of all its model calls.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Completion tokens of all its model calls.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Calls of the caller's functions it ends with (`id` as the model gave it).
    #[serde(default)]
    pub tool_calls: Vec<OutcomeCall>,
}

/// A call of a caller's function, as a run's outcome records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutcomeCall {
    /// The model's call id.
    pub id: String,
    /// The function.
    pub name: String,
    /// Its arguments (JSON text).
    pub arguments: String,
}

impl Outcome {
    /// The outcome a journal event carries, if it is a run's closing one.
    pub fn from_event(body: &Body) -> Option<Outcome> {
        match body {
            Body::JournalEvent(j)
                if j.kind == EventKind::RunCompleted as i32
                    || j.kind == EventKind::RunFailed as i32 =>
            {
                serde_json::from_slice(&j.payload_json).ok()
            }
            _ => None,
        }
    }
}

/// A tool call waiting for its approval answer.
struct Waiting {
    call: Proposed,
    approval_id: String,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Proposed {
    proposal_id: String,
    call_id: String,
    name: String,
    input: Vec<u8>,
}

/// One run.
pub struct RunMachine {
    settings: RunSettings,
    messages: Vec<Value>,
    /// Messages this run added to the conversation (the session's history after it).
    added: usize,
    events: VecDeque<Body>,
    actions: VecDeque<Action>,
    /// Tool calls of the current turn not yet decided or run.
    queue: VecDeque<Proposed>,
    waiting: Option<Waiting>,
    running: Option<Proposed>,
    /// Inputs that arrived while the model was busy: they become the next turn.
    inputs: VecDeque<String>,
    text: String,
    tool_calls: u32,
    turns: u32,
    half_closed: bool,
    usage: Usage,
    /// Calls of the caller's functions in the current turn.
    returned: Vec<OutcomeCall>,
    finish: &'static str,
    /// A model call is open (its usage may still come).
    model_open: bool,
    /// The run is done once the open model call ends (its usage counted).
    done_when_model_ends: bool,
    ending: Option<Ending>,
}

fn id(value: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: value.to_owned(),
    })
}

fn status(kind: StatusKind, message: impl Into<String>) -> Body {
    Body::Status(StreamStatus {
        kind: kind as i32,
        message: message.into(),
    })
}

/// SHA-256 (hex) of what ran: the tool's name, its input and its output, each length-prefixed.
pub fn execution_sha256(name: &str, input: &[u8], output: &[u8]) -> String {
    let mut hash = Sha256::new();
    for part in [name.as_bytes(), input, output] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hex::encode(hash.finalize())
}

impl RunMachine {
    /// A run continuing the session's `history` with the user's `input`: emits IN_PROGRESS
    /// and asks for the first model turn.
    pub fn start(settings: RunSettings, mut history: Vec<Value>, input: &str) -> Self {
        history.push(json!({"role": "user", "content": input}));
        let added = history.len() - 1;
        Self::resume(settings, history, added)
    }

    /// A run answering `conversation` as it is (its last message a user's or a tool result);
    /// the first `added` messages are the session's, the rest this run's.
    pub fn resume(settings: RunSettings, conversation: Vec<Value>, added: usize) -> Self {
        let mut machine = Self {
            settings,
            added,
            messages: conversation,
            events: VecDeque::new(),
            actions: VecDeque::new(),
            queue: VecDeque::new(),
            waiting: None,
            running: None,
            inputs: VecDeque::new(),
            text: String::new(),
            tool_calls: 0,
            turns: 0,
            half_closed: false,
            usage: Usage::default(),
            returned: Vec::new(),
            finish: "stop",
            model_open: false,
            done_when_model_ends: false,
            ending: None,
        };
        machine
            .events
            .push_back(status(StatusKind::InProgress, "streaming"));
        machine.call_model();
        machine
    }

    fn call_model(&mut self) {
        self.turns += 1;
        if self.turns > MAX_TURNS {
            return self.end(Ending::Failed(
                Code::ResourceExhausted,
                format!("the run took more than {MAX_TURNS} model turns"),
            ));
        }
        self.text.clear();
        self.model_open = true;
        let tools = self
            .settings
            .tools
            .iter()
            .chain(&self.settings.client_tools)
            .map(ToolSpec::openai)
            .collect();
        self.actions.push_back(Action::CallModel {
            messages: self.messages.clone(),
            tools,
            options: self.settings.options.clone(),
        });
    }

    /// The next event for the tape.
    pub fn poll_event(&mut self) -> Option<Body> {
        self.events.pop_front()
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Whether an action waits to be polled.
    pub fn has_actions(&self) -> bool {
        !self.actions.is_empty()
    }

    /// When [`RunMachine::handle_timeout`] is due (an approval's deadline).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.waiting.as_ref().map(|w| w.deadline)
    }

    /// How the run ended, once it did.
    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// Token counts of the run's model calls so far.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The messages this run added to the session's conversation.
    pub fn transcript(&self) -> &[Value] {
        &self.messages[self.added.min(self.messages.len())..]
    }

    /// The approval request waiting for an answer: (proposal ID, approval ID).
    pub fn pending_approval(&self) -> Option<(&str, &str)> {
        self.waiting
            .as_ref()
            .map(|w| (w.call.proposal_id.as_str(), w.approval_id.as_str()))
    }

    fn end(&mut self, ending: Ending) {
        if self.ending.is_some() {
            return;
        }
        let done = ending == Ending::Done;
        if done && self.model_open {
            // The usage arrives after the finish: done once the call ends.
            self.done_when_model_ends = true;
            return;
        }
        let outcome = Outcome {
            finish_reason: if done {
                self.finish.to_owned()
            } else {
                String::new()
            },
            prompt_tokens: self.usage.prompt_tokens,
            completion_tokens: self.usage.completion_tokens,
            tool_calls: if done {
                std::mem::take(&mut self.returned)
            } else {
                Vec::new()
            },
        };
        self.events.push_back(Body::JournalEvent(JournalEvent {
            v: 1,
            event_id: id(&(self.settings.new_id)()),
            kind: if done {
                EventKind::RunCompleted
            } else {
                EventKind::RunFailed
            } as i32,
            actor: EventActor::System as i32,
            payload_json: serde_json::to_vec(&outcome).unwrap_or_default(),
            ..JournalEvent::default()
        }));
        let body = match &ending {
            Ending::Done => status(StatusKind::Done, "completed"),
            Ending::Failed(_, message) => status(StatusKind::Failed, message.clone()),
            Ending::Cancelled(reason) => status(StatusKind::Cancelled, reason.clone()),
        };
        self.events.push_back(body);
        self.actions.push_back(Action::Stop);
        self.waiting = None;
        self.running = None;
        self.queue.clear();
        self.ending = Some(ending);
    }

    /// Text the model produced.
    pub fn handle_token(&mut self, token: &str) {
        if self.ending.is_some() || token.is_empty() {
            return;
        }
        if self.text.len() + token.len() > MAX_ANSWER_BYTES {
            self.model_open = false;
            return self.end(Ending::Failed(
                Code::ResourceExhausted,
                format!("the model's answer exceeds {MAX_ANSWER_BYTES} bytes"),
            ));
        }
        self.text.push_str(token);
        self.events.push_back(Body::ModelToken(ModelToken {
            token: token.to_owned(),
            is_final: false,
        }));
    }

    /// The model's usage report.
    pub fn handle_usage(&mut self, usage: Usage) {
        self.usage.prompt_tokens += usage.prompt_tokens;
        self.usage.completion_tokens += usage.completion_tokens;
        self.usage.total_tokens += usage.total_tokens;
    }

    /// The model's turn ended at `now` (`now_ms` on the wall clock).
    pub fn handle_model_finished(
        &mut self,
        now: Instant,
        now_ms: u64,
        reason: &FinishReason,
        tool_calls: &[ToolCall],
    ) {
        if self.ending.is_some() {
            return;
        }
        let mut message = json!({"role": "assistant", "content": self.text});
        if !tool_calls.is_empty() {
            message["tool_calls"] = tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
        }
        self.messages.push(message);
        self.events.push_back(Body::ModelToken(ModelToken {
            token: String::new(),
            is_final: true,
        }));
        match reason {
            FinishReason::Length if tool_calls.is_empty() && self.settings.length_is_done => {
                self.finish = "length";
                return self.end(Ending::Done);
            }
            FinishReason::Length if tool_calls.is_empty() => {
                return self.end(Ending::Failed(
                    Code::ResourceExhausted,
                    "the model's answer was cut at its token limit (finish_reason=length)".into(),
                ))
            }
            FinishReason::ContentFilter => {
                return self.end(Ending::Failed(
                    Code::FailedPrecondition,
                    "the provider's content filter stopped the answer".into(),
                ))
            }
            _ => {}
        }
        if tool_calls.is_empty() {
            return self.next_turn_or_done();
        }
        for call in tool_calls {
            let proposal_id = (self.settings.new_id)();
            self.queue.push_back(Proposed {
                proposal_id,
                call_id: call.id.clone(),
                name: call.name.clone(),
                input: call.arguments.clone().into_bytes(),
            });
        }
        self.advance(now, now_ms);
    }

    fn next_turn_or_done(&mut self) {
        match self.inputs.pop_front() {
            Some(text) => {
                self.messages.push(json!({"role": "user", "content": text}));
                self.call_model();
            }
            None => self.end(Ending::Done),
        }
    }

    /// Proposes the next queued call; when none is left, the results go back to the model.
    fn advance(&mut self, now: Instant, now_ms: u64) {
        while self.waiting.is_none() && self.running.is_none() && self.ending.is_none() {
            let Some(call) = self.queue.pop_front() else {
                if !self.returned.is_empty() {
                    self.finish = "tool_calls";
                    return self.end(Ending::Done);
                }
                return self.call_model();
            };
            if self
                .settings
                .client_tools
                .iter()
                .any(|t| t.name == call.name)
            {
                self.return_call(call);
                continue;
            }
            let spec = self
                .settings
                .tools
                .iter()
                .find(|t| t.name == call.name)
                .cloned();
            let approval_required = spec.as_ref().is_some_and(|s| s.approval_required);
            self.events.push_back(Body::ToolProposal(ToolProposal {
                proposal_id: id(&call.proposal_id),
                tool_name: call.name.clone(),
                input_json: call.input.clone(),
                approval_required,
            }));
            let refusal = match &spec {
                None => Some(format!("unknown tool {:?}", call.name)),
                Some(s) if s.sensitive && !self.settings.allow_sensitive => Some(format!(
                    "{} is a sensitive tool and the run did not allow sensitive tools",
                    s.name
                )),
                Some(_) if self.tool_calls >= self.settings.max_tool_calls => Some(format!(
                    "the run's tool budget of {} calls is spent",
                    self.settings.max_tool_calls
                )),
                Some(_) if serde_json::from_slice::<Value>(&call.input).is_err() => {
                    Some("the tool call's arguments are not valid JSON".into())
                }
                Some(_) => None,
            };
            if let Some(reason) = refusal {
                self.decide(call, false, reason, approval_required, true);
                continue;
            }
            if !approval_required {
                self.decide(call, true, "allowed by policy".into(), false, true);
                continue;
            }
            if let Some(allow) = cached(&self.settings.cached, &call.name, now_ms) {
                let reason = format!(
                    "{} by a decision cached for this session",
                    if allow { "allowed" } else { "denied" }
                );
                self.decide(call, allow, reason, true, false);
                continue;
            }
            if self.half_closed {
                self.decide(
                    call,
                    false,
                    "no interactive approval channel (the client half-closed its stream)".into(),
                    true,
                    false,
                );
                continue;
            }
            if !self.settings.can_approve {
                let reason = format!(
                    "{} needs an approval and the run's caller cannot give one (its credential \
                     lacks the scope approvals:write)",
                    call.name
                );
                self.decide(call, false, reason, true, false);
                continue;
            }
            let approval_id = (self.settings.new_id)();
            self.events.push_back(Body::ToolApprovalRequest(
                self.approval_request(&call, &approval_id),
            ));
            self.waiting = Some(Waiting {
                call,
                approval_id,
                deadline: now + self.settings.approval_timeout,
            });
        }
    }

    /// A call of the caller's function: proposed, decided as the caller's to run, and kept for
    /// the run's outcome.
    fn return_call(&mut self, call: Proposed) {
        self.events.push_back(Body::ToolProposal(ToolProposal {
            proposal_id: id(&call.proposal_id),
            tool_name: call.name.clone(),
            input_json: call.input.clone(),
            approval_required: false,
        }));
        self.events.push_back(Body::ToolDecision(ToolDecision {
            proposal_id: id(&call.proposal_id),
            kind: DecisionKind::Allow as i32,
            reason: "a function of the caller: returned to the caller to run".into(),
            approval_required: false,
            policy_enforced: false,
        }));
        self.returned.push(OutcomeCall {
            id: call.call_id,
            name: call.name,
            arguments: String::from_utf8_lossy(&call.input).into_owned(),
        });
    }

    fn approval_request(&self, call: &Proposed, approval_id: &str) -> ToolApprovalRequest {
        let summary = format!(
            "run tool {} with {}",
            call.name,
            String::from_utf8_lossy(&call.input)
                .chars()
                .take(200)
                .collect::<String>()
        );
        let option =
            |option_id: &str, label: &str, scope: ApprovalDecisionScope, ttl: i64| ApprovalOption {
                option_id: option_id.into(),
                label: label.into(),
                description: String::new(),
                default_selected: false,
                decision_scope: scope as i32,
                timebox_ttl_ms: ttl,
            };
        ToolApprovalRequest {
            proposal_id: id(&call.proposal_id),
            tool_name: call.name.clone(),
            input_json: call.input.clone(),
            approval_required: true,
            approval_id: id(approval_id),
            prompt: Some(ApprovalPrompt {
                title: format!("Allow {}?", call.name),
                risk_level: ApprovalRiskLevel::Medium as i32,
                subject_id: call.name.clone(),
                summary: summary.clone(),
                options: vec![
                    option("allow_once", "Allow once", ApprovalDecisionScope::Once, 0),
                    option(
                        "allow_session",
                        "Allow for this session",
                        ApprovalDecisionScope::Session,
                        0,
                    ),
                    option(
                        "allow_timeboxed",
                        "Allow for 10 minutes",
                        ApprovalDecisionScope::Timeboxed,
                        600_000,
                    ),
                    option("deny", "Deny", ApprovalDecisionScope::Once, 0),
                ],
                timeout_seconds: self.settings.approval_timeout.as_secs().max(1) as u32,
                details_json: call.input.clone(),
                policy_explanation: format!("policy requires an approval for {}", call.name),
            }),
            request_summary: summary,
        }
    }

    /// Emits the decision (and, on deny, the refused result); an allowed call is run.
    fn decide(
        &mut self,
        call: Proposed,
        allow: bool,
        reason: String,
        approval_required: bool,
        policy_enforced: bool,
    ) {
        self.events.push_back(Body::ToolDecision(ToolDecision {
            proposal_id: id(&call.proposal_id),
            kind: if allow {
                DecisionKind::Allow
            } else {
                DecisionKind::Deny
            } as i32,
            reason: reason.clone(),
            approval_required,
            policy_enforced,
        }));
        if allow {
            self.tool_calls += 1;
            self.actions.push_back(Action::RunTool {
                proposal_id: call.proposal_id.clone(),
                name: call.name.clone(),
                input_json: call.input.clone(),
            });
            self.running = Some(call);
        } else {
            let error = format!("denied: {reason}");
            self.events.push_back(Body::ToolResult(ToolResult {
                proposal_id: id(&call.proposal_id),
                success: false,
                output_json: Vec::new(),
                error: error.clone(),
            }));
            self.tool_message(&call, &json!({"error": error}).to_string());
        }
    }

    fn tool_message(&mut self, call: &Proposed, content: &str) {
        self.messages
            .push(json!({"role": "tool", "tool_call_id": call.call_id,
                                  "content": content}));
    }

    /// An approval answer from the client (or an operator) at `now`.
    pub fn handle_approval(&mut self, now: Instant, now_ms: u64, answer: &ToolApprovalResponse) {
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        let proposal = answer.proposal_id.as_ref().map(|i| i.ulid.as_str());
        let approval = answer.approval_id.as_ref().map(|i| i.ulid.as_str());
        let matches = proposal == Some(waiting.call.proposal_id.as_str())
            && approval.is_none_or(|a| a.is_empty() || a == waiting.approval_id);
        let scope = ApprovalDecisionScope::try_from(answer.decision_scope)
            .unwrap_or(ApprovalDecisionScope::Unspecified);
        let (allow, reason, scope) = if !matches {
            (
                false,
                "the approval answer does not match the pending request (decision: error)"
                    .to_owned(),
                ApprovalDecisionScope::Once,
            )
        } else {
            let given = answer.reason.trim();
            let reason = match (answer.approved, given.is_empty()) {
                (true, true) => "approved".to_owned(),
                (false, true) => "denied by the approver".to_owned(),
                (_, false) => given.chars().take(500).collect(),
            };
            (answer.approved, reason, scope)
        };
        let ttl = answer.decision_scope_ttl_ms.max(0);
        match scope {
            ApprovalDecisionScope::Session => self.remember(&waiting.call.name, allow, None),
            ApprovalDecisionScope::Timeboxed if ttl > 0 => {
                let until = now_ms.saturating_add(ttl as u64);
                self.remember(&waiting.call.name, allow, Some(until))
            }
            _ => {}
        }
        self.echo(&waiting, allow, &reason, scope, ttl);
        self.decide(waiting.call, allow, reason, true, false);
        self.advance(now, now_ms);
    }

    fn remember(&mut self, tool: &str, allow: bool, until_unix_ms: Option<u64>) {
        let decision = CachedDecision {
            tool: tool.to_owned(),
            allow,
            until_unix_ms,
        };
        self.settings.cached.push(decision.clone());
        self.actions.push_back(Action::Remember(decision));
    }

    fn echo(
        &mut self,
        waiting: &Waiting,
        approved: bool,
        reason: &str,
        scope: ApprovalDecisionScope,
        ttl: i64,
    ) {
        self.events
            .push_back(Body::ToolApprovalResponse(ToolApprovalResponse {
                proposal_id: id(&waiting.call.proposal_id),
                approved,
                reason: reason.to_owned(),
                approval_id: id(&waiting.approval_id),
                decision_scope: scope as i32,
                decision_scope_ttl_ms: ttl,
            }));
    }

    /// The client half-closed its stream: a pending approval is denied, later ones too.
    pub fn handle_half_close(&mut self, now: Instant, now_ms: u64) {
        self.half_closed = true;
        if let Some(waiting) = self.waiting.take() {
            let reason = "no interactive approval channel (the client half-closed its stream)";
            self.echo(&waiting, false, reason, ApprovalDecisionScope::Once, 0);
            self.decide(waiting.call, false, reason.into(), true, false);
            self.advance(now, now_ms);
        }
    }

    /// Time passed: an approval past its deadline is denied (decision: timeout).
    pub fn handle_timeout(&mut self, now: Instant, now_ms: u64) {
        if self.waiting.as_ref().is_some_and(|w| now >= w.deadline) {
            if let Some(waiting) = self.waiting.take() {
                let reason = format!(
                    "the approval request timed out after {} s (decision: timeout)",
                    self.settings.approval_timeout.as_secs()
                );
                self.echo(&waiting, false, &reason, ApprovalDecisionScope::Once, 0);
                self.decide(waiting.call, false, reason, true, false);
                self.advance(now, now_ms);
            }
        }
    }

    /// A tool call's outcome: `executor` ran it at `now_ms`.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_tool_result(
        &mut self,
        now: Instant,
        now_ms: u64,
        proposal_id: &str,
        success: bool,
        output: Vec<u8>,
        error: String,
        timed_out: bool,
        executor: &str,
    ) {
        let Some(call) = self.running.take_if(|c| c.proposal_id == proposal_id) else {
            return;
        };
        let (success, output, error) = if output.len() > MAX_TOOL_OUTPUT {
            (
                false,
                Vec::new(),
                format!("the tool's output exceeds {MAX_TOOL_OUTPUT} bytes"),
            )
        } else {
            (success, output, error)
        };
        self.events.push_back(Body::ToolResult(ToolResult {
            proposal_id: id(&call.proposal_id),
            success,
            output_json: output.clone(),
            error: error.clone(),
        }));
        self.events
            .push_back(Body::ToolAttestation(ToolAttestation {
                proposal_id: id(&call.proposal_id),
                attestation_id: id(&(self.settings.new_id)()),
                execution_sha256: execution_sha256(&call.name, &call.input, &output),
                executed_at_unix_ms: now_ms as i64,
                timed_out,
                executor: executor.to_owned(),
            }));
        let content = if success {
            String::from_utf8_lossy(&output).into_owned()
        } else {
            json!({"error": error}).to_string()
        };
        self.tool_message(&call, &content);
        self.advance(now, now_ms);
    }

    /// More user input: it becomes the next turn once the model's current one is answered.
    pub fn handle_input(&mut self, text: &str) {
        if self.ending.is_none() {
            self.inputs.push_back(text.to_owned());
        }
    }

    /// The model call ended (after its finish and usage).
    pub fn handle_model_ended(&mut self) {
        self.model_open = false;
        if self.done_when_model_ends {
            self.end(Ending::Done);
        }
    }

    /// The model call failed.
    pub fn handle_model_failed(&mut self, code: Code, message: String) {
        self.model_open = false;
        if self.done_when_model_ends {
            // The answer was whole; only what followed it broke.
            return self.end(Ending::Done);
        }
        self.end(Ending::Failed(code, message));
    }

    /// The run is cancelled (`reason` says by whom).
    pub fn cancel(&mut self, reason: &str) {
        self.end(Ending::Cancelled(reason.to_owned()));
    }
}

#[cfg(test)]
mod tests;
