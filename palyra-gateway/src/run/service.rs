//! The gateway listener's run services: `palyra.gateway.v1.GatewayService` (GetHealth without a
//! credential; RunStream, AbortRun, ListSessions, ResolveSession, CleanupSession and ListRuns
//! with one) and `palyra.gateway.v1.ApprovalsService` (ListApprovals, GetApproval,
//! ExportApprovals). The original's other RPCs and services answer UNIMPLEMENTED saying so.
//!
//! A RunStream's first message starts a run (or, with `attach`, follows one from
//! `attach_after_seq`); later messages carry more input, `/cancel`, or approval answers. Events
//! are sent once durable on the run's tape, and the call ends when the run does: OK after DONE,
//! CANCELLED after a cancellation, the failure's code after FAILED.

use super::approvals;
use super::engine::{RunEngine, RunInput, StartRun};
use super::sessions::{Resolve, SessionRecord};
use crate::access::{Authenticator, Caller, Scope};
use crate::grpc::{check_version, refuse, Answer, DaemonInfo, Deferred, GatewayService as Health};
use crate::store::Pending;
use bytes::Bytes;
use palyra_proto::grpc::service::{
    decode, CallEnd, CallHandler, CallInfo, PollContext, Reply, Router, RouterFactory, Service,
    Unary,
};
use palyra_proto::grpc::services::{HealthService, ReflectionService};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::common::v1::{CanonicalId, RunStreamRequest};
use palyra_proto::pb::palyra::gateway::v1::{
    AbortRunRequest, AbortRunResponse, CleanupSessionRequest, CleanupSessionResponse,
    ListRunsRequest, ListRunsResponse, ListSessionsRequest, ListSessionsResponse,
    ResolveSessionRequest, ResolveSessionResponse, RunSummary, SessionSummary,
};
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gateway service's name.
pub const GATEWAY: &str = "palyra.gateway.v1.GatewayService";
/// The approvals service's name.
pub const APPROVALS: &str = "palyra.gateway.v1.ApprovalsService";
/// Response bytes queued behind flow control before a stream waits.
const HIGH_WATER: usize = 256 * 1024;
/// Largest page of ListSessions and ListRuns.
const MAX_PAGE: usize = 500;

const SERVED: &str = "GetHealth, RunStream, AbortRun, ListSessions, ResolveSession, \
                      CleanupSession, ListRuns";

/// GatewayService RPCs of the original contract this gateway does not serve.
const UNSERVED_METHODS: [&str; 11] = [
    "AppendEvent",
    "RouteMessage",
    "ListAgents",
    "GetAgent",
    "CreateAgent",
    "DeleteAgent",
    "SetDefaultAgent",
    "ListAgentBindings",
    "BindAgentForContext",
    "UnbindAgentForContext",
    "ResolveAgentForContext",
];

/// Services of the original contract on this listener that this gateway does not serve.
const UNSERVED_SERVICES: [&str; 5] = [
    "palyra.gateway.v1.VaultService",
    "palyra.gateway.v1.CanvasService",
    "palyra.cron.v1.CronService",
    "palyra.memory.v1.MemoryService",
    "palyra.auth.v1.AuthService",
];

/// A service of the original contract that this gateway does not serve.
struct Unserved(&'static str);

impl Service for Unserved {
    fn name(&self) -> &'static str {
        self.0
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        Some(refuse(Status::new(
            Code::Unimplemented,
            format!(
                "{}/{} is part of the original Palyra contract and is not served by this gateway",
                self.0, call.method
            ),
        )))
    }
}

fn canonical(id: &str) -> Option<CanonicalId> {
    (!id.is_empty()).then(|| CanonicalId {
        ulid: id.to_owned(),
    })
}

fn ulid_of(id: &Option<CanonicalId>) -> String {
    id.as_ref().map(|i| i.ulid.clone()).unwrap_or_default()
}

/// A session as the contract shows it.
pub fn session_summary(s: &SessionRecord) -> SessionSummary {
    SessionSummary {
        session_id: canonical(&s.session_id),
        session_key: s.session_key.clone(),
        session_label: s.session_label.clone(),
        created_at_unix_ms: s.created_at_unix_ms as i64,
        updated_at_unix_ms: s.updated_at_unix_ms as i64,
        last_run_id: s.last_run_id.as_deref().and_then(canonical),
        archived_at_unix_ms: s.archived_at_unix_ms.unwrap_or(0) as i64,
        title: s.session_label.clone(),
        preview: s.preview.clone(),
        last_run_state: s.last_run_state.clone(),
        ..SessionSummary::default()
    }
}

