use super::*;
use proptest::prelude::*;
use std::sync::Arc;

/// A console log as the application would hold it: records with their routing tags.
#[derive(Default)]
struct Log {
    records: Vec<StoredEvent>,
    surfaces: HashMap<String, SurfaceInfo>,
}

impl Log {
    fn push(&mut self, tag: Option<&str>, body: Value) -> u64 {
        let seq = self.records.len() as u64 + 1;
        let mut body = body;
        body["cursor"] = json!({"boot": "b1", "seq": seq});
        self.records.push(StoredEvent {
            seq,
            to: tag.map(Arc::from),
            body: Bytes::from(body.to_string()),
        });
        seq
    }

    fn message(&mut self, session: &str, id: &str, text: &str) -> u64 {
        self.push(
            Some(&format!("msg:{session}")),
            json!({"type": "chat.message", "session_id": session, "message_id": id, "text": text}),
        )
    }

    fn delta(&mut self, session: &str, id: &str, text: &str) -> u64 {
        self.push(
            Some(&format!("delta:{session}")),
            json!({"type": "chat.delta", "session_id": session, "message_id": id, "text": text}),
        )
    }

    fn patch(&mut self, surface: &str, version: u64) -> u64 {
        self.surfaces.insert(
            surface.to_owned(),
            SurfaceInfo {
                surface: surface.to_owned(),
                version,
                owner: "agent".into(),
                document: json!({"v": 1, "surface": surface, "components": [], "n": version}),
                seq: self.records.len() as u64 + 1,
            },
        );
        self.push(
            Some(&format!("patch:{surface}")),
            json!({"type": "a2ui.patch", "surface": surface, "version": version}),
        )
    }

    fn head(&self) -> u64 {
        self.records.len() as u64
    }

    fn after(&self, after: u64, max: usize) -> &[StoredEvent] {
        let start = (after as usize).min(self.records.len());
        let end = start.saturating_add(max).min(self.records.len());
        &self.records[start..end]
    }
}

fn boots() -> Boots {
    Boots::new(vec![(1, "b1".into())])
}

/// The application's side: answers every event against `log`; publishes are recorded and
/// answered with `Published` at once. Returns what was sent (text messages as JSON).
struct App {
    log: Log,
    published: Vec<Command>,
    reads: usize,
    backlog: usize,
    /// The socket does not drain: what is sent stays queued.
    stuck: bool,
    start: Option<Start>,
}

impl App {
    fn new(log: Log) -> Self {
        Self {
            log,
            published: Vec::new(),
            reads: 0,
            backlog: 0,
            stuck: false,
            start: None,
        }
    }

    fn drive(&mut self, s: &mut PatchStream, now: Instant) -> Vec<Transmit> {
        let mut out = Vec::new();
        loop {
            s.handle_backlog(self.backlog);
            let mut sent = false;
            while let Some(t) = s.poll_transmit() {
                sent = true;
                if let (Transmit::Text(text), true) = (&t, self.stuck) {
                    self.backlog += text.len();
                }
                out.push(t);
            }
            if sent {
                continue;
            }
            match s.poll_event() {
                None => break,
                Some(StreamEvent::Hello { resume, .. }) => {
                    let start = self.start.take().unwrap_or(match resume {
                        Some((_, seq)) => Start::From(seq),
                        None => Start::Snapshot {
                            seq: self.log.head(),
                            reason: "fresh",
                            messages: vec![],
                        },
                    });
                    s.welcome(boots(), start);
                }
                Some(StreamEvent::Publish { ticket, commands }) => {
                    let answers = commands
                        .iter()
                        .map(|_| {
                            Ok(Published {
                                seq: 0,
                                id: "x".into(),
                                version: 0,
                            })
                        })
                        .collect();
                    self.published.extend(commands);
                    s.handle_published(ticket, answers);
                }
                Some(StreamEvent::Read {
                    after, max_records, ..
                }) => {
                    self.reads += 1;
                    let surfaces = &self.log.surfaces;
                    let records = self.log.after(after, max_records);
                    s.handle_records(now, records, self.log.head(), &|name| {
                        surfaces.get(name).cloned()
                    });
                }
            }
        }
        out
    }
}

fn texts(out: &[Transmit]) -> Vec<Value> {
    out.iter()
        .filter_map(|t| match t {
            Transmit::Text(b) => Some(serde_json::from_slice(b).expect("JSON")),
            Transmit::Close { .. } => None,
        })
        .collect()
}

