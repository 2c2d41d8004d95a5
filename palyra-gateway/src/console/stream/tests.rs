//! The console stream through the whole operator connection: HTTP login, upgrade, frames.

use super::*;
use crate::console::tests::{clock, form};
use crate::console::Command;
use crate::node::hub::NodeHub;
use crate::notify::Notifier;
use crate::operator::{
    auth::AdminAuth, webhook::WebhookStore, Admin, Operator, OperatorConnection,
};
use palyra_proto::a2ui::stream::{BATCH_BYTES, HELLO_TIMEOUT, LOW_WATER, MAX_LAG, MAX_STALL};
use palyra_proto::http1::server::ServerConfig;
use palyra_proto::identity::trust::{TrustIndex, TrustSnapshot};
use palyra_proto::transport::StreamMachine;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::time::Duration;
use tungstenite::protocol::Role as WsRole;
use tungstenite::{Message, WebSocket};

const TOKEN: &str = "test-admin-token";

struct Fixture {
    _dir: tempfile::TempDir,
    operator: Arc<Operator>,
    hub: Arc<ConsoleHub>,
    now: Instant,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    fixture_in(dir)
}

fn fixture_in(dir: tempfile::TempDir) -> Fixture {
    let notifier = Arc::new(Notifier::new());
    let docs = Arc::new(crate::store::FileDocStore::open(dir.path()).unwrap());
    let hub = ConsoleHub::open(
        crate::console::open_file_log(dir.path()).unwrap(),
        docs,
        "boot1".into(),
        Arc::clone(&notifier),
        clock(),
    )
    .unwrap();
    let now = Instant::now();
    let operator = operator_for(Arc::clone(&hub), vec!["https://console.example".into()]);
    Fixture {
        _dir: dir,
        operator,
        hub,
        now,
    }
}

fn conn(f: &Fixture) -> OperatorConnection {
    let mut c = OperatorConnection::new(Arc::clone(&f.operator), ServerConfig::default(), f.now);
    c.peer = Some("127.0.0.1:5000".parse().unwrap());
    c
}

