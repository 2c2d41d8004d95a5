use super::*;
use serde_json::json;

pub(crate) fn clock() -> WallClock {
    Arc::new(|| 1_700_000_000_000)
}

pub(crate) fn open(dir: &std::path::Path, boot: &str) -> Arc<ConsoleHub> {
    let docs = Arc::new(crate::store::FileDocStore::open(dir).unwrap());
    ConsoleHub::open(
        open_file_log(dir).unwrap(),
        docs,
        boot.into(),
        Arc::new(Notifier::new()),
        clock(),
    )
    .unwrap()
}

/// Publishes and waits until the records are durable.
pub(crate) fn publish_now(
    hub: &Arc<ConsoleHub>,
    commands: Vec<Command>,
) -> Vec<Result<Published, ConsoleError>> {
    hub.publish(commands)
        .wait_blocking(std::time::Duration::from_secs(10))
        .expect("answered")
}

pub(crate) fn form(surface: &str) -> Value {
    json!({"v":1,"surface":surface,"components":[
        {"id":"title","type":"text","props":{"value":"Deploy"}},
        {"id":"ask","type":"form","props":{"title":"Go?","submitLabel":"Send",
          "fields":[{"id":"name","label":"Name","type":"text"}]}}]})
}

fn ok(results: Vec<Result<Published, ConsoleError>>) -> Vec<Published> {
    results.into_iter().map(|r| r.unwrap()).collect()
}

fn post(session: &str, id: &str, text: &str, streaming: bool) -> Command {
    Command::Post {
        session_id: session.into(),
        message_id: id.into(),
        author: "bot".into(),
        text: text.into(),
        streaming,
    }
}

#[test]
fn publish_assigns_gap_free_seqs_and_builds_state() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), "b1");
    let out = ok(publish_now(
        &hub,
        vec![
            Command::Send {
                session_id: "main".into(),
                client_msg_id: "c1".into(),
                text: "hi".into(),
            },
            post("main", "a1", "Hel", true),
            Command::Delta {
                message_id: "a1".into(),
                text: "lo".into(),
            },
            Command::Done {
                message_id: "a1".into(),
            },
            Command::PutSurface {
                document: form("deploy"),
                owner: "bot".into(),
            },
            Command::Patch {
                surface: "deploy".into(),
                base_version: Some(1),
                ops: json!([{"op":"replace","path":"/components/0/props/value","value":"Deploying"}]),
            },
        ],
    ));
    assert_eq!(
        out.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    assert_eq!(out[0].id, "u-1");
    assert_eq!(out[5].version, 2);
    let sessions = hub.sessions();
    assert_eq!(sessions[0].3[1].text, "Hello");
    assert!(!sessions[0].3[1].streaming);
    assert_eq!(
        hub.surface("deploy").unwrap().document["components"][0]["props"]["value"],
        "Deploying"
    );
    // Records are in wire form with their cursor.
    let batch = hub.read(0, 100, 1 << 20).unwrap().expect("in memory");
    assert_eq!(batch.head, 6);
    let first: Value = serde_json::from_slice(&batch.records[0].body).unwrap();
    assert_eq!(first["type"], "chat.message");
    assert_eq!(first["cursor"], json!({"boot":"b1","seq":1}));
    let delta: Value = serde_json::from_slice(&batch.records[2].body).unwrap();
    assert_eq!(
        delta,
        json!({"type":"chat.delta","session_id":"main","message_id":"a1","text":"lo","cursor":{"boot":"b1","seq":3}})
    );
}

#[test]
fn bad_commands_are_refused_without_touching_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), "b1");
    ok(publish_now(
        &hub,
        vec![Command::PutSurface {
            document: form("s"),
            owner: "bot".into(),
        }],
    ));
    let results = publish_now(
        &hub,
        vec![
            Command::Patch {
                surface: "s".into(),
                base_version: Some(7),
                ops: json!([{"op":"remove","path":"/components/0"}]),
            },
            Command::Delta {
                message_id: "nope".into(),
                text: "x".into(),
            },
            post("bad session!", "m", "x", false),
            post("main", "u-9", "x", false),
            Command::Action {
                surface: "s".into(),
                component: "missing".into(),
                action: "submit".into(),
                value: json!({}),
            },
            Command::Action {
                surface: "s".into(),
                component: "ask".into(),
                action: "submit".into(),
                value: json!({"__proto__": 1}),
            },
            post("main", "big", &"x".repeat(state::MAX_TEXT + 1), false),
        ],
    );
    let codes: Vec<&str> = results
        .iter()
        .map(|r| r.as_ref().unwrap_err().code)
        .collect();
    assert_eq!(
        codes,
        [
            "stale_base_version",
            "not_found",
            "invalid",
            "invalid",
            "not_found",
            "invalid_patch",
            "too_large"
        ]
    );
    assert_eq!(hub.head(), 1);
    // A resent console message is answered with the first one, not stored twice.
    let send = || Command::Send {
        session_id: "main".into(),
        client_msg_id: "c1".into(),
        text: "hi".into(),
    };
    let first = ok(publish_now(&hub, vec![send()]));
    let again = ok(publish_now(&hub, vec![send()]));
    assert_eq!(first[0].id, again[0].id);
    assert_eq!(hub.head(), 2);
}