fn kinds(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn close_of(out: &[Transmit]) -> Option<u16> {
    out.iter().find_map(|t| match t {
        Transmit::Close { code, .. } => Some(*code),
        Transmit::Text(_) => None,
    })
}

fn hello(resume: Option<u64>) -> String {
    match resume {
        Some(seq) => json!({"type": "hello", "resume": {"boot": "b1", "seq": seq}}).to_string(),
        None => json!({"type": "hello", "resume": null}).to_string(),
    }
}

#[test]
fn requests_before_hello_are_refused_and_hello_is_required_in_time() {
    let now = Instant::now();
    let mut s = PatchStream::new(Role::Console, now);
    let mut app = App::new(Log::default());
    s.handle_text(now, r#"{"type":"chat.send","ref":7}"#);
    let out = app.drive(&mut s, now);
    let msgs = texts(&out);
    assert_eq!(kinds(&msgs), ["error"]);
    assert_eq!(msgs[0]["ref"], 7);
    assert_eq!(msgs[0]["message"], "send hello first");
    assert_eq!(s.poll_timeout(), Some(now + HELLO_TIMEOUT));
    s.handle_timeout(now + HELLO_TIMEOUT);
    assert_eq!(close_of(&app.drive(&mut s, now)), Some(1008));
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn a_fresh_client_gets_welcome_snapshot_then_live_records() {
    let now = Instant::now();
    let mut log = Log::default();
    log.message("main", "m1", "before");
    let mut app = App::new(log);
    app.start = Some(Start::Snapshot {
        seq: 1,
        reason: "fresh",
        messages: vec![json!({"type": "chat.message", "text": "before"}).to_string()],
    });
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(None));
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(
        kinds(&msgs),
        ["welcome", "chat.message", "snapshot.done"],
        "{msgs:?}"
    );
    assert_eq!(msgs[0]["resumed"], false);
    assert_eq!(msgs[0]["cursor"], json!({"boot": "b1", "seq": 1}));
    // A record stored later reaches the client once the log grows.
    app.log.message("main", "m2", "live");
    assert!(
        texts(&app.drive(&mut s, now)).is_empty(),
        "caught up: no reads"
    );
    s.handle_log_grown();
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(kinds(&msgs), ["chat.message"]);
    assert_eq!(msgs[0]["text"], "live");
    assert_eq!(s.cursor(), Some(2));
}

#[test]
fn a_resuming_client_gets_exactly_the_records_after_its_cursor() {
    let now = Instant::now();
    let mut log = Log::default();
    for i in 1..=5 {
        log.message("main", &format!("m{i}"), &format!("text {i}"));
    }
    let mut app = App::new(log);
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(3)));
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(kinds(&msgs), ["welcome", "chat.message", "chat.message"]);
    assert_eq!(msgs[0]["resumed"], true);
    assert_eq!(msgs[1]["text"], "text 4");
    assert_eq!(msgs[2]["cursor"]["seq"], 5);
}

#[test]
fn snapshot_required_names_the_reason() {
    let now = Instant::now();
    let mut app = App::new(Log::default());
    app.start = Some(Start::Snapshot {
        seq: 0,
        reason: "unknown_boot",
        messages: vec![],
    });
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(9)));
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(
        kinds(&msgs),
        ["welcome", "snapshot.required", "snapshot.done"]
    );
    assert_eq!(msgs[1]["reason"], "unknown_boot");
}