/// `palyra.gateway.v1.GatewayService` with the run RPCs.
pub struct GatewayRuns {
    health: Health,
    engine: Arc<RunEngine>,
    auth: Arc<Authenticator>,
}

impl Service for GatewayRuns {
    fn name(&self) -> &'static str {
        GATEWAY
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        let method = call.method.as_str();
        if method == "GetHealth" {
            return self.health.start(call);
        }
        if UNSERVED_METHODS.contains(&method) {
            return Some(refuse(Status::new(
                Code::Unimplemented,
                format!(
                    "GatewayService/{method} is part of the original Palyra contract and is not \
                     served by this gateway (it serves {SERVED})"
                ),
            )));
        }
        // An unknown method is UNIMPLEMENTED whoever asks; only known ones need a credential.
        const SERVED_METHODS: [&str; 6] = [
            "RunStream",
            "AbortRun",
            "ListSessions",
            "ListRuns",
            "ResolveSession",
            "CleanupSession",
        ];
        if !SERVED_METHODS.contains(&method) {
            return None;
        }
        let caller = self.auth.call(call);
        let caller = match caller {
            Ok(caller) => caller,
            Err(status) => return Some(refuse(status)),
        };
        let engine = Arc::clone(&self.engine);
        Some(match method {
            "RunStream" => Box::new(RunStreamCall::new(engine, caller)),
            "AbortRun" => Unary::boxed(move |bytes: Bytes| abort_run(&engine, &caller, &bytes)),
            "ListSessions" => {
                Unary::boxed(move |bytes: Bytes| list_sessions(&engine, &caller, &bytes))
            }
            "ListRuns" => Unary::boxed(move |bytes: Bytes| list_runs(&engine, &caller, &bytes)),
            "ResolveSession" => {
                Deferred::boxed(move |bytes: Bytes| resolve_session(&engine, &caller, &bytes))
            }
            "CleanupSession" => {
                Deferred::boxed(move |bytes: Bytes| cleanup_session(&engine, &caller, &bytes))
            }
            _ => return None,
        })
    }
}

fn abort_run(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    caller.require(Scope::RunsWrite)?;
    let request: AbortRunRequest = decode(bytes)?;
    check_version(request.v)?;
    let run_id = ulid_of(&request.run_id);
    let reason = match request.reason.trim() {
        "" => "grpc_abort_requested".to_owned(),
        reason => reason.chars().take(200).collect(),
    };
    let requested = engine.cancel(caller, &run_id, &format!("cancelled by AbortRun: {reason}"))?;
    Ok(AbortRunResponse {
        v: 1,
        run_id: request.run_id,
        cancel_requested: requested,
        reason,
    }
    .encode_to_vec())
}

fn list_sessions(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    caller.require(Scope::SessionsRead)?;
    let request: ListSessionsRequest = decode(bytes)?;
    check_version(request.v)?;
    let limit = match request.limit as usize {
        0 => 100,
        n => n.min(MAX_PAGE),
    };
    let sessions = engine.sessions().list(
        caller,
        &request.after_session_key,
        limit,
        request.include_archived,
        &request.q,
    );
    let next = match sessions.len() == limit {
        true => sessions
            .last()
            .map(|s| s.session_key.clone())
            .unwrap_or_default(),
        false => String::new(),
    };
    Ok(ListSessionsResponse {
        v: 1,
        sessions: sessions.iter().map(session_summary).collect(),
        next_after_session_key: next,
    }
    .encode_to_vec())
}

fn list_runs(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    caller.require(Scope::RunsRead)?;
    let request: ListRunsRequest = decode(bytes)?;
    check_version(request.v)?;
    let limit = match request.limit as usize {
        0 => 50,
        n => n.min(MAX_PAGE),
    };
    let runs = engine
        .list(caller, usize::MAX)
        .into_iter()
        .filter(|r| request.session_id.is_empty() || r.meta.session_id == request.session_id)
        .take(limit)
        .map(|r| RunSummary {
            run_id: canonical(&r.meta.run_id),
            session_id: canonical(&r.meta.session_id),
            principal: r.meta.principal,
            origin: r.meta.origin,
            state: r.state.into(),
            started_at_unix_ms: r.meta.started_at_unix_ms as i64,
            prompt: r.meta.prompt,
            event_count: r.events,
        })
        .collect();
    Ok(ListRunsResponse { v: 1, runs }.encode_to_vec())
}

