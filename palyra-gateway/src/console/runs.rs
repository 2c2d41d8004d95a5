//! Agent runs from the console: with a model provider configured, an operator's chat message in
//! a console session starts a run in the run session `console:<session>` (so the next message
//! continues the conversation), its reply streams into the chat, each approval request becomes
//! a card (an A2UI surface with buttons) the operator decides, and `/cancel` cancels the run.
//!
//! [`Mirror`] is the IO-free translation (console records and tape events in, console commands
//! and engine calls out); [`serve`] drives it on a task of the runtime, woken by the notifier
//! the console hub and the run engine share.

use super::{decode_record, ConsoleHub, Publishing};
use crate::access::Caller;
use crate::notify::Notifier;
use crate::run::engine::{RunEngine, RunInput, StartRun};
use crate::run::sessions::{Resolve, SessionRecord};
use crate::runtime::{self, Rt};
use crate::store::Pending;
use crate::util::stop::Stop;
use palyra_proto::a2ui::state::{Command, Entry, MAX_STREAMED_TEXT, MAX_TEXT};
use palyra_proto::grpc::Status;
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, stream_status::StatusKind, tool_decision::DecisionKind,
    ApprovalDecisionScope, CanonicalId, RunStreamEvent, ToolApprovalResponse,
};
use prost::Message;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Owner of the approval cards (receives their actions).
pub const OWNER: &str = "palyrad.runs";
/// Author of the agent's chat messages.
pub const AUTHOR: &str = "agent";
/// Messages waiting per console session while its run is busy.
pub const MAX_QUEUED: usize = 16;
/// Longest tool output quoted in the chat.
const QUOTE: usize = 400;
/// A run's text message is continued in a new one past this many bytes.
const SPLIT_AT: usize = MAX_STREAMED_TEXT - MAX_TEXT;

/// The run session a console session's runs belong to.
pub fn session_key(console_session: &str) -> String {
    format!("console:{console_session}")
}

/// The surface of the approval card of `proposal_id`.
pub fn card_surface(proposal_id: &str) -> String {
    format!("approval-{proposal_id}")
}

/// Something the engine must do for the console.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Start run `run_id` in `session` with `text`.
    Start {
        /// The console session.
        session: String,
        /// The new run's ID.
        run_id: String,
        /// The operator's message.
        text: String,
    },
    /// Cancel a run.
    Cancel {
        /// The run.
        run_id: String,
    },
    /// Answer an approval request.
    Approve {
        /// The run.
        run_id: String,
        /// The answer.
        response: ToolApprovalResponse,
    },
}

/// A run the console follows.
#[derive(Debug)]
struct Follow {
    run_id: String,
    /// Tape events already mirrored.
    seen: usize,
    /// The agent message being streamed and its length.
    message: Option<(String, usize)>,
    /// Messages posted for this run (for unique message IDs).
    parts: u32,
    /// Tool names by proposal.
    tools: HashMap<String, String>,
    /// Proposals refused (their failed result says nothing new).
    denied: Vec<String>,
}

/// An approval card waiting for the operator.
#[derive(Debug, Clone)]
struct Card {
    run_id: String,
    proposal_id: String,
    approval_id: Option<CanonicalId>,
    tool: String,
    session: String,
}

/// The IO-free bridge between the console and the run engine.
#[derive(Debug, Default)]
pub struct Mirror {
    /// The run of each console session (at most one at a time).
    active: HashMap<String, Follow>,
    /// Messages waiting for the session's run to end.
    queued: HashMap<String, VecDeque<String>>,
    /// Cards waiting for a decision, by surface.
    cards: HashMap<String, Card>,
    /// Console commands to publish.
    out: Vec<Command>,
    /// Engine calls to make.
    steps: Vec<Step>,
    /// Other gateways share the console log (and mirror their own runs' cards).
    shared: bool,
}