#[test]
fn commands_are_parsed_batched_and_answered_in_order_with_their_refs() {
    let now = Instant::now();
    let mut app = App::new(Log::default());
    let mut s = PatchStream::new(Role::Agent("agent".into()), now);
    s.handle_text(now, &json!({"type": "hello", "agent": "bot-1"}).to_string());
    s.handle_text(
        now,
        r#"{"type":"chat.message","session_id":"main","message_id":"a1","text":"hi","ref":1}"#,
    );
    s.handle_text(now, r#"{"type":"chat.delta","message_id":"a1","ref":2}"#);
    s.handle_text(
        now,
        r#"{"type":"a2ui.patch","surface":"s","base_version":"x","ops":[],"ref":3}"#,
    );
    s.handle_text(
        now,
        r#"{"type":"chat.send","session_id":"main","client_msg_id":"c1","text":"yo"}"#,
    );
    s.handle_text(now, r#"{"type":"nope"}"#);
    let msgs = texts(&app.drive(&mut s, now));
    // Answers come after `welcome`, in the order of the requests.
    assert_eq!(
        kinds(&msgs),
        ["welcome", "snapshot.done", "ack", "error", "error", "error"],
        "{msgs:?}"
    );
    assert_eq!(msgs[2]["ref"], 1);
    assert_eq!(msgs[3]["ref"], 2);
    assert_eq!(msgs[3]["message"], "text must be a string");
    assert_eq!(msgs[4]["ref"], 3);
    assert_eq!(msgs[5]["message"], "unknown message type \"nope\"");
    assert_eq!(s.role(), &Role::Agent("bot-1".into()));
    assert_eq!(
        app.published,
        [
            Command::Post {
                session_id: "main".into(),
                message_id: "a1".into(),
                author: "bot-1".into(),
                text: "hi".into(),
                streaming: false,
            },
            Command::Send {
                session_id: "main".into(),
                client_msg_id: "c1".into(),
                text: "yo".into(),
            },
        ],
        "in order"
    );
}

#[test]
fn agent_commands_are_forbidden_to_the_console() {
    let now = Instant::now();
    let mut app = App::new(Log::default());
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(None));
    app.drive(&mut s, now);
    s.handle_text(now, r#"{"type":"a2ui.snapshot","document":{},"ref":"r"}"#);
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(msgs[0]["code"], "forbidden");
    assert!(app.published.is_empty());
}

#[test]
fn a_pong_waits_for_earlier_answers_and_the_records_stored_so_far() {
    let now = Instant::now();
    let mut app = App::new(Log::default());
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(None));
    app.drive(&mut s, now);
    s.handle_text(
        now,
        r#"{"type":"chat.send","session_id":"main","client_msg_id":"c1","text":"a","ref":1}"#,
    );
    s.handle_text(now, r#"{"type":"ping"}"#);
    // The publish is not answered yet: no ack, no pong.
    let Some(StreamEvent::Publish { ticket, .. }) = s.poll_event() else {
        panic!("publish expected")
    };
    assert_eq!(s.poll_transmit(), None);
    app.log.message("main", "u-1", "a");
    s.handle_published(
        ticket,
        vec![Ok(Published {
            seq: 1,
            id: "u-1".into(),
            version: 0,
        })],
    );
    s.handle_log_grown();
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(kinds(&msgs), ["ack", "chat.message", "pong"], "{msgs:?}");
    assert_eq!(
        msgs[2]["cursor"]["seq"], 1,
        "the pong's cursor covers the record"
    );
}

#[test]
fn sessions_and_owners_limit_what_a_client_sees() {
    let now = Instant::now();
    let mut log = Log::default();
    log.message("main", "m1", "main");
    log.message("other", "m2", "other");
    log.push(
        Some("action:bot-1"),
        json!({"type": "a2ui.action", "owner": "bot-1"}),
    );
    log.push(
        Some("action:bot-2"),
        json!({"type": "a2ui.action", "owner": "bot-2"}),
    );
    log.push(None, json!({"type": "node.event"}));
    let mut app = App::new(log);
    let mut s = PatchStream::new(Role::Agent("agent".into()), now);
    s.handle_text(
        now,
        &json!({"type": "hello", "agent": "bot-1", "sessions": ["main"],
                "resume": {"boot": "b1", "seq": 0}})
        .to_string(),
    );
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(
        kinds(&msgs),
        ["welcome", "chat.message", "a2ui.action", "node.event"]
    );
    assert_eq!(msgs[1]["text"], "main");
    assert_eq!(msgs[2]["owner"], "bot-1");
    assert_eq!(s.cursor(), Some(5), "the cursor passes what is not shown");
}

#[test]
fn a_lagging_reader_gets_coalesced_snapshots_and_merged_deltas() {
    let now = Instant::now();
    let mut log = Log::default();
    for v in 1..=50 {
        log.patch("board", v);
    }
    for i in 0..50 {
        log.delta("main", "a1", &format!("{i},"));
    }
    let mut app = App::new(log);
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(0)));
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(
        kinds(&msgs),
        ["welcome", "a2ui.snapshot", "chat.delta"],
        "{msgs:?}"
    );
    assert_eq!(msgs[1]["coalesced"], true);
    assert_eq!(msgs[1]["version"], 50, "the current state");
    assert_eq!(msgs[1]["cursor"]["seq"], 1, "at the first absorbed record");
    let merged: String = (0..50).map(|i| format!("{i},")).collect();
    assert_eq!(msgs[2]["text"], merged);
    assert_eq!(msgs[2]["cursor"]["seq"], 100);
    // Not lagging: every record as stored.
    app.log.patch("board", 51);
    app.log.patch("board", 52);
    s.handle_log_grown();
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(kinds(&msgs), ["a2ui.patch", "a2ui.patch"]);
}

