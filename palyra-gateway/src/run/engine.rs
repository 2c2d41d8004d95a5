//! The run engine: starts runs in sessions, drives each one's [`RunMachine`] on a task of the
//! runtime (the provider call, node capabilities as tools, approvals, cancellation, time), and
//! writes every event to the run tape, making it visible to streams only once it is durable.
//!
//! ```text
//! RunStream ─▶ start ─▶ session resolved (durable) ─▶ OPEN + ACCEPTED ─▶ task: machine ⇄ provider, hub
//!                                                         │ every event ─▶ tape ─(durable)─▶ entry.events ─▶ streams
//! ```

use super::browser_tools::{self, BrowserTools};
use super::gateway_tools::{self, Surfaces};
use super::machine::{Action, Ending, RunMachine, RunSettings, ToolSpec, MAX_TOOL_OUTPUT};
use super::sessions::{Resolve, SessionRecord, SessionStore};
use super::tape::{self, LoadedRun, RunMeta, RunState, EVENT, OPEN, TRANSCRIPT};
use crate::access::Caller;
use crate::node::hub::{CapabilityResult, NodeHub};
use crate::notify::Notifier;
use crate::provider::client::{stream_chat_paced, ProviderError, ProviderSettings};
use crate::runtime::{self, Rt};
use crate::store::{pending, LogStore, NewEvent, Pending, StoreError};
use crate::util::stop::Stop;
use crate::util::WallClock;
use bytes::Bytes;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::openai::call::ChatRequest;
use palyra_proto::openai::chat::ChatEvent;
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, stream_status::StatusKind, CanonicalId, RunStreamEvent, StreamStatus,
    ToolApprovalResponse,
};
use prost::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

mod follow;

/// Runs in progress at once.
pub const MAX_ACTIVE_RUNS: usize = 4096;
/// Longest input text.
pub const MAX_INPUT: usize = 256 * 1024;
/// A node seen this recently is offered as a tool host.
const NODE_FRESH_MS: u64 = 60_000;
/// Parts of the provider's answer a run may hold beyond what its slowest paced reader has
/// read of its tape before the provider call stops reading.
pub const PACE_WINDOW: usize = 2048;

/// How far a run's paced readers have read its tape: the provider call reads on only while it
/// has received at most [`PACE_WINDOW`] parts more than the slowest reader has read events (a
/// run without paced readers is not held back). What the call received counts, not what is
/// durable: the queue to the tape is held to the window too.
#[derive(Default)]
pub struct RunPace {
    readers: Mutex<HashMap<u64, usize>>,
    next_reader: std::sync::atomic::AtomicU64,
    received: std::sync::atomic::AtomicUsize,
    wake: Notifier,
}