#[test]
fn resume_serves_known_cursors_and_refuses_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), "b1");
    ok(publish_now(
        &hub,
        vec![post("s", "m1", "one", false), post("s", "m2", "two", false)],
    ));
    assert_eq!(hub.resume(Some(("b1", 1))), Resume::From(1));
    assert_eq!(hub.resume(Some(("b1", 0))), Resume::From(0));
    assert_eq!(hub.resume(None), Resume::Snapshot("fresh"));
    assert_eq!(
        hub.resume(Some(("b1", 9))),
        Resume::Snapshot("unknown_cursor")
    );
    assert_eq!(
        hub.resume(Some(("other", 1))),
        Resume::Snapshot("unknown_boot")
    );
    drop(hub);
    // After a restart the log continues; cursors of the old run still resume.
    let hub = open(dir.path(), "b2");
    assert_eq!(hub.resume(Some(("b1", 1))), Resume::From(1));
    ok(publish_now(&hub, vec![post("s", "m3", "three", false)]));
    assert_eq!(hub.head(), 3);
    assert_eq!(hub.cursor(3), json!({"boot":"b2","seq":3}));
    assert_eq!(hub.cursor(2), json!({"boot":"b1","seq":2}));
    assert_eq!(
        hub.resume(Some(("b2", 2))),
        Resume::Snapshot("unknown_boot")
    );
    assert_eq!(hub.resume(Some(("b2", 3))), Resume::From(3));
    let texts: Vec<String> = hub.sessions()[0].3.iter().map(|m| m.text.clone()).collect();
    assert_eq!(texts, ["one", "two", "three"]);
}

#[test]
fn state_survives_restarts_through_saves_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), "b1");
    ok(publish_now(
        &hub,
        vec![
            Command::PutSurface {
                document: form("s"),
                owner: "bot".into(),
            },
            post("main", "m1", "streaming", true),
        ],
    ));
    hub.save();
    ok(publish_now(
        &hub,
        vec![
            Command::Patch {
                surface: "s".into(),
                base_version: None,
                ops: json!([{"op":"replace","path":"/components/0/props/value","value":"v2"}]),
            },
            Command::Delta {
                message_id: "m1".into(),
                text: "...".into(),
            },
        ],
    ));
    drop(hub);
    let hub = open(dir.path(), "b2");
    let s = hub.surface("s").unwrap();
    assert_eq!((s.version, s.owner.as_str()), (2, "bot"));
    assert_eq!(s.document["components"][0]["props"]["value"], "v2");
    // The stream is still open after the restart and can be finished.
    ok(publish_now(
        &hub,
        vec![Command::Done {
            message_id: "m1".into(),
        }],
    ));
    assert_eq!(hub.sessions()[0].3[0].text, "streaming...");
    let (seq, snapshot) = hub.snapshot(None);
    assert_eq!(seq, 5);
    assert_eq!(snapshot.len(), 2);
    let surface: Value = serde_json::from_str(&snapshot[0]).unwrap();
    assert_eq!(surface["type"], "a2ui.snapshot");
    assert_eq!(surface["version"], 2);
    assert_eq!(surface["cursor"], json!({"boot":"b2","seq":5}));
}

#[test]
fn limits_on_sessions_surfaces_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let hub = open(dir.path(), "b1");
    let surfaces: Vec<Command> = (0..state::MAX_SURFACES + 1)
        .map(|i| Command::PutSurface {
            document: form(&format!("s{i}")),
            owner: "bot".into(),
        })
        .collect();
    let results = publish_now(&hub, surfaces);
    assert!(results[..state::MAX_SURFACES].iter().all(Result::is_ok));
    assert_eq!(
        results[state::MAX_SURFACES].as_ref().unwrap_err().code,
        "overloaded"
    );
    let streams: Vec<Command> = (0..state::MAX_OPEN_STREAMS + 1)
        .map(|i| post(&format!("x{}", i % 10), &format!("m{i}"), "", true))
        .collect();
    let results = publish_now(&hub, streams);
    assert_eq!(
        results.last().unwrap().as_ref().unwrap_err().code,
        "overloaded"
    );
    // A delta that would grow a streamed message past its limit is refused.
    let chunk = "y".repeat(state::MAX_TEXT);
    let deltas: Vec<Command> = (0..5)
        .map(|_| Command::Delta {
            message_id: "m0".into(),
            text: chunk.clone(),
        })
        .collect();
    let results = publish_now(&hub, deltas);
    assert!(results[..4].iter().all(Result::is_ok));
    assert_eq!(results[4].as_ref().unwrap_err().code, "too_large");
}