#[test]
fn a_surface_state_behind_the_log_is_not_coalesced_so_no_change_is_lost() {
    let now = Instant::now();
    let mut log = Log::default();
    for v in 1..=50 {
        log.patch("board", v);
    }
    // The last write is in the log but not folded into the surface's state yet.
    if let Some(info) = log.surfaces.get_mut("board") {
        info.version = 49;
        info.seq = 49;
    }
    let mut app = App::new(log);
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(0)));
    let msgs = texts(&app.drive(&mut s, now));
    assert!(
        msgs.iter().all(|m| m["type"] != "a2ui.snapshot"),
        "{msgs:?}"
    );
    let versions: Vec<u64> = msgs.iter().filter_map(|m| m["version"].as_u64()).collect();
    assert_eq!(
        versions,
        (1..=50).collect::<Vec<u64>>(),
        "every patch, the last included"
    );
}

#[test]
fn records_wait_while_the_socket_is_full_and_a_stalled_reader_is_closed() {
    let now = Instant::now();
    let mut log = Log::default();
    for i in 0..(MAX_LAG + 10) {
        log.message("main", &format!("m{i}"), "x");
    }
    let mut app = App::new(log);
    app.backlog = LOW_WATER;
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(0)));
    let msgs = texts(&app.drive(&mut s, now));
    assert_eq!(
        kinds(&msgs),
        ["welcome"],
        "nothing read while the socket is full"
    );
    assert_eq!(app.reads, 0);
    // Room again: one read shows the reader far behind; the stall clock starts.
    app.backlog = LOW_WATER - 1;
    app.stuck = true;
    s.handle_log_grown();
    app.drive(&mut s, now);
    assert_eq!(app.reads, 1, "one batch, then the socket is full again");
    assert_eq!(s.poll_timeout(), Some(now + MAX_STALL));
    s.handle_timeout(now + MAX_STALL);
    assert_eq!(close_of(&app.drive(&mut s, now)), Some(4001));
}

#[test]
fn a_lost_read_closes_with_4001_and_later_reads_resume_the_feed() {
    let now = Instant::now();
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(0)));
    let mut log = Log::default();
    log.message("main", "m1", "old");
    assert!(matches!(s.poll_event(), Some(StreamEvent::Hello { .. })));
    s.welcome(boots(), Start::From(0));
    let Some(StreamEvent::Read { after: 0, .. }) = s.poll_event() else {
        panic!("read expected")
    };
    s.handle_read_later();
    assert_eq!(s.poll_event(), None, "one read at a time");
    s.handle_records(now, &log.records, 1, &|_| None);
    let msgs: Vec<Transmit> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(kinds(&texts(&msgs)), ["welcome", "chat.message"]);
    s.handle_log_grown();
    assert!(matches!(
        s.poll_event(),
        Some(StreamEvent::Read { after: 1, .. })
    ));
    s.handle_read_lost();
    let out: Vec<Transmit> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(close_of(&out), Some(4001));
}

#[test]
fn binary_frames_and_floods_of_bad_requests_close_the_stream() {
    let now = Instant::now();
    let mut app = App::new(Log::default());
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_binary(now);
    assert_eq!(close_of(&app.drive(&mut s, now)), Some(1003));

    let mut s = PatchStream::new(Role::Console, now);
    for _ in 0..=MAX_ERRORS {
        s.handle_text(now, "not json");
    }
    let out = app.drive(&mut s, now);
    assert_eq!(texts(&out).len() as u32, MAX_ERRORS + 1);
    assert_eq!(close_of(&out), Some(1008));
    s.handle_text(now, "more");
    assert_eq!(app.drive(&mut s, now), vec![], "nothing after the close");
}

