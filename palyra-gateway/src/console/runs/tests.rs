use super::*;
use palyra_proto::a2ui::state::ChatMessage;
use palyra_proto::pb::palyra::common::v1::{
    ApprovalPrompt, ModelToken, StreamStatus, ToolApprovalRequest, ToolDecision, ToolProposal,
    ToolResult,
};
use proptest::prelude::*;

const RUN: &str = "01J00000000000000000000RUN";
const PROPOSAL: &str = "01J000000000000000000PROPO";

fn id(ulid: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: ulid.to_owned(),
    })
}

fn user(session: &str, text: &str) -> Entry {
    Entry::Message(ChatMessage {
        session_id: session.into(),
        message_id: "u-7".into(),
        role: "user".into(),
        author: "operator".into(),
        text: text.into(),
        streaming: false,
        client_msg_id: Some("c1".into()),
        at_unix_ms: 1,
    })
}

fn action(surface: &str, action: &str, owner: &str) -> Entry {
    Entry::Action {
        surface: surface.into(),
        component: "decide".into(),
        action: action.into(),
        value: json!({}),
        owner: owner.into(),
        from: "operator".into(),
        at_unix_ms: 1,
    }
}

fn event(body: Body) -> RunStreamEvent {
    RunStreamEvent {
        v: 1,
        run_id: id(RUN),
        body: Some(body),
        seq: 0,
        timestamp_unix_ms: 0,
    }
}

fn token(text: &str) -> RunStreamEvent {
    event(Body::ModelToken(ModelToken {
        token: text.into(),
        is_final: false,
    }))
}

fn status(kind: StatusKind, message: &str) -> RunStreamEvent {
    event(Body::Status(StreamStatus {
        kind: kind as i32,
        message: message.into(),
    }))
}

fn approval_request() -> Vec<RunStreamEvent> {
    vec![
        event(Body::ToolProposal(ToolProposal {
            proposal_id: id(PROPOSAL),
            tool_name: "echo".into(),
            input_json: b"{\"a\":1}".to_vec(),
            approval_required: true,
        })),
        event(Body::ToolApprovalRequest(ToolApprovalRequest {
            proposal_id: id(PROPOSAL),
            approval_id: id("01J0000000000000000APPROVE"),
            tool_name: "echo".into(),
            input_json: b"{\"a\":1}".to_vec(),
            request_summary: "run echo".into(),
            prompt: Some(ApprovalPrompt {
                timeout_seconds: 60,
                ..Default::default()
            }),
            ..Default::default()
        })),
    ]
}

/// A mirror following run RUN in session `main`.
fn started() -> Mirror {
    let mut m = Mirror::new();
    m.console_record(&user("main", "hi"), || RUN.into());
    m.take_steps();
    m
}

/// The chat text the commands add up to, per message.
fn texts(commands: &[Command]) -> Vec<(String, String, bool)> {
    let mut out: Vec<(String, String, bool)> = Vec::new();
    for c in commands {
        match c {
            Command::Post {
                message_id,
                text,
                streaming,
                ..
            } => out.push((message_id.clone(), text.clone(), *streaming)),
            Command::Delta { message_id, text } => {
                let m = out.iter_mut().find(|m| &m.0 == message_id).expect("posted");
                assert!(m.2, "delta to a finished message");
                m.1.push_str(text);
            }
            Command::Done { message_id } => {
                out.iter_mut()
                    .find(|m| &m.0 == message_id)
                    .expect("posted")
                    .2 = false;
            }
            _ => {}
        }
    }
    out
}

