use super::*;
use proptest::prelude::*;

fn tool(name: &str, approval: bool, sensitive: bool) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: format!("the {name} tool"),
        parameters: json!({"type": "object"}),
        approval_required: approval,
        sensitive,
    }
}

fn settings(tools: Vec<ToolSpec>) -> RunSettings {
    let mut n = 0u32;
    RunSettings {
        max_tool_calls: 2,
        approval_timeout: Duration::from_secs(60),
        ..RunSettings::new(
            tools,
            Box::new(move || {
                n += 1;
                format!("ID{n:024}")
            }),
        )
    }
}

fn call(id: &str, name: &str, args: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: args.into(),
    }
}

/// A compact name of each event, for order assertions.
fn names(m: &mut RunMachine) -> Vec<String> {
    std::iter::from_fn(|| m.poll_event())
        .map(|b| match b {
            Body::ModelToken(t) if t.is_final => "final".into(),
            Body::ModelToken(t) => format!("token:{}", t.token),
            Body::Status(s) => format!(
                "status:{}",
                StatusKind::try_from(s.kind).unwrap().as_str_name()
            ),
            Body::ToolProposal(p) => format!("proposal:{}", p.tool_name),
            Body::ToolApprovalRequest(r) => format!("approval_request:{}", r.tool_name),
            Body::ToolApprovalResponse(r) => format!("approval_response:{}", r.approved),
            Body::ToolDecision(d) => format!(
                "decision:{}",
                DecisionKind::try_from(d.kind).unwrap().as_str_name()
            ),
            Body::ToolResult(r) => format!("result:{}", r.success),
            Body::ToolAttestation(_) => "attestation".into(),
            Body::JournalEvent(j) if j.kind == EventKind::RunCompleted as i32 => "completed".into(),
            Body::JournalEvent(_) => "not_completed".into(),
            other => format!("{other:?}"),
        })
        .collect()
}

fn actions(m: &mut RunMachine) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn finish(m: &mut RunMachine, now: Instant, calls: &[ToolCall]) {
    let reason = if calls.is_empty() {
        FinishReason::Stop
    } else {
        FinishReason::ToolCalls
    };
    m.handle_model_finished(now, 1_000, &reason, calls);
    if calls.is_empty() {
        m.handle_model_ended();
    }
}

#[test]
fn a_text_answer_streams_and_is_done() {
    let now = Instant::now();
    let mut m = RunMachine::start(settings(vec![]), vec![], "hi");
    assert!(
        matches!(&actions(&mut m)[..], [Action::CallModel { messages, .. }] if messages.len() == 1)
    );
    m.handle_token("Hel");
    m.handle_token("lo");
    finish(&mut m, now, &[]);
    assert_eq!(
        names(&mut m),
        [
            "status:STATUS_KIND_IN_PROGRESS",
            "token:Hel",
            "token:lo",
            "final",
            "completed",
            "status:STATUS_KIND_DONE"
        ]
    );
    assert_eq!(m.ending(), Some(&Ending::Done));
    assert_eq!(actions(&mut m), [Action::Stop]);
    assert_eq!(
        m.transcript(),
        [
            json!({"role":"user","content":"hi"}),
            json!({"role":"assistant","content":"Hello"})
        ]
    );
}