fn resolve_request(
    session_id: &Option<CanonicalId>,
    key: &str,
    label: &str,
    require_existing: bool,
    reset: bool,
) -> Resolve {
    Resolve {
        session_id: session_id
            .as_ref()
            .map(|i| i.ulid.clone())
            .filter(|i| !i.is_empty()),
        session_key: key.trim().to_owned(),
        session_label: label.trim().to_owned(),
        require_existing,
        reset,
    }
}

fn resolve_session(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Answer, Status> {
    let request: ResolveSessionRequest = decode(bytes)?;
    check_version(request.v)?;
    if request.require_existing && !request.reset_session {
        caller.require(Scope::SessionsRead)?;
    } else {
        caller.require(Scope::SessionsWrite)?;
    }
    let resolve = resolve_request(
        &request.session_id,
        &request.session_key,
        &request.session_label,
        request.require_existing,
        request.reset_session,
    );
    let (answer, done) = crate::store::pending(None);
    let new_id = ulid::Ulid::new().to_string();
    engine
        .sessions()
        .resolve(caller, resolve, now_ms(), new_id, move |r| done.complete(r));
    Ok(store_answer(answer, |resolved| {
        ResolveSessionResponse {
            v: 1,
            session: Some(session_summary(&resolved.session)),
            created: resolved.created,
            reset_applied: resolved.reset_applied,
        }
        .encode_to_vec()
    }))
}

fn cleanup_session(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Answer, Status> {
    caller.require(Scope::SessionsWrite)?;
    let request: CleanupSessionRequest = decode(bytes)?;
    check_version(request.v)?;
    let id = request
        .session_id
        .as_ref()
        .map(|i| i.ulid.clone())
        .filter(|i| !i.is_empty());
    if id.is_none() && request.session_key.trim().is_empty() {
        return Err(Status::new(
            Code::InvalidArgument,
            "name the session by session_id or session_key",
        ));
    }
    let cleaned =
        engine
            .sessions()
            .cleanup(caller, id, request.session_key.trim().to_owned(), now_ms());
    Ok(store_answer(cleaned, |(session, newly)| {
        CleanupSessionResponse {
            v: 1,
            previous_session_key: session.session_key.clone(),
            run_count: session.run_count,
            session: Some(session_summary(&session)),
            cleaned: true,
            newly_archived: newly,
        }
        .encode_to_vec()
    }))
}

fn now_ms() -> u64 {
    crate::store::unix_ms(std::time::SystemTime::now())
}

/// The answer of a store change whose outcome is a status or `encode`d response.
fn store_answer<T: Send + 'static>(
    pending: Pending<Result<Result<T, Status>, crate::store::StoreError>>,
    encode: impl Fn(T) -> Vec<u8> + Send + 'static,
) -> Answer {
    Box::new(move || {
        Some(match pending.take()? {
            Ok(Ok(value)) => Ok(encode(value)),
            Ok(Err(status)) => Err(status),
            Err(e) => Err(Status::new(
                Code::Unavailable,
                format!("the session store failed: {e}"),
            )),
        })
    })
}

/// Whether an input asks to cancel the run.
fn is_cancel(text: &str) -> bool {
    let text = text.trim();
    text.eq_ignore_ascii_case("/cancel") || text.eq_ignore_ascii_case("cancel")
}

/// One RunStream call.
struct RunStreamCall {
    engine: Arc<RunEngine>,
    caller: Caller,
    /// The run this stream started or follows.
    run_id: Option<String>,
    /// The session it runs in, once known.
    session_id: String,
    /// The run is being started.
    starting: Option<Pending<Result<SessionRecord, Status>>>,
    /// This stream started the run (its reset cancels it).
    owner: bool,
    /// Events flow to this stream.
    following: bool,
    /// Events already sent (the seq of the last one).
    cursor: usize,
    /// The call was finished.
    done: bool,
    /// How the call ended, if the client ended it.
    ended: Option<CallEnd>,
    /// Poll again at this time (flow control is holding events back).
    retry_at: Option<Instant>,
    /// The client half-closed before its run was accepted (told to the run once it is).
    half_closed: bool,
}

impl RunStreamCall {
    fn new(engine: Arc<RunEngine>, caller: Caller) -> Self {
        Self {
            engine,
            caller,
            run_id: None,
            session_id: String::new(),
            starting: None,
            owner: false,
            following: false,
            cursor: 0,
            done: false,
            ended: None,
            retry_at: None,
            half_closed: false,
        }
    }

    fn fail(&mut self, reply: &mut Reply, status: Status) {
        self.done = true;
        reply.finish(status);
    }

    fn first(&mut self, request: RunStreamRequest) -> Result<(), Status> {
        let run_id = ulid_of(&request.run_id);
        if run_id.is_empty() {
            return Err(Status::new(
                Code::InvalidArgument,
                "run_id is required on every RunStream message",
            ));
        }
        if request.attach {
            self.caller.require(Scope::RunsRead)?;
            self.engine.attach(&self.caller, &run_id)?;
            self.cursor = usize::try_from(request.attach_after_seq).unwrap_or(usize::MAX);
            self.following = true;
            self.session_id = ulid_of(&request.session_id);
            self.run_id = Some(run_id);
            return Ok(());
        }
        self.caller.require(Scope::RunsWrite)?;
        if request.tool_approval_response.is_some() {
            return Err(Status::new(
                Code::InvalidArgument,
                "no approval is pending: this stream has not started or attached to a run",
            ));
        }
        let text = request
            .input
            .as_ref()
            .and_then(|i| i.content.as_ref())
            .map(|c| c.text.clone())
            .unwrap_or_default();
        if is_cancel(&text) {
            return Err(Status::new(
                Code::InvalidArgument,
                "nothing to cancel: this stream has not started a run",
            ));
        }
        let start = StartRun {
            run_id: run_id.clone(),
            session: resolve_request(
                &request.session_id,
                &request.session_key,
                &request.session_label,
                request.require_existing,
                request.reset_session,
            ),
            input: text,
            allow_sensitive_tools: request.allow_sensitive_tools,
            origin: request.origin_kind,
            ..StartRun::default()
        };
        self.starting = Some(self.engine.start(&self.caller, start));
        self.run_id = Some(run_id);
        Ok(())
    }

    fn next(&mut self, run_id: &str, request: RunStreamRequest) -> Result<(), Status> {
        let session = ulid_of(&request.session_id);
        let switched = ulid_of(&request.run_id) != run_id
            || (!session.is_empty() && !self.session_id.is_empty() && session != self.session_id);
        if switched {
            if self.owner {
                let _ =
                    self.engine
                        .cancel(&self.caller, run_id, "the client switched run mid-stream");
            }
            return Err(Status::new(
                Code::InvalidArgument,
                "cannot switch session_id or run_id mid-stream",
            ));
        }
        if request.attach {
            return Err(Status::new(
                Code::InvalidArgument,
                "attach is only valid on a stream's first message",
            ));
        }
        self.caller.require(Scope::RunsWrite)?;
        let text = request
            .input
            .as_ref()
            .and_then(|i| i.content.as_ref())
            .map(|c| c.text.as_str())
            .unwrap_or("");
        // A run that already ended ignores late input and answers.
        if is_cancel(text) {
            let _ = self
                .engine
                .cancel(&self.caller, run_id, "cancelled by the client (/cancel)");
        } else if !text.trim().is_empty() {
            let _ = self
                .engine
                .send(&self.caller, run_id, RunInput::Input(text.to_owned()));
        }
        if let Some(answer) = request.tool_approval_response {
            let _ = self
                .engine
                .send(&self.caller, run_id, RunInput::Approval(answer));
        }
        Ok(())
    }
}

impl CallHandler for RunStreamCall {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.done {
            return;
        }
        let request: RunStreamRequest = match decode(&message) {
            Ok(request) => request,
            Err(status) => return self.fail(reply, status),
        };
        if let Err(status) = check_version(request.v) {
            return self.fail(reply, status);
        }
        let outcome = match self.run_id.clone() {
            None => self.first(request),
            Some(run_id) => self.next(&run_id, request),
        };
        if let Err(status) = outcome {
            self.fail(reply, status);
        }
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        match &self.run_id {
            None if !self.done => self.fail(
                reply,
                Status::new(
                    Code::InvalidArgument,
                    "the stream ended before its first message",
                ),
            ),
            Some(_) if self.starting.is_some() => self.half_closed = true,
            Some(run_id) if self.owner => {
                let _ = self.engine.send(&self.caller, run_id, RunInput::HalfClose);
            }
            _ => {}
        }
    }

    fn poll(&mut self, cx: &PollContext, reply: &mut Reply) {
        if self.done {
            return;
        }
        if let Some(starting) = &self.starting {
            match starting.take() {
                None => return,
                Some(Err(status)) => {
                    self.starting = None;
                    return self.fail(reply, status);
                }
                Some(Ok(session)) => {
                    self.starting = None;
                    self.session_id = session.session_id;
                    self.owner = true;
                    self.following = true;
                    if self.half_closed {
                        if let Some(run_id) = &self.run_id {
                            let _ = self.engine.send(&self.caller, run_id, RunInput::HalfClose);
                        }
                    }
                }
            }
        }
        let Some(run_id) = self.run_id.clone() else {
            return;
        };
        if !self.following {
            return;
        }
        self.retry_at = None;
        if cx.queued_bytes >= HIGH_WATER {
            self.retry_at = Some(cx.now + Duration::from_millis(10));
            return;
        }
        let Some(read) = self.engine.read(&run_id, self.cursor, HIGH_WATER) else {
            return self.fail(
                reply,
                Status::new(Code::NotFound, format!("no run {run_id}")),
            );
        };
        self.cursor += read.events.len();
        let more = !read.events.is_empty();
        for event in read.events {
            reply.message(event);
        }
        if let Some(end) = read.end {
            self.done = true;
            reply.finish(end);
        } else if more {
            // There may be more than one read's worth: look again soon.
            self.retry_at = Some(cx.now);
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.retry_at
    }

    fn on_end(&mut self, why: CallEnd) {
        self.ended = Some(why);
    }
}

impl Drop for RunStreamCall {
    fn drop(&mut self) {
        let Some(run_id) = &self.run_id else {
            return;
        };
        if !self.following || self.done && self.ended.is_none() {
            // Finished by the run's end (or never followed): nothing to let go of but the count.
            if self.following {
                self.engine.detach(run_id, None);
            }
            return;
        }
        let reason = match (&self.ended, self.owner) {
            (Some(CallEnd::Reset(status)), true) if status.code == Code::DeadlineExceeded => {
                Some("the client's deadline passed")
            }
            (Some(CallEnd::Reset(_)), true) => Some("the client cancelled its stream"),
            _ => None,
        };
        self.engine.detach(run_id, reason);
    }
}

/// `palyra.gateway.v1.ApprovalsService`.
pub struct Approvals {
    engine: Arc<RunEngine>,
    auth: Arc<Authenticator>,
}

impl Service for Approvals {
    fn name(&self) -> &'static str {
        APPROVALS
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        if !["ListApprovals", "GetApproval", "ExportApprovals"].contains(&call.method.as_str()) {
            return None;
        }
        let caller = self.auth.call(call);
        let caller = match caller.and_then(|c| c.require(Scope::ApprovalsRead).map(|()| c)) {
            Ok(caller) => caller,
            Err(status) => return Some(refuse(status)),
        };
        let engine = Arc::clone(&self.engine);
        Some(match call.method.as_str() {
            "ListApprovals" => {
                Unary::boxed(move |bytes: Bytes| approvals::list(&engine, &caller, &bytes))
            }
            "GetApproval" => {
                Unary::boxed(move |bytes: Bytes| approvals::get(&engine, &caller, &bytes))
            }
            "ExportApprovals" => Box::new(approvals::Export::new(engine, caller)),
            _ => return None,
        })
    }
}

