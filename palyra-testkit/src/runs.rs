//! Agent runs through a whole daemon (file stores, the gateway gRPC listener) with the scripted
//! OpenAI-compatible upstream as its model: RunStream's event order, replay by cursor, tools
//! on a node after each approval outcome, every cancellation path, principals and scopes, a
//! provider that breaks off, no provider at all, and the RPCs this gateway does not serve.
//!
//! The node here is played at the hub (its registration and its results), because the node
//! transports are tested on their own; `conformance/` drives a real `palyra node run`.

use crate::provider::Upstream;
use crate::Driver;
use palyra_gateway::access::tokens::Mint;
use palyra_gateway::client::runs::{canonical, RunsClient};
use palyra_gateway::daemon::{Daemon, DaemonSettings, ListenAddrs, Running};
use palyra_gateway::node::hub::{CapabilityRecord, CapabilityResult};
use palyra_gateway::provider::client::{Endpoint, ProviderSettings};
use palyra_gateway::run::engine::{RunsConfig, ToolPolicy};
use palyra_gateway::serve::grpc_channel::{CallEvent, StreamingCall};
use palyra_gateway::serve::tcp::ListenerLimits;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::openai::chat::ChatLimits;
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, stream_status::StatusKind, ApprovalDecisionScope, MessageContent,
    MessageEnvelope, RunStreamEvent, RunStreamRequest, ToolApprovalResponse,
};
use palyra_proto::pb::palyra::gateway::v1::{
    AbortRunRequest, AbortRunResponse, ExportApprovalsRequest, ListApprovalsRequest,
    ListApprovalsResponse, ListRunsRequest, ListRunsResponse, ListSessionsRequest,
    ListSessionsResponse,
};
use prost::Message;
use rand_core::OsRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "runs-suite-admin";
const NODE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

struct Gateway {
    running: Running,
    grpc: String,
    _dir: tempfile::TempDir,
    _upstream: Option<Upstream>,
}

fn gateway<D: Driver>(with_provider: bool, approval_timeout: Duration) -> Gateway {
    gateway_in::<D>(
        tempfile::tempdir().expect("dir"),
        with_provider,
        approval_timeout,
    )
}

/// A gateway whose state is `dir/state` (which may hold an identity already).
fn gateway_in<D: Driver>(
    dir: tempfile::TempDir,
    with_provider: bool,
    approval_timeout: Duration,
) -> Gateway {
    let upstream = with_provider.then(|| Upstream::start("suite-key"));
    let provider = upstream.as_ref().map(|u| ProviderSettings {
        endpoint: Endpoint::parse(&format!("http://{}/v1", u.addr)).expect("base_url"),
        api_key: Some("suite-key".into()),
        tls: None,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_retries: 2,
        limits: ChatLimits::default(),
    });
    let settings = DaemonSettings {
        state_dir: dir.path().join("state"),
        node: Default::default(),
        grpc_tls: false,
        http_tls: false,
        enrollment: Default::default(),
        advertise_addr: None,
        console_origins: Vec::new(),
        admin_token: Some(ADMIN.into()),
        version: "suite".into(),
        git_hash: "unknown".into(),
        runs: RunsConfig {
            provider,
            model: "scripted".into(),
            policy: ToolPolicy {
                require_approval: vec!["echo".into()],
                sensitive: vec!["secret".into()],
                approval_timeout,
                ..ToolPolicy::default()
            },
            detach_grace: Duration::from_millis(500),
            gateway: None,
        },
        openai: Default::default(),
        browser: None,
    };
    let random = Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
    let daemon = Daemon::open(settings, random, &mut OsRng).expect("daemon");
    let any = crate::loopback();
    let addrs = ListenAddrs {
        node: any,
        grpc: any,
        http: any,
    };
    let running = daemon
        .serve(&D::runtime(), &addrs, ListenerLimits::default())
        .expect("serve");
    let grpc = running.endpoints.grpc.to_string();
    Gateway {
        running,
        grpc,
        _dir: dir,
        _upstream: upstream,
    }
}