/// An append held back: its events, expected first seq and completion.
type HeldAppend = (Vec<NewEvent>, Option<u64>, crate::store::Done<Vec<u64>>);

/// A log several hubs share (as gateways share a stream); appends of a hub may be held back
/// to let another hub write first.
struct SharedLog {
    log: Arc<crate::store::MemoryLog>,
    held: Mutex<Option<HeldAppend>>,
    hold: std::sync::atomic::AtomicBool,
}

impl SharedLog {
    fn over(log: &Arc<crate::store::MemoryLog>) -> Arc<Self> {
        Arc::new(Self {
            log: Arc::clone(log),
            held: Mutex::new(None),
            hold: Default::default(),
        })
    }

    /// Writes the held append now.
    fn release(&self) {
        self.hold.store(false, std::sync::atomic::Ordering::SeqCst);
        let held = self.held.lock().unwrap().take();
        if let Some((events, expect, done)) = held {
            self.log.append(events, expect, done);
        }
    }
}

impl LogStore for SharedLog {
    fn bounds(&self) -> crate::store::LogBounds {
        self.log.bounds()
    }
    fn append(
        &self,
        events: Vec<NewEvent>,
        expect: Option<u64>,
        done: crate::store::Done<Vec<u64>>,
    ) {
        if self.hold.load(std::sync::atomic::Ordering::SeqCst) {
            *self.held.lock().unwrap() = Some((events, expect, done));
        } else {
            self.log.append(events, expect, done);
        }
    }
    fn read_cached(
        &self,
        after: u64,
        max: usize,
        bytes: usize,
    ) -> Option<crate::store::EventBatch> {
        self.log.read_cached(after, max, bytes)
    }
    fn read(
        &self,
        after: u64,
        max: usize,
        bytes: usize,
        done: crate::store::Done<crate::store::EventBatch>,
    ) {
        self.log.read(after, max, bytes, done)
    }
    fn notifier(&self) -> Arc<Notifier> {
        self.log.notifier()
    }
    fn close(&self) {}
    fn shared_name(&self) -> Option<String> {
        Some("shared-log".into())
    }
}

fn shared_hub(log: &Arc<SharedLog>) -> Arc<ConsoleHub> {
    ConsoleHub::open(
        Arc::clone(log) as Arc<dyn LogStore>,
        Arc::new(crate::store::MemoryDocs::default()),
        "ignored".into(),
        Arc::new(Notifier::new()),
        clock(),
    )
    .unwrap()
}

fn patch(surface: &str, title: &str) -> Command {
    Command::Patch {
        surface: surface.into(),
        base_version: None,
        ops: json!([{"op":"replace","path":"/components/0/props/value","value":title}]),
    }
}

#[test]
fn hubs_sharing_a_log_add_up_each_others_records_and_retry_a_write_that_lost_its_seq() {
    let log = Arc::new(crate::store::MemoryLog::new(1 << 20));
    let (log_a, log_b) = (SharedLog::over(&log), SharedLog::over(&log));
    let (a, b) = (shared_hub(&log_a), shared_hub(&log_b));
    ok(publish_now(
        &a,
        vec![Command::PutSurface {
            document: form("s"),
            owner: "agent".into(),
        }],
    ));
    // B adds up A's record before it writes: its patch is made against version 1.
    let first = ok(publish_now(&b, vec![patch("s", "from b")]));
    assert_eq!((first[0].seq, first[0].version), (2, 2));
    // B's next write is held; A takes the seq B prepared it for.
    log_b.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let held = b.publish(vec![patch("s", "b again")]);
    let from_a = ok(publish_now(&a, vec![patch("s", "from a")]));
    assert_eq!((from_a[0].seq, from_a[0].version), (3, 3));
    // Released, B's write is refused; B adds up A's patch and writes its own after it.
    log_b.release();
    let retried = ok(held
        .wait_blocking(std::time::Duration::from_secs(5))
        .expect("answered"));
    assert_eq!((retried[0].seq, retried[0].version), (4, 4));
    // Both hubs hold the same state, and a cursor of either resumes on the other.
    ok(publish_now(&a, Vec::new()));
    for hub in [&a, &b] {
        let surface = hub.surface("s").expect("surface");
        assert_eq!(surface.version, 4);
        assert_eq!(
            surface.document["components"][0]["props"]["value"],
            "b again"
        );
        assert_eq!(hub.head(), 4);
        assert_eq!(hub.cursor(4), json!({"boot": "shared-log", "seq": 4}));
        assert!(matches!(
            hub.resume(Some(("shared-log", 2))),
            Resume::From(2)
        ));
    }
    assert_eq!(a.in_flight() + b.in_flight(), 0);
    // Each hub knows which records it wrote (only that gateway starts a run for a message).
    assert!(a.wrote_here(1) && !b.wrote_here(1));
    assert!(b.wrote_here(4) && !a.wrote_here(4));
}