/// GatewayService with the run RPCs (and GetHealth) and ApprovalsService, for one connection.
pub fn run_services(
    info: &Arc<DaemonInfo>,
    engine: &Arc<RunEngine>,
    auth: &Arc<Authenticator>,
) -> Vec<Box<dyn Service>> {
    vec![
        Box::new(GatewayRuns {
            health: Health::new(Arc::clone(info)),
            engine: Arc::clone(engine),
            auth: Arc::clone(auth),
        }),
        Box::new(Approvals {
            engine: Arc::clone(engine),
            auth: Arc::clone(auth),
        }),
    ]
}

/// The services of the gateway listener: GatewayService with the run RPCs, ApprovalsService,
/// the original's other services answering UNIMPLEMENTED, health and reflection.
pub fn gateway_router(
    info: Arc<DaemonInfo>,
    engine: Arc<RunEngine>,
    auth: Arc<Authenticator>,
) -> Result<RouterFactory, prost::DecodeError> {
    const NAMES: [&str; 5] = [
        GATEWAY,
        APPROVALS,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let reflection = ReflectionService::new(palyra_proto::pb::DESCRIPTOR_SET, &NAMES)?;
    Ok(Arc::new(move || {
        let mut services = run_services(&info, &engine, &auth);
        services.push(Box::new(HealthService::new(&NAMES)));
        services.push(Box::new(reflection.clone()));
        services.push(Box::new(reflection.v1alpha()));
        for name in UNSERVED_SERVICES {
            services.push(Box::new(Unserved(name)));
        }
        Router::new(services)
    }))
}