/// A node at the hub serving `echo` (approval needed), `free` (none) and `secret`
/// (sensitive): results echo the input. Stops when the flag is lowered.
fn node(g: &Gateway) -> Arc<AtomicBool> {
    let hub = Arc::clone(g.running.daemon().hub());
    let now = palyra_gateway::store::unix_ms(std::time::SystemTime::now());
    let caps = ["echo", "free", "secret"]
        .iter()
        .map(|name| CapabilityRecord {
            name: (*name).into(),
            available: true,
            description: format!("{name} echoes its input"),
            input_schema: None,
        })
        .collect();
    hub.register(NODE, "linux-x86_64", caps, now)
        .wait_blocking(Duration::from_secs(5))
        .expect("registered")
        .expect("registration");
    let live = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&live);
    std::thread::spawn(move || {
        while flag.load(Ordering::Acquire) {
            match hub.take_dispatch(NODE) {
                Some(d) => {
                    let result = CapabilityResult {
                        success: true,
                        output_json: d.input_json.clone(),
                        error: String::new(),
                    };
                    hub.complete(NODE, &d.request_id, result).expect("complete");
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    live
}

fn client<D: Driver>(g: &Gateway, token: &str, principal: Option<&str>) -> RunsClient {
    D::block_on(RunsClient::connect(
        &D::runtime(),
        &g.grpc,
        token,
        principal,
    ))
    .expect("connect")
}

fn token(g: &Gateway, principal: &str, scopes: &[&str]) -> String {
    let mint = Mint {
        principal: principal.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        label: "suite".into(),
        ttl_seconds: None,
    };
    g.running
        .daemon()
        .tokens
        .mint(mint, ulid::Ulid::new().to_string(), [9; 32], 1)
        .wait_blocking(Duration::from_secs(5))
        .expect("durable")
        .expect("store")
        .expect("minted")
        .0
}

fn first(run_id: &str, session_key: &str, text: &str) -> RunStreamRequest {
    RunStreamRequest {
        v: 1,
        run_id: canonical(run_id),
        session_key: session_key.into(),
        input: Some(MessageEnvelope {
            v: 1,
            content: Some(MessageContent {
                text: text.into(),
                attachments: Vec::new(),
            }),
            ..MessageEnvelope::default()
        }),
        ..RunStreamRequest::default()
    }
}

fn open<D: Driver>(c: &RunsClient) -> StreamingCall {
    D::block_on(c.open("GatewayService", "RunStream")).expect("open RunStream")
}

fn send<D: Driver>(call: &StreamingCall, request: &RunStreamRequest) {
    D::block_on(call.send(request.encode_to_vec())).expect("send");
}

/// Reads events until the call ends; `on` may answer each one on the call.
fn collect<D: Driver>(
    call: &mut StreamingCall,
    mut on: impl FnMut(&RunStreamEvent, &StreamingCall),
) -> (Vec<RunStreamEvent>, Status) {
    let rt = D::runtime();
    let mut events = Vec::new();
    loop {
        let next = D::block_on(palyra_gateway::runtime::timeout(
            rt.as_ref(),
            Duration::from_secs(20),
            call.next(),
        ));
        match next
            .expect("an event within 20 s")
            .expect("the call ends with a status")
        {
            CallEvent::Message(bytes) => {
                let event = RunStreamEvent::decode(bytes.as_ref()).expect("RunStreamEvent");
                on(&event, call);
                events.push(event);
            }
            CallEvent::Finished(status, _) => return (events, status),
            CallEvent::Headers(_) => {}
        }
    }
}

fn kind(event: &RunStreamEvent) -> String {
    match &event.body {
        Some(Body::Status(s)) => StatusKind::try_from(s.kind)
            .unwrap()
            .as_str_name()
            .trim_start_matches("STATUS_KIND_")
            .to_owned(),
        Some(Body::ModelToken(t)) if t.is_final => "final".into(),
        Some(Body::ModelToken(_)) => "token".into(),
        Some(Body::ToolProposal(_)) => "proposal".into(),
        Some(Body::ToolApprovalRequest(_)) => "approval_request".into(),
        Some(Body::ToolApprovalResponse(_)) => "approval_response".into(),
        Some(Body::ToolDecision(_)) => "decision".into(),
        Some(Body::ToolResult(_)) => "result".into(),
        Some(Body::ToolAttestation(_)) => "attestation".into(),
        Some(Body::JournalEvent(_)) => "outcome".into(),
        other => format!("{other:?}"),
    }
}

fn kinds(events: &[RunStreamEvent]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in events.iter().map(kind) {
        if k == "token" && out.last().is_some_and(|l| l == "token") {
            continue;
        }
        out.push(k);
    }
    out
}

fn text(events: &[RunStreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::ModelToken(t)) => Some(t.token.as_str()),
            _ => None,
        })
        .collect()
}

fn last_status(events: &[RunStreamEvent]) -> String {
    events
        .iter()
        .rev()
        .find_map(|e| match &e.body {
            Some(Body::Status(s)) => Some(s.message.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn answer(
    event: &RunStreamEvent,
    approved: bool,
    scope: ApprovalDecisionScope,
) -> Option<RunStreamRequest> {
    let Some(Body::ToolApprovalRequest(r)) = &event.body else {
        return None;
    };
    Some(RunStreamRequest {
        v: 1,
        run_id: event.run_id.clone(),
        tool_approval_response: Some(ToolApprovalResponse {
            proposal_id: r.proposal_id.clone(),
            approved,
            reason: String::new(),
            approval_id: r.approval_id.clone(),
            decision_scope: scope as i32,
            decision_scope_ttl_ms: 0,
        }),
        ..RunStreamRequest::default()
    })
}

fn new_id() -> String {
    ulid::Ulid::new().to_string()
}

/// A reply streams in the contract's order, the call ends OK after DONE, the tape replays from
/// any cursor, and the run is listed.
pub fn run_streams_and_replays<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    let run = new_id();
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&run, "main", "hello there"));
    let (events, status) = collect::<D>(&mut call, |_, _| {});
    assert_eq!(status.code, Code::Ok, "{status:?}");
    assert_eq!(
        kinds(&events),
        [
            "ACCEPTED",
            "IN_PROGRESS",
            "token",
            "final",
            "outcome",
            "DONE"
        ]
    );
    assert_eq!(text(&events), "You said: hello there");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=events.len() as u64).collect::<Vec<_>>(),
        "gap-free seqs"
    );
    assert!(events
        .iter()
        .all(|e| e.run_id.as_ref().unwrap().ulid == run));
    // Replay from the start and from a cursor.
    for after in [0u64, 3] {
        let mut call = open::<D>(&c);
        let attach = RunStreamRequest {
            v: 1,
            run_id: canonical(&run),
            attach: true,
            attach_after_seq: after,
            ..RunStreamRequest::default()
        };
        send::<D>(&call, &attach);
        let (replayed, status) = collect::<D>(&mut call, |_, _| {});
        assert_eq!(status.code, Code::Ok);
        assert_eq!(
            replayed,
            events[after as usize..].to_vec(),
            "replay after {after}"
        );
    }
    let listed: ListRunsResponse = D::block_on(c.unary(
        "GatewayService",
        "ListRuns",
        &ListRunsRequest {
            v: 1,
            ..Default::default()
        },
    ))
    .expect("ListRuns");
    assert_eq!(listed.runs[0].state, "done");
    assert_eq!(listed.runs[0].event_count, events.len() as u64);
    // The same session continues the conversation; a run ID cannot be reused.
    let mut again = open::<D>(&c);
    send::<D>(&again, &first(&run, "main", "again"));
    let (_, status) = collect::<D>(&mut again, |_, _| {});
    assert_eq!(status.code, Code::AlreadyExists, "{status:?}");
    let sessions: ListSessionsResponse = D::block_on(c.unary(
        "GatewayService",
        "ListSessions",
        &ListSessionsRequest {
            v: 1,
            ..Default::default()
        },
    ))
    .expect("ListSessions");
    assert_eq!(sessions.sessions.len(), 1);
    assert_eq!(sessions.sessions[0].session_key, "main");
    assert_eq!(sessions.sessions[0].last_run_state, "done");
}

/// Every approval outcome: allow once, allow for the session (the next call is not asked),
/// deny, timeout, a mismatched answer and a half-close; a sensitive tool is refused by policy.
pub fn approvals_decide_tool_calls<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(1));
    let live = node(&g);
    let c = client::<D>(&g, ADMIN, None);
    let tool = r#"run it [[tool:echo {"x":1}]]"#;
    let run_with = |key: &str, prompt: &str, approved: bool, scope| {
        let mut call = open::<D>(&c);
        send::<D>(&call, &first(&new_id(), key, prompt));
        collect::<D>(&mut call, |event, call| {
            if let Some(a) = answer(event, approved, scope) {
                send::<D>(call, &a);
            }
        })
    };
    // Allow once.
    let (events, status) = run_with("once", tool, true, ApprovalDecisionScope::Once);
    assert_eq!(status.code, Code::Ok);
    assert_eq!(
        kinds(&events),
        [
            "ACCEPTED",
            "IN_PROGRESS",
            "token",
            "final",
            "proposal",
            "approval_request",
            "approval_response",
            "decision",
            "result",
            "attestation",
            "token",
            "final",
            "outcome",
            "DONE"
        ]
    );
    assert_eq!(text(&events), r#"Calling echo.Tool echo said: {"x":1}"#);
    let attestation = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolAttestation(a)) => Some(a.clone()),
        _ => None,
    });
    let attestation = attestation.expect("an attestation");
    assert_eq!(attestation.executor, format!("node:{NODE}"));
    assert_eq!(
        attestation.execution_sha256,
        palyra_gateway::run::machine::execution_sha256("echo", br#"{"x":1}"#, br#"{"x":1}"#)
    );
    // Allow for the session: the next run of the session is not asked.
    run_with("sess", tool, true, ApprovalDecisionScope::Session);
    let (events, _) = run_with("sess", tool, false, ApprovalDecisionScope::Once);
    assert!(
        !kinds(&events).contains(&"approval_request".to_owned()),
        "{:?}",
        kinds(&events)
    );
    assert!(text(&events).contains("said"));
    // Deny.
    let (events, status) = run_with("deny", tool, false, ApprovalDecisionScope::Once);
    assert_eq!(status.code, Code::Ok);
    let result = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolResult(r)) => Some(r.clone()),
        _ => None,
    });
    assert!(result.unwrap().error.contains("denied"));
    assert!(!kinds(&events).contains(&"attestation".to_owned()));
    // Timeout (1 s): nobody answers.
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "timeout", tool));
    let (events, _) = collect::<D>(&mut call, |_, _| {});
    let decision = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolDecision(d)) => Some(d.reason.clone()),
        _ => None,
    });
    assert!(decision.unwrap().contains("timed out"));
    // A mismatched answer is an error decision; the run goes on.
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "mismatch", tool));
    let (events, status) = collect::<D>(&mut call, |event, call| {
        if let Some(mut a) = answer(event, true, ApprovalDecisionScope::Once) {
            a.tool_approval_response.as_mut().unwrap().proposal_id = canonical(&new_id());
            send::<D>(call, &a);
        }
    });
    assert_eq!(status.code, Code::Ok);
    let decision = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolDecision(d)) => Some(d.reason.clone()),
        _ => None,
    });
    assert!(decision.unwrap().contains("does not match"));
    // A half-close denies: there is nobody left to ask.
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "halfclose", tool));
    D::block_on(call.close_send()).expect("half-close");
    let (events, status) = collect::<D>(&mut call, |_, _| {});
    assert_eq!(status.code, Code::Ok);
    let decision = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolDecision(d)) => Some(d.reason.clone()),
        _ => None,
    });
    assert!(decision.unwrap().contains("half-closed"));
    // A sensitive tool without allow_sensitive_tools is refused by policy.
    let (events, _) = run_with(
        "sensitive",
        r#"x [[tool:secret {}]]"#,
        true,
        ApprovalDecisionScope::Once,
    );
    let decision = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolDecision(d)) => Some((d.reason.clone(), d.policy_enforced)),
        _ => None,
    });
    let (reason, enforced) = decision.unwrap();
    assert!(reason.contains("sensitive") && enforced, "{reason}");
    // The approval records.
    let approvals: ListApprovalsResponse = D::block_on(c.unary(
        "ApprovalsService",
        "ListApprovals",
        &ListApprovalsRequest {
            v: 1,
            ..Default::default()
        },
    ))
    .expect("ListApprovals");
    let decisions: Vec<i32> = approvals.approvals.iter().map(|a| a.decision).collect();
    // The half-closed run was never asked: nobody was left to ask.
    assert_eq!(
        decisions,
        [1, 1, 2, 3, 4],
        "allow, allow, deny, timeout, error"
    );
    let mut export = D::block_on(c.open("ApprovalsService", "ExportApprovals")).expect("export");
    D::block_on(
        export.send(
            ExportApprovalsRequest {
                v: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    )
    .expect("send");
    D::block_on(export.close_send()).expect("close");
    let mut body = Vec::new();
    while let Some(event) = D::block_on(export.next()) {
        match event {
            CallEvent::Message(m) => body.extend(
                palyra_proto::pb::palyra::gateway::v1::ExportApprovalsResponse::decode(m.as_ref())
                    .unwrap()
                    .chunk,
            ),
            CallEvent::Finished(s, _) => {
                assert_eq!(s.code, Code::Ok);
                break;
            }
            CallEvent::Headers(_) => {}
        }
    }
    let lines: Vec<serde_json::Value> = String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6);
    assert_eq!(lines[5]["record_type"], "export_trailer");
    assert_eq!(lines[0]["prev_hash"], "0".repeat(64));
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    live.store(false, Ordering::Release);
}