#[test]
fn unanswered_requests_are_bounded() {
    let now = Instant::now();
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(None));
    let Some(StreamEvent::Hello { .. }) = s.poll_event() else {
        panic!()
    };
    s.welcome(boots(), Start::From(0));
    // The store never answers; the client keeps pinging.
    for _ in 0..=MAX_OWED {
        s.handle_text(
            now,
            r#"{"type":"chat.send","session_id":"m","client_msg_id":"c","text":"t"}"#,
        );
        s.handle_text(now, r#"{"type":"ping"}"#);
    }
    let out: Vec<Transmit> = std::iter::from_fn(|| s.poll_transmit()).collect();
    assert_eq!(close_of(&out), Some(1013));
}

#[test]
fn cursors_name_the_run_that_wrote_them() {
    let boots = Boots::new(vec![(1, "b1".into()), (10, "b2".into())]);
    assert_eq!(boots.boot_of(0), Some("b1"));
    assert_eq!(boots.boot_of(9), Some("b1"));
    assert_eq!(boots.boot_of(10), Some("b2"));
    assert_eq!(boots.current(), "b2");
    assert_eq!(boots.cursor(12), json!({"boot": "b2", "seq": 12}));
}

/// The messages a client receives for `log`, with records read `batch` at a time.
fn feed_in_batches(log: &Log, cuts: &[usize]) -> Vec<Value> {
    let now = Instant::now();
    let mut s = PatchStream::new(Role::Console, now);
    s.handle_text(now, &hello(Some(0)));
    assert!(matches!(s.poll_event(), Some(StreamEvent::Hello { .. })));
    s.welcome(boots(), Start::From(0));
    let mut out = Vec::new();
    let mut cuts = cuts.iter().cycle();
    loop {
        out.extend(std::iter::from_fn(|| s.poll_transmit()));
        match s.poll_event() {
            Some(StreamEvent::Read { after, .. }) => {
                let n = *cuts.next().unwrap_or(&1);
                s.handle_records(now, log.after(after, n), log.head(), &|_| None);
            }
            None => break,
            Some(other) => panic!("{other:?}"),
        }
    }
    texts(&out)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// However the records are split into reads, a reader within the coalescing window gets
    /// the same messages.
    #[test]
    fn read_chunking_does_not_change_the_feed(
        cuts in proptest::collection::vec(1usize..20, 1..10),
        kinds in proptest::collection::vec(0u8..3, 1..(COALESCE_LAG as usize)),
    ) {
        let mut log = Log::default();
        for (i, k) in kinds.iter().enumerate() {
            match k {
                0 => log.message("main", &format!("m{i}"), "t"),
                1 => log.delta("main", "a", &format!("{i}")),
                _ => log.patch("s", i as u64 + 1),
            };
        }
        let whole = feed_in_batches(&log, &[usize::MAX]);
        let cut = feed_in_batches(&log, &cuts);
        prop_assert_eq!(whole.len(), log.records.len() + 1);
        prop_assert_eq!(cut, whole);
    }

    /// However requests are split between pumps, the same commands are published in order and
    /// the same answers come back in the order of the requests.
    #[test]
    fn pumping_does_not_change_the_answers(
        pumps in proptest::collection::vec(any::<bool>(), 1..40),
    ) {
        let run = |pump_after: &dyn Fn(usize) -> bool| {
            let now = Instant::now();
            let mut app = App::new(Log::default());
            let mut s = PatchStream::new(Role::Agent("a".into()), now);
            let mut out = Vec::new();
            s.handle_text(now, &hello(None));
            for i in 0..pumps.len() {
                let text = if i % 7 == 3 {
                    r#"{"type":"ping"}"#.to_owned()
                } else if i % 5 == 4 {
                    format!(r#"{{"type":"chat.delta","ref":{i}}}"#)
                } else {
                    json!({"type": "chat.message", "session_id": "m", "message_id": format!("x{i}"),
                           "text": "t", "ref": i}).to_string()
                };
                s.handle_text(now, &text);
                if pump_after(i) {
                    out.extend(app.drive(&mut s, now));
                }
            }
            out.extend(app.drive(&mut s, now));
            (texts(&out).into_iter().map(|m| (m["type"].clone(), m["ref"].clone())).collect::<Vec<_>>(), app.published)
        };
        let once = run(&|_| false);
        let pumped = run(&|i| pumps[i]);
        prop_assert_eq!(pumped, once);
    }
}