impl RunPace {
    /// The provider call received one more part of the answer.
    fn received_one(&self) {
        self.received
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, usize>> {
        self.readers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl crate::provider::client::Pace for RunPace {
    fn may_read(&self) -> bool {
        let received = self.received.load(std::sync::atomic::Ordering::Acquire);
        match self.lock().values().min() {
            None => true,
            Some(&slowest) => received <= slowest + PACE_WINDOW,
        }
    }

    fn listen(&self) -> event_listener::EventListener {
        self.wake.listen()
    }
}

/// A reader of a run's tape that holds the run's provider call back while it lags (see
/// [`RunPace`]); it stops holding anything back when dropped.
pub struct PacedReader {
    pace: Arc<RunPace>,
    id: u64,
}

impl PacedReader {
    /// The reader has taken the tape's events before `cursor`.
    pub fn read_to(&self, cursor: usize) {
        self.pace.lock().insert(self.id, cursor);
        self.pace.wake.notify();
    }
}

impl Drop for PacedReader {
    fn drop(&mut self) {
        self.pace.lock().remove(&self.id);
        self.pace.wake.notify();
    }
}

/// Which tools need what.
#[derive(Debug, Clone)]
pub struct ToolPolicy {
    /// Tool names (or `*`) whose calls an operator must approve.
    pub require_approval: Vec<String>,
    /// Tool names (or `*`) only runs with `allow_sensitive_tools` may call.
    pub sensitive: Vec<String>,
    /// Tool calls per run.
    pub max_calls_per_run: u32,
    /// How long an approval request waits.
    pub approval_timeout: Duration,
    /// How long a node capability may take.
    pub capability_timeout: Duration,
}

impl Default for ToolPolicy {
    fn default() -> Self {
        Self {
            require_approval: vec!["*".into()],
            sensitive: Vec::new(),
            max_calls_per_run: super::machine::DEFAULT_MAX_TOOL_CALLS,
            approval_timeout: super::machine::APPROVAL_TIMEOUT,
            capability_timeout: crate::node::service::CAPABILITY_TIMEOUT,
        }
    }
}

fn listed(list: &[String], name: &str) -> bool {
    list.iter().any(|p| p == "*" || p == name)
}

/// How runs are made.
#[derive(Clone, Default)]
pub struct RunsConfig {
    /// The model provider; without one, runs are refused with FAILED_PRECONDITION.
    pub provider: Option<ProviderSettings>,
    /// The model name.
    pub model: String,
    /// Tool policy.
    pub policy: ToolPolicy,
    /// A run whose client disconnected is cancelled unless a stream attaches within this long.
    pub detach_grace: Duration,
    /// This gateway's name when the tape is shared by several (each drives its own runs and
    /// follows the others'); `None`: every run on the tape is this gateway's.
    pub gateway: Option<String>,
}

/// What a caller asks to start.
#[derive(Debug, Clone, Default)]
pub struct StartRun {
    /// The run's ID (the client's ULID).
    pub run_id: String,
    /// The session to run in.
    pub session: Resolve,
    /// The user's input.
    pub input: String,
    /// Sensitive tools may be called.
    pub allow_sensitive_tools: bool,
    /// What started it (`manual` when empty).
    pub origin: String,
    /// The whole conversation to answer (OpenAI chat messages, the last a user message or a
    /// tool result), instead of the session's history followed by `input`; `input` is then
    /// only the run's prompt as listed.
    pub conversation: Option<Vec<Value>>,
    /// Functions of the caller the model may call; such a call ends the run with the calls.
    pub client_tools: Vec<ToolSpec>,
    /// Offer the model none of the gateway's own tools (node capabilities, gateway tools).
    pub without_gateway_tools: bool,
    /// An answer cut at the token limit is done, not failed (the caller set the limit).
    pub length_is_done: bool,
    /// Further parameters of every model request (`max_tokens`, `temperature`, ...).
    pub options: serde_json::Map<String, Value>,
    /// Whether an approval can come for this run's calls; by default, whether the caller has
    /// `approvals:write`.
    pub can_approve: Option<bool>,
}

/// Something for a run's task.
#[derive(Debug)]
pub enum RunInput {
    /// More user input.
    Input(String),
    /// An approval answer.
    Approval(ToolApprovalResponse),
    /// The client half-closed its stream.
    HalfClose,
    /// Cancel, saying by whom.
    Cancel(String),
    /// Part of model turn `turn`'s answer.
    Model(u32, ChatEvent),
    /// Model turn `turn`'s call ended.
    ModelEnded(u32, Result<(), ProviderError>),
    /// A tool call's outcome.
    Tool {
        /// The proposal.
        proposal_id: String,
        /// What it produced.
        result: CapabilityResult,
        /// Who ran it.
        executor: String,
        /// It ran out of time.
        timed_out: bool,
    },
}

/// Where a tool runs.
#[derive(Debug, Clone)]
enum Target {
    /// A node capability.
    Node {
        device_id: String,
        capability: String,
    },
    /// A tool of the gateway itself ([`gateway_tools`]).
    Gateway(String),
    /// A browser tool ([`browser_tools`]), served by browserd.
    Browser(String),
}

struct Entry {
    meta: RunMeta,
    /// Durable events, encoded.
    events: Vec<Bytes>,
    /// The state after the durable events.
    state: RunState,
    /// The state after every event handed to the tape (ahead of `state` while appends are
    /// in flight; each append's completion brings `state` to what it was when it was handed).
    emitted_state: RunState,
    transcript: Vec<Value>,
    inbox: Option<async_channel::Sender<RunInput>>,
    /// Seq of the last event handed to the tape.
    next_seq: u64,
    /// The terminal event is durable.
    closed: bool,
    /// The code a failed run's streams end with.
    failure: Option<Code>,
    /// Streams following it.
    attached: u32,
    /// Its paced readers.
    pace: Arc<RunPace>,
    /// Another gateway drives it; this one follows its tape.
    foreign: bool,
}

#[derive(Default)]
struct Runs {
    map: HashMap<String, Entry>,
    order: Vec<String>,
    active: usize,
    /// The last tape seq taken in from a shared tape (other gateways' runs).
    followed: u64,
    /// A read of the shared tape is in flight.
    following: bool,
}

/// A run as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSummary {
    /// Its metadata.
    #[serde(flatten)]
    pub meta: RunMeta,
    /// Its state.
    pub state: &'static str,
    /// Events on its tape.
    pub events: u64,
}

/// Events of a run for a stream, from a cursor.
#[derive(Debug, Clone)]
pub struct Read {
    /// The events (encoded `RunStreamEvent`s), in order.
    pub events: Vec<Bytes>,
    /// The status the stream ends with, once the run's tape is complete and read.
    pub end: Option<Status>,
}

/// The run engine of one daemon.
pub struct RunEngine {
    tape: Arc<dyn LogStore>,
    sessions: Arc<SessionStore>,
    hub: Arc<NodeHub>,
    wake: Arc<Notifier>,
    clock: WallClock,
    config: RunsConfig,
    rt: OnceLock<Rt>,
    surfaces: OnceLock<Arc<dyn Surfaces>>,
    browser: OnceLock<Arc<dyn BrowserTools>>,
    runs: Mutex<Runs>,
}

fn canonical(id: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: id.to_owned(),
    })
}

fn status_event(run_id: &str, seq: u64, kind: StatusKind, message: String) -> RunStreamEvent {
    RunStreamEvent {
        v: 1,
        run_id: canonical(run_id),
        body: Some(Body::Status(StreamStatus {
            kind: kind as i32,
            message,
        })),
        seq,
        timestamp_unix_ms: 0,
    }
}

/// The gRPC code a provider failure ends a run's stream with.
fn provider_code(e: &ProviderError) -> Code {
    match e {
        ProviderError::Unreachable { .. } => Code::Unavailable,
        ProviderError::Refused { status, .. } if status.as_u16() == 429 => Code::ResourceExhausted,
        ProviderError::Refused { status, .. } if status.is_server_error() => Code::Unavailable,
        ProviderError::Refused { .. } => Code::FailedPrecondition,
        ProviderError::Silent(_) => Code::DeadlineExceeded,
        ProviderError::Failed(_) => Code::Aborted,
    }
}

/// Waits for `future` unless `stop` is raised first (the future is then dropped, which closes
/// whatever connection it held).
async fn until_stopped<F: Future<Output = ()>>(stop: Arc<Stop>, future: F) {
    let mut future = std::pin::pin!(future);
    let mut stopped = std::pin::pin!(stop.wait());
    std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        future.as_mut().poll(cx)
    })
    .await
}