/// `/cancel`, AbortRun, a stream reset and a disconnect (after the grace period) each cancel a
/// run and stop its provider call; a disconnect followed by a re-attach does not.
pub fn every_cancellation_path<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    let slow = "slow [[slow:300]] one two three four five six seven eight nine ten";
    let tokens_then = |call: &mut StreamingCall, act: &mut dyn FnMut(&StreamingCall, &str)| {
        collect::<D>(call, |event, call| {
            if kind(event) == "token" && event.seq == 4 {
                act(call, &event.run_id.as_ref().unwrap().ulid);
            }
        })
    };
    // `/cancel` on the stream.
    let mut call = open::<D>(&c);
    let run = new_id();
    send::<D>(&call, &first(&run, "c1", slow));
    let (events, status) = tokens_then(&mut call, &mut |call, run| {
        let mut cancel = first(run, "c1", "/cancel");
        cancel.session_key.clear();
        send::<D>(call, &cancel);
    });
    assert_eq!(status.code, Code::Cancelled, "{status:?}");
    assert!(last_status(&events).contains("/cancel"));
    // AbortRun from another connection.
    let other = client::<D>(&g, ADMIN, None);
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "c2", slow));
    let (events, _) = tokens_then(&mut call, &mut |_, run| {
        let r: AbortRunResponse = D::block_on(other.unary(
            "GatewayService",
            "AbortRun",
            &AbortRunRequest {
                v: 1,
                run_id: canonical(run),
                reason: "suite".into(),
            },
        ))
        .expect("AbortRun");
        assert!(r.cancel_requested);
    });
    assert!(
        last_status(&events).contains("AbortRun: suite"),
        "{}",
        last_status(&events)
    );
    // A stream reset cancels at once.
    let mut call = open::<D>(&c);
    let run = new_id();
    send::<D>(&call, &first(&run, "c3", slow));
    let rt = D::runtime();
    loop {
        match D::block_on(call.next()).expect("event") {
            CallEvent::Message(m) if RunStreamEvent::decode(m.as_ref()).unwrap().seq >= 4 => break,
            _ => {}
        }
    }
    D::block_on(call.cancel());
    let state = wait_state::<D>(&other, &run, "cancelled");
    assert_eq!(state, "cancelled");
    // A disconnect cancels after the grace period (500 ms)...
    let lost = client::<D>(&g, ADMIN, None);
    let mut call = open::<D>(&lost);
    let run = new_id();
    send::<D>(&call, &first(&run, "c4", slow));
    D::block_on(call.next());
    drop(call);
    drop(lost);
    assert_eq!(wait_state::<D>(&other, &run, "cancelled"), "cancelled");
    let tape = replay::<D>(&other, &run);
    assert!(
        last_status(&tape).contains("disconnected"),
        "{}",
        last_status(&tape)
    );
    // ...unless a stream re-attaches within it.
    let lost = client::<D>(&g, ADMIN, None);
    let mut call = open::<D>(&lost);
    let run = new_id();
    send::<D>(&call, &first(&run, "c5", slow));
    D::block_on(call.next());
    drop(call);
    drop(lost);
    let mut attach = open::<D>(&other);
    send::<D>(
        &attach,
        &RunStreamRequest {
            v: 1,
            run_id: canonical(&run),
            attach: true,
            ..Default::default()
        },
    );
    let (events, status) = collect::<D>(&mut attach, |_, _| {});
    assert_eq!(status.code, Code::Ok, "{status:?}");
    assert_eq!(kinds(&events).last().unwrap(), "DONE");
    let _ = rt;
}

