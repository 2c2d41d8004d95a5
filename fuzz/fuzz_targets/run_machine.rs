//! The run machine takes any sequence of inputs (tokens, model finishes with tool calls,
//! approval answers, tool results, half-closes, timeouts, cancellations) without panicking; a
//! run that ended emits nothing more, and seqs of what it emitted are consistent with its end.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::run::machine::{RunMachine, RunSettings, ToolSpec};
use palyra_proto::openai::chat::{FinishReason, ToolCall};
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, CanonicalId, ToolApprovalResponse,
};
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    let mut n = 0u32;
    let tools = ["echo", "shell"]
        .iter()
        .enumerate()
        .map(|(i, name)| ToolSpec {
            name: (*name).into(),
            description: String::new(),
            parameters: serde_json::json!({"type": "object"}),
            approval_required: i == 1,
            sensitive: false,
        })
        .collect();
    let settings = RunSettings {
        max_tool_calls: 3,
        approval_timeout: Duration::from_secs(60),
        // Both kinds of caller: the input's length picks one.
        can_approve: data.len() % 2 == 0,
        ..RunSettings::new(
            tools,
            Box::new(move || {
                n += 1;
                format!("{n:026}")
            }),
        )
    };
    let start = Instant::now();
    let mut machine = RunMachine::start(settings, Vec::new(), "go");
    let mut ended_at = None;
    let mut emitted = 0usize;
    for (step, pair) in data.chunks(2).take(96).enumerate() {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        let now = start + Duration::from_secs(u64::from(arg));
        let pending = machine
            .pending_approval()
            .map(|(p, a)| (p.to_owned(), a.to_owned()));
        match op % 8 {
            0 => machine.handle_token(&"x".repeat(usize::from(arg % 4))),
            1 => {
                let calls: Vec<ToolCall> = (0..arg % 3)
                    .map(|i| ToolCall {
                        id: format!("c{step}{i}"),
                        name: if arg & 4 == 0 { "echo" } else { "shell" }.into(),
                        arguments: if arg & 8 == 0 { "{}" } else { "{" }.into(),
                    })
                    .collect();
                let reason = if calls.is_empty() {
                    FinishReason::Stop
                } else {
                    FinishReason::ToolCalls
                };
                machine.handle_model_finished(now, 1, &reason, &calls);
                if arg & 16 == 0 {
                    machine.handle_model_ended();
                }
            }
            2 => {
                let answer = ToolApprovalResponse {
                    proposal_id: pending
                        .as_ref()
                        .map(|(p, _)| CanonicalId { ulid: p.clone() }),
                    approved: arg & 1 == 0,
                    reason: String::new(),
                    approval_id: pending
                        .as_ref()
                        .map(|(_, a)| CanonicalId { ulid: a.clone() }),
                    decision_scope: i32::from(arg % 4),
                    decision_scope_ttl_ms: i64::from(arg) * 1000,
                };
                machine.handle_approval(now, 1, &answer);
            }
            3 => {
                let action = machine.poll_action();
                if let Some(palyra_gateway::run::machine::Action::RunTool { proposal_id, .. }) =
                    action
                {
                    machine.handle_tool_result(
                        now,
                        1,
                        &proposal_id,
                        arg & 1 == 0,
                        b"{}".to_vec(),
                        String::new(),
                        false,
                        "x",
                    );
                }
            }
            4 => machine.handle_half_close(now, 1),
            5 => machine.handle_timeout(now, 1),
            6 => machine.handle_input("more"),
            _ => machine.cancel("fuzz"),
        }
        while machine.poll_action().is_some() {}
        while let Some(body) = machine.poll_event() {
            assert!(ended_at.is_none(), "an event after the run ended");
            // DONE, FAILED and CANCELLED (3, 4, 5) end the run: nothing may follow them.
            if matches!(&body, Body::Status(s) if (3..=5).contains(&s.kind)) {
                ended_at = Some(emitted);
            }
            emitted += 1;
        }
        if machine.ending().is_some() {
            assert!(machine.poll_timeout().is_none());
            assert!(
                ended_at.is_some(),
                "the run ended without its terminal status"
            );
        }
    }
});
