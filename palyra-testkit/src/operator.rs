//! The operator plane's HTTP/1.1 listener over real sockets: health, metrics, keep-alive,
//! pipelining, and the limit answers (431, 413, 400, 501, 408) with the JSON envelope.

use crate::Driver;
use palyra_gateway::operator::{Operator, OperatorAcceptor};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes `request` and reads until the server closes or `expect` responses arrived.
fn exchange(addr: SocketAddr, request: &[u8], expect: usize) -> String {
    exchange_on(connect(addr), request, expect)
}

/// A TCP connection whose reads time out after 200 ms.
fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    stream
}

/// [`exchange`] on an open connection (cleartext or TLS).
fn exchange_on(mut stream: impl Read + Write, request: &[u8], expect: usize) -> String {
    stream.write_all(request).expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {
                if String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() >= expect {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Health, metrics, keep-alive with pipelining, and the HTTP layer's limit answers.
pub fn operator_http_basics<D: Driver>() {
    let operator = Operator::new("suite", Instant::now());
    let (server, addr) = D::start_listener(
        Arc::new(OperatorAcceptor {
            operator,
            config: Default::default(),
            tls: None,
        }),
        None,
    );
    let out = exchange(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        3,
    );
    assert_eq!(
        out.matches("HTTP/1.1 200 OK").count(),
        3,
        "[{}] {out}",
        D::NAME
    );
    assert!(out.contains("\"service\":\"palyrad\""));
    assert!(
        out.contains("palyra_http_responses_total{class=\"2xx\"} 2"),
        "{out}"
    );
    for (request, status, code) in [
        (format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(17_000)), "431", "header_too_large"),
        ("POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".into(), "400", "bad_request"),
        ("BREW / HTTP/1.1\r\nHost: x\r\n\r\n".into(), "501", "not_implemented"),
        ("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(), "404", "not_found"),
    ] {
        let out = exchange(addr, request.as_bytes(), 1);
        assert!(out.starts_with(&format!("HTTP/1.1 {status}")), "[{}] {out}", D::NAME);
        assert!(out.contains(&format!("\"code\":\"{code}\"")), "{out}");
        assert!(out.contains("x-content-type-options: nosniff"), "{out}");
    }
    D::stop_grpc(server);
}

/// The WebSocket upgrade on the operator listener: 101, an echoed masked text frame, and the
/// close handshake.
pub fn operator_websocket_echo<D: Driver>() {
    let ws = palyra_proto::ws::WsConfig::default();
    let (server, addr) = D::start_listener(
        Arc::new(OperatorAcceptor {
            operator: Operator::with_ws_echo("suite", Instant::now(), ws),
            config: Default::default(),
            tls: None,
        }),
        None,
    );
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut request = b"GET /conformance/ws-echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    // A masked text frame "hi" (mask 1,2,3,4), sent together with the upgrade request.
    request.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    stream.write_all(&request).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_until = |got: &mut Vec<u8>, stream: &mut TcpStream, buf: &mut [u8], want: usize| {
        while got.len() < want {
            match stream.read(buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    read_until(&mut got, &mut stream, &mut buf, 1);
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let want = got.len() + 1;
        read_until(&mut got, &mut stream, &mut buf, want);
        assert!(
            got.len() >= want,
            "[{}] connection ended before the 101 head",
            D::NAME
        );
    };
    let text = String::from_utf8_lossy(&got[..head_end]).into_owned();
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols"),
        "[{}] {text}",
        D::NAME
    );
    assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    read_until(&mut got, &mut stream, &mut buf, head_end + 4);
    assert_eq!(
        &got[head_end..head_end + 4],
        &[0x81, 0x02, b'h', b'i'],
        "[{}] echo",
        D::NAME
    );
    // A masked close frame with code 1000: echoed, then the server closes.
    stream
        .write_all(&[0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xe8 ^ 2])
        .expect("write close");
    read_until(&mut got, &mut stream, &mut buf, head_end + 8);
    assert_eq!(
        &got[head_end + 4..head_end + 8],
        &[0x88, 0x02, 0x03, 0xe8],
        "[{}] close echoed",
        D::NAME
    );
    D::stop_grpc(server);
}

/// The admin API with the daemon's node plane behind it: 401 without the token, 429 after
/// repeated failures, status and node inventory, an event published over HTTP stored in the
/// node-plane log (read back over QUIC), 413 for a body just over 64 KiB, 400 for bad JSON.
pub fn operator_admin_api<D: Driver>() {
    use palyra_gateway::node::NodePlaneOptions;
    use palyra_gateway::operator::{auth::AdminAuth, Admin};
    use palyra_proto::node::NodeRequest;
    let gw = crate::Gateway::new();
    let a = gw.issue(crate::DEV_A);
    let plane = gw.plane(&NodePlaneOptions::default());
    let hub = Arc::clone(&plane.hub);
    hub.register(crate::DEV_A, "linux-x86_64", Vec::new(), u64::MAX / 2)
        .wait_blocking(Duration::from_secs(5))
        .expect("answered")
        .expect("register");
    let (quic, quic_addr) = D::start(plane);
    let clock: palyra_gateway::util::WallClock =
        Arc::new(|| palyra_gateway::store::unix_ms(std::time::SystemTime::now()));
    let operator = Operator::daemon(
        "suite",
        Instant::now(),
        Admin::open(
            palyra_gateway::console::open_file_log(gw.path()).expect("console log"),
            Arc::clone(&gw.docs),
            Arc::new(AdminAuth::from_token("suite-token")),
            Arc::clone(&hub),
            clock,
            Arc::new(|buf: &mut [u8]| buf.fill(0x5a)),
            Vec::new(),
        )
        .expect("operator stores"),
        false,
    );
    let (server, addr) = D::start_listener(
        Arc::new(OperatorAcceptor {
            operator,
            config: Default::default(),
            tls: None,
        }),
        Some(hub.notifier()),
    );
    let get = |path: &str, token: &str| {
        exchange(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").as_bytes(),
            1,
        )
    };
    let out = get("/admin/v1/status", "suite-token");
    assert!(out.starts_with("HTTP/1.1 200"), "[{}] {out}", D::NAME);
    assert!(out.contains("\"registered\":1"), "{out}");
    let out = get("/admin/v1/nodes", "suite-token");
    assert!(
        out.contains(crate::DEV_A) && out.contains("\"state\""),
        "{out}"
    );
    let out = get("/admin/v1/status", "wrong");
    assert!(
        out.starts_with("HTTP/1.1 401") && out.contains("www-authenticate: Bearer"),
        "{out}"
    );
    // Publish over HTTP: stored in the node-plane log, read back over QUIC.
    let body = format!(
        "{{\"name\":\"ops.notice\",\"payload\":{{\"m\":1}},\"to\":\"{}\"}}",
        crate::DEV_A
    );
    let out = exchange(
        addr,
        format!("POST /admin/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer suite-token\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
        1,
    );
    assert!(
        out.starts_with("HTTP/1.1 201") && out.contains("\"seq\":1"),
        "[{}] {out}",
        D::NAME
    );
    let conn = D::connect(quic_addr, crate::device_tls(&a)).expect("QUIC");
    let frames = crate::call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    let event = frames.iter().find_map(|f| f.event.as_ref()).expect("event");
    assert_eq!(
        (event.name.as_str(), event.device_id.as_str()),
        ("ops.notice", "gateway")
    );
    D::close(conn);
    // Just over the body limit, and malformed JSON.
    let big = "x".repeat(64 * 1024 + 1);
    let out = exchange(
        addr,
        format!("POST /admin/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer suite-token\r\nContent-Length: {}\r\n\r\n{big}", big.len()).as_bytes(),
        1,
    );
    assert!(
        out.starts_with("HTTP/1.1 413") && out.contains("payload_too_large"),
        "{out}"
    );
    let out = exchange(
        addr,
        b"POST /admin/v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer suite-token\r\nContent-Length: 3\r\nConnection: close\r\n\r\n{x}",
        1,
    );
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // Webhooks: create an integration, deliver a signed event, refuse a replay and a bad signature.
    let body = b"{\"name\":\"ci\",\"max_body_bytes\":1024}";
    let out = exchange(
        addr,
        &[format!("POST /admin/v1/integrations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer suite-token\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes(), body].concat(),
        1,
    );
    assert!(out.starts_with("HTTP/1.1 201"), "[{}] {out}", D::NAME);
    let answer: serde_json::Value =
        serde_json::from_str(out.split("\r\n\r\n").nth(1).expect("body")).expect("json");
    let secret = hex::decode(answer["secret"].as_str().expect("secret")).expect("hex");
    let deliver = |body: &[u8], nonce: &str, secret: &[u8]| {
        let ts = (palyra_gateway::store::unix_ms(std::time::SystemTime::now()) / 1000).to_string();
        let sig = palyra_gateway::operator::webhook::sign(secret, &ts, nonce, body);
        let head = format!("POST /webhooks/v1/ci HTTP/1.1\r\nHost: x\r\nX-Palyra-Signature: {sig}\r\nX-Palyra-Timestamp: {ts}\r\nX-Palyra-Nonce: {nonce}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
        exchange(addr, &[head.as_bytes(), body].concat(), 1)
    };
    let hook = b"{\"build\":\"green\"}";
    let out = deliver(hook, "nonce-aaaaaaaaaaaaaaaa", &secret);
    assert!(
        out.starts_with("HTTP/1.1 202") && out.contains("\"seq\":2"),
        "[{}] {out}",
        D::NAME
    );
    let out = deliver(hook, "nonce-aaaaaaaaaaaaaaaa", &secret);
    assert!(out.starts_with("HTTP/1.1 409"), "replay: {out}");
    let out = deliver(hook, "nonce-bbbbbbbbbbbbbbbb", b"wrong secret");
    assert!(
        out.starts_with("HTTP/1.1 401") && out.contains("bad_signature"),
        "{out}"
    );
    let out = deliver(&vec![b' '; 1025], "nonce-cccccccccccccccc", &secret);
    assert!(
        out.starts_with("HTTP/1.1 413"),
        "integration body limit: {out}"
    );
    let conn = D::connect(quic_addr, crate::device_tls(&a)).expect("QUIC");
    let frames = crate::call::<D>(
        &conn,
        &NodeRequest::StreamEvents {
            resume_from: Some(1),
            follow: false,
        },
    );
    let event = frames
        .iter()
        .find_map(|f| f.event.as_ref())
        .expect("webhook event");
    assert_eq!(event.name, "webhook.ci");
    assert_eq!(event.payload["build"], "green");
    D::close(conn);
    // Ten failures from this address, then 429 even with the right token.
    for _ in 0..palyra_gateway::operator::auth::MAX_FAILURES {
        get("/admin/v1/status", "guess");
    }
    let out = get("/admin/v1/status", "suite-token");
    assert!(
        out.starts_with("HTTP/1.1 429") && out.contains("retry-after:"),
        "{out}"
    );
    D::stop_grpc(server);
    D::stop(quic);
}

/// The admin API and console of a daemon on `gw`'s state over `hub`, admin token
/// `suite-token`.
fn suite_admin(
    gw: &crate::Gateway,
    hub: &Arc<palyra_gateway::node::hub::NodeHub>,
) -> palyra_gateway::operator::Admin {
    let clock: palyra_gateway::util::WallClock =
        Arc::new(|| palyra_gateway::store::unix_ms(std::time::SystemTime::now()));
    palyra_gateway::operator::Admin::open(
        palyra_gateway::console::open_file_log(gw.path()).expect("console log"),
        Arc::clone(&gw.docs),
        Arc::new(palyra_gateway::operator::auth::AdminAuth::from_token(
            "suite-token",
        )),
        Arc::clone(hub),
        clock,
        Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, buf)),
        Vec::new(),
    )
    .expect("operator stores")
}

/// A blocking console-stream client (tungstenite) with a read timeout.
pub struct StreamClient<S: Read + Write = TcpStream>(tungstenite::WebSocket<S>);

impl StreamClient {
    /// Connects to the console stream at `addr` with `headers`.
    pub fn connect(addr: SocketAddr, headers: &[(&'static str, String)]) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Self::over(stream, &format!("ws://{addr}"), headers)
            .unwrap_or_else(|status| panic!("upgrade refused: {status:?}"))
    }
}

impl<S: Read + Write> StreamClient<S> {
    /// Upgrades `stream` (whose reads already time out) at `base` (`ws://host:port` or
    /// `wss://...`); when refused, the HTTP status of the refusal (`None`: no HTTP answer).
    fn over(
        stream: S,
        base: &str,
        headers: &[(&'static str, String)],
    ) -> Result<Self, Option<u16>> {
        use tungstenite::client::IntoClientRequest;
        let mut request = format!("{base}/console/v1/stream")
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "sec-websocket-protocol",
            "palyra.console.v1".parse().expect("header"),
        );
        for (name, value) in headers {
            request
                .headers_mut()
                .insert(*name, value.parse().expect("header"));
        }
        match tungstenite::client(request, stream) {
            Ok((ws, _)) => Ok(Self(ws)),
            Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r))) => {
                Err(Some(r.status().as_u16()))
            }
            Err(_) => Err(None),
        }
    }

    /// Sends one message.
    pub fn send(&mut self, msg: serde_json::Value) {
        self.0
            .send(tungstenite::Message::text(msg.to_string()))
            .expect("send");
    }

    /// The next text message.
    pub fn next_message(&mut self) -> serde_json::Value {
        loop {
            match self.0.read().expect("read") {
                tungstenite::Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
                tungstenite::Message::Close(f) => panic!("closed: {f:?}"),
                _ => {}
            }
        }
    }

    /// The next text message before `deadline` (reads time out after 5 s each; a quiet
    /// stream is read again until then).
    pub fn next_before(&mut self, deadline: std::time::Instant) -> Option<serde_json::Value> {
        use std::io::ErrorKind;
        while std::time::Instant::now() < deadline {
            match self.0.read() {
                Ok(tungstenite::Message::Text(t)) => return serde_json::from_str(&t).ok(),
                Ok(tungstenite::Message::Close(f)) => panic!("closed: {f:?}"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => panic!("read: {e}"),
            }
        }
        None
    }

    /// Messages until one of type `kind` (included).
    pub fn until(&mut self, kind: &str) -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        loop {
            match self.0.read().expect("read") {
                tungstenite::Message::Text(t) => {
                    let msg: serde_json::Value = serde_json::from_str(&t).expect("JSON");
                    let done = msg["type"] == kind;
                    got.push(msg);
                    if done {
                        return got;
                    }
                }
                tungstenite::Message::Close(f) => panic!("closed: {f:?} after {got:?}"),
                _ => {}
            }
        }
    }
}

/// Logs in to the console at `addr` with the admin token: the headers of a console stream
/// (session cookie, the console's Origin).
pub fn console_login(addr: SocketAddr, token: &str) -> [(&'static str, String); 2] {
    let body = format!("{{\"admin_token\":\"{token}\"}}");
    let out = exchange(
        addr,
        format!("POST /console/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
        1,
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("cookie")
        .to_owned();
    [("cookie", cookie), ("origin", format!("http://{addr}"))]
}

/// The console over real sockets: login (cookie, CSRF), the stream with the session cookie and
/// the console's Origin, an agent with the admin token publishing chat (streamed) and an A2UI
/// form live, the person's form action delivered to the agent, and a reconnect by cursor that
/// receives exactly the missed records.
pub fn operator_console_stream<D: Driver>() {
    use serde_json::json;
    let gw = crate::Gateway::new();
    let plane = gw.plane(&palyra_gateway::node::NodePlaneOptions::default());
    let hub = Arc::clone(&plane.hub);
    let admin = suite_admin(&gw, &hub);
    let (server, addr) = D::start_listener(
        Arc::new(OperatorAcceptor {
            operator: Operator::daemon("suite", Instant::now(), admin, false),
            config: Default::default(),
            tls: None,
        }),
        Some(hub.notifier()),
    );
    let console_headers = console_login(addr, "suite-token");
    let mut person = StreamClient::connect(addr, &console_headers);
    let mut agent = StreamClient::connect(addr, &[("authorization", "Bearer suite-token".into())]);
    person.send(json!({"type":"hello","resume":null}));
    person.until("snapshot.done");
    agent.send(json!({"type":"hello","resume":null,"agent":"suite"}));
    agent.until("snapshot.done");
    agent.send(json!({"type":"chat.message","session_id":"main","message_id":"r1","text":"Hel","streaming":true}));
    agent.send(json!({"type":"chat.delta","message_id":"r1","text":"lo"}));
    agent.send(json!({"type":"chat.done","message_id":"r1"}));
    let form = json!({"v":1,"surface":"ask","components":[{"id":"f","type":"form",
        "props":{"title":"Go?","fields":[{"id":"n","label":"N","type":"number"}]}}]});
    agent.send(json!({"type":"a2ui.snapshot","document":form}));
    agent.send(json!({"type":"a2ui.patch","surface":"ask","base_version":1,
        "ops":[{"op":"replace","path":"/components/0/props/title","value":"Ready?"}]}));
    let got = person.until("a2ui.patch");
    let kinds: Vec<&str> = got
        .iter()
        .map(|m| m["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "chat.message",
            "chat.delta",
            "chat.done",
            "a2ui.snapshot",
            "a2ui.patch"
        ],
        "[{}]",
        D::NAME
    );
    assert_eq!(got[4]["version"], 2);
    person.send(json!({"type":"a2ui.action","surface":"ask","component":"f","action":"submit","value":{"n":3}}));
    let action = agent.until("a2ui.action").pop().expect("action");
    assert_eq!(action["value"], json!({"n":3}), "[{}]", D::NAME);
    // A network drop: the console reconnects with its last cursor after more was published.
    let cursor = got.last().expect("messages")["cursor"].clone();
    drop(person);
    for i in 0..3 {
        agent.send(json!({"type":"chat.message","session_id":"main","message_id":format!("m{i}"),"text":format!("missed {i}")}));
    }
    agent.send(json!({"type":"ping"}));
    agent.until("pong");
    let mut again = StreamClient::connect(addr, &console_headers);
    again.send(json!({"type":"hello","resume":cursor}));
    again.send(json!({"type":"ping"}));
    let got = again.until("pong");
    let texts: Vec<&str> = got
        .iter()
        .filter(|m| m["type"] == "chat.message")
        .map(|m| m["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(got[0]["resumed"], true, "[{}]", D::NAME);
    assert_eq!(texts, ["missed 0", "missed 1", "missed 2"], "[{}]", D::NAME);
    // The action was logged too and is in the replay; nothing else is.
    assert_eq!(got.len(), 1 + 1 + 3 + 1, "[{}] {got:?}", D::NAME);
    D::stop_grpc(server);
}

/// The operator listener over TLS (`palyrad --http-tls`): the gateway's ECDSA P-256 server
/// certificate verified against the gateway CA with ALPN `http/1.1`, HSTS on answers, a `Secure`
/// session cookie, the console stream over `wss` with the `https` origin (the `http` one is
/// refused), and nothing answered to cleartext HTTP.
pub fn operator_over_tls<D: Driver>() {
    use palyra_proto::quic::tls::{client_config, tcp_server_config, ALPN_HTTP1};
    let gw = crate::Gateway::new();
    let plane = gw.plane(&palyra_gateway::node::NodePlaneOptions::default());
    let tls = tcp_server_config(plane.identity.tcp_cert_slot(), ALPN_HTTP1).expect("server TLS");
    let client =
        Arc::new(client_config(plane.identity.ca_der(), None, ALPN_HTTP1).expect("client TLS"));
    let hub = Arc::clone(&plane.hub);
    let admin = suite_admin(&gw, &hub);
    let (server, addr) = D::start_listener(
        Arc::new(OperatorAcceptor {
            operator: Operator::daemon("suite", Instant::now(), admin, true),
            config: Default::default(),
            tls: Some(Arc::new(tls)),
        }),
        Some(hub.notifier()),
    );
    let host = format!("localhost:{}", addr.port());
    let secure = || {
        let conn = rustls::ClientConnection::new(
            Arc::clone(&client),
            "localhost".try_into().expect("name"),
        )
        .expect("TLS client");
        rustls::StreamOwned::new(conn, connect(addr))
    };
    let out = exchange_on(
        secure(),
        format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        1,
    );
    assert!(out.starts_with("HTTP/1.1 200"), "[{}] {out}", D::NAME);
    assert!(out.contains("strict-transport-security: max-age="), "{out}");
    let body = "{\"admin_token\":\"suite-token\"}";
    let out = exchange_on(
        secure(),
        format!("POST /console/v1/auth/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes(),
        1,
    );
    let set_cookie = out
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("[{}] no cookie: {out}", D::NAME));
    assert!(set_cookie.contains("; Secure"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("cookie").to_owned();
    let base = format!("wss://{host}");
    let refused = StreamClient::over(
        secure(),
        &base,
        &[
            ("cookie", cookie.clone()),
            ("origin", format!("http://{host}")),
        ],
    );
    assert!(
        matches!(refused, Err(Some(403))),
        "[{}] the http origin must be refused on a TLS listener",
        D::NAME
    );
    let mut person = StreamClient::over(
        secure(),
        &base,
        &[("cookie", cookie), ("origin", format!("https://{host}"))],
    )
    .unwrap_or_else(|status| panic!("[{}] wss upgrade refused: {status:?}", D::NAME));
    person.send(serde_json::json!({"type":"hello","resume":null}));
    person.until("snapshot.done");
    person.send(serde_json::json!({"type":"ping"}));
    person.until("pong");
    let out = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 1);
    assert!(
        !out.contains("HTTP/1.1 200"),
        "[{}] cleartext answered on a TLS listener: {out}",
        D::NAME
    );
    D::stop_grpc(server);
}