fn wait_state<D: Driver>(c: &RunsClient, run: &str, want: &str) -> String {
    let mut state = String::new();
    for _ in 0..200 {
        let listed: ListRunsResponse = D::block_on(c.unary(
            "GatewayService",
            "ListRuns",
            &ListRunsRequest {
                v: 1,
                limit: 500,
                ..Default::default()
            },
        ))
        .expect("ListRuns");
        state = listed
            .runs
            .iter()
            .find(|r| r.run_id.as_ref().unwrap().ulid == run)
            .map(|r| r.state.clone())
            .unwrap_or_default();
        if state == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    state
}

fn replay<D: Driver>(c: &RunsClient, run: &str) -> Vec<RunStreamEvent> {
    let mut call = open::<D>(c);
    send::<D>(
        &call,
        &RunStreamRequest {
            v: 1,
            run_id: canonical(run),
            attach: true,
            ..Default::default()
        },
    );
    collect::<D>(&mut call, |_, _| {}).0
}

/// Missing and bad credentials are UNAUTHENTICATED; a token without the scope is
/// PERMISSION_DENIED; another principal's runs are NOT_FOUND; narrowing works and widening is
/// refused.
pub fn principals_and_scopes<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let alice = token(&g, "user:alice", &["runs:write", "runs:read"]);
    let bob = token(&g, "user:bob", &["runs:write", "runs:read"]);
    let reader = token(&g, "user:carol", &["runs:read"]);
    let status_of = |token: &str, principal: Option<&str>, request: RunStreamRequest| {
        let c = client::<D>(&g, token, principal);
        let mut call = open::<D>(&c);
        send::<D>(&call, &request);
        collect::<D>(&mut call, |_, _| {})
    };
    let (_, s) = status_of("palyra_tok_bogus_x", None, first(&new_id(), "k", "hi"));
    assert_eq!(s.code, Code::Unauthenticated, "{s:?}");
    let (_, s) = status_of("not-a-token", None, first(&new_id(), "k", "hi"));
    assert_eq!(s.code, Code::Unauthenticated);
    let (_, s) = status_of(&reader, None, first(&new_id(), "k", "hi"));
    assert_eq!(s.code, Code::PermissionDenied);
    assert!(s.message.contains("runs:write"), "{}", s.message);
    let run = new_id();
    let (events, s) = status_of(&alice, None, first(&run, "k", "hi"));
    assert_eq!(s.code, Code::Ok);
    assert!(last_status(&events).contains("completed"));
    assert!(
        matches!(&events[0].body, Some(Body::Status(st)) if st.message.contains("principal=user:alice"))
    );
    let attach = RunStreamRequest {
        v: 1,
        run_id: canonical(&run),
        attach: true,
        ..Default::default()
    };
    let (_, s) = status_of(&bob, None, attach.clone());
    assert_eq!(s.code, Code::NotFound, "bob cannot see alice's run");
    let (replayed, s) = status_of(&alice, None, attach.clone());
    assert_eq!((s.code, replayed.len()), (Code::Ok, events.len()));
    let (_, s) = status_of(ADMIN, None, attach.clone());
    assert_eq!(s.code, Code::Ok, "the admin sees every run");
    let (_, s) = status_of(ADMIN, Some("user:bob"), attach.clone());
    assert_eq!(
        s.code,
        Code::NotFound,
        "the admin narrowed to bob sees bob's runs only"
    );
    let (_, s) = status_of(&alice, Some("admin:local"), attach.clone());
    assert_eq!(s.code, Code::PermissionDenied, "narrowing never widens");
    let (_, s) = status_of(
        &alice,
        Some("user:alice/editor"),
        first(&new_id(), "k", "hi"),
    );
    assert_eq!(s.code, Code::Ok);
    let (_, s) = status_of(&alice, Some("user:alice/editor"), attach);
    assert_eq!(
        s.code,
        Code::NotFound,
        "a sub-principal sees only its own runs"
    );
    let c = client::<D>(&g, &bob, None);
    let abort: Result<AbortRunResponse, Status> = D::block_on(c.unary(
        "GatewayService",
        "AbortRun",
        &AbortRunRequest {
            v: 1,
            run_id: canonical(&run),
            reason: String::new(),
        },
    ));
    assert_eq!(abort.unwrap_err().code, Code::NotFound);
    let c = client::<D>(&g, &alice, None);
    let sessions: Result<ListSessionsResponse, Status> = D::block_on(c.unary(
        "GatewayService",
        "ListSessions",
        &ListSessionsRequest {
            v: 1,
            ..Default::default()
        },
    ));
    assert_eq!(sessions.unwrap_err().code, Code::PermissionDenied);
    // Without approvals:write a run's calls that need an approval are denied at once; a token
    // with it gets the request and answers it.
    let live = node(&g);
    let tool = r#"x [[tool:echo {"a":1}]]"#;
    let (events, s) = status_of(&alice, None, first(&new_id(), "k", tool));
    assert_eq!(s.code, Code::Ok);
    assert!(!kinds(&events).contains(&"approval_request".to_owned()));
    assert!(events.iter().any(|e| matches!(&e.body,
        Some(Body::ToolDecision(d)) if d.reason.contains("lacks the scope approvals:write"))));
    let approver = token(&g, "user:dana", &["runs:write", "approvals:write"]);
    let c = client::<D>(&g, &approver, None);
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "k", tool));
    let (events, s) = collect::<D>(&mut call, |event, call| {
        if let Some(a) = answer(event, true, ApprovalDecisionScope::Once) {
            send::<D>(call, &a);
        }
    });
    assert_eq!(s.code, Code::Ok);
    assert!(kinds(&events).contains(&"result".to_owned()));
    assert!(events
        .iter()
        .any(|e| matches!(&e.body, Some(Body::ToolResult(r)) if r.success)));
    live.store(false, Ordering::Release);
    // Revoked at once.
    let id = g
        .running
        .daemon()
        .tokens
        .list()
        .iter()
        .find(|t| t.principal == "user:bob")
        .unwrap()
        .token_id
        .clone();
    g.running
        .daemon()
        .tokens
        .revoke(&id, 5)
        .wait_blocking(Duration::from_secs(5))
        .unwrap()
        .unwrap();
    let (_, s) = status_of(&bob, None, first(&new_id(), "k", "hi"));
    assert_eq!(s.code, Code::Unauthenticated);
    assert!(s.message.contains("revoked"));
}