fn drain(c: &mut OperatorConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

fn http(f: &Fixture, request: &str) -> String {
    let mut c = conn(f);
    c.handle_input(f.now, request.as_bytes());
    String::from_utf8_lossy(&drain(&mut c)).into_owned()
}

/// Logs in; returns the cookie header value and the CSRF token.
fn login(f: &Fixture) -> (String, String) {
    let body = format!("{{\"admin_token\":\"{TOKEN}\"}}");
    let out = http(
        f,
        &format!(
            "POST /console/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let cookie_line = out
        .lines()
        .find(|l| l.starts_with("set-cookie:"))
        .unwrap()
        .to_owned();
    assert!(
        cookie_line.contains("HttpOnly") && cookie_line.contains("SameSite=Strict"),
        "{cookie_line}"
    );
    let cookie = cookie_line["set-cookie: ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let body: Value = serde_json::from_str(out.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    (cookie, body["csrf_token"].as_str().unwrap().to_owned())
}

struct Client {
    conn: OperatorConnection,
    ws: WebSocket<Mem>,
    hub: Arc<ConsoleHub>,
}

/// Waits until every publish to `hub` is durable (and answered).
fn settle(hub: &ConsoleHub) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hub.in_flight() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "console log never caught up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[derive(Default)]
struct Mem {
    input: Vec<u8>,
    output: Vec<u8>,
}

impl std::io::Read for Mem {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.input.is_empty() {
            return Err(std::io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input.drain(..n);
        Ok(n)
    }
}

impl std::io::Write for Mem {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_request(auth: &str) -> String {
    format!(
        "GET /console/v1/stream HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: palyra.console.v1\r\n{auth}\r\n"
    )
}

fn open_stream(f: &Fixture, auth: &str) -> Client {
    let mut conn = conn(f);
    conn.handle_input(f.now, upgrade_request(auth).as_bytes());
    let out = drain(&mut conn);
    let text = String::from_utf8_lossy(&out);
    let end = text.find("\r\n\r\n").unwrap() + 4;
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(
        text.contains("sec-websocket-protocol: palyra.console.v1"),
        "{text}"
    );
    let mut ws = WebSocket::from_raw_socket(Mem::default(), WsRole::Client, None);
    ws.get_mut().input.extend_from_slice(&out[end..]);
    Client {
        conn,
        ws,
        hub: Arc::clone(&f.hub),
    }
}

fn console(f: &Fixture) -> Client {
    let (cookie, _) = login(f);
    open_stream(
        f,
        &format!("Cookie: {cookie}\r\nOrigin: http://127.0.0.1:8080\r\n"),
    )
}

fn agent(f: &Fixture) -> Client {
    open_stream(f, &format!("Authorization: Bearer {TOKEN}\r\n"))
}

impl Client {
    fn send(&mut self, now: Instant, msg: Value) {
        self.ws.send(Message::text(msg.to_string())).unwrap();
        let bytes = std::mem::take(&mut self.ws.get_mut().output);
        self.conn.handle_input(now, &bytes);
    }

    /// Everything the server has for us now (once what was published is durable, waking it
    /// first, as the driver does).
    fn recv(&mut self, now: Instant) -> Vec<Value> {
        settle(&self.hub);
        self.conn.handle_wake(now);
        let out = drain(&mut self.conn);
        self.ws.get_mut().input.extend_from_slice(&out);
        let mut got = Vec::new();
        while let Ok(m) = self.ws.read() {
            match m {
                Message::Text(t) => got.push(serde_json::from_str(&t).unwrap()),
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(0);
                    got.push(json!({"type": "_closed", "code": code}));
                }
                _ => {}
            }
        }
        got
    }
}

fn types(msgs: &[Value]) -> Vec<&str> {
    msgs.iter().map(|m| m["type"].as_str().unwrap()).collect()
}

#[test]
fn login_session_logout_and_csrf() {
    let f = fixture();
    let (cookie, csrf) = login(&f);
    let out = http(
        &f,
        &format!("GET /console/v1/auth/session HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
    );
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains(&csrf),
        "{out}"
    );
    let logout = |extra: &str| {
        http(
            &f,
            &format!("POST /console/v1/auth/logout HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n{extra}Content-Length: 0\r\n\r\n"),
        )
    };
    let out = logout("");
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("\"code\":\"csrf\""),
        "{out}"
    );
    let out = logout("x-palyra-csrf-token: wrong\r\n");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let out = logout(&format!("x-palyra-csrf-token: {csrf}\r\n"));
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("Max-Age=0"),
        "{out}"
    );
    let out = http(
        &f,
        &format!("GET /console/v1/auth/session HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n\r\n"),
    );
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    // Wrong token, wrong content type, foreign origin.
    let out = http(&f, "POST /console/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"admin_token\":\"no\"}");
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    let out = http(&f, "POST /console/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}");
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    let out = http(&f, "POST /console/v1/auth/login HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // A login body just over its limit.
    let out = http(&f, &format!("POST /console/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", crate::operator::console::LOGIN_BODY_LIMIT + 1));
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
}

#[test]
fn stream_upgrade_is_refused_without_session_origin_or_subprotocol() {
    let f = fixture();
    let (cookie, _) = login(&f);
    let refused = |auth: &str, status: &str| {
        let out = http(&f, &upgrade_request(auth));
        assert!(out.starts_with(status), "{auth}: {out}");
    };
    refused("", "HTTP/1.1 401");
    refused(&format!("Cookie: {cookie}\r\n"), "HTTP/1.1 403");
    refused(
        &format!("Cookie: {cookie}\r\nOrigin: http://evil.example\r\n"),
        "HTTP/1.1 403",
    );
    refused(
        "Cookie: palyra_console_session=forged\r\nOrigin: http://127.0.0.1:8080\r\n",
        "HTTP/1.1 401",
    );
    refused("Authorization: Bearer wrong\r\n", "HTTP/1.1 401");
    // A configured origin is let in.
    let mut c = conn(&f);
    c.handle_input(
        f.now,
        upgrade_request(&format!(
            "Cookie: {cookie}\r\nOrigin: https://console.example\r\n"
        ))
        .as_bytes(),
    );
    assert!(String::from_utf8_lossy(&drain(&mut c)).starts_with("HTTP/1.1 101"));
    // No subprotocol offered.
    let request = upgrade_request(&format!("Authorization: Bearer {TOKEN}\r\n"))
        .replace("Sec-WebSocket-Protocol: palyra.console.v1\r\n", "");
    let out = http(&f, &request);
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("subprotocol"),
        "{out}"
    );
}

#[test]
fn agent_chat_and_forms_reach_the_console_live_and_actions_reach_the_agent() {
    let f = fixture();
    let now = f.now;
    let mut person = console(&f);
    let mut bot = agent(&f);
    person.send(now, json!({"type":"hello","resume":null}));
    bot.send(now, json!({"type":"hello","resume":null,"agent":"demo"}));
    assert_eq!(types(&person.recv(now)), ["welcome", "snapshot.done"]);
    assert_eq!(types(&bot.recv(now)), ["welcome", "snapshot.done"]);
    person.send(
        now,
        json!({"type":"chat.send","session_id":"main","client_msg_id":"c1","text":"deploy?"}),
    );
    let got = bot.recv(now);
    assert_eq!(got[0]["type"], "chat.message");
    assert_eq!(got[0]["text"], "deploy?");
    assert_eq!(got[0]["role"], "user");
    bot.send(now, json!({"type":"chat.message","session_id":"main","message_id":"r1","text":"On ","streaming":true}));
    bot.send(
        now,
        json!({"type":"chat.delta","message_id":"r1","text":"it."}),
    );
    bot.send(now, json!({"type":"chat.done","message_id":"r1"}));
    bot.send(
        now,
        json!({"type":"a2ui.snapshot","document": form("deploy"), "ref": 7}),
    );
    bot.send(
        now,
        json!({"type":"a2ui.patch","surface":"deploy","base_version":1,
        "ops":[{"op":"replace","path":"/components/0/props/value","value":"Ready"}]}),
    );
    let got = person.recv(now);
    assert_eq!(
        types(&got),
        [
            "chat.message",
            "chat.message",
            "chat.delta",
            "chat.done",
            "a2ui.snapshot",
            "a2ui.patch"
        ]
    );
    assert_eq!(got[1]["streaming"], true);
    assert_eq!(got[2]["text"], "it.");
    assert_eq!(got[4]["owner"], "demo");
    assert_eq!(got[5]["version"], 2);
    let seqs: Vec<u64> = got
        .iter()
        .map(|m| m["cursor"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    // The agent got an ack for the request with a ref.
    let acks: Vec<Value> = bot
        .recv(now)
        .into_iter()
        .filter(|m| m["type"] == "ack")
        .collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(
        (acks[0]["ref"].clone(), acks[0]["version"].clone()),
        (json!(7), json!(1))
    );
    // The person submits the form; the owner receives the action.
    person.send(now, json!({"type":"a2ui.action","surface":"deploy","component":"ask","action":"submit","value":{"name":"prod"}}));
    let got = bot.recv(now);
    let action = got.iter().find(|m| m["type"] == "a2ui.action").unwrap();
    assert_eq!(action["value"], json!({"name":"prod"}));
    assert_eq!(action["owner"], "demo");
    // A console may not publish as an agent; a stale patch is a conflict.
    person.send(
        now,
        json!({"type":"chat.delta","message_id":"r1","text":"x","ref":"a"}),
    );
    bot.send(
        now,
        json!({"type":"a2ui.patch","surface":"deploy","base_version":1,"ref":"b",
        "ops":[{"op":"remove","path":"/components/1"}]}),
    );
    let err = person
        .recv(now)
        .into_iter()
        .find(|m| m["type"] == "error")
        .unwrap();
    assert_eq!(
        (err["code"].clone(), err["ref"].clone()),
        (json!("forbidden"), json!("a"))
    );
    let err = bot
        .recv(now)
        .into_iter()
        .find(|m| m["type"] == "error")
        .unwrap();
    assert_eq!(err["code"], "stale_base_version");
    // ping/pong carries the cursor.
    person.send(now, json!({"type":"ping"}));
    let pong = person.recv(now);
    assert_eq!(pong[0]["type"], "pong");
    assert_eq!(pong[0]["cursor"]["boot"], "boot1");
}

#[test]
fn reconnecting_console_gets_exactly_what_it_missed_even_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let f = fixture_in(dir);
    let now = f.now;
    let mut person = console(&f);
    person.send(now, json!({"type":"hello","resume":null}));
    person.recv(now);
    let publish = |hub: &Arc<ConsoleHub>, from: usize, to: usize| {
        let commands = (from..to)
            .map(|i| Command::Post {
                session_id: "main".into(),
                message_id: format!("m{i}"),
                author: "bot".into(),
                text: format!("message {i}"),
                streaming: false,
            })
            .collect();
        assert!(crate::console::tests::publish_now(hub, commands)
            .iter()
            .all(Result::is_ok));
    };
    publish(&f.hub, 0, 3);
    let got = person.recv(now);
    let last = got.last().unwrap()["cursor"].clone();
    assert_eq!(last["seq"], 3);
    // Network drop; more arrives meanwhile.
    drop(person);
    publish(&f.hub, 3, 6);
    let mut again = console(&f);
    again.send(now, json!({"type":"hello","resume": last}));
    let got = again.recv(now);
    assert_eq!(
        types(&got),
        ["welcome", "chat.message", "chat.message", "chat.message"]
    );
    assert_eq!(got[0]["resumed"], true);
    let texts: Vec<&str> = got[1..]
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["message 3", "message 4", "message 5"]);
    let last = got.last().unwrap()["cursor"].clone();
    drop(again);
    // Daemon restart: the state dir is reopened under a new boot; more arrives.
    let Fixture { operator, hub, .. } = f;
    drop(operator);
    drop(hub);
    let docs = Arc::new(crate::store::FileDocStore::open(&path).unwrap());
    let hub = ConsoleHub::open(
        crate::console::open_file_log(&path).unwrap(),
        docs,
        "boot2".into(),
        Arc::new(Notifier::new()),
        clock(),
    )
    .unwrap();
    publish(&hub, 6, 8);
    let restarted = Fixture {
        operator: operator_for(Arc::clone(&hub), Vec::new()),
        hub,
        now,
        _dir: tempfile::tempdir().unwrap(),
    };
    let mut third = console(&restarted);
    third.send(now, json!({"type":"hello","resume": last}));
    let got = third.recv(now);
    assert_eq!(types(&got), ["welcome", "chat.message", "chat.message"]);
    assert_eq!(got[1]["text"], "message 6");
    assert_eq!(got[2]["cursor"], json!({"boot":"boot2","seq":8}));
    // A cursor this log never issued: snapshot.required, then the state.
    let mut stranger = console(&restarted);
    stranger.send(
        now,
        json!({"type":"hello","resume":{"boot":"elsewhere","seq":2}}),
    );
    let got = stranger.recv(now);
    assert_eq!(types(&got)[..2], ["welcome", "snapshot.required"]);
    assert_eq!(got[1]["reason"], "unknown_boot");
    assert_eq!(
        got.iter().filter(|m| m["type"] == "chat.message").count(),
        8
    );
    assert_eq!(got.last().unwrap()["type"], "snapshot.done");
}

/// The operator plane of a daemon with `hub` as its console (sessions and webhooks in memory,
/// so logins are answered at once).
fn operator_for(hub: Arc<ConsoleHub>, origins: Vec<String>) -> Arc<Operator> {
    let nodes = Arc::new(NodeHub::in_memory(Arc::new(TrustIndex::new(
        &TrustSnapshot::default(),
    ))));
    let docs: Arc<dyn crate::store::DocStore> = Arc::new(crate::store::MemoryDocs::default());
    Operator::daemon(
        "test",
        Instant::now(),
        Admin {
            auth: Arc::new(AdminAuth::from_token(TOKEN)),
            hub: nodes,
            clock: clock(),
            webhooks: Arc::new(WebhookStore::open(Arc::clone(&docs), None).unwrap()),
            random: Arc::new(|buf: &mut [u8]| buf.fill(7)),
            console: hub,
            sessions: Arc::new(
                crate::console::sessions::ConsoleSessions::open(docs, None).unwrap(),
            ),
            origins,
            pairing: None,
            tokens: None,
            runs: None,
            openai: None,
            store_metrics: None,
        },
        false,
    )
}

#[test]
fn lagging_readers_get_coalesced_snapshots_and_merged_deltas_then_4001() {
    let f = fixture();
    let now = f.now;
    let mut person = console(&f);
    person.send(now, json!({"type":"hello","resume":null}));
    person.recv(now);
    let mut commands = vec![
        Command::PutSurface {
            document: form("s"),
            owner: "bot".into(),
        },
        Command::Post {
            session_id: "main".into(),
            message_id: "r".into(),
            author: "bot".into(),
            text: String::new(),
            streaming: true,
        },
    ];
    for i in 0..100 {
        commands.push(Command::Patch {
            surface: "s".into(),
            base_version: None,
            ops: json!([{"op":"replace","path":"/components/0/props/value","value": i.to_string()}]),
        });
    }
    for i in 0..100 {
        commands.push(Command::Delta {
            message_id: "r".into(),
            text: format!("{i} "),
        });
    }
    assert!(crate::console::tests::publish_now(&f.hub, commands)
        .iter()
        .all(Result::is_ok));
    let got = person.recv(now);
    assert_eq!(types(&got), ["a2ui.snapshot", "chat.message", "chat.delta"]);
    assert_eq!(got[0]["version"], 101);
    assert_eq!(got[0]["coalesced"], true);
    assert_eq!(got[0]["cursor"]["seq"], 1);
    let merged: String = (0..100).map(|i| format!("{i} ")).collect();
    assert_eq!(got[2]["text"], merged);
    assert_eq!(got[2]["cursor"]["seq"], 202);
    // A reader that reads too slowly: the server pulls only while the socket queue is short,
    // and closes it with 4001 once it has stayed too far behind for MAX_STALL.
    let commands: Vec<Command> = (0..3 * MAX_LAG)
        .map(|i| Command::Post {
            session_id: "main".into(),
            message_id: format!("b{i}"),
            author: "bot".into(),
            text: "z".repeat(100),
            streaming: false,
        })
        .collect();
    assert!(crate::console::tests::publish_now(&f.hub, commands)
        .iter()
        .all(Result::is_ok));
    person.conn.handle_wake(now);
    // The driver takes one write's worth; the socket then blocks for a while.
    let first = person.conn.poll_transmit().unwrap();
    assert!(first.len() < LOW_WATER + BATCH_BYTES, "{}", first.len());
    let later = now + MAX_STALL + Duration::from_secs(1);
    assert!(person.conn.poll_timeout().is_some_and(|t| t <= later));
    person.conn.handle_timeout(later);
    let mut out = Vec::new();
    for _ in 0..4 {
        if let Some(b) = person.conn.poll_transmit() {
            out.extend_from_slice(&b);
        }
    }
    let close = out
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2..4] == 4001u16.to_be_bytes());
    assert!(close, "expected a 4001 close frame");
}

#[test]
fn hello_is_required_in_time_and_bad_frames_get_errors() {
    let f = fixture();
    let now = f.now;
    let mut bot = agent(&f);
    bot.send(
        now,
        json!({"type":"chat.send","session_id":"main","client_msg_id":"c","text":"x"}),
    );
    let got = bot.recv(now);
    assert_eq!(got[0]["type"], "error");
    bot.ws.send(Message::text("not json")).unwrap();
    let bytes = std::mem::take(&mut bot.ws.get_mut().output);
    bot.conn.handle_input(now, &bytes);
    assert_eq!(bot.recv(now)[0]["code"], "invalid");
    bot.send(now, json!({"type":"hello","resume":{"boot":1}}));
    assert_eq!(bot.recv(now)[0]["code"], "invalid");
    // Silence until the hello deadline closes with 1008.
    let mut silent = agent(&f);
    silent
        .conn
        .handle_timeout(now + HELLO_TIMEOUT + Duration::from_millis(1));
    let got = silent.recv(now + HELLO_TIMEOUT);
    assert_eq!(got.last().unwrap()["code"], 1008);
    // Binary frames are not this protocol: 1003.
    let mut binary = agent(&f);
    binary.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    let bytes = std::mem::take(&mut binary.ws.get_mut().output);
    binary.conn.handle_input(now, &bytes);
    assert_eq!(binary.recv(now).last().unwrap()["code"], 1003);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    /// However the client's frames are cut into reads, the server answers the same messages.
    #[test]
    fn chunking_does_not_change_the_stream(cuts in proptest::collection::vec(1usize..64, 1..40)) {
        let run = |cuts: &[usize]| {
            let f = fixture();
            let now = f.now;
            let mut bot = agent(&f);
            let mut wire = Vec::new();
            for msg in [
                json!({"type":"hello","resume":null,"agent":"a"}),
                json!({"type":"chat.message","session_id":"s","message_id":"m","text":"hi","streaming":true}),
                json!({"type":"chat.delta","message_id":"m","text":" there"}),
                json!({"type":"a2ui.snapshot","document": form("f")}),
                json!({"type":"ping"}),
            ] {
                bot.ws.send(Message::text(msg.to_string())).unwrap();
                wire.extend(std::mem::take(&mut bot.ws.get_mut().output));
            }
            let mut at = 0;
            let mut i = 0;
            while at < wire.len() {
                let n = cuts.get(i).copied().unwrap_or(wire.len()).min(wire.len() - at);
                bot.conn.handle_input(now, &wire[at..at + n]);
                at += n;
                i += 1;
            }
            bot.recv(now)
        };
        prop_assert_eq!(run(&cuts), run(&[usize::MAX]));
    }
}