#[test]
fn a_tool_without_approval_runs_and_its_result_goes_back_to_the_model() {
    let now = Instant::now();
    let mut m = RunMachine::start(settings(vec![tool("echo", false, false)]), vec![], "go");
    actions(&mut m);
    finish(&mut m, now, &[call("c1", "echo", "{\"x\":1}")]);
    assert_eq!(
        names(&mut m)[1..],
        ["final", "proposal:echo", "decision:DECISION_KIND_ALLOW"]
    );
    let run = actions(&mut m);
    let [Action::RunTool {
        proposal_id,
        name,
        input_json,
    }] = &run[..]
    else {
        panic!("{run:?}")
    };
    assert_eq!(
        (name.as_str(), input_json.as_slice()),
        ("echo", &b"{\"x\":1}"[..])
    );
    m.handle_tool_result(
        now,
        2_000,
        proposal_id,
        true,
        b"{\"y\":2}".to_vec(),
        String::new(),
        false,
        "node:N",
    );
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    let Body::ToolAttestation(a) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        a.execution_sha256,
        execution_sha256("echo", b"{\"x\":1}", b"{\"y\":2}")
    );
    assert_eq!(a.executor, "node:N");
    let next = actions(&mut m);
    let [Action::CallModel { messages, .. }] = &next[..] else {
        panic!("{next:?}")
    };
    assert_eq!(
        messages.last().unwrap(),
        &json!({"role":"tool","tool_call_id":"c1","content":"{\"y\":2}"})
    );
    assert_eq!(messages[1]["tool_calls"][0]["function"]["name"], "echo");
    finish(&mut m, now, &[]);
    assert_eq!(m.ending(), Some(&Ending::Done));
}

fn approval(m: &RunMachine, approved: bool, scope: ApprovalDecisionScope) -> ToolApprovalResponse {
    let (proposal, approval) = m.pending_approval().unwrap();
    ToolApprovalResponse {
        proposal_id: id(proposal),
        approved,
        reason: String::new(),
        approval_id: id(approval),
        decision_scope: scope as i32,
        decision_scope_ttl_ms: 0,
    }
}

fn waiting_for_approval(s: RunSettings) -> (RunMachine, Instant) {
    let now = Instant::now();
    let mut m = RunMachine::start(s, vec![], "go");
    actions(&mut m);
    finish(&mut m, now, &[call("c1", "shell", "{}")]);
    assert_eq!(
        names(&mut m)[2..],
        ["proposal:shell", "approval_request:shell"]
    );
    assert_eq!(m.poll_timeout(), Some(now + Duration::from_secs(60)));
    (m, now)
}

#[test]
fn allow_once_runs_the_call_and_caches_nothing() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    let answer = approval(&m, true, ApprovalDecisionScope::Once);
    m.handle_approval(now, 1_000, &answer);
    assert_eq!(
        names(&mut m),
        ["approval_response:true", "decision:DECISION_KIND_ALLOW"]
    );
    assert!(matches!(&actions(&mut m)[..], [Action::RunTool { .. }]));
}

#[test]
fn allow_for_the_session_is_remembered_and_applies_to_the_next_call() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    let answer = approval(&m, true, ApprovalDecisionScope::Session);
    m.handle_approval(now, 1_000, &answer);
    names(&mut m);
    let run = actions(&mut m);
    assert_eq!(
        run[0],
        Action::Remember(CachedDecision {
            tool: "shell".into(),
            allow: true,
            until_unix_ms: None
        })
    );
    let Action::RunTool { proposal_id, .. } = &run[1] else {
        panic!()
    };
    m.handle_tool_result(
        now,
        1_000,
        proposal_id,
        true,
        b"1".to_vec(),
        String::new(),
        false,
        "x",
    );
    names(&mut m);
    actions(&mut m);
    finish(&mut m, now, &[call("c2", "shell", "{}")]);
    assert_eq!(
        names(&mut m)[1..],
        ["proposal:shell", "decision:DECISION_KIND_ALLOW"]
    );
}

#[test]
fn a_timeboxed_decision_expires() {
    let decisions = [CachedDecision {
        tool: "t".into(),
        allow: true,
        until_unix_ms: Some(5),
    }];
    assert_eq!(cached(&decisions, "t", 4), Some(true));
    assert_eq!(cached(&decisions, "t", 5), None);
    assert_eq!(cached(&decisions, "u", 1), None);
}