/// A provider that breaks off mid-stream fails the run with the reason (never DONE); without a
/// provider RunStream is FAILED_PRECONDITION naming the setting; the original's other RPCs are
/// UNIMPLEMENTED saying so.
pub fn failures_are_reported<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "f", "please [[cut]]"));
    let (events, status) = collect::<D>(&mut call, |_, _| {});
    assert_eq!(kinds(&events).last().unwrap(), "FAILED");
    assert_ne!(status.code, Code::Ok);
    assert!(!kinds(&events).contains(&"DONE".to_owned()));
    let unimplemented: Result<AbortRunResponse, Status> = D::block_on(c.unary(
        "GatewayService",
        "RouteMessage",
        &AbortRunRequest::default(),
    ));
    let s = unimplemented.unwrap_err();
    assert_eq!(s.code, Code::Unimplemented);
    assert!(
        s.message.contains("not served by this gateway"),
        "{}",
        s.message
    );
    let vault: Result<AbortRunResponse, Status> =
        D::block_on(c.unary("VaultService", "GetSecret", &AbortRunRequest::default()));
    assert_eq!(vault.unwrap_err().code, Code::Unimplemented);
    drop(c);
    drop(g);
    let g = gateway::<D>(false, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    let mut call = open::<D>(&c);
    send::<D>(&call, &first(&new_id(), "f", "hi"));
    let (_, status) = collect::<D>(&mut call, |_, _| {});
    assert_eq!(status.code, Code::FailedPrecondition);
    assert!(
        status.message.contains("[model] base_url"),
        "{}",
        status.message
    );
}

