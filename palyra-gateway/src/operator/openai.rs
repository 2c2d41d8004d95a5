//! The OpenAI-compatible API on the operator listener (`/v1/...`), so that programs written
//! against the OpenAI SDKs use the gateway's agent by changing only a base URL and a key:
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/models`, `GET /v1/models/{id}` | the provider's model and `palyra-agent` |
//! | `POST /v1/chat/completions` | a `chat.completion`, or `chat.completion.chunk` events |
//! | `POST /v1/responses` | a `response`, or the typed `response.*` events |
//!
//! Keys are API tokens with the scope `openai:use` (never the admin token). Each completion is
//! an agent run of the key's principal, with a tape like any other (origin `openai:<token>`):
//! what the caller is sent is read from that tape, once durable, at the pace the caller reads.
//! A caller that disconnects cancels its run (and so the provider call); a caller that reads
//! slowly holds the provider call back (the run's tape runs at most
//! [`crate::run::engine::PACE_WINDOW`] events ahead of it). Errors are always
//! `{"error":{"message","type","param","code"}}`, and every answer has an `x-request-id`.

use super::admin::BodyFor;
use super::{security_headers, OperatorConnection};
use crate::access::tokens::TokenStore;
use crate::access::{Caller, Scope};
use crate::run::engine::{RunEngine, StartRun};
use crate::run::machine::{Outcome, ToolSpec};
use crate::run::sessions::{Resolve, SessionRecord};
use crate::store::Pending;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::http1::server::{RequestHead, ResponseBody};
use palyra_proto::openai::answer::{self, ChatChunks, Finish, Response};
use palyra_proto::openai::chat::{ToolCall, Usage};
use palyra_proto::openai::request::{decode, Api, ApiError, ApiLimits, Completion};
use palyra_proto::pb::palyra::common::v1::{run_stream_event::Body, RunStreamEvent};
use prost::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The model that is the gateway's agent (with its own tools, for keys with `openai:tools`).
pub const AGENT_MODEL: &str = "palyra-agent";
/// Most of a run's tape read for one write to the caller.
const READ_BYTES: usize = 256 * 1024;

/// What a key may do while its run waits for an operator's approval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalMode {
    /// The answer waits (a stream sends keep-alive comments) until an operator decides in the
    /// console or with `palyra approvals`, or the approval times out.
    Wait,
    /// Calls that need an approval are denied at once.
    Deny,
}

/// Limits and policy of the OpenAI-compatible API (`[openai]` in palyrad's configuration).
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Largest request body.
    pub body_limit: u64,
    /// Requests per minute per key.
    pub requests_per_minute: u32,
    /// Provider tokens (prompt and completion) per minute per key.
    pub tokens_per_minute: u64,
    /// Completions in progress at once per key.
    pub concurrency: u32,
    /// Approvals of the gateway's tools.
    pub approvals: ApprovalMode,
    /// A stream with nothing to say sends a comment this often.
    pub keepalive: Duration,
    /// Limits on what one request may hold.
    pub limits: ApiLimits,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            body_limit: 4 * 1024 * 1024,
            requests_per_minute: 600,
            tokens_per_minute: 1_000_000,
            concurrency: 16,
            approvals: ApprovalMode::Wait,
            keepalive: Duration::from_secs(15),
            limits: ApiLimits::default(),
        }
    }
}

/// A token bucket that refills `per_minute` over a minute, up to `per_minute`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: f64,
    at: Instant,
}

impl Bucket {
    fn full(per_minute: f64, now: Instant) -> Self {
        Self {
            level: per_minute,
            at: now,
        }
    }

    fn refill(&mut self, per_minute: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * per_minute / 60.0).min(per_minute);
        self.at = now;
    }

    /// How long until the level is at least `want`.
    fn wait_for(&self, want: f64, per_minute: f64) -> Duration {
        let missing = (want - self.level).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / per_minute.max(1.0))
    }
}

/// What one key has used.
#[derive(Debug)]
struct KeyState {
    requests: Bucket,
    tokens: Bucket,
    active: u32,
}

/// The API of one daemon: its runs, keys and per-key limits.
pub struct OpenAi {
    config: OpenAiConfig,
    engine: Arc<RunEngine>,
    tokens: Arc<TokenStore>,
    clock: crate::util::WallClock,
    /// Per token ID (at most as many as there are tokens, since keys are checked first).
    keys: Mutex<HashMap<String, KeyState>>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A completion in progress for a key; dropping it frees the key's slot.
struct Slot {
    api: Arc<OpenAi>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut keys = self.api.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = keys.get_mut(&self.key) {
            state.active = state.active.saturating_sub(1);
        }
    }
}

impl OpenAi {
    /// The API over `engine`, authenticating with `tokens`.
    pub fn new(
        config: OpenAiConfig,
        engine: Arc<RunEngine>,
        tokens: Arc<TokenStore>,
        clock: crate::util::WallClock,
    ) -> Arc<Self> {
        Arc::new(Self {
            config,
            engine,
            tokens,
            clock,
            keys: Mutex::new(HashMap::new()),
        })
    }

    /// The models offered: the provider's (a plain completion) and the gateway's agent.
    pub fn models(&self) -> Vec<String> {
        let mut models = vec![AGENT_MODEL.to_owned()];
        let provider = self.engine.model();
        if !provider.is_empty() && provider != AGENT_MODEL {
            models.push(provider.to_owned());
        }
        models
    }

    /// Who the `authorization` value proves, with its token ID, if it is an API key that may
    /// use this API.
    fn authenticate(&self, authorization: Option<&[u8]>) -> Result<(Caller, String), ApiError> {
        let missing = || {
            ApiError::new(
                401,
                "invalid_request_error",
                "invalid_api_key",
                "missing API key: send `Authorization: Bearer KEY` with an API token (`palyra \
                 tokens create --scope openai:use`)",
            )
        };
        let value = authorization.ok_or_else(missing)?;
        let token = std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(missing)?;
        let Some(id) = token
            .strip_prefix(crate::access::tokens::TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id.to_owned())
        else {
            return Err(ApiError::new(
                401,
                "invalid_request_error",
                "invalid_api_key",
                "incorrect API key: it is not an API token of this gateway (the admin token is \
                 not accepted here)",
            ));
        };
        let caller = self
            .tokens
            .authenticate(token, (self.clock)())
            .map_err(|e| {
                ApiError::new(
                    401,
                    "invalid_request_error",
                    "invalid_api_key",
                    e.to_string(),
                )
            })?;
        if !caller.scopes.contains(Scope::OpenaiUse) {
            return Err(ApiError::new(
                403,
                "permission_error",
                "missing_scope",
                format!("API token {id} lacks the scope openai:use"),
            ));
        }
        Ok((caller, id))
    }

    /// Takes one request of `key` at `now` and a completion slot, or says when to retry.
    fn admit(self: &Arc<Self>, key: &str, now: Instant) -> Result<Slot, (ApiError, Duration)> {
        let c = &self.config;
        let (rpm, tpm) = (f64::from(c.requests_per_minute), c.tokens_per_minute as f64);
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let state = keys.entry(key.to_owned()).or_insert_with(|| KeyState {
            requests: Bucket::full(rpm, now),
            tokens: Bucket::full(tpm, now),
            active: 0,
        });
        state.requests.refill(rpm, now);
        state.tokens.refill(tpm, now);
        let limited = |message: String, wait: Duration| {
            let error = ApiError::new(429, "rate_limit_error", "rate_limit_exceeded", message);
            Err((error, wait.max(Duration::from_secs(1))))
        };
        if state.requests.level < 1.0 {
            let wait = state.requests.wait_for(1.0, rpm);
            return limited(
                format!(
                    "rate limit reached: {} requests per minute for this key",
                    c.requests_per_minute
                ),
                wait,
            );
        }
        if state.tokens.level <= 0.0 {
            let wait = state.tokens.wait_for(1.0, tpm);
            return limited(
                format!(
                    "rate limit reached: {} tokens per minute for this key",
                    c.tokens_per_minute
                ),
                wait,
            );
        }
        if state.active >= c.concurrency {
            return limited(
                format!(
                    "{} completions of this key are in progress; retry when one ends",
                    c.concurrency
                ),
                Duration::from_secs(1),
            );
        }
        state.requests.level -= 1.0;
        state.active += 1;
        Ok(Slot {
            api: Arc::clone(self),
            key: key.to_owned(),
        })
    }

    /// Charges a finished completion's tokens to `key`.
    fn charge(&self, key: &str, usage: Usage) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = keys.get_mut(key) {
            state.tokens.level -= (usage.prompt_tokens + usage.completion_tokens) as f64;
        }
    }

    /// Token usage per API key, from the tapes of the API's runs.
    pub fn usage(&self) -> Vec<KeyUsage> {
        let mut by_key: std::collections::BTreeMap<String, KeyUsage> = Default::default();
        for (origin, outcome) in self.engine.outcomes(ORIGIN_PREFIX) {
            let key = origin[ORIGIN_PREFIX.len()..].to_owned();
            let entry = by_key.entry(key.clone()).or_insert_with(|| KeyUsage {
                token_id: key,
                ..KeyUsage::default()
            });
            entry.runs += 1;
            entry.prompt_tokens += outcome.prompt_tokens;
            entry.completion_tokens += outcome.completion_tokens;
        }
        by_key.into_values().collect()
    }
}

/// The origin of the API's runs, before the token ID.
pub const ORIGIN_PREFIX: &str = "openai:";

/// Tokens one API key's completions used.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct KeyUsage {
    /// The API token.
    pub token_id: String,
    /// Completions that reached the provider and ended.
    pub runs: u64,
    /// Prompt tokens, as the provider counted them.
    pub prompt_tokens: u64,
    /// Completion tokens, as the provider counted them.
    pub completion_tokens: u64,
}

/// A completion request whose body is being read.
pub(crate) struct Reading {
    api: Api,
    caller: Caller,
    key: String,
    slot: Slot,
}

/// What the caller is sent, built from the run's tape.
struct Answer {
    api: Api,
    id: String,
    created: u64,
    stream: bool,
    model: String,
    chunks: ChatChunks,
    response: Response,
    /// The answer's text so far (a non-streamed chat completion).
    text: String,
    outcome: Option<Outcome>,
    /// The run's last status message (the error of a run that broke off).
    last_status: String,
    started: bool,
}

impl Answer {
    fn new(api: Api, completion: &Completion, run_id: &str, created: u64) -> Self {
        let id = match api {
            Api::Chat => format!("chatcmpl-{run_id}"),
            Api::Responses => format!("resp_{run_id}"),
        };
        Self {
            api,
            id: id.clone(),
            created,
            stream: completion.stream,
            model: completion.model.clone(),
            chunks: ChatChunks::new(&id, created, &completion.model, completion.include_usage),
            response: Response::new(&id, created, &completion.model),
            text: String::new(),
            outcome: None,
            last_status: String::new(),
            started: false,
        }
    }

    /// The stream's first events.
    fn start(&mut self, out: &mut BytesMut) {
        self.started = true;
        match self.api {
            Api::Chat => self.chunks.role(out),
            Api::Responses => self.response.created(out),
        }
    }

    fn event(&mut self, body: &Body, out: &mut BytesMut) {
        match body {
            Body::ModelToken(t) if !t.is_final && !t.token.is_empty() => match self.api {
                Api::Chat if self.stream => self.chunks.content(out, &t.token),
                Api::Chat => self.text.push_str(&t.token),
                Api::Responses => self.response.text(out, &t.token),
            },
            Body::ToolApprovalRequest(r) if self.stream => answer::comment(
                out,
                &format!(
                    "waiting for an operator to approve {} (the console, or `palyra approvals`)",
                    r.tool_name
                ),
            ),
            Body::Status(s) => self.last_status = s.message.clone(),
            body => {
                if let Some(outcome) = Outcome::from_event(body) {
                    self.outcome = Some(outcome);
                }
            }
        }
    }

    fn usage(&self) -> Usage {
        let o = self.outcome.clone().unwrap_or_default();
        Usage {
            prompt_tokens: o.prompt_tokens,
            completion_tokens: o.completion_tokens,
            total_tokens: o.prompt_tokens + o.completion_tokens,
        }
    }

    /// The run ended with `end`: the stream's last events, or the whole answer.
    fn end(&mut self, end: &Status, out: &mut BytesMut) -> Result<Option<Value>, ApiError> {
        let outcome = self.outcome.clone().unwrap_or_default();
        let finish = Finish::parse(&outcome.finish_reason).filter(|_| end.code == Code::Ok);
        let Some(finish) = finish else {
            let error = run_error(end, &self.last_status);
            if self.stream {
                match self.api {
                    Api::Chat => {
                        answer::stream_error(out, &error);
                        answer::done(out);
                    }
                    Api::Responses => self.response.failed(out, &error),
                }
                return Ok(None);
            }
            return Err(error);
        };
        let calls: Vec<ToolCall> = outcome
            .tool_calls
            .iter()
            .map(|c| ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect();
        let usage = self.usage();
        match self.api {
            Api::Chat if self.stream => {
                for (i, call) in calls.iter().enumerate() {
                    self.chunks.tool_call(out, i, call);
                }
                self.chunks.finish(out, finish);
                self.chunks.usage(out, usage);
                answer::done(out);
                Ok(None)
            }
            Api::Chat => Ok(Some(answer::chat_completion(
                &self.id,
                self.created,
                &self.model,
                &self.text,
                &calls,
                finish,
                usage,
            ))),
            Api::Responses => {
                for call in &calls {
                    self.response.function_call(out, call);
                }
                let object = self.response.completed(out, finish, usage);
                Ok((!self.stream).then_some(object))
            }
        }
    }
}

/// The error a run that did not finish is answered with.
fn run_error(end: &Status, last_status: &str) -> ApiError {
    let message = match last_status {
        "" => end.message.clone(),
        m => m.to_owned(),
    };
    let (status, kind, code) = match end.code {
        Code::Cancelled => (500, "server_error", "run_cancelled"),
        Code::ResourceExhausted => (429, "rate_limit_error", "upstream_rate_limited"),
        Code::Unavailable => (503, "server_error", "upstream_unavailable"),
        Code::DeadlineExceeded => (504, "server_error", "upstream_timeout"),
        _ => (502, "server_error", "upstream_failed"),
    };
    ApiError::new(status, kind, code, message)
}

/// The error a run that could not start is answered with.
fn start_error(status: &Status) -> ApiError {
    let (http, kind, code) = match status.code {
        Code::InvalidArgument => (400, "invalid_request_error", "invalid_request"),
        Code::ResourceExhausted => (429, "rate_limit_error", "too_many_runs"),
        Code::NotFound => (404, "invalid_request_error", "not_found"),
        Code::PermissionDenied => (403, "permission_error", "permission_denied"),
        Code::FailedPrecondition | Code::Unavailable => (503, "server_error", "unavailable"),
        _ => (500, "server_error", "internal_error"),
    };
    ApiError::new(http, kind, code, status.message.clone())
}

/// A completion being answered.
pub(crate) struct Running {
    api: Arc<OpenAi>,
    key: String,
    caller: Caller,
    run_id: String,
    answer: Answer,
    starting: Option<Pending<Result<SessionRecord, Status>>>,
    /// Tape events read so far.
    cursor: usize,
    /// The answer ended (nothing more is sent).
    finished: bool,
    /// When the next keep-alive comment is due (a stream).
    keepalive_at: Option<Instant>,
    /// A stream holds its run's provider call back while its caller lags.
    paced: Option<crate::run::engine::PacedReader>,
    _slot: Slot,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.starting.is_some() {
            // Not begun yet: if it does, nobody follows it.
            let _ = self
                .api
                .engine
                .cancel(&self.caller, &self.run_id, "the client disconnected");
            return;
        }
        let cancel = (!self.finished).then_some("the client disconnected");
        self.api.engine.detach(&self.run_id, cancel);
    }
}

/// What a poll of a completion gives the connection.
enum Step {
    /// Nothing yet.
    Wait,
    /// Begin the event stream (then its first bytes).
    StreamHead(BytesMut),
    /// More of the stream.
    Chunk(BytesMut),
    /// The stream's last bytes.
    StreamEnd(BytesMut),
    /// The whole answer.
    Whole(Value),
    /// An error answer (before anything was sent).
    Failed(ApiError),
}

impl Running {
    fn poll(&mut self, now: Instant) -> Step {
        if let Some(starting) = &self.starting {
            let Some(outcome) = starting.take() else {
                return Step::Wait;
            };
            self.starting = None;
            if let Err(status) = outcome {
                self.finished = true;
                return Step::Failed(start_error(&status));
            }
            if self.answer.stream {
                self.paced = self.api.engine.paced_reader(&self.run_id);
                let mut out = BytesMut::new();
                self.answer.start(&mut out);
                self.keepalive_at = Some(now + self.api.config.keepalive);
                return Step::StreamHead(out);
            }
        }
        if self.finished {
            return Step::Wait;
        }
        let Some(read) = self.api.engine.read(&self.run_id, self.cursor, READ_BYTES) else {
            self.finished = true;
            return Step::Failed(ApiError::new(
                500,
                "server_error",
                "run_lost",
                "the run is gone",
            ));
        };
        self.cursor += read.events.len();
        if let Some(paced) = &self.paced {
            paced.read_to(self.cursor);
        }
        let mut out = BytesMut::new();
        for bytes in &read.events {
            if let Some(body) = RunStreamEvent::decode(bytes.as_ref())
                .ok()
                .and_then(|e| e.body)
            {
                self.answer.event(&body, &mut out);
            }
        }
        let Some(end) = read.end else {
            if out.is_empty() {
                return Step::Wait;
            }
            self.keepalive_at = Some(now + self.api.config.keepalive);
            return Step::Chunk(out);
        };
        self.finished = true;
        self.api.charge(&self.key, self.answer.usage());
        match self.answer.end(&end, &mut out) {
            Ok(Some(whole)) => Step::Whole(whole),
            Ok(None) => Step::StreamEnd(out),
            Err(error) => Step::Failed(error),
        }
    }
}

fn request_id() -> String {
    format!("req_{}", ulid::Ulid::new().to_string().to_ascii_lowercase())
}

/// A session key part from the caller's `user` (letters, digits and `._-`).
fn user_key(user: Option<&str>) -> String {
    match user.map(str::trim).filter(|u| !u.is_empty()) {
        None => "default".into(),
        Some(u) => u
            .chars()
            .take(64)
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-".contains(c) {
                    c
                } else {
                    '-'
                }
            })
            .collect(),
    }
}

fn headers_with_id(base: &HeaderMap, id: &str) -> HeaderMap {
    let mut h = base.clone();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    h
}

fn event_stream_headers() -> &'static HeaderMap {
    static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    HEADERS.get_or_init(|| {
        let mut h = security_headers();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        h.insert("cache-control", HeaderValue::from_static("no-store"));
        h.insert("x-accel-buffering", HeaderValue::from_static("no"));
        h
    })
}

fn model_object(id: &str) -> Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "palyra"})
}

impl OperatorConnection {
    fn openai_api(&self) -> Option<Arc<OpenAi>> {
        self.operator.admin.as_ref().and_then(|a| a.openai.clone())
    }

    /// An OpenAI-style error answer.
    fn openai_error(&mut self, now: Instant, error: &ApiError, retry_after: Option<Duration>) {
        let mut headers = headers_with_id(super::api_headers(), &self.openai_request_id);
        if let Some(wait) = retry_after {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if error.status == 401 {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        let status =
            StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        self.respond(now, status, &headers, Bytes::from(error.body()));
    }

    fn openai_json(&mut self, now: Instant, body: &Value) {
        let headers = headers_with_id(super::api_headers(), &self.openai_request_id);
        self.respond(now, StatusCode::OK, &headers, Bytes::from(body.to_string()));
    }

    /// A request under `/v1/`.
    pub(crate) fn openai_route(&mut self, now: Instant, head: &RequestHead) {
        self.openai_request_id = request_id();
        let Some(api) = self.openai_api() else {
            return;
        };
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let (caller, key) = match api.authenticate(authorization) {
            Ok(found) => found,
            Err(e) => return self.openai_error(now, &e, None),
        };
        let path = head.uri.path().trim_end_matches('/');
        let method = &head.method;
        let route = match path {
            "/v1/chat/completions" => Some(Api::Chat),
            "/v1/responses" => Some(Api::Responses),
            _ => None,
        };
        if let Some(kind) = route {
            if method != Method::POST {
                return self.openai_not_allowed(now, method, path, "POST");
            }
            return self.openai_begin(now, head, api, kind, caller, key);
        }
        if path == "/v1/models" || path.starts_with("/v1/models/") {
            if !matches!(*method, Method::GET | Method::HEAD) {
                return self.openai_not_allowed(now, method, path, "GET, HEAD");
            }
            let models = api.models();
            return match path.strip_prefix("/v1/models/") {
                None => {
                    let data: Vec<Value> = models.iter().map(|m| model_object(m)).collect();
                    self.openai_json(now, &json!({"object": "list", "data": data}))
                }
                Some(id) if models.iter().any(|m| m == id) => {
                    self.openai_json(now, &model_object(id))
                }
                Some(id) => {
                    let e = ApiError::invalid(
                        "model",
                        "model_not_found",
                        format!("the model `{id}` does not exist"),
                    );
                    self.openai_error(now, &ApiError { status: 404, ..e }, None)
                }
            };
        }
        let e = ApiError::new(
            404,
            "invalid_request_error",
            "unknown_url",
            format!("unknown request URL: {method} {path} (docs/openai-api.md lists the routes)"),
        );
        self.openai_error(now, &e, None)
    }

    fn openai_not_allowed(
        &mut self,
        now: Instant,
        method: &Method,
        path: &str,
        allow: &'static str,
    ) {
        let e = ApiError::new(
            405,
            "invalid_request_error",
            "method_not_supported",
            format!("{method} is not supported on {path}: use {allow}"),
        );
        let mut headers = headers_with_id(super::api_headers(), &self.openai_request_id);
        headers.insert(http::header::ALLOW, HeaderValue::from_static(allow));
        self.respond(
            now,
            StatusCode::METHOD_NOT_ALLOWED,
            &headers,
            Bytes::from(e.body()),
        );
    }

    fn openai_begin(
        &mut self,
        now: Instant,
        head: &RequestHead,
        api: Arc<OpenAi>,
        kind: Api,
        caller: Caller,
        key: String,
    ) {
        let slot = match api.admit(&key, now) {
            Ok(slot) => slot,
            Err((e, wait)) => return self.openai_error(now, &e, Some(wait)),
        };
        let limit = api.config.body_limit;
        let declared = head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            let e = ApiError::new(
                413,
                "invalid_request_error",
                "request_too_large",
                format!("the request body exceeds {limit} bytes"),
            );
            return self.openai_error(now, &e, None);
        }
        let reading = Reading {
            api: kind,
            caller,
            key,
            slot,
        };
        self.collect(now, BodyFor::OpenAi(Box::new(reading)), limit);
    }

    /// The body of a completion request arrived.
    pub(crate) fn openai_body(&mut self, now: Instant, reading: Reading, body: &[u8]) {
        let Some(api) = self.openai_api() else {
            return;
        };
        let completion = match decode(reading.api, body, &api.config.limits) {
            Ok(c) => c,
            Err(e) => return self.openai_error(now, &e, None),
        };
        let models = api.models();
        if !models.contains(&completion.model) {
            let e = ApiError {
                status: 404,
                ..ApiError::invalid(
                    "model",
                    "model_not_found",
                    format!(
                        "the model `{}` does not exist: this gateway offers {}",
                        completion.model,
                        models.join(", ")
                    ),
                )
            };
            return self.openai_error(now, &e, None);
        }
        let Reading {
            caller, key, slot, ..
        } = reading;
        let gateway_tools =
            completion.model == AGENT_MODEL && caller.scopes.contains(Scope::OpenaiTools);
        let run_id = ulid::Ulid::new().to_string();
        let mut options = completion.options.clone();
        if let Some(choice) = &completion.tool_choice {
            options.insert("tool_choice".into(), choice.clone());
        }
        let client_tools = completion
            .tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.clone(),
                approval_required: false,
                sensitive: false,
            })
            .collect();
        let start = StartRun {
            run_id: run_id.clone(),
            session: Resolve {
                session_key: format!("openai:{key}:{}", user_key(completion.user.as_deref())),
                session_label: format!("OpenAI API, key {key}"),
                ..Resolve::default()
            },
            input: completion.prompt(),
            origin: format!("{ORIGIN_PREFIX}{key}"),
            conversation: Some(completion.messages.clone()),
            client_tools,
            without_gateway_tools: !gateway_tools,
            length_is_done: true,
            options,
            can_approve: Some(api.config.approvals == ApprovalMode::Wait),
            allow_sensitive_tools: false,
        };
        let starting = api.engine.start(&caller, start);
        let created = (api.clock)() / 1000;
        let answer = Answer::new(completion.api, &completion, &run_id, created);
        let running = Running {
            api: Arc::clone(&api),
            key,
            caller,
            run_id,
            answer,
            starting: Some(starting),
            cursor: 0,
            finished: false,
            keepalive_at: None,
            paced: None,
            _slot: slot,
        };
        self.pending = Some(super::admin::InFlight::OpenAi(Box::new(running)));
        self.openai_pump(now);
    }

    /// Moves a completion on: what its run's tape has for the caller is sent, while the
    /// connection's output is drained (a slow reader is sent more only once it took the last).
    pub(crate) fn openai_pump(&mut self, now: Instant) {
        loop {
            let Some(super::admin::InFlight::OpenAi(running)) = &mut self.pending else {
                return;
            };
            let step = running.poll(now);
            match step {
                Step::Wait => return,
                Step::StreamHead(bytes) => {
                    let headers = headers_with_id(event_stream_headers(), &self.openai_request_id);
                    self.operator.metrics.count_status(StatusCode::OK);
                    let _ = self
                        .http
                        .respond(now, StatusCode::OK, &headers, ResponseBody::Stream);
                    let _ = self.http.send_chunk(&bytes);
                }
                Step::Chunk(bytes) => {
                    let _ = self.http.send_chunk(&bytes);
                    return;
                }
                Step::StreamEnd(bytes) => {
                    let _ = self.http.send_chunk(&bytes);
                    let _ = self.http.finish(now);
                    self.pending = None;
                    return;
                }
                Step::Whole(body) => {
                    self.pending = None;
                    return self.openai_json(now, &body);
                }
                Step::Failed(e) => {
                    self.pending = None;
                    return self.openai_error(now, &e, None);
                }
            }
        }
    }

    /// A stream quiet for a while gets a keep-alive comment.
    pub(crate) fn openai_timeout(&mut self, now: Instant) {
        let Some(super::admin::InFlight::OpenAi(running)) = &mut self.pending else {
            return;
        };
        if running.keepalive_at.is_some_and(|t| now >= t) {
            running.keepalive_at = Some(now + running.api.config.keepalive);
            let mut out = BytesMut::new();
            answer::comment(&mut out, "keep-alive");
            let _ = self.http.send_chunk(&out);
        }
    }

    /// When [`Self::openai_timeout`] is due.
    pub(crate) fn openai_deadline(&self) -> Option<Instant> {
        match &self.pending {
            Some(super::admin::InFlight::OpenAi(running)) => running.keepalive_at,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