#[test]
fn deny_reports_the_refusal_to_the_model() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    let answer = approval(&m, false, ApprovalDecisionScope::Once);
    m.handle_approval(now, 1_000, &answer);
    assert_eq!(
        names(&mut m),
        [
            "approval_response:false",
            "decision:DECISION_KIND_DENY",
            "result:false"
        ]
    );
    let next = actions(&mut m);
    let [Action::CallModel { messages, .. }] = &next[..] else {
        panic!("{next:?}")
    };
    assert!(messages.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("denied"));
}

#[test]
fn a_timeout_denies() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    m.handle_timeout(now + Duration::from_secs(59), 1_000);
    assert!(names(&mut m).is_empty());
    m.handle_timeout(now + Duration::from_secs(60), 1_000);
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    let Body::ToolDecision(d) = &events[1] else {
        panic!("{events:?}")
    };
    assert!(d.reason.contains("timed out"), "{}", d.reason);
    assert_eq!(d.kind, DecisionKind::Deny as i32);
}

#[test]
fn a_mismatched_answer_is_an_error_decision_and_the_run_goes_on() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    let mut answer = approval(&m, true, ApprovalDecisionScope::Session);
    answer.proposal_id = id("SOMETHINGELSE");
    m.handle_approval(now, 1_000, &answer);
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    let Body::ToolDecision(d) = &events[1] else {
        panic!("{events:?}")
    };
    assert!(d.reason.contains("does not match"), "{}", d.reason);
    assert!(matches!(&actions(&mut m)[..], [Action::CallModel { .. }]));
    assert!(m.ending().is_none());
}

#[test]
fn a_half_close_denies_pending_and_later_approvals() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    m.handle_half_close(now, 1_000);
    assert_eq!(
        names(&mut m),
        [
            "approval_response:false",
            "decision:DECISION_KIND_DENY",
            "result:false"
        ]
    );
    actions(&mut m);
    finish(&mut m, now, &[call("c2", "shell", "{}")]);
    assert_eq!(
        names(&mut m)[1..],
        [
            "proposal:shell",
            "decision:DECISION_KIND_DENY",
            "result:false"
        ]
    );
}