/// One admin API request on a fresh connection: (status, body).
fn admin_http(g: &Gateway, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(g.running.endpoints.http).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The gateway's own tools: an event published by a run reaches the node-plane log; a surface
/// patched by a run changes on the console.
pub fn gateway_tools_reach_the_other_planes<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    let run_with = |prompt: &str| {
        let mut call = open::<D>(&c);
        send::<D>(&call, &first(&new_id(), &new_id(), prompt));
        collect::<D>(&mut call, |event, call| {
            if let Some(a) = answer(event, true, ApprovalDecisionScope::Once) {
                send::<D>(call, &a);
            }
        })
    };
    let result = |events: &[RunStreamEvent]| {
        events
            .iter()
            .find_map(|e| match &e.body {
                Some(Body::ToolResult(r)) => Some(r.clone()),
                _ => None,
            })
            .expect("a tool result")
    };
    let (events, status) = run_with(
        r#"x [[tool:palyra_publish_event {"name":"deploy.requested","payload":{"v":2}}]]"#,
    );
    assert_eq!(status.code, Code::Ok);
    let published = result(&events);
    assert!(published.success, "{}", published.error);
    let seq = serde_json::from_slice::<serde_json::Value>(&published.output_json).unwrap()["seq"]
        .as_u64()
        .expect("seq");
    let log = g.running.daemon().hub().log();
    let stored =
        palyra_gateway::store::read_blocking(log.as_ref(), seq - 1, 1, 1 << 20).expect("read");
    let body: serde_json::Value = serde_json::from_slice(&stored[0].body).unwrap();
    assert_eq!(
        (body["name"].as_str(), body["device_id"].as_str()),
        (Some("deploy.requested"), Some("gateway"))
    );
    assert_eq!(body["payload"]["v"], 2);
    // A surface the admin made, patched by a run.
    let doc =
        r#"{"v":1,"surface":"ops","components":[{"id":"t","type":"text","props":{"value":"v1"}}]}"#;
    assert_eq!(admin_http(&g, "PUT", "/admin/v1/surfaces/ops", doc).0, 200);
    let (events, _) = run_with(
        r#"x [[tool:palyra_patch_surface {"surface":"ops","ops":[{"op":"replace","path":"/components/0/props/value","value":"v2"}]}]]"#,
    );
    let patched = result(&events);
    assert!(patched.success, "{}", patched.error);
    let (status, listed) = admin_http(&g, "GET", "/admin/v1/surfaces", "");
    assert_eq!(status, 200);
    assert!(listed.contains(r#""version":2"#), "{listed}");
    // A bad patch fails the tool, not the run.
    let (events, status) =
        run_with(r#"x [[tool:palyra_patch_surface {"surface":"nope","ops":[]}]]"#);
    assert_eq!(status.code, Code::Ok);
    assert!(
        result(&events).error.contains("not_found"),
        "{}",
        result(&events).error
    );
}

/// Console stream messages until one satisfies `stop` (included).
fn console_until(
    person: &mut crate::operator::StreamClient,
    mut stop: impl FnMut(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let msg = person.next_message();
        let done = stop(&msg);
        got.push(msg);
        if done {
            return got;
        }
    }
    panic!("not seen within 20 s; got {got:?}");
}

/// The text the agent's chat messages of a run add up to, by message id.
fn agent_texts(messages: &[serde_json::Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for m in messages {
        let id = m["message_id"].as_str().unwrap_or_default().to_owned();
        match m["type"].as_str() {
            Some("chat.message") if m["role"] == "agent" => {
                out.push((id, m["text"].as_str().unwrap_or_default().to_owned()))
            }
            Some("chat.delta") => {
                if let Some(entry) = out.iter_mut().find(|(i, _)| *i == id) {
                    entry.1.push_str(m["text"].as_str().unwrap_or_default());
                }
            }
            _ => {}
        }
    }
    out
}

/// A chat message in a console session is a run when a provider is configured: the reply
/// streams into the chat, an approval request is a card the operator decides on the stream,
/// the next message continues the session, `/cancel` cancels, and the admin API lists the runs
/// with their tapes.
pub fn console_chat_is_a_run<D: Driver>() {
    use serde_json::json;
    let g = gateway::<D>(true, Duration::from_secs(60));
    let live = node(&g);
    let http = g.running.endpoints.http;
    let mut person =
        crate::operator::StreamClient::connect(http, &crate::operator::console_login(http, ADMIN));
    person.send(json!({"type":"hello","resume":null}));
    person.until("snapshot.done");
    let say = |person: &mut crate::operator::StreamClient, id: &str, text: &str| {
        person.send(json!({"type":"chat.send","session_id":"main","client_msg_id":id,"text":text}))
    };

    say(&mut person, "c1", "hello run [[slow:40]]");
    let got = console_until(&mut person, |m| m["type"] == "chat.done");
    let texts = agent_texts(&got);
    assert_eq!(texts.len(), 1, "[{}] {got:?}", D::NAME);
    assert_eq!(texts[0].1, "You said: hello run [[slow:40]]");
    assert!(
        got.iter().filter(|m| m["type"] == "chat.delta").count() >= 2,
        "[{}] the reply streamed",
        D::NAME
    );

    say(&mut person, "c2", r#"now [[tool:echo {"x":1}]]"#);
    let got = console_until(&mut person, |m| {
        m["type"] == "a2ui.snapshot" && m["owner"] == "palyrad.runs"
    });
    let card = got.last().unwrap();
    let surface = card["surface"].as_str().unwrap().to_owned();
    assert!(surface.starts_with("approval-"), "{surface}");
    assert!(
        card["document"].to_string().contains("allow_once"),
        "{card}"
    );
    person.send(
        json!({"type":"a2ui.action","surface":surface,"component":"decide",
                       "action":"allow_once","value":{}}),
    );
    let mut ran = false;
    let got = console_until(&mut person, |m| {
        ran |= m["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("Tool echo ran"));
        ran && m["type"] == "chat.done"
    });
    let texts: Vec<String> = agent_texts(&got).into_iter().map(|t| t.1).collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("Tool echo ran: {\"x\":1}")),
        "[{}] {texts:?}",
        D::NAME
    );
    assert!(
        texts.iter().any(|t| t.starts_with("Tool echo said:")),
        "[{}] {texts:?}",
        D::NAME
    );
    assert!(
        got.iter().any(|m| m["type"] == "a2ui.snapshot"
            && m["surface"] == surface.as_str()
            && m["document"].to_string().contains("Allowed")),
        "[{}] the card shows the decision",
        D::NAME
    );

    say(&mut person, "c3", "[[slow:100]] [[tokens:200]]");
    console_until(&mut person, |m| {
        m["type"] == "chat.message" && m["role"] == "agent"
    });
    say(&mut person, "c4", "/cancel");
    console_until(&mut person, |m| {
        m["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("The run was cancelled: cancelled in the console"))
    });

    let (status, body) = admin_http(&g, "GET", "/admin/v1/runs", "");
    assert_eq!(status, 200, "{body}");
    let runs: serde_json::Value = serde_json::from_str(&body).unwrap();
    let runs = runs["runs"].as_array().unwrap();
    let states: Vec<&str> = runs.iter().map(|r| r["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["cancelled", "done", "done"], "[{}]", D::NAME);
    assert!(runs.iter().all(|r| r["origin"] == "console"));
    let session = runs[0]["session_id"].as_str().unwrap();
    assert!(
        runs.iter().all(|r| r["session_id"] == session),
        "one session"
    );
    let tool_run = runs[1]["run_id"].as_str().unwrap();
    let (status, body) = admin_http(&g, "GET", &format!("/admin/v1/runs/{tool_run}"), "");
    assert_eq!(status, 200, "{body}");
    let tape: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        tape["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "tool_approval_response"
                && e["approved"] == true
                && e["reason"] == "approved in the console"),
        "{body}"
    );
    assert_eq!(
        admin_http(&g, "GET", "/admin/v1/runs/01ARZ3NDEKTSV4RRFFQ69G5FAZ", "").0,
        404
    );
    live.store(false, Ordering::Release);
}

/// A paired device's certificate on the node TLS listener is the principal `node:<device_id>`:
/// it runs agents in its own sessions (tools needing an approval are denied, since it cannot
/// give one), sees only its own runs, and is refused once revoked; the admin sees its runs.
pub fn devices_are_node_principals<D: Driver>() {
    use palyra_gateway::store::IdentityDir;
    const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FB1";
    let dir = tempfile::tempdir().expect("dir");
    let ids = IdentityDir::open(dir.path().join("state").join("identity")).expect("identity");
    let bundle = ids
        .issue_device(
            &mut OsRng,
            std::time::SystemTime::now(),
            DEVICE,
            Duration::from_secs(3600),
        )
        .expect("device certificate");
    let g = gateway_in::<D>(dir, true, Duration::from_secs(60));
    let live = node(&g);
    let node_tcp = g.running.endpoints.node_tcp;
    let connect = |token: Option<&str>, with_cert: bool| {
        let tls = crate::client_tls(
            with_cert.then_some(&bundle),
            &bundle.ca_pem,
            palyra_proto::quic::tls::ALPN_H2,
        );
        let channel = D::block_on(
            palyra_gateway::serve::grpc_channel::GrpcChannel::connect_tls(
                &D::runtime(),
                node_tcp,
                "localhost",
                tls,
            ),
        )
        .expect("node TLS");
        RunsClient::over(channel, token, None)
    };
    let device = connect(None, true);
    let mut call = open::<D>(&device);
    send::<D>(
        &call,
        &first(&new_id(), "edge", r#"from the node [[tool:echo {"a":1}]]"#),
    );
    let (events, status) = collect::<D>(&mut call, |_, _| {});
    assert_eq!(status.code, Code::Ok, "[{}] {status:?}", D::NAME);
    assert!(
        matches!(&events[0].body, Some(Body::Status(s)) if s.message.contains(&format!("principal=node:{DEVICE}"))),
        "{:?}",
        events[0]
    );
    assert!(
        !kinds(&events).contains(&"approval_request".to_owned()),
        "no approval request for a caller that cannot answer: {:?}",
        kinds(&events)
    );
    let denied = events.iter().find_map(|e| match &e.body {
        Some(Body::ToolDecision(d)) => Some(d.reason.clone()),
        _ => None,
    });
    assert!(
        denied
            .as_deref()
            .is_some_and(|r| r.contains("approvals:write")),
        "{denied:?}"
    );
    // Its runs are its own: the admin sees them, a token's principal does not.
    let listed: ListRunsResponse = D::block_on(device.unary(
        "GatewayService",
        "ListRuns",
        &ListRunsRequest {
            v: 1,
            ..Default::default()
        },
    ))
    .expect("ListRuns as the device");
    assert_eq!(listed.runs.len(), 1);
    let admin = client::<D>(&g, ADMIN, None);
    let all: ListRunsResponse = D::block_on(admin.unary(
        "GatewayService",
        "ListRuns",
        &ListRunsRequest {
            v: 1,
            ..Default::default()
        },
    ))
    .expect("ListRuns as the admin");
    assert!(all
        .runs
        .iter()
        .any(|r| r.principal == format!("node:{DEVICE}")));
    // Without a certificate or token: UNAUTHENTICATED. A device may narrow, never widen.
    let anonymous = connect(None, false);
    let mut call = open::<D>(&anonymous);
    send::<D>(&call, &first(&new_id(), "edge", "hi"));
    assert_eq!(
        collect::<D>(&mut call, |_, _| {}).1.code,
        Code::Unauthenticated
    );
    let channel = D::block_on(
        palyra_gateway::serve::grpc_channel::GrpcChannel::connect_tls(
            &D::runtime(),
            node_tcp,
            "localhost",
            crate::client_tls(
                Some(&bundle),
                &bundle.ca_pem,
                palyra_proto::quic::tls::ALPN_H2,
            ),
        ),
    )
    .expect("node TLS");
    let widened = RunsClient::over(channel, None, Some("admin:local"));
    let mut call = open::<D>(&widened);
    send::<D>(&call, &first(&new_id(), "edge", "hi"));
    assert_eq!(
        collect::<D>(&mut call, |_, _| {}).1.code,
        Code::PermissionDenied
    );
    // The admin token works on this listener too.
    let as_admin = connect(Some(ADMIN), false);
    let mut call = open::<D>(&as_admin);
    send::<D>(&call, &first(&new_id(), "edge", "hi"));
    assert_eq!(collect::<D>(&mut call, |_, _| {}).1.code, Code::Ok);
    live.store(false, Ordering::Release);
}

/// One connection serves any number of runs one after the other, the client never
/// half-closing: a finished RunStream frees its HTTP/2 stream (250 runs, past the limit of 100
/// streams at once) and its end is no "reset" toward the rapid-reset limit (200 per 10 s).
pub fn a_connection_serves_any_number_of_runs<D: Driver>() {
    let g = gateway::<D>(true, Duration::from_secs(60));
    let c = client::<D>(&g, ADMIN, None);
    for i in 0..250 {
        let mut call = open::<D>(&c);
        send::<D>(&call, &first(&new_id(), "many", "hi"));
        let (_, status) = collect::<D>(&mut call, |_, _| {});
        assert_eq!(status.code, Code::Ok, "[{}] run {i}: {status:?}", D::NAME);
    }
}

/// One HTTP/1.1 request on a fresh connection (closed after it): the status, the head's
/// lower-case text and the body (de-chunked).
fn http_call(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let auth = key.map_or(String::new(), |k| format!("authorization: Bearer {k}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").expect("a head");
    let head = head.to_ascii_lowercase();
    let status = head[9..12].parse().expect("status");
    let body = if head.contains("transfer-encoding: chunked") {
        let mut body = String::new();
        let mut rest = rest;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
            if size == 0 {
                break;
            }
            body.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        body
    } else {
        rest.to_owned()
    };
    (status, head, body)
}

/// The OpenAI-compatible API: keys, errors in OpenAI's envelope with an `x-request-id`,
/// completions as JSON and as a stream of chunks, responses, and runs of the key's principal;
/// a caller that disconnects cancels its run.
pub fn openai_api_is_a_run<D: Driver>() {
    use serde_json::Value;
    let g = gateway::<D>(true, Duration::from_secs(60));
    let http = g.running.endpoints.http;
    let key = token(&g, "user:oa", &["openai:use"]);
    let json = |s: &str| serde_json::from_str::<Value>(s).expect("JSON");

    let (status, head, body) = http_call(http, "GET", "/v1/models", None, "");
    assert_eq!(status, 401, "[{}] {body}", D::NAME);
    assert!(head.contains("x-request-id: req_") && head.contains("www-authenticate: bearer"));
    assert_eq!(json(&body)["error"]["code"], "invalid_api_key");
    let (status, _, body) = http_call(http, "GET", "/v1/models", Some(ADMIN), "");
    assert_eq!(status, 401, "the admin token is not an API key: {body}");
    let narrow = token(&g, "user:oa", &["runs:read"]);
    assert_eq!(
        http_call(http, "GET", "/v1/models", Some(&narrow), "").0,
        403
    );
    let (status, head, body) = http_call(http, "GET", "/v1/nope", Some(&key), "");
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, "unknown_url".into())
    );
    assert!(head.contains("x-request-id: req_"));
    let (status, head, _) = http_call(http, "GET", "/v1/chat/completions", Some(&key), "");
    assert!(status == 405 && head.contains("allow: post"), "{head}");
    let (status, _, body) = http_call(http, "GET", "/v1/models", Some(&key), "");
    let ids: Vec<Value> = json(&body)["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(
        (status, ids),
        (200, vec!["palyra-agent".into(), "scripted".into()])
    );

    let ask = |model: &str, text: &str, extra: &str| {
        format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"{text}"}}]{extra}}}"#)
    };
    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask("scripted", "hi there", ""),
    );
    let answer = json(&body);
    assert_eq!(status, 200, "[{}] {body}", D::NAME);
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "You said: hi there"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    assert_eq!(answer["usage"]["total_tokens"], 2 + 4);
    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask("scripted", "x", r#","n":3"#),
    );
    assert_eq!(
        (status, json(&body)["error"]["param"].clone()),
        (400, "n".into())
    );
    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask("gpt-x", "x", ""),
    );
    assert_eq!(
        (status, json(&body)["error"]["code"].clone()),
        (404, "model_not_found".into())
    );

    let (status, head, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask(
            "palyra-agent",
            "stream me",
            r#","stream":true,"stream_options":{"include_usage":true}"#,
        ),
    );
    assert!(
        status == 200 && head.contains("content-type: text/event-stream"),
        "{head}"
    );
    let events: Vec<&str> = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| json(e)).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "You said: stream me");
    let finishes: Vec<&Value> = chunks
        .iter()
        .map(|c| &c["choices"][0]["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finishes, [&Value::from("stop")]);
    let last = chunks.last().unwrap();
    assert!(
        last["choices"].as_array().unwrap().is_empty() && last["usage"]["total_tokens"] == 2 + 4,
        "{last}"
    );

    // A run that breaks off after the stream started: an error event, never a finish.
    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask("scripted", "[[error]]", r#","stream":true"#),
    );
    assert_eq!(status, 200);
    let error = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .find(|e| e.starts_with("{\"error\""))
        .unwrap_or_else(|| panic!("[{}] no error event in {body}", D::NAME));
    assert!(
        json(error)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mid-stream"),
        "{error}"
    );
    assert!(!body.contains("\"finish_reason\":\"stop\""), "{body}");
    // Before it started: an error status.
    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/chat/completions",
        Some(&key),
        &ask("scripted", "[[cut]]", ""),
    );
    assert_eq!(
        (status, json(&body)["error"]["type"].clone()),
        (502, "server_error".into()),
        "{body}"
    );

    let (status, _, body) = http_call(
        http,
        "POST",
        "/v1/responses",
        Some(&key),
        r#"{"model":"scripted","input":"hello"}"#,
    );
    let response = json(&body);
    assert_eq!(
        (status, response["status"].clone()),
        (200, "completed".into()),
        "{body}"
    );
    assert_eq!(
        response["output"][0]["content"][0]["text"],
        "You said: hello"
    );

    // A caller that goes away mid-stream cancels its run.
    {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(http).expect("connect");
        let body = ask(
            "scripted",
            "[[tokens:2000]] [[slow:10]] gone",
            r#","stream":true"#,
        );
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("write");
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("t3 ") {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "the stream ended early");
            seen.extend_from_slice(&buf[..n]);
        }
    }
    let engine = &g.running.daemon().runs;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let runs = engine.list(&palyra_gateway::access::Caller::admin(), 100);
        let gone = runs.iter().find(|r| r.meta.prompt.ends_with("gone"));
        if gone.is_some_and(|r| r.state == "cancelled") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[{}] {gone:?}",
            D::NAME
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let runs = engine.list(&palyra_gateway::access::Caller::admin(), 100);
    assert!(runs
        .iter()
        .filter(|r| r.meta.origin.starts_with("openai:"))
        .all(|r| r.meta.principal == "user:oa"));
    assert!(
        runs.iter()
            .filter(|r| r.meta.origin.starts_with("openai:"))
            .count()
            >= 4
    );
    drop(g);
}