fn surfaces(commands: &[Command]) -> Vec<Value> {
    commands
        .iter()
        .filter_map(|c| match c {
            Command::PutSurface { document, owner } => {
                assert_eq!(owner, OWNER);
                palyra_proto::a2ui::validate_document(document).expect("valid card");
                Some(document.clone())
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_message_starts_a_run_and_the_next_waits_for_it() {
    let mut m = Mirror::new();
    m.console_record(&user("main", "hello"), || RUN.into());
    assert_eq!(
        m.take_steps(),
        vec![Step::Start {
            session: "main".into(),
            run_id: RUN.into(),
            text: "hello".into()
        }]
    );
    m.console_record(&user("main", "and then?"), || panic!("no run yet"));
    assert!(m.take_steps().is_empty(), "queued behind the run");
    m.console_record(&user("ops", "elsewhere"), || "R2".into());
    assert_eq!(m.take_steps().len(), 1, "another session runs at once");
    m.run_events("main", &[status(StatusKind::Done, "done")], true, || {
        "R3".into()
    });
    assert_eq!(
        m.take_steps(),
        vec![Step::Start {
            session: "main".into(),
            run_id: "R3".into(),
            text: "and then?".into()
        }]
    );
}

#[test]
fn tokens_stream_into_one_message_with_one_delta_per_read() {
    let mut m = started();
    let mut commands = Vec::new();
    m.run_events(
        "main",
        &[token("Hel"), token("lo")],
        false,
        || unreachable!(),
    );
    commands.extend(m.take_commands());
    m.run_events(
        "main",
        &[token(" there"), token("!")],
        false,
        || unreachable!(),
    );
    commands.extend(m.take_commands());
    m.run_events(
        "main",
        &[status(StatusKind::Done, "")],
        true,
        || unreachable!(),
    );
    commands.extend(m.take_commands());
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert!(matches!(&commands[0], Command::Post { text, streaming: true, .. } if text == "Hello"));
    assert!(matches!(&commands[1], Command::Delta { text, .. } if text == " there!"));
    assert!(matches!(&commands[2], Command::Done { .. }));
    assert_eq!(
        texts(&commands),
        vec![(format!("run-{RUN}-1"), "Hello there!".into(), false)]
    );
    assert!(m.following().is_empty());
}

#[test]
fn an_approval_request_is_a_card_the_operator_decides() {
    let mut m = started();
    let mut events = vec![token("Calling.")];
    events.extend(approval_request());
    m.run_events("main", &events, false, || unreachable!());
    let commands = m.take_commands();
    let cards = surfaces(&commands);
    assert_eq!(cards.len(), 1);
    let surface = card_surface(PROPOSAL);
    assert_eq!(cards[0]["surface"], surface.as_str());
    let buttons = &cards[0]["components"][2]["props"]["buttons"];
    assert_eq!(buttons.as_array().map(Vec::len), Some(3));
    let chat = texts(&commands);
    assert_eq!(chat[0].1, "Calling.");
    assert!(!chat[0].2, "the reply so far is complete before the card");
    assert!(chat[1].1.contains("Waiting for approval to run echo"));

    m.console_record(&action(&surface, "allow_session", OWNER), || unreachable!());
    let steps = m.take_steps();
    let [Step::Approve { run_id, response }] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(run_id, RUN);
    assert!(response.approved);
    assert_eq!(
        response.decision_scope,
        ApprovalDecisionScope::Session as i32
    );
    assert_eq!(ulid_of(&response.approval_id), "01J0000000000000000APPROVE");
    assert_eq!(ulid_of(&response.proposal_id), PROPOSAL);

    m.run_events(
        "main",
        &[
            event(Body::ToolApprovalResponse(response.clone())),
            event(Body::ToolResult(ToolResult {
                proposal_id: id(PROPOSAL),
                success: true,
                output_json: b"{\"echo\":1}".to_vec(),
                error: String::new(),
            })),
        ],
        false,
        || unreachable!(),
    );
    let commands = m.take_commands();
    let cards = surfaces(&commands);
    assert_eq!(cards.len(), 1);
    let title = cards[0]["components"][0]["props"]["value"]
        .as_str()
        .unwrap();
    assert!(title.contains("Allowed"), "{title}");
    assert_eq!(cards[0]["components"].as_array().map(Vec::len), Some(2));
    assert!(texts(&commands)[0]
        .1
        .contains("Tool echo ran: {\"echo\":1}"));

    // A second click on the decided card answers nothing and says so.
    m.console_record(&action(&surface, "deny", OWNER), || unreachable!());
    assert!(m.take_steps().is_empty());
    let cards = surfaces(&m.take_commands());
    assert!(cards[0]["components"][0]["props"]["value"]
        .as_str()
        .unwrap()
        .contains("No longer waiting"));
}

#[test]
fn a_denial_and_a_run_ending_resolve_their_cards() {
    let mut m = started();
    m.run_events("main", &approval_request(), false, || unreachable!());
    m.take_commands();
    m.console_record(
        &action(&card_surface(PROPOSAL), "deny", OWNER),
        || unreachable!(),
    );
    let steps = m.take_steps();
    assert!(matches!(&steps[..], [Step::Approve { response, .. }] if !response.approved));
    m.run_events(
        "main",
        &[
            event(Body::ToolDecision(ToolDecision {
                proposal_id: id(PROPOSAL),
                kind: DecisionKind::Deny as i32,
                reason: "denied in the console".into(),
                ..Default::default()
            })),
            event(Body::ToolResult(ToolResult {
                proposal_id: id(PROPOSAL),
                success: false,
                output_json: Vec::new(),
                error: "denied: denied in the console".into(),
            })),
        ],
        false,
        || unreachable!(),
    );
    let commands = m.take_commands();
    assert!(surfaces(&commands)[0]["components"][0]["props"]["value"]
        .as_str()
        .unwrap()
        .contains("Denied"));
    let chat = texts(&commands);
    assert_eq!(chat.len(), 1, "one note for a denial: {chat:?}");
    assert!(chat[0].1.contains("Tool echo was not run"));

    // A card still open when the run ends is closed.
    let mut m = started();
    m.run_events("main", &approval_request(), false, || unreachable!());
    m.take_commands();
    m.run_events(
        "main",
        &[status(StatusKind::Cancelled, "cancelled in the console")],
        true,
        || unreachable!(),
    );
    let commands = m.take_commands();
    assert!(surfaces(&commands)[0]["components"][0]["props"]["value"]
        .as_str()
        .unwrap()
        .contains("the run ended"));
    assert!(texts(&commands)
        .iter()
        .any(|t| t.1 == "The run was cancelled: cancelled in the console"));
}

#[test]
fn cancel_failures_and_foreign_actions() {
    let mut m = Mirror::new();
    m.console_record(&user("main", " /cancel "), || unreachable!());
    assert!(m.take_steps().is_empty());
    assert!(texts(&m.take_commands())[0]
        .1
        .contains("No run is in progress"));

    let mut m = started();
    m.console_record(&user("main", "/cancel"), || unreachable!());
    assert_eq!(m.take_steps(), vec![Step::Cancel { run_id: RUN.into() }]);
    m.console_record(&action("deploy", "submit", "demo-agent"), || unreachable!());
    assert!(m.take_steps().is_empty() && m.take_commands().is_empty());

    m.run_events(
        "main",
        &[token("Part"), status(StatusKind::Failed, "upstream cut")],
        true,
        || unreachable!(),
    );
    let chat = texts(&m.take_commands());
    assert_eq!(chat[0], (format!("run-{RUN}-1"), "Part".into(), false));
    assert_eq!(chat[1].1, "The run failed: upstream cut");

    let mut m = started();
    m.start_failed(
        "main",
        RUN,
        &Status::new(palyra_proto::grpc::Code::Unavailable, "x"),
    );
    assert!(texts(&m.take_commands())[0]
        .1
        .contains("could not start: x"));
    assert!(m.following().is_empty());
}

#[test]
fn a_long_reply_continues_in_a_new_message() {
    let mut m = started();
    let piece = "x".repeat(MAX_TEXT / 4);
    let events: Vec<RunStreamEvent> = (0..(SPLIT_AT / piece.len() + 2))
        .map(|_| token(&piece))
        .collect();
    m.run_events("main", &events, true, || unreachable!());
    let commands = m.take_commands();
    let chat = texts(&commands);
    assert_eq!(chat.len(), 2);
    assert!(chat.iter().all(|c| c.1.len() <= SPLIT_AT && !c.2));
    assert_eq!(
        chat.iter().map(|c| c.1.len()).sum::<usize>(),
        events.len() * piece.len()
    );
    for c in &commands {
        if let Command::Delta { text, .. } | Command::Post { text, .. } = c {
            assert!(text.len() <= MAX_TEXT);
        }
    }
    assert!(m.queued.values().all(VecDeque::is_empty));
}

proptest! {
    /// However the tape is read (any split into reads), the chat shows the same messages.
    #[test]
    fn any_split_of_the_tape_gives_the_same_chat(
        words in proptest::collection::vec("[a-z ]{0,6}", 1..40),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        with_tool in any::<bool>(),
    ) {
        let mut tape: Vec<RunStreamEvent> = words.iter().map(|w| token(w)).collect();
        if with_tool {
            let at = tape.len() / 2;
            for (i, e) in approval_request().into_iter().enumerate() {
                tape.insert(at + i, e);
            }
        }
        tape.push(status(StatusKind::Done, ""));
        let whole = {
            let mut m = started();
            m.run_events("main", &tape, true, || unreachable!());
            texts(&m.take_commands())
        };
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(tape.len() + 1)).collect();
        points.push(0);
        points.push(tape.len());
        points.sort_unstable();
        points.dedup();
        let mut m = started();
        let mut commands = Vec::new();
        for pair in points.windows(2) {
            let last = pair[1] == tape.len();
            m.run_events("main", &tape[pair[0]..pair[1]], last, || unreachable!());
            commands.extend(m.take_commands());
        }
        prop_assert_eq!(texts(&commands), whole);
    }
}