#[test]
fn a_caller_that_cannot_approve_is_denied_at_once() {
    let now = Instant::now();
    let s = RunSettings {
        can_approve: false,
        ..settings(vec![tool("shell", true, false), tool("free", false, false)])
    };
    let mut m = RunMachine::start(s, vec![], "go");
    actions(&mut m);
    finish(&mut m, now, &[call("a", "shell", "{}")]);
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(
        !events
            .iter()
            .any(|b| matches!(b, Body::ToolApprovalRequest(_))),
        "no request that nobody can answer"
    );
    let reason = events
        .iter()
        .find_map(|b| match b {
            Body::ToolDecision(d) => Some(d.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("approvals:write"), "{reason}");
    // A tool that needs no approval still runs.
    actions(&mut m);
    finish(&mut m, now, &[call("b", "free", "{}")]);
    names(&mut m);
    assert!(matches!(m.poll_action(), Some(Action::RunTool { .. })));
}

#[test]
fn policy_refuses_unknown_sensitive_over_budget_and_malformed_calls() {
    let now = Instant::now();
    let tools = vec![tool("echo", false, false), tool("secret", false, true)];
    let mut m = RunMachine::start(settings(tools), vec![], "go");
    actions(&mut m);
    finish(
        &mut m,
        now,
        &[
            call("a", "nope", "{}"),
            call("b", "secret", "{}"),
            call("c", "echo", "{not json"),
        ],
    );
    let reasons: Vec<String> = std::iter::from_fn(|| m.poll_event())
        .filter_map(|b| match b {
            Body::ToolDecision(d) => Some(d.reason),
            _ => None,
        })
        .collect();
    assert!(reasons[0].contains("unknown tool"));
    assert!(reasons[1].contains("sensitive"));
    assert!(reasons[2].contains("not valid JSON"));
    // The budget (2 calls) is spent by two allowed calls; the third is refused.
    for id in ["d", "e"] {
        actions(&mut m);
        finish(&mut m, now, &[call(id, "echo", "{}")]);
        names(&mut m);
        let Some(Action::RunTool { proposal_id, .. }) = m.poll_action() else {
            panic!()
        };
        let ok = b"1".to_vec();
        m.handle_tool_result(now, 1, &proposal_id, true, ok, String::new(), false, "x");
    }
    actions(&mut m);
    finish(&mut m, now, &[call("f", "echo", "{}")]);
    let decision = std::iter::from_fn(|| m.poll_event())
        .find_map(|b| match b {
            Body::ToolDecision(d) => Some(d.reason),
            _ => None,
        })
        .unwrap();
    assert!(decision.contains("budget of 2 calls"), "{decision}");
}

#[test]
fn cancel_ends_the_run_and_stops_its_work() {
    let (mut m, now) = waiting_for_approval(settings(vec![tool("shell", true, false)]));
    m.cancel("cancelled by AbortRun");
    assert_eq!(
        names(&mut m),
        ["not_completed", "status:STATUS_KIND_CANCELLED"]
    );
    assert_eq!(actions(&mut m), [Action::Stop]);
    assert_eq!(m.poll_timeout(), None);
    m.handle_token("late");
    m.handle_timeout(now + Duration::from_secs(100), 1);
    assert!(names(&mut m).is_empty());
}

#[test]
fn a_failed_model_call_fails_the_run_and_a_cut_answer_is_never_done() {
    let mut m = RunMachine::start(settings(vec![]), vec![], "go");
    m.handle_token("partial");
    m.handle_model_failed(Code::Unavailable, "the stream broke off".into());
    assert_eq!(
        m.ending(),
        Some(&Ending::Failed(
            Code::Unavailable,
            "the stream broke off".into()
        ))
    );
    let mut m = RunMachine::start(settings(vec![]), vec![], "go");
    m.handle_model_finished(Instant::now(), 1, &FinishReason::Length, &[]);
    assert!(matches!(
        m.ending(),
        Some(Ending::Failed(Code::ResourceExhausted, _))
    ));
}

#[test]
fn input_during_a_turn_becomes_the_next_turn() {
    let mut m = RunMachine::start(
        settings(vec![]),
        vec![json!({"role":"user","content":"old"})],
        "a",
    );
    actions(&mut m);
    m.handle_input("b");
    finish(&mut m, Instant::now(), &[]);
    let next = actions(&mut m);
    let [Action::CallModel { messages, .. }] = &next[..] else {
        panic!("{next:?}")
    };
    assert_eq!(messages.len(), 4);
    assert_eq!(
        m.transcript().len(),
        3,
        "history is not part of the transcript"
    );
    finish(&mut m, Instant::now(), &[]);
    assert_eq!(m.ending(), Some(&Ending::Done));
}

proptest! {
    /// However the model's text is split into tokens, the run records the same answer.
    #[test]
    fn any_token_chunking_gives_the_same_answer(text in "[a-z ]{0,64}", cuts in proptest::collection::vec(0usize..64, 0..8)) {
        let mut m = RunMachine::start(settings(vec![]), vec![], "q");
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(text.len())).collect();
        points.push(0);
        points.push(text.len());
        points.sort_unstable();
        for pair in points.windows(2) {
            m.handle_token(&text[pair[0]..pair[1]]);
        }
        finish(&mut m, Instant::now(), &[]);
        let streamed: String = std::iter::from_fn(|| m.poll_event())
            .filter_map(|b| match b { Body::ModelToken(t) => Some(t.token), _ => None })
            .collect();
        prop_assert_eq!(&streamed, &text);
        prop_assert_eq!(&m.transcript()[1]["content"], &json!(text));
    }
}

fn outcome(events: &[Body]) -> Outcome {
    events
        .iter()
        .find_map(Outcome::from_event)
        .expect("a closing journal event")
}

#[test]
fn a_call_of_the_callers_function_ends_the_run_with_it() {
    let now = Instant::now();
    let mut s = settings(vec![tool("shell", true, false)]);
    s.client_tools = vec![tool("get_weather", false, false)];
    s.options.insert("temperature".into(), json!(0.5));
    let conversation = vec![
        json!({"role": "system", "content": "be brief"}),
        json!({"role": "user", "content": "weather?"}),
    ];
    let mut m = RunMachine::resume(s, conversation.clone(), 0);
    match &actions(&mut m)[..] {
        [Action::CallModel {
            messages,
            tools,
            options,
        }] => {
            assert_eq!(messages, &conversation);
            let names: Vec<&str> = tools
                .iter()
                .map(|t| t["function"]["name"].as_str().unwrap())
                .collect();
            assert_eq!(names, ["shell", "get_weather"]);
            assert_eq!(options["temperature"], 0.5);
        }
        other => panic!("{other:?}"),
    }
    m.handle_usage(Usage {
        prompt_tokens: 7,
        completion_tokens: 2,
        total_tokens: 9,
    });
    finish(
        &mut m,
        now,
        &[call("call_9", "get_weather", "{\"city\":\"Oslo\"}")],
    );
    m.handle_usage(Usage {
        prompt_tokens: 1,
        completion_tokens: 1,
        total_tokens: 2,
    });
    assert_eq!(
        m.ending(),
        None,
        "done once the call ends, its usage counted"
    );
    m.handle_model_ended();
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    assert_eq!(m.ending(), Some(&Ending::Done));
    assert_eq!(
        outcome(&events),
        Outcome {
            finish_reason: "tool_calls".into(),
            prompt_tokens: 8,
            completion_tokens: 3,
            tool_calls: vec![OutcomeCall {
                id: "call_9".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Oslo\"}".into()
            }],
        }
    );
    // Proposed and decided as the caller's, never run here.
    assert!(!actions(&mut m)
        .iter()
        .any(|a| matches!(a, Action::RunTool { .. })));
    let decision = events
        .iter()
        .find_map(|b| match b {
            Body::ToolDecision(d) => Some(d.reason.clone()),
            _ => None,
        })
        .unwrap();
    assert!(decision.contains("returned to the caller"), "{decision}");
}

#[test]
fn a_cut_answer_is_done_when_the_caller_set_the_limit() {
    let now = Instant::now();
    let mut s = settings(vec![]);
    s.length_is_done = true;
    let mut m = RunMachine::start(s, vec![], "write a poem");
    actions(&mut m);
    m.handle_token("Roses");
    m.handle_model_finished(now, 1, &FinishReason::Length, &[]);
    m.handle_model_ended();
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    assert_eq!(m.ending(), Some(&Ending::Done));
    assert_eq!(outcome(&events).finish_reason, "length");
    // Without it, a cut answer is a failure, and the outcome says it did not finish.
    let mut m = RunMachine::start(settings(vec![]), vec![], "write a poem");
    actions(&mut m);
    m.handle_model_finished(now, 1, &FinishReason::Length, &[]);
    m.handle_model_ended();
    let events: Vec<Body> = std::iter::from_fn(|| m.poll_event()).collect();
    assert!(matches!(m.ending(), Some(Ending::Failed(..))));
    assert_eq!(outcome(&events).finish_reason, "");
}

#[test]
fn an_answer_without_end_fails_the_run_at_its_limit() {
    let mut m = RunMachine::start(settings(vec![]), vec![], "go on forever");
    actions(&mut m);
    let chunk = "x".repeat(64 * 1024);
    for _ in 0..(MAX_ANSWER_BYTES / chunk.len()) {
        m.handle_token(&chunk);
    }
    assert_eq!(m.ending(), None);
    m.handle_token("one more");
    assert!(matches!(
        m.ending(),
        Some(Ending::Failed(Code::ResourceExhausted, _))
    ));
    assert_eq!(actions(&mut m), [Action::Stop]);
}