/// A caller that stops reading an OpenAI-compatible stream holds the run's provider call back:
/// the run's tape stops growing (it runs at most a window ahead of what the caller took), and
/// once the caller reads again the whole answer arrives.
pub fn a_slow_openai_reader_holds_the_provider_back<D: Driver>() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let g = gateway::<D>(true, Duration::from_secs(60));
    let http = g.running.endpoints.http;
    let key = token(&g, "user:slow", &["openai:use"]);
    let total = 100_000;
    let mut stream = std::net::TcpStream::connect(http).expect("connect");
    // A small receive buffer, so that the kernel holds little of the answer for us.
    let size: libc::c_int = 16 * 1024;
    // SAFETY: setsockopt on an open socket with a pointer to a c_int of the given size.
    let set = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "SO_RCVBUF");
    let body = format!(
        r#"{{"model":"scripted","stream":true,"messages":[{{"role":"user","content":"[[tokens:{total}]] slow reader"}}]}}"#
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("t10 ") {
        let n = stream.read(&mut buf).expect("read");
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    // The caller stops reading.
    let engine = &g.running.daemon().runs;
    let admin = palyra_gateway::access::Caller::admin();
    let tape = || {
        let runs = engine.list(&admin, 10);
        let run = runs
            .iter()
            .find(|r| r.meta.prompt.ends_with("slow reader"))
            .expect("the run");
        (run.events as usize, run.state)
    };
    // Its tape stops growing: two looks half a second apart agree, well before the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = tape();
    let held = loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = tape();
        assert_eq!(
            now.1,
            "in_progress",
            "[{}] the run went on: {now:?}",
            D::NAME
        );
        if now == last {
            break now.0;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[{}] the tape kept growing while the caller did not read: {now:?}",
            D::NAME
        );
        last = now;
    };
    assert!(
        held < total / 2,
        "[{}] the tape held at {held} of {total} events, not near what the caller took",
        D::NAME
    );
    // Reading again, the whole answer arrives.
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).expect("read");
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.contains(&format!("t{} ", total - 1)),
        "[{}] the answer's end is missing",
        D::NAME
    );
    assert!(text.contains("\"finish_reason\":\"stop\"") && text.contains("data: [DONE]"));
    assert_eq!(tape().1, "done");
}
