use super::types::{self, AttachedToTarget, Evaluate, RequestPaused};
use super::*;
use proptest::prelude::*;
use serde_json::json;

const SECOND: Duration = Duration::from_secs(1);

fn conn() -> CdpConnection {
    CdpConnection::new(CdpConfig::default())
}

fn events(c: &mut CdpConnection) -> Vec<CdpEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn sent(c: &mut CdpConnection) -> Vec<Value> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|b| {
            assert_eq!(b.last(), Some(&0), "pipe messages end with NUL");
            serde_json::from_slice(&b[..b.len() - 1]).unwrap()
        })
        .collect()
}

fn wire(messages: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        out.extend(serde_json::to_vec(m).unwrap());
        out.push(0);
    }
    out
}

#[test]
fn a_command_is_framed_and_its_answer_matched() {
    let now = Instant::now();
    let mut c = conn();
    let a = c
        .send_command(now, None, "Browser.getVersion", Value::Null, SECOND)
        .unwrap();
    let b = c
        .send_command(
            now,
            Some("S1"),
            "Runtime.evaluate",
            json!({"expression": "1+1"}),
            SECOND,
        )
        .unwrap();
    assert_ne!(a, b);
    let out = sent(&mut c);
    assert_eq!(out[0], json!({"id": a.0, "method": "Browser.getVersion"}));
    assert_eq!(
        out[1],
        json!({"id": b.0, "method": "Runtime.evaluate", "params": {"expression": "1+1"}, "sessionId": "S1"})
    );
    // Answers may come in any order.
    c.handle_input(
        now,
        &wire(&[
            json!({"id": b.0, "result": {"result": {"type": "number", "value": 2}}, "sessionId": "S1"}),
            json!({"id": a.0, "result": {"product": "HeadlessChrome/131"}}),
        ]),
    );
    let got = events(&mut c);
    let CdpEvent::Response { id, result: Ok(r) } = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(*id, b);
    let eval: Evaluate = types::decode(r).unwrap();
    assert_eq!(eval.result.value, json!(2));
    assert!(matches!(&got[1], CdpEvent::Response { id, result: Ok(_) } if *id == a));
    assert_eq!(c.pending(), 0);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn an_error_answer_carries_code_message_and_data() {
    let now = Instant::now();
    let mut c = conn();
    let id = c
        .send_command(now, None, "Page.navigate", json!({}), SECOND)
        .unwrap();
    c.handle_input(
        now,
        &wire(&[
            json!({"id": id.0, "error": {"code": -32602, "message": "Invalid parameters", "data": "Failed to deserialize params.url"}}),
        ]),
    );
    assert_eq!(
        events(&mut c),
        vec![CdpEvent::Response {
            id,
            result: Err(CdpError::Protocol {
                code: -32602,
                message: "Invalid parameters: Failed to deserialize params.url".into()
            })
        }]
    );
}

#[test]
fn events_are_routed_to_their_session_and_unknown_fields_and_events_pass() {
    let now = Instant::now();
    let mut c = conn();
    c.handle_input(
        now,
        &wire(&[
            json!({"method": "Target.attachedToTarget", "params": {
                "sessionId": "S9", "waitingForDebugger": false, "brandNewField": {"x": [1, 2]},
                "targetInfo": {"targetId": "T1", "type": "page", "title": "", "url": "about:blank",
                               "attached": true, "canAccessOpener": false, "inventedIn2031": true}}}),
            json!({"method": "Page.somethingFromTheFuture", "params": {"a": 1}, "sessionId": "S9"}),
            json!({"method": "Page.loadEventFired", "sessionId": "S9"}),
        ]),
    );
    let got = events(&mut c);
    assert_eq!(got.len(), 3);
    let CdpEvent::Event {
        session: None,
        method,
        params,
    } = &got[0]
    else {
        panic!("{got:?}")
    };
    assert_eq!(method, "Target.attachedToTarget");
    let attached: AttachedToTarget = types::decode(params).unwrap();
    assert_eq!(attached.session_id, "S9");
    assert_eq!(attached.target_info.target_id, "T1");
    assert_eq!(attached.target_info.kind, "page");
    assert!(
        matches!(&got[1], CdpEvent::Event { session: Some(s), method, .. } if s == "S9" && method == "Page.somethingFromTheFuture")
    );
    assert!(
        matches!(&got[2], CdpEvent::Event { params: Value::Null, method, .. } if method == "Page.loadEventFired")
    );
}

#[test]
fn garbage_and_unknown_shapes_are_counted_and_skipped() {
    let now = Instant::now();
    let mut c = conn();
    let id = c
        .send_command(now, None, "Target.getTargets", Value::Null, SECOND)
        .unwrap();
    let mut input = b"not json\0[1,2]\0{\"neither\":true}\0\0".to_vec();
    input.extend(wire(&[
        json!({"id": 99_999, "result": {}}),
        json!({"id": id.0, "result": {"targetInfos": []}}),
    ]));
    c.handle_input(now, &input);
    assert!(
        matches!(&events(&mut c)[..], [CdpEvent::Response { id: got, result: Ok(_) }] if *got == id)
    );
    let stats = c.stats();
    assert_eq!(
        stats.malformed, 3,
        "not json, an array and the empty message"
    );
    assert_eq!(stats.unknown, 1);
    assert_eq!(stats.late, 1);
    assert_eq!(stats.messages, 6);
}

#[test]
fn commands_time_out_and_a_late_answer_is_ignored() {
    let now = Instant::now();
    let mut c = conn();
    let id = c
        .send_command(now, None, "Page.navigate", json!({"url": "x"}), SECOND)
        .unwrap();
    assert_eq!(c.poll_timeout(), Some(now + SECOND));
    c.handle_timeout(now + Duration::from_millis(999));
    assert!(events(&mut c).is_empty());
    c.handle_timeout(now + SECOND);
    assert_eq!(
        events(&mut c),
        vec![CdpEvent::Response {
            id,
            result: Err(CdpError::Timeout {
                method: "Page.navigate".into()
            })
        }]
    );
    c.handle_input(now, &wire(&[json!({"id": id.0, "result": {}})]));
    assert!(events(&mut c).is_empty());
    assert_eq!(c.stats().late, 1);
}

#[test]
fn a_detached_session_fails_its_commands_at_once() {
    let now = Instant::now();
    let mut c = conn();
    let on_tab = c
        .send_command(now, Some("TAB"), "Runtime.evaluate", json!({}), SECOND)
        .unwrap();
    let on_browser = c
        .send_command(now, None, "Target.getTargets", Value::Null, SECOND)
        .unwrap();
    c.handle_input(
        now,
        &wire(&[
            json!({"method": "Target.detachedFromTarget", "params": {"sessionId": "TAB", "targetId": "T"}}),
        ]),
    );
    let got = events(&mut c);
    assert_eq!(
        got[0],
        CdpEvent::Response {
            id: on_tab,
            result: Err(CdpError::Detached)
        }
    );
    assert!(
        matches!(&got[1], CdpEvent::Event { method, .. } if method == "Target.detachedFromTarget")
    );
    assert_eq!(c.pending(), 1);
    c.handle_eof();
    assert_eq!(
        events(&mut c),
        vec![
            CdpEvent::Response {
                id: on_browser,
                result: Err(CdpError::Closed)
            },
            CdpEvent::Closed
        ]
    );
    assert_eq!(
        c.send_command(now, None, "Browser.close", Value::Null, SECOND),
        Err(CdpError::Closed)
    );
}

#[test]
fn an_oversized_answer_fails_its_command_and_the_stream_goes_on() {
    let now = Instant::now();
    let mut c = CdpConnection::new(CdpConfig {
        max_message: 1000,
        ..CdpConfig::default()
    });
    let big = c
        .send_command(now, None, "Page.captureScreenshot", Value::Null, SECOND)
        .unwrap();
    let next = c
        .send_command(now, None, "Browser.getVersion", Value::Null, SECOND)
        .unwrap();
    let input = wire(&[
        json!({"id": big.0, "result": {"data": "A".repeat(5000)}}),
        json!({"method": "Page.loadEventFired", "params": {"padding": "B".repeat(2000)}}),
        json!({"id": next.0, "result": {}}),
    ]);
    // In pieces smaller than the limit, so the machine sees the message grow past it.
    for piece in input.chunks(300) {
        c.handle_input(now, piece);
    }
    assert_eq!(
        events(&mut c),
        vec![
            CdpEvent::Response {
                id: big,
                result: Err(CdpError::TooBig { limit: 1000 })
            },
            CdpEvent::Response {
                id: next,
                result: Ok(json!({}))
            }
        ]
    );
    assert_eq!(c.stats().oversized, 2);
}

#[test]
fn the_pending_limit_is_enforced() {
    let now = Instant::now();
    let mut c = CdpConnection::new(CdpConfig {
        max_pending: 2,
        ..CdpConfig::default()
    });
    c.send_command(now, None, "A.a", Value::Null, SECOND)
        .unwrap();
    c.send_command(now, None, "A.b", Value::Null, SECOND)
        .unwrap();
    assert_eq!(
        c.send_command(now, None, "A.c", Value::Null, SECOND),
        Err(CdpError::TooManyPending)
    );
}

#[test]
fn message_framing_takes_whole_messages_without_nul() {
    let now = Instant::now();
    let mut c = CdpConnection::new(CdpConfig {
        framing: Framing::Messages,
        max_message: 100,
        ..CdpConfig::default()
    });
    let id = c
        .send_command(now, None, "Browser.getVersion", Value::Null, SECOND)
        .unwrap();
    let out = c.poll_transmit().unwrap();
    assert_ne!(out.last(), Some(&0));
    let huge = serde_json::to_vec(&json!({"id": id.0, "result": {"x": "y".repeat(200)}})).unwrap();
    c.handle_message(now, &huge);
    assert_eq!(
        events(&mut c),
        vec![CdpEvent::Response {
            id,
            result: Err(CdpError::TooBig { limit: 100 })
        }]
    );
}

#[test]
fn a_paused_request_decodes() {
    let params = json!({"requestId": "interception-1", "request": {"url": "http://10.0.0.1/", "method": "GET",
        "headers": {"Accept": "*/*"}, "initialPriority": "VeryHigh", "referrerPolicy": "no-referrer"},
        "frameId": "F", "resourceType": "Document", "networkId": "N1"});
    let paused: RequestPaused = types::decode(&params).unwrap();
    assert_eq!(paused.request.url, "http://10.0.0.1/");
    assert_eq!(paused.resource_type, "Document");
    assert_eq!(paused.network_id.as_deref(), Some("N1"));
}

#[test]
fn the_leading_id_is_read_only_from_a_well_formed_start() {
    assert_eq!(
        leading_id(br#"{"id":42,"result":{"data":"AAA"#),
        Some(CommandId(42))
    );
    assert_eq!(leading_id(br#" { "id" : 7 }"#), Some(CommandId(7)));
    assert_eq!(leading_id(br#"{"id":4"#), None, "the number may go on");
    assert_eq!(leading_id(br#"{"method":"X","id":3,"#), None);
    assert_eq!(leading_id(br#"{"id":"3","#), None);
}

proptest! {
    /// Any chunking of the browser's bytes gives the same events and counters.
    #[test]
    fn chunking_invariance(sizes in proptest::collection::vec(0usize..700, 1..8),
                           cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16)) {
        let now = Instant::now();
        let config = CdpConfig { max_message: 500, ..CdpConfig::default() };
        let fresh = || {
            let mut c = CdpConnection::new(config);
            let ids: Vec<CommandId> = (0..sizes.len())
                .map(|_| c.send_command(now, Some("S"), "Runtime.evaluate", Value::Null, SECOND).unwrap())
                .collect();
            (c, ids)
        };
        let (mut whole, ids) = fresh();
        let mut messages = Vec::new();
        for (i, (size, id)) in sizes.iter().zip(&ids).enumerate() {
            if i % 3 == 2 {
                messages.push(json!({"method": "Runtime.consoleAPICalled", "sessionId": "S",
                                     "params": {"type": "log", "pad": "e".repeat(*size)}}));
            }
            messages.push(json!({"id": id.0, "result": {"pad": "r".repeat(*size)}}));
        }
        let bytes = wire(&messages);
        whole.handle_input(now, &bytes);
        let expected = events(&mut whole);

        let (mut split, _) = fresh();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(bytes.len());
        points.sort_unstable();
        let mut start = 0;
        for p in points {
            split.handle_input(now, &bytes[start..p]);
            start = p;
        }
        prop_assert_eq!(events(&mut split), expected);
        prop_assert_eq!(split.stats(), whole.stats());
    }
}