/// A function name a model accepts (`^[A-Za-z0-9_-]{1,64}$`) for a capability name.
pub fn function_name(capability: &str) -> String {
    let name: String = capability
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "_".into()
    } else {
        name
    }
}

impl RunEngine {
    /// Opens the engine over its `tape` (every run read back; unfinished ones are marked
    /// interrupted, durably, before this returns) and its `sessions`; `wake` is notified when a
    /// run's events become durable.
    pub fn open(
        tape: Arc<dyn LogStore>,
        sessions: Arc<SessionStore>,
        hub: Arc<NodeHub>,
        wake: Arc<Notifier>,
        clock: WallClock,
        config: RunsConfig,
    ) -> Result<Arc<Self>, StoreError> {
        let loaded = tape::load(tape.as_ref())?;
        let mut runs = Runs::default();
        for LoadedRun {
            meta,
            mut events,
            mut state,
            transcript,
        } in loaded
        {
            let foreign = config
                .gateway
                .as_ref()
                .is_some_and(|own| !meta.gateway.is_empty() && meta.gateway != *own);
            if !state.is_terminal() && !foreign {
                let mut event = status_event(
                    &meta.run_id,
                    events.len() as u64 + 1,
                    StatusKind::Failed,
                    format!(
                        "{}: the daemon stopped before the run finished",
                        tape::INTERRUPTED
                    ),
                );
                event.timestamp_unix_ms = clock() as i64;
                let bytes = Bytes::from(event.encode_to_vec());
                append_blocking(
                    tape.as_ref(),
                    tape::record(&meta.run_id, EVENT, bytes.clone()),
                )?;
                state = RunState::Interrupted;
                events.push(bytes);
                sessions.run_ended(&meta.session_id, &meta.run_id, state.as_str(), clock());
            }
            let id = meta.run_id.clone();
            runs.order.push(id.clone());
            runs.map.insert(
                id,
                Entry {
                    next_seq: events.len() as u64,
                    meta,
                    events,
                    state,
                    emitted_state: state,
                    transcript,
                    inbox: None,
                    closed: !foreign || state.is_terminal(),
                    failure: None,
                    attached: 0,
                    pace: Arc::default(),
                    foreign,
                },
            );
        }
        runs.followed = tape.bounds().last_seq;
        Ok(Arc::new(Self {
            tape,
            sessions,
            hub,
            wake,
            clock,
            config,
            rt: OnceLock::new(),
            surfaces: OnceLock::new(),
            browser: OnceLock::new(),
            runs: Mutex::new(runs),
        }))
    }

    /// The runtime runs are driven on (set once, when the daemon is served).
    pub fn set_runtime(&self, rt: Rt) {
        let _ = self.rt.set(rt);
    }

    /// The browser that serves the runs' browser tools (set once; without it runs have none).
    pub fn set_browser(&self, browser: Arc<dyn BrowserTools>) {
        let _ = self.browser.set(browser);
    }

    /// A screenshot run `run_id` took with its browser tool, if the caller sees the run.
    pub fn screenshot(&self, caller: &Caller, run_id: &str, name: &str) -> Option<Vec<u8>> {
        self.get(caller, run_id)?;
        self.browser.get()?.screenshot(run_id, name)
    }

    /// The console's surfaces, which the `palyra_patch_surface` tool changes (set once).
    pub fn set_surfaces(&self, surfaces: Arc<dyn Surfaces>) {
        let _ = self.surfaces.set(surfaces);
    }

    /// The sessions.
    pub fn sessions(&self) -> &Arc<SessionStore> {
        &self.sessions
    }

    /// The model runs ask the provider for.
    pub fn model(&self) -> &str {
        &self.config.model
    }

    /// Whether a model provider is configured.
    pub fn has_provider(&self) -> bool {
        self.config.provider.is_some()
    }

    fn lock(&self) -> MutexGuard<'_, Runs> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a run for `caller`: answered with the run's session once the session is durable
    /// and the run accepted, or why not.
    pub fn start(
        self: &Arc<Self>,
        caller: &Caller,
        request: StartRun,
    ) -> Pending<Result<SessionRecord, Status>> {
        let (answer, done) = pending(Some(Arc::clone(&self.wake)));
        if let Err(status) = self.check_start(&request) {
            done.complete(Err(status));
            return answer;
        }
        let this = Arc::clone(self);
        let owner = caller.clone();
        let new_id = ulid::Ulid::new().to_string();
        self.sessions.resolve(
            caller,
            request.session.clone(),
            (self.clock)(),
            new_id,
            move |outcome| {
                done.complete(match outcome {
                    Ok(Ok(resolved)) => this.begin(&owner, resolved.session, request),
                    Ok(Err(status)) => Err(status),
                    Err(e) => Err(Status::new(
                        Code::Unavailable,
                        format!("the session store failed: {e}"),
                    )),
                })
            },
        );
        answer
    }