fn ulid_of(id: &Option<CanonicalId>) -> String {
    id.as_ref().map(|i| i.ulid.clone()).unwrap_or_default()
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn card(surface: &str, title: &str, detail: &str, tone: &str, buttons: bool) -> Value {
    let mut components = vec![
        json!({"id": "title", "type": "text", "props": {"value": title, "tone": tone}}),
        json!({"id": "detail", "type": "markdown", "props": {"value": detail}}),
    ];
    if buttons {
        components.push(
            json!({"id": "decide", "type": "buttons", "props": {"buttons": [
                {"action": "allow_once", "label": "Allow once"},
                {"action": "allow_session", "label": "Allow for this session"},
                {"action": "deny", "label": "Deny", "tone": "critical"},
            ]}}),
        );
    }
    json!({"v": 1, "surface": surface, "components": components})
}

impl Mirror {
    /// A mirror with nothing to follow.
    pub fn new() -> Self {
        Self::default()
    }

    /// A mirror beside other gateways' on one console log: an action on a card it does not
    /// hold is another gateway's to answer.
    pub fn shared() -> Self {
        Self {
            shared: true,
            ..Self::default()
        }
    }

    /// Console commands to publish, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.out)
    }

    /// Engine calls to make, in order.
    pub fn take_steps(&mut self) -> Vec<Step> {
        std::mem::take(&mut self.steps)
    }

    /// The runs being followed: `(console session, run, events mirrored)`.
    pub fn following(&self) -> Vec<(String, String, usize)> {
        self.active
            .iter()
            .map(|(s, f)| (s.clone(), f.run_id.clone(), f.seen))
            .collect()
    }

    fn say(&mut self, session: &str, message_id: String, text: String) {
        self.out.push(Command::Post {
            session_id: session.to_owned(),
            message_id,
            author: AUTHOR.into(),
            text: clip(&text, MAX_TEXT / 4),
            streaming: false,
        });
    }

    /// A note about a run that is not part of its reply.
    fn note(&mut self, session: &str, text: String) {
        let Some(follow) = self.active.get_mut(session) else {
            return;
        };
        follow.parts += 1;
        let id = format!("run-{}-{}", follow.run_id, follow.parts);
        self.say(session, id, text);
    }

    /// A console record became durable; `new_run_id` names a run this may start.
    pub fn console_record(&mut self, entry: &Entry, new_run_id: impl FnOnce() -> String) {
        match entry {
            Entry::Message(m) if m.role == "user" => {
                let session = &m.session_id;
                if m.text.trim() == "/cancel" {
                    match self.active.get(session) {
                        Some(follow) => self.steps.push(Step::Cancel {
                            run_id: follow.run_id.clone(),
                        }),
                        None => self.say(
                            session,
                            format!("{}-r", m.message_id),
                            "No run is in progress in this session.".into(),
                        ),
                    }
                    return;
                }
                let queue = self.queued.entry(session.clone()).or_default();
                if queue.len() >= MAX_QUEUED {
                    let text = format!(
                        "Not queued: {MAX_QUEUED} messages already wait for the run in progress."
                    );
                    self.say(session, format!("{}-r", m.message_id), text);
                    return;
                }
                queue.push_back(m.text.clone());
                self.start_next(session, new_run_id);
            }
            Entry::Action {
                surface,
                action,
                owner,
                ..
            } if owner == OWNER => self.decide(surface, action),
            _ => {}
        }
    }

    fn start_next(&mut self, session: &str, new_run_id: impl FnOnce() -> String) {
        if self.active.contains_key(session) {
            return;
        }
        let Some(text) = self.queued.get_mut(session).and_then(VecDeque::pop_front) else {
            return;
        };
        let run_id = new_run_id();
        self.active.insert(
            session.to_owned(),
            Follow {
                run_id: run_id.clone(),
                seen: 0,
                message: None,
                parts: 0,
                tools: HashMap::new(),
                denied: Vec::new(),
            },
        );
        self.steps.push(Step::Start {
            session: session.to_owned(),
            run_id,
            text,
        });
    }

    fn decide(&mut self, surface: &str, action: &str) {
        let Some(card) = self.cards.get(surface).cloned() else {
            if self.shared {
                return;
            }
            let doc = card(
                surface,
                "No longer waiting",
                "This approval is not pending any more (its run ended or the daemon restarted).",
                "muted",
                false,
            );
            self.out.push(Command::PutSurface {
                document: doc,
                owner: OWNER.into(),
            });
            return;
        };
        let (approved, scope, reason) = match action {
            "allow_once" => (true, ApprovalDecisionScope::Once, "approved in the console"),
            "allow_session" => (
                true,
                ApprovalDecisionScope::Session,
                "approved for the session in the console",
            ),
            "deny" => (false, ApprovalDecisionScope::Once, "denied in the console"),
            _ => return,
        };
        self.steps.push(Step::Approve {
            run_id: card.run_id,
            response: ToolApprovalResponse {
                proposal_id: Some(CanonicalId {
                    ulid: card.proposal_id,
                }),
                approved,
                reason: reason.into(),
                approval_id: card.approval_id,
                decision_scope: scope as i32,
                decision_scope_ttl_ms: 0,
            },
        });
    }

    /// Run `run_id` of `session` could not start.
    pub fn start_failed(&mut self, session: &str, run_id: &str, status: &Status) {
        if self.active.get(session).is_some_and(|f| f.run_id == run_id) {
            self.note(
                session,
                format!("The run could not start: {}", status.message),
            );
            self.active.remove(session);
            self.start_next(session, || ulid::Ulid::new().to_string());
        }
    }

    /// Durable tape events of the run of `session` (after those already mirrored); `ended`
    /// once the tape is complete. `new_run_id` names the next queued run, if one starts.
    pub fn run_events(
        &mut self,
        session: &str,
        events: &[RunStreamEvent],
        ended: bool,
        new_run_id: impl FnOnce() -> String,
    ) {
        for event in events {
            self.run_event(session, event);
        }
        if ended {
            self.end_text(session);
            let Some(follow) = self.active.remove(session) else {
                return;
            };
            let stale: Vec<String> = self
                .cards
                .iter()
                .filter(|(_, c)| c.run_id == follow.run_id)
                .map(|(s, _)| s.clone())
                .collect();
            for surface in stale {
                self.resolve_card(&surface, "No longer waiting: the run ended", "muted");
            }
            self.start_next(session, new_run_id);
        }
    }

    fn run_event(&mut self, session: &str, event: &RunStreamEvent) {
        let Some(follow) = self.active.get_mut(session) else {
            return;
        };
        follow.seen += 1;
        match &event.body {
            Some(Body::ModelToken(t)) => self.text(session, &t.token),
            Some(Body::ToolProposal(p)) => {
                follow
                    .tools
                    .insert(ulid_of(&p.proposal_id), p.tool_name.clone());
            }
            Some(Body::ToolApprovalRequest(r)) => {
                self.end_text(session);
                let proposal_id = ulid_of(&r.proposal_id);
                let surface = card_surface(&proposal_id);
                let timeout = r.prompt.as_ref().map_or(0, |p| p.timeout_seconds);
                let input = clip(&String::from_utf8_lossy(&r.input_json), 2000);
                let detail = format!(
                    "Input: `{}`\n\nRun `{}` · session `{session}` · answer within {timeout} s",
                    input.replace('`', "'"),
                    ulid_of(&event.run_id)
                );
                let title = format!("Approval needed: {}", r.tool_name);
                self.out.push(Command::PutSurface {
                    document: card(&surface, &title, &detail, "", true),
                    owner: OWNER.into(),
                });
                self.cards.insert(
                    surface,
                    Card {
                        run_id: ulid_of(&event.run_id),
                        proposal_id,
                        approval_id: r.approval_id.clone(),
                        tool: r.tool_name.clone(),
                        session: session.to_owned(),
                    },
                );
                self.note(
                    session,
                    format!(
                        "Waiting for approval to run {} (see the approval card).",
                        r.tool_name
                    ),
                );
            }
            Some(Body::ToolApprovalResponse(r)) => {
                let surface = card_surface(&ulid_of(&r.proposal_id));
                let verdict = if r.approved { "Allowed" } else { "Denied" };
                let tone = if r.approved { "success" } else { "critical" };
                self.resolve_card(&surface, &format!("{verdict}: {}", r.reason), tone);
            }
            Some(Body::ToolDecision(d)) => {
                let proposal = ulid_of(&d.proposal_id);
                let surface = card_surface(&proposal);
                if d.kind == DecisionKind::Deny as i32 {
                    let tool = follow.tools.get(&proposal).cloned().unwrap_or_default();
                    follow.denied.push(proposal);
                    if self.cards.contains_key(&surface) {
                        self.resolve_card(&surface, &format!("Denied: {}", d.reason), "critical");
                    }
                    self.end_text(session);
                    self.note(session, format!("Tool {tool} was not run: {}", d.reason));
                }
            }
            Some(Body::ToolResult(r)) if follow.denied.contains(&ulid_of(&r.proposal_id)) => {}
            Some(Body::ToolResult(r)) => {
                let tool = follow
                    .tools
                    .get(&ulid_of(&r.proposal_id))
                    .cloned()
                    .unwrap_or_default();
                self.end_text(session);
                let text = if r.success {
                    let output = String::from_utf8_lossy(&r.output_json);
                    format!("Tool {tool} ran: {}", clip(&output, QUOTE))
                } else {
                    format!("Tool {tool} failed: {}", clip(&r.error, QUOTE))
                };
                self.note(session, text);
            }
            Some(Body::Status(s)) => {
                let message = &s.message;
                match StatusKind::try_from(s.kind) {
                    Ok(StatusKind::Failed) => {
                        self.end_text(session);
                        self.note(session, format!("The run failed: {message}"));
                    }
                    Ok(StatusKind::Cancelled) => {
                        self.end_text(session);
                        self.note(session, format!("The run was cancelled: {message}"));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }

    /// Reply text: starts the streamed message or appends to it.
    fn text(&mut self, session: &str, token: &str) {
        if token.is_empty() {
            return;
        }
        let Some(follow) = self.active.get_mut(session) else {
            return;
        };
        if follow
            .message
            .as_ref()
            .is_some_and(|(_, len)| len + token.len() > SPLIT_AT)
        {
            self.end_text(session);
            return self.text(session, token);
        }
        let Some(follow) = self.active.get_mut(session) else {
            return;
        };
        let token = clip(token, MAX_TEXT / 4);
        match &mut follow.message {
            Some((id, len)) => {
                *len += token.len();
                // Consecutive tokens of one read go out as one delta.
                if let Some(Command::Delta { message_id, text }) = self.out.last_mut() {
                    if message_id == id && text.len() + token.len() <= MAX_TEXT {
                        text.push_str(&token);
                        return;
                    }
                }
                if let Some(Command::Post {
                    message_id, text, ..
                }) = self.out.last_mut()
                {
                    if message_id == id && text.len() + token.len() <= MAX_TEXT {
                        text.push_str(&token);
                        return;
                    }
                }
                self.out.push(Command::Delta {
                    message_id: id.clone(),
                    text: token,
                });
            }
            None => {
                follow.parts += 1;
                let id = format!("run-{}-{}", follow.run_id, follow.parts);
                follow.message = Some((id.clone(), token.len()));
                self.out.push(Command::Post {
                    session_id: session.to_owned(),
                    message_id: id,
                    author: AUTHOR.into(),
                    text: token,
                    streaming: true,
                });
            }
        }
    }

    /// The streamed message, if any, is complete.
    fn end_text(&mut self, session: &str) {
        if let Some((message_id, _)) = self.active.get_mut(session).and_then(|f| f.message.take()) {
            self.out.push(Command::Done { message_id });
        }
    }

    fn resolve_card(&mut self, surface: &str, outcome: &str, tone: &str) {
        let Some(card_info) = self.cards.remove(surface) else {
            return;
        };
        let detail = format!(
            "Run `{}` · session `{}`",
            card_info.run_id, card_info.session
        );
        let title = format!("{} — {outcome}", card_info.tool);
        self.out.push(Command::PutSurface {
            document: card(surface, &title, &detail, tone, false),
            owner: OWNER.into(),
        });
    }
}

/// How long the loop sleeps at most between looks (it is woken by every store change).
const IDLE: Duration = Duration::from_secs(1);

/// Serves runs from the console on a task of `rt` until `stop` is raised: started by the daemon
/// when a provider is configured. Console records are looked at from the hub's newest one on.
pub fn serve(rt: &Rt, hub: Arc<ConsoleHub>, engine: Arc<RunEngine>, stop: Arc<Stop>) {
    let task_rt = Arc::clone(rt);
    rt.spawn(Box::pin(async move {
        Bridge::new(hub, engine).run(task_rt, stop).await;
    }));
}

/// A run being started: console session, run, the engine's answer.
type Starting = (String, String, Pending<Result<SessionRecord, Status>>);

struct Bridge {
    hub: Arc<ConsoleHub>,
    engine: Arc<RunEngine>,
    notifier: Arc<Notifier>,
    caller: Caller,
    mirror: Mirror,
    /// Last console record read.
    after: u64,
    /// Starts in flight.
    starting: Vec<Starting>,
    /// Publishes in flight.
    publishing: Vec<Publishing>,
}

impl Bridge {
    fn new(hub: Arc<ConsoleHub>, engine: Arc<RunEngine>) -> Self {
        let mirror = if hub.is_shared() {
            Mirror::shared()
        } else {
            Mirror::new()
        };
        Self {
            after: hub.head(),
            notifier: hub.notifier(),
            hub,
            engine,
            caller: Caller::admin(),
            mirror,
            starting: Vec::new(),
            publishing: Vec::new(),
        }
    }

    async fn run(mut self, rt: Rt, stop: Arc<Stop>) {
        let mut seen = u64::MAX;
        while !stop.is_raised() {
            let listener = self.notifier.listen();
            if self.notifier.changed_since(&mut seen) {
                self.step();
            }
            let _ = runtime::timeout(rt.as_ref(), IDLE, listener).await;
        }
    }

    /// One look at everything that may have changed.
    fn step(&mut self) {
        self.read_console();
        self.check_starts();
        self.follow_runs();
        self.act();
        self.publishing.retain(|p| match p.take() {
            Some(results) => {
                for e in results.into_iter().filter_map(Result::err) {
                    tracing::warn!(error = %e.message, "console update of a run not published");
                }
                false
            }
            None => true,
        });
    }

    fn read_console(&mut self) {
        loop {
            match self.hub.read(self.after, 256, 1 << 20) {
                Ok(Some(batch)) => {
                    if batch.records.is_empty() {
                        return;
                    }
                    // On a shared log, whether this gateway wrote a record is known once the
                    // hub added it up (the log's follower may hand it over before the write's
                    // acknowledgement): records past the hub's head wait for the next look.
                    let added_up = self.hub.is_shared().then(|| self.hub.head());
                    for record in &batch.records {
                        if added_up.is_some_and(|head| record.seq > head) {
                            return;
                        }
                        self.after = record.seq;
                        let Ok(entry) = decode_record(&record.body) else {
                            continue;
                        };
                        // On a console log several gateways share, the gateway that took an
                        // operator's message runs it; an action goes to every gateway, and
                        // the one whose card it answers acts on it.
                        if matches!(entry, Entry::Message(_)) && !self.hub.wrote_here(record.seq) {
                            continue;
                        }
                        self.mirror
                            .console_record(&entry, || ulid::Ulid::new().to_string());
                    }
                }
                // Behind the memory window (a burst larger than it holds): skip to the newest
                // record rather than start runs for stale messages.
                Ok(None) | Err(_) => {
                    let head = self.hub.head();
                    if head > self.after {
                        tracing::warn!(
                            skipped = head - self.after,
                            "console records behind the memory window were not looked at for runs"
                        );
                        self.after = head;
                    }
                    return;
                }
            }
        }
    }

    fn check_starts(&mut self) {
        let mut failed = Vec::new();
        self.starting
            .retain(|(session, run_id, answer)| match answer.take() {
                Some(Ok(_)) => false,
                Some(Err(status)) => {
                    failed.push((session.clone(), run_id.clone(), status));
                    false
                }
                None => true,
            });
        for (session, run_id, status) in failed {
            self.mirror.start_failed(&session, &run_id, &status);
        }
    }

    fn follow_runs(&mut self) {
        for (session, run_id, seen) in self.mirror.following() {
            let Some(read) = self.engine.read(&run_id, seen, 256 * 1024) else {
                continue; // not started yet
            };
            let events: Vec<RunStreamEvent> = read
                .events
                .iter()
                .filter_map(|b| RunStreamEvent::decode(b.as_ref()).ok())
                .collect();
            self.mirror
                .run_events(&session, &events, read.end.is_some(), || {
                    ulid::Ulid::new().to_string()
                });
        }
    }

    fn act(&mut self) {
        for step in self.mirror.take_steps() {
            match step {
                Step::Start {
                    session,
                    run_id,
                    text,
                } => {
                    let request = StartRun {
                        run_id: run_id.clone(),
                        session: Resolve {
                            session_key: session_key(&session),
                            session_label: format!("console {session}"),
                            ..Resolve::default()
                        },
                        input: text,
                        allow_sensitive_tools: false,
                        origin: "console".into(),
                        ..StartRun::default()
                    };
                    let answer = self.engine.start(&self.caller, request);
                    self.starting.push((session, run_id, answer));
                }
                Step::Cancel { run_id } => {
                    let _ = self
                        .engine
                        .cancel(&self.caller, &run_id, "cancelled in the console");
                }
                Step::Approve { run_id, response } => {
                    if let Err(status) =
                        self.engine
                            .send(&self.caller, &run_id, RunInput::Approval(response))
                    {
                        tracing::info!(run = %run_id, error = %status.message, "approval from the console not delivered");
                    }
                }
            }
        }
        let commands = self.mirror.take_commands();
        if !commands.is_empty() {
            self.publishing.push(self.hub.publish(commands));
        }
    }
}

#[cfg(test)]
mod tests;