    fn check_start(&self, request: &StartRun) -> Result<(), Status> {
        if self.config.provider.is_none() {
            return Err(Status::new(
                Code::FailedPrecondition,
                "no model provider is configured: set [model] base_url and model in palyrad's \
                 configuration file (see docs/agent-runs.md)",
            ));
        }
        if self.rt.get().is_none() {
            return Err(Status::new(Code::Unavailable, "the daemon is starting"));
        }
        if !palyra_proto::identity::is_canonical_device_id(&request.run_id) {
            return Err(Status::new(
                Code::InvalidArgument,
                "run_id must be a canonical ULID",
            ));
        }
        if let Some(conversation) = &request.conversation {
            if conversation.is_empty() {
                return Err(Status::new(
                    Code::InvalidArgument,
                    "the conversation has no message",
                ));
            }
        } else if request.input.trim().is_empty() {
            return Err(Status::new(
                Code::InvalidArgument,
                "the first message of a run needs input.content.text",
            ));
        }
        if request.input.len() > MAX_INPUT {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("input text exceeds {MAX_INPUT} bytes"),
            ));
        }
        if self.lock().map.contains_key(&request.run_id) {
            return Err(Status::new(
                Code::AlreadyExists,
                format!(
                    "run {} exists; send attach=true to follow it",
                    request.run_id
                ),
            ));
        }
        Ok(())
    }

    /// The session's conversation so far: the transcripts of its runs since its last reset.
    fn history(&self, runs: &Runs, session: &SessionRecord) -> Vec<Value> {
        runs.order
            .iter()
            .filter_map(|id| runs.map.get(id))
            .filter(|e| {
                e.meta.session_id == session.session_id
                    && e.meta.started_at_unix_ms >= session.history_from_unix_ms
            })
            .flat_map(|e| e.transcript.iter().cloned())
            .collect()
    }

    /// The tools a run may call now: the gateway's own and the capabilities of fresh nodes.
    fn catalog(&self, now_ms: u64, request: &StartRun) -> (Vec<ToolSpec>, HashMap<String, Target>) {
        let policy = &self.config.policy;
        let mut specs = Vec::new();
        let mut targets = HashMap::new();
        if request.without_gateway_tools {
            return (specs, targets);
        }
        // A caller's function of the same name hides a tool of ours.
        for tool in &request.client_tools {
            targets.insert(tool.name.clone(), Target::Gateway(String::new()));
        }
        for mut spec in gateway_tools::specs(self.surfaces.get().is_some()) {
            spec.approval_required = listed(&policy.require_approval, &spec.name);
            spec.sensitive = listed(&policy.sensitive, &spec.name);
            if targets.contains_key(&spec.name) {
                continue;
            }
            targets.insert(spec.name.clone(), Target::Gateway(spec.name.clone()));
            specs.push(spec);
        }
        if self.browser.get().is_some() {
            for mut spec in browser_tools::specs() {
                spec.approval_required = listed(&policy.require_approval, &spec.name);
                spec.sensitive = listed(&policy.sensitive, &spec.name);
                if targets.contains_key(&spec.name) {
                    continue;
                }
                targets.insert(spec.name.clone(), Target::Browser(spec.name.clone()));
                specs.push(spec);
            }
        }
        for node in self.hub.fleet_nodes() {
            if now_ms.saturating_sub(node.last_seen_at_unix_ms) > NODE_FRESH_MS {
                continue;
            }
            for capability in node.capabilities.iter().filter(|c| c.available) {
                let name = function_name(&capability.name);
                if targets.contains_key(&name) {
                    continue;
                }
                specs.push(ToolSpec {
                    name: name.clone(),
                    description: match capability.description.as_str() {
                        "" => format!("the node capability {}", capability.name),
                        text => text.to_owned(),
                    },
                    parameters: capability
                        .input_schema
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object"})),
                    approval_required: listed(&policy.require_approval, &name)
                        || listed(&policy.require_approval, &capability.name),
                    sensitive: listed(&policy.sensitive, &name)
                        || listed(&policy.sensitive, &capability.name),
                });
                targets.insert(
                    name,
                    Target::Node {
                        device_id: node.device_id.clone(),
                        capability: capability.name.clone(),
                    },
                );
            }
        }
        for tool in &request.client_tools {
            targets.remove(&tool.name);
        }
        (specs, targets)
    }

    /// Accepts a run in `session` (its session is durable): OPEN and ACCEPTED go to the tape and
    /// its task starts.
    fn begin(
        self: &Arc<Self>,
        caller: &Caller,
        session: SessionRecord,
        request: StartRun,
    ) -> Result<SessionRecord, Status> {
        let rt = self
            .rt
            .get()
            .cloned()
            .ok_or_else(|| Status::new(Code::Unavailable, "the daemon is starting"))?;
        let now_ms = (self.clock)();
        let (tx, rx) = async_channel::unbounded();
        let pace = Arc::new(RunPace::default());
        let meta = RunMeta {
            run_id: request.run_id.clone(),
            session_id: session.session_id.clone(),
            principal: caller.principal.clone(),
            origin: match request.origin.as_str() {
                "" => "manual".into(),
                origin => origin.chars().take(64).collect(),
            },
            started_at_unix_ms: now_ms,
            prompt: request.input.chars().take(200).collect(),
            gateway: self.config.gateway.clone().unwrap_or_default(),
        };
        let history = {
            let mut runs = self.lock();
            if runs.map.contains_key(&request.run_id) {
                return Err(Status::new(
                    Code::AlreadyExists,
                    format!("run {} exists", request.run_id),
                ));
            }
            if runs.active >= MAX_ACTIVE_RUNS {
                return Err(Status::new(
                    Code::ResourceExhausted,
                    format!("{MAX_ACTIVE_RUNS} runs are in progress; retry later"),
                ));
            }
            let history = self.history(&runs, &session);
            runs.active += 1;
            runs.order.push(request.run_id.clone());
            runs.map.insert(
                request.run_id.clone(),
                Entry {
                    meta: meta.clone(),
                    events: Vec::new(),
                    state: RunState::Accepted,
                    emitted_state: RunState::Accepted,
                    transcript: Vec::new(),
                    inbox: Some(tx.clone()),
                    next_seq: 0,
                    closed: false,
                    failure: None,
                    attached: 1,
                    pace: Arc::clone(&pace),
                    foreign: false,
                },
            );
            history
        };
        self.append_record(
            &meta.run_id,
            OPEN,
            serde_json::to_vec(&meta).unwrap_or_default(),
        );
        let accepted = format!(
            "accepted session={} principal={}",
            session.session_id, caller.principal
        );
        self.append_events(
            &meta.run_id,
            vec![Body::Status(StreamStatus {
                kind: StatusKind::Accepted as i32,
                message: accepted,
            })],
        );
        self.sessions
            .run_started(&session.session_id, &meta.run_id, &meta.prompt, now_ms);
        let (tools, targets) = self.catalog(now_ms, &request);
        let policy = &self.config.policy;
        let settings = RunSettings {
            tools,
            max_tool_calls: policy.max_calls_per_run,
            allow_sensitive: request.allow_sensitive_tools,
            approval_timeout: policy.approval_timeout,
            can_approve: request
                .can_approve
                .unwrap_or_else(|| caller.scopes.contains(crate::access::Scope::ApprovalsWrite)),
            cached: session.cached.clone(),
            new_id: Box::new(|| ulid::Ulid::new().to_string()),
            client_tools: request.client_tools,
            length_is_done: request.length_is_done,
            options: request.options,
        };
        let machine = match request.conversation {
            Some(conversation) => RunMachine::resume(settings, conversation, 0),
            None => RunMachine::start(settings, history, &request.input),
        };
        let this = Arc::clone(self);
        let task_rt = Arc::clone(&rt);
        rt.spawn(Box::pin(async move {
            this.drive(task_rt, meta, machine, (rx, tx), targets, pace)
                .await
        }));
        Ok(session)
    }

    /// Hands a run's opening or closing record to the tape (nobody waits for it: the events
    /// between them are what streams wait for).
    fn append_record(&self, run_id: &str, kind: u32, body: Vec<u8>) {
        let record = NewEvent {
            to: None,
            body: tape::record(run_id, kind, body),
            id: None,
        };
        self.tape.append(vec![record], None, Box::new(|_| {}));
    }

    /// Hands a run's new events to the tape in one write; they reach the run's entry (and its
    /// streams) together, once durable.
    fn append_events(self: &Arc<Self>, run_id: &str, bodies: Vec<Body>) {
        if bodies.is_empty() {
            return;
        }
        let (encoded, state_after) = {
            let mut runs = self.lock();
            let Some(entry) = runs.map.get_mut(run_id) else {
                return;
            };
            let now_ms = (self.clock)() as i64;
            // From what was emitted before, not what is durable yet: two batches in flight
            // must not leave the run in the first one's state.
            let mut state = entry.emitted_state;
            let encoded: Vec<Bytes> = bodies
                .into_iter()
                .map(|body| {
                    entry.next_seq += 1;
                    let event = RunStreamEvent {
                        v: 1,
                        run_id: canonical(run_id),
                        body: Some(body),
                        seq: entry.next_seq,
                        timestamp_unix_ms: now_ms,
                    };
                    state = state.after(&event);
                    Bytes::from(event.encode_to_vec())
                })
                .collect();
            entry.emitted_state = state;
            (encoded, state)
        };
        let records = encoded
            .iter()
            .map(|bytes| NewEvent {
                to: None,
                body: tape::record(run_id, EVENT, bytes.clone()),
                id: None,
            })
            .collect();
        let this = Arc::clone(self);
        let run = run_id.to_owned();
        self.tape.append(
            records,
            None,
            Box::new(move |written| this.appended(&run, encoded, state_after, written)),
        );
    }

    /// Events are durable (or could not be made so).
    fn appended(
        &self,
        run_id: &str,
        events: Vec<Bytes>,
        state: RunState,
        written: Result<Vec<u64>, StoreError>,
    ) {
        let mut runs = self.lock();
        let Some(entry) = runs.map.get_mut(run_id) else {
            return;
        };
        match written {
            Ok(_) => {
                entry.events.extend(events);
                entry.state = state;
                if state.is_terminal() {
                    entry.closed = true;
                }
            }
            Err(e) => {
                tracing::error!(run = run_id, error = %e, "the run tape could not be written");
                // Nothing more of this run can be shown as durable: its streams end.
                entry.closed = true;
                entry.failure = Some(Code::Unavailable);
                if let Some(inbox) = &entry.inbox {
                    let _ = inbox.try_send(RunInput::Cancel(format!(
                        "the run tape could not be written: {e}"
                    )));
                }
            }
        }
        drop(runs);
        self.wake.notify();
    }

    async fn drive(
        self: Arc<Self>,
        rt: Rt,
        meta: RunMeta,
        mut machine: RunMachine,
        (rx, tx): (
            async_channel::Receiver<RunInput>,
            async_channel::Sender<RunInput>,
        ),
        targets: HashMap<String, Target>,
        pace: Arc<RunPace>,
    ) {
        let stop = Stop::new();
        let mut turn = 0u32;
        loop {
            while let Some(action) = machine.poll_action() {
                match action {
                    Action::CallModel {
                        messages,
                        tools,
                        options,
                    } => {
                        turn += 1;
                        let request = ChatRequest {
                            model: self.config.model.clone(),
                            messages,
                            tools,
                            options,
                        };
                        self.call_model(&rt, turn, request, &tx, &stop, &pace);
                    }
                    Action::RunTool {
                        proposal_id,
                        name,
                        input_json,
                    } => {
                        let task = run_tool(
                            Arc::clone(&self),
                            Arc::clone(&rt),
                            meta.run_id.clone(),
                            targets.get(&name).cloned(),
                            proposal_id,
                            input_json,
                            tx.clone(),
                        );
                        rt.spawn(Box::pin(until_stopped(Arc::clone(&stop), task)));
                    }
                    Action::Remember(decision) => {
                        self.sessions.remember(&meta.session_id, decision)
                    }
                    Action::Stop => stop.raise(),
                }
            }
            if let Some(Ending::Failed(code, _)) = machine.ending() {
                if let Some(entry) = self.lock().map.get_mut(&meta.run_id) {
                    entry.failure = Some(*code);
                }
            }
            let events: Vec<Body> = std::iter::from_fn(|| machine.poll_event()).collect();
            self.append_events(&meta.run_id, events);
            if machine.ending().is_some() {
                break;
            }
            let next = match machine.poll_timeout() {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(rt.now());
                    runtime::timeout(rt.as_ref(), wait, rx.recv()).await
                }
                None => Some(rx.recv().await),
            };
            let (now, now_ms) = (rt.now(), (self.clock)());
            match next {
                None => machine.handle_timeout(now, now_ms),
                Some(Err(_)) => machine.cancel("the run's inputs closed"),
                Some(Ok(input)) => {
                    apply(&mut machine, turn, input, now, now_ms);
                    // What else has arrived (a burst of tokens) is handled before the events
                    // go out, so they reach the tape in one write.
                    for _ in 1..MAX_INPUTS_PER_WRITE {
                        if machine.ending().is_some() || machine.has_actions() {
                            break;
                        }
                        match rx.try_recv() {
                            Ok(input) => apply(&mut machine, turn, input, now, now_ms),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
        stop.raise();
        if let Some(browser) = self.browser.get() {
            browser.release(&meta.run_id);
        }
        let transcript = machine.transcript().to_vec();
        let body = serde_json::to_vec(&transcript).unwrap_or_default();
        self.append_record(&meta.run_id, TRANSCRIPT, body);
        let state = {
            let mut runs = self.lock();
            runs.active = runs.active.saturating_sub(1);
            match runs.map.get_mut(&meta.run_id) {
                Some(entry) => {
                    entry.inbox = None;
                    entry.transcript = transcript;
                    match machine.ending() {
                        Some(Ending::Done) => RunState::Done,
                        Some(Ending::Cancelled(_)) => RunState::Cancelled,
                        _ => RunState::Failed,
                    }
                }
                None => RunState::Failed,
            }
        };
        self.sessions.run_ended(
            &meta.session_id,
            &meta.run_id,
            state.as_str(),
            (self.clock)(),
        );
    }

    fn call_model(
        &self,
        rt: &Rt,
        turn: u32,
        request: ChatRequest,
        tx: &async_channel::Sender<RunInput>,
        stop: &Arc<Stop>,
        pace: &Arc<RunPace>,
    ) {
        let Some(settings) = self.config.provider.clone() else {
            let _ = tx.try_send(RunInput::ModelEnded(
                turn,
                Err(ProviderError::Failed(
                    "no model provider is configured".into(),
                )),
            ));
            return;
        };
        let (tx, call_rt, pace) = (tx.clone(), Arc::clone(rt), Arc::clone(pace));
        let call = async move {
            let events = tx.clone();
            let result = stream_chat_paced(
                &call_rt,
                &settings,
                &request,
                Some(pace.as_ref()),
                |event| {
                    pace.received_one();
                    let _ = events.try_send(RunInput::Model(turn, event));
                },
            )
            .await;
            let _ = tx.try_send(RunInput::ModelEnded(turn, result));
        };
        rt.spawn(Box::pin(until_stopped(Arc::clone(stop), call)));
    }

    fn entry_for<'a>(
        runs: &'a mut Runs,
        caller: &Caller,
        run_id: &str,
    ) -> Result<&'a mut Entry, Status> {
        match runs.map.get_mut(run_id) {
            Some(entry) if caller.owns(&entry.meta.principal) => Ok(entry),
            _ => Err(Status::new(Code::NotFound, format!("no run {run_id}"))),
        }
    }

    /// Hands `input` to a run of `caller`; FAILED_PRECONDITION once it ended.
    pub fn send(&self, caller: &Caller, run_id: &str, input: RunInput) -> Result<(), Status> {
        let mut runs = self.lock();
        let entry = Self::entry_for(&mut runs, caller, run_id)?;
        match &entry.inbox {
            Some(inbox) => {
                let _ = inbox.try_send(input);
                Ok(())
            }
            None if entry.foreign && !entry.closed => Err(Status::new(
                Code::FailedPrecondition,
                format!(
                    "run {run_id} runs on gateway {}; send its input there",
                    entry.meta.gateway
                ),
            )),
            None => Err(Status::new(
                Code::FailedPrecondition,
                format!("run {run_id} has ended ({})", entry.state.as_str()),
            )),
        }
    }

    /// Cancels a run of `caller`: whether a cancellation was requested (false once it ended).
    pub fn cancel(&self, caller: &Caller, run_id: &str, reason: &str) -> Result<bool, Status> {
        let mut runs = self.lock();
        let entry = Self::entry_for(&mut runs, caller, run_id)?;
        Ok(match &entry.inbox {
            Some(inbox) => inbox.try_send(RunInput::Cancel(reason.to_owned())).is_ok(),
            None => false,
        })
    }

    /// A stream follows a run of `caller` (re-attach or replay).
    pub fn attach(&self, caller: &Caller, run_id: &str) -> Result<(), Status> {
        let mut runs = self.lock();
        let entry = Self::entry_for(&mut runs, caller, run_id)?;
        entry.attached += 1;
        Ok(())
    }

    /// A stream stopped following a run. `cancel` (the client reset its stream) cancels the
    /// run at once; a disconnect cancels it once no stream attached within the grace period.
    pub fn detach(self: &Arc<Self>, run_id: &str, cancel: Option<&str>) {
        let mut runs = self.lock();
        let Some(entry) = runs.map.get_mut(run_id) else {
            return;
        };
        entry.attached = entry.attached.saturating_sub(1);
        let Some(inbox) = entry.inbox.clone() else {
            return;
        };
        if let Some(reason) = cancel {
            let _ = inbox.try_send(RunInput::Cancel(reason.to_owned()));
            return;
        }
        if entry.attached > 0 {
            return;
        }
        drop(runs);
        let Some(rt) = self.rt.get().cloned() else {
            return;
        };
        let this = Arc::clone(self);
        let run = run_id.to_owned();
        let grace = self.config.detach_grace;
        let timer_rt = Arc::clone(&rt);
        rt.spawn(Box::pin(async move {
            runtime::sleep(timer_rt.as_ref(), grace).await;
            let runs = this.lock();
            if let Some(entry) = runs.map.get(&run).filter(|e| e.attached == 0) {
                if let Some(inbox) = &entry.inbox {
                    let _ = inbox.try_send(RunInput::Cancel(format!(
                        "the client disconnected and no stream re-attached within {} s",
                        grace.as_secs()
                    )));
                }
            }
        }));
    }

    /// A reader of run `run_id` that holds its provider call back while it lags, if the run
    /// exists.
    pub fn paced_reader(&self, run_id: &str) -> Option<PacedReader> {
        let runs = self.lock();
        let pace = Arc::clone(&runs.map.get(run_id)?.pace);
        let id = pace
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pace.lock().insert(id, 0);
        Some(PacedReader { pace, id })
    }

    /// Durable events of a run from index `from` (the seq of the last one seen), at most about
    /// `max_bytes`; `None` if there is no such run.
    pub fn read(&self, run_id: &str, from: usize, max_bytes: usize) -> Option<Read> {
        let runs = self.lock();
        let entry = runs.map.get(run_id)?;
        let mut events = Vec::new();
        let mut bytes = 0;
        for event in entry.events.iter().skip(from) {
            if bytes > 0 && bytes + event.len() > max_bytes {
                break;
            }
            bytes += event.len();
            events.push(event.clone());
        }
        let complete = entry.closed && from + events.len() >= entry.events.len();
        let end = complete.then(|| match entry.state {
            RunState::Done => Status::ok(),
            RunState::Cancelled => Status::new(Code::Cancelled, "the run was cancelled"),
            state => Status::new(
                entry.failure.unwrap_or(Code::Aborted),
                format!("the run {}", state.as_str()),
            ),
        });
        Some(Read { events, end })
    }

    /// The runs `caller` may see, newest first, at most `limit`.
    pub fn list(&self, caller: &Caller, limit: usize) -> Vec<RunSummary> {
        let runs = self.lock();
        runs.order
            .iter()
            .rev()
            .filter_map(|id| runs.map.get(id))
            .filter(|e| caller.owns(&e.meta.principal))
            .take(limit)
            .map(|e| RunSummary {
                meta: e.meta.clone(),
                state: e.state.as_str(),
                events: e.events.len() as u64,
            })
            .collect()
    }

    /// A run's summary and durable events, if `caller` may see it.
    pub fn get(&self, caller: &Caller, run_id: &str) -> Option<(RunSummary, Vec<Bytes>)> {
        let runs = self.lock();
        let e = runs
            .map
            .get(run_id)
            .filter(|e| caller.owns(&e.meta.principal))?;
        let summary = RunSummary {
            meta: e.meta.clone(),
            state: e.state.as_str(),
            events: e.events.len() as u64,
        };
        Some((summary, e.events.clone()))
    }

    /// The outcome of each finished run whose origin starts with `prefix`, with that origin,
    /// oldest first (token usage by API key).
    pub fn outcomes(&self, prefix: &str) -> Vec<(String, super::machine::Outcome)> {
        use prost::Message as _;
        let runs = self.lock();
        runs.order
            .iter()
            .filter_map(|id| runs.map.get(id))
            .filter(|e| e.meta.origin.starts_with(prefix))
            .filter_map(|e| {
                // The outcome is the event before the last one.
                let outcome = e.events.iter().rev().take(3).find_map(|bytes| {
                    let event = RunStreamEvent::decode(bytes.as_ref()).ok()?;
                    super::machine::Outcome::from_event(event.body.as_ref()?)
                })?;
                Some((e.meta.origin.clone(), outcome))
            })
            .collect()
    }

    /// Every run `caller` may see with its events (for the approval records), oldest first.
    pub fn tapes(&self, caller: &Caller) -> Vec<(RunMeta, Vec<Bytes>)> {
        let runs = self.lock();
        runs.order
            .iter()
            .filter_map(|id| runs.map.get(id))
            .filter(|e| caller.owns(&e.meta.principal))
            .map(|e| (e.meta.clone(), e.events.clone()))
            .collect()
    }
}

/// Inputs a run handles at most before its events go to the tape.
const MAX_INPUTS_PER_WRITE: usize = 256;

/// Hands one input of model turn `turn` (the current one) to the machine.
fn apply(machine: &mut RunMachine, turn: u32, input: RunInput, now: Instant, now_ms: u64) {
    match input {
        RunInput::Input(text) => machine.handle_input(&text),
        RunInput::Approval(answer) => machine.handle_approval(now, now_ms, &answer),
        RunInput::HalfClose => machine.handle_half_close(now, now_ms),
        RunInput::Cancel(reason) => machine.cancel(&reason),
        // Usage counts whichever turn it came from.
        RunInput::Model(_, ChatEvent::Usage(usage)) => machine.handle_usage(usage),
        RunInput::Model(t, _) | RunInput::ModelEnded(t, _) if t != turn => {}
        RunInput::Model(_, ChatEvent::Token(text)) => machine.handle_token(&text),
        RunInput::Model(_, ChatEvent::Finished { reason, tool_calls }) => {
            machine.handle_model_finished(now, now_ms, &reason, &tool_calls)
        }
        RunInput::ModelEnded(_, Ok(())) => machine.handle_model_ended(),
        RunInput::ModelEnded(_, Err(e)) => {
            machine.handle_model_failed(provider_code(&e), e.to_string())
        }
        RunInput::Tool {
            proposal_id,
            result,
            executor,
            timed_out,
        } => machine.handle_tool_result(
            now,
            now_ms,
            &proposal_id,
            result.success,
            result.output_json,
            result.error,
            timed_out,
            &executor,
        ),
    }
}

/// Appends one record and waits until it is durable (at open, before anything is served).
fn append_blocking(log: &dyn LogStore, body: Bytes) -> Result<(), StoreError> {
    let (answer, done) = pending(None);
    log.append(
        vec![NewEvent {
            to: None,
            body,
            id: None,
        }],
        None,
        Box::new(move |r| done.complete(r)),
    );
    answer
        .wait_blocking(Duration::from_secs(60))
        .unwrap_or(Err(StoreError::Closed))
        .map(drop)
}

/// How much longer than the node's own limit a call through another gateway may take (the two
/// hops).
const REMOTE_GRACE: Duration = Duration::from_secs(2);

/// Runs one tool call on its target and reports the outcome to the run.
async fn run_tool(
    engine: Arc<RunEngine>,
    rt: Rt,
    run_id: String,
    target: Option<Target>,
    proposal_id: String,
    input: Vec<u8>,
    tx: async_channel::Sender<RunInput>,
) {
    let hub = Arc::clone(&engine.hub);
    let limit = engine.config.policy.capability_timeout;
    let failed = |executor: String, error: String, timed_out: bool| RunInput::Tool {
        proposal_id: proposal_id.clone(),
        result: CapabilityResult {
            success: false,
            output_json: Vec::new(),
            error,
        },
        executor,
        timed_out,
    };
    let (device_id, capability) = match target {
        Some(Target::Node {
            device_id,
            capability,
        }) => (device_id, capability),
        Some(Target::Browser(name)) => {
            let result = match engine.browser.get() {
                Some(browser) => {
                    let input = serde_json::from_slice(&input).unwrap_or(Value::Null);
                    runtime::timeout(rt.as_ref(), limit, browser.call(&run_id, &name, input))
                        .await
                        .unwrap_or_else(|| CapabilityResult {
                            success: false,
                            output_json: Vec::new(),
                            error: format!(
                                "the browser did not answer within {} s",
                                limit.as_secs()
                            ),
                        })
                }
                None => CapabilityResult {
                    success: false,
                    output_json: Vec::new(),
                    error: "this gateway has no browser ([browser] endpoint)".into(),
                },
            };
            let _ = tx.try_send(RunInput::Tool {
                proposal_id,
                result,
                executor: "browser".into(),
                timed_out: false,
            });
            return;
        }
        Some(Target::Gateway(name)) => {
            let surfaces = engine.surfaces.get();
            let result = gateway_tools::run(&hub, surfaces, &engine.clock, &name, &input).await;
            let _ = tx.try_send(RunInput::Tool {
                proposal_id,
                result,
                executor: "gateway".into(),
                timed_out: false,
            });
            return;
        }
        None => {
            let _ = tx.try_send(failed("gateway".into(), "no such tool".into(), false));
            return;
        }
    };
    if let Some((peers, gateway)) = hub.remote(&device_id) {
        // The node is connected to another gateway of the cluster: the call travels there.
        let executor = format!("node:{device_id}@{gateway}");
        let (answer, done) = crate::store::pending(None);
        let call = crate::node::peers::RemoteCall {
            device_id,
            capability,
            input_json: input,
            max_payload_bytes: MAX_TOOL_OUTPUT as u64,
            timeout: limit,
        };
        peers.call(&gateway, call, Box::new(move |r| done.complete(r)));
        let outcome = runtime::timeout(rt.as_ref(), limit + REMOTE_GRACE, answer.wait()).await;
        let input = match outcome {
            Some(Some(Ok(result))) => RunInput::Tool {
                proposal_id,
                result,
                executor,
                timed_out: false,
            },
            Some(Some(Err(e))) => failed(executor, format!("cannot reach the node: {e}"), false),
            Some(None) => failed(executor, "the cluster connection closed".into(), false),
            None => {
                let error = format!("the node did not answer within {} s", limit.as_secs());
                failed(executor, error, true)
            }
        };
        let _ = tx.try_send(input);
        return;
    }
    let executor = format!("node:{device_id}");
    let request = match hub.enqueue(&device_id, &capability, input, MAX_TOOL_OUTPUT as u64) {
        Ok(id) => id,
        Err(e) => {
            let _ = tx.try_send(failed(
                executor,
                format!("cannot dispatch to the node: {e}"),
                false,
            ));
            return;
        }
    };
    // Abandons the request if the run stops waiting (cancelled: this future is dropped).
    struct Abandon<'a>(&'a NodeHub, &'a str, bool);
    impl Drop for Abandon<'_> {
        fn drop(&mut self) {
            if self.2 {
                self.0.abandon(self.1);
            }
        }
    }
    let mut guard = Abandon(&hub, &request, true);
    let deadline = rt.now() + limit;
    let notifier = hub.notifier();
    loop {
        let listener = notifier.listen();
        if let Some(result) = hub.take_result(&request) {
            guard.2 = false;
            let _ = tx.try_send(RunInput::Tool {
                proposal_id,
                result,
                executor,
                timed_out: false,
            });
            return;
        }
        let now = rt.now();
        if now >= deadline {
            let error = format!("the node did not answer within {} s", limit.as_secs());
            let _ = tx.try_send(failed(executor, error, true));
            return;
        }
        runtime::timeout(rt.as_ref(), deadline - now, listener).await;
    }
}
