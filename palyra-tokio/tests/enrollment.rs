//! Enrollment end to end with the real binaries: `palyra pairing code --method qr` ->
//! `palyra node enroll --invite` -> `palyra pairing approve` -> `palyra node health` over QUIC,
//! with `palyrad` killed (SIGKILL) and restarted after every step; then a running
//! `palyra node run` rotates on the operator's request without losing its connection and is cut
//! off within a second of `palyra devices revoke`.

mod common;

use serde_json::Value;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOKEN: &str = "enrollment-suite-token-0123456789abcdef";

struct Gateway {
    state: std::path::PathBuf,
    node_addr: String,
    daemon: Option<common::Daemon>,
    url: String,
}

impl Gateway {
    fn start(state: &Path) -> Self {
        let mut gw = Self {
            state: state.to_owned(),
            // Outside the ephemeral range, so no client socket of a test running alongside
            // takes the port while the daemon is down.
            node_addr: format!("127.0.0.1:{}", common::fixed_port()),
            daemon: None,
            url: String::new(),
        };
        gw.restart();
        gw
    }

    /// SIGKILLs the daemon (if running) and starts it again on the same node port.
    fn restart(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.sigkill();
        }
        let (daemon, endpoints) = common::spawn_daemon_with(
            &self.state,
            &self.node_addr,
            &[("PALYRA_ADMIN_TOKEN", TOKEN)],
        );
        // The node plane keeps its UDP port across restarts (devices dial it); the TLS listener
        // takes the same number on TCP unless that was taken by something else.
        self.node_addr = endpoints["node_quic"].as_str().unwrap().to_owned();
        self.url = format!("http://{}", endpoints["http"].as_str().unwrap());
        self.daemon = Some(daemon);
    }

    /// Runs `palyra ARGS --daemon URL` (an operator command); its stdout, or a panic.
    fn operator(&self, args: &[&str]) -> String {
        let out = palyra(&[args, &["--daemon", &self.url]].concat());
        assert!(
            out.status.success(),
            "palyra {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.operator(&[args, &["--json"]].concat())).expect("JSON output")
    }

    fn requests(&self) -> Vec<Value> {
        self.json(&["pairing", "list"])["requests"]
            .as_array()
            .unwrap()
            .clone()
    }
}

fn palyra(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args(args)
        .env("PALYRA_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run palyra")
}

/// Starts `palyra node run` and forwards its JSON lines with their arrival time.
fn spawn_run(node_dir: &str) -> (std::process::Child, mpsc::Receiver<(Instant, Value)>) {
    let mut run = Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args([
            "node",
            "run",
            "--identity",
            node_dir,
            "--run-for-secs",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines, events) = mpsc::channel();
    let stdout = run.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = lines.send((Instant::now(), v));
            }
        }
    });
    (run, events)
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file under `dir`, read whole.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

#[test]
fn cli_enrollment_survives_restarts_then_rotates_and_is_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let node = tmp.path().join("node");
    let node_dir = node.to_str().unwrap();
    let mut gw = Gateway::start(&state);

    // 1. The operator mints a QR code; a restart keeps it.
    let invite = gw
        .operator(&["pairing", "code", "--method", "qr"])
        .trim()
        .to_owned();
    assert!(invite.starts_with("palyra://pair?addr="), "{invite}");
    gw.restart();

    // 2. The node pairs and waits; the daemon and the node both die while it waits.
    let mut enroll = Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args([
            "node",
            "enroll",
            "--invite",
            &invite,
            "--identity",
            node_dir,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the pairing request", || !gw.requests().is_empty());
    let request = gw.requests()[0].clone();
    assert_eq!(request["state"], "pending_approval");
    let request_id = request["request_id"].as_str().unwrap().to_owned();
    let device_id = request["device_id"].as_str().unwrap().to_owned();
    enroll.kill().unwrap();
    enroll.wait().unwrap();
    gw.restart();
    assert_eq!(
        gw.requests()[0]["state"],
        "pending_approval",
        "restart lost the request"
    );

    // 3. The operator approves (the certificate is signed now); restart before delivery.
    let approved = gw.json(&["pairing", "approve", &request_id]);
    assert_eq!(approved["request"]["state"], "approved");
    gw.restart();
    assert_eq!(
        gw.requests()[0]["state"],
        "approved",
        "restart lost the approval"
    );

    // 4. The node resumes with only its identity directory and receives its certificate.
    let out = palyra(&[
        "node",
        "enroll",
        "--identity",
        node_dir,
        "--wait-secs",
        "20",
    ]);
    assert!(
        out.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["device_id"], device_id);
    gw.restart();
    assert_eq!(gw.requests()[0]["state"], "completed");
    let devices = gw.json(&["devices", "list"]);
    let certs = devices["devices"][0]["certificates"].as_array().unwrap();
    assert_eq!(certs.len(), 1, "issued twice: {devices}");

    // The code was single use.
    let again = palyra(&[
        "node",
        "enroll",
        "--invite",
        &invite,
        "--identity",
        tmp.path().join("other").to_str().unwrap(),
        "--wait-secs",
        "1",
    ]);
    assert!(!again.status.success(), "a used code paired again");

    // 5. node.health over QUIC with the node's own key.
    let out = palyra(&["node", "health", "--identity", node_dir]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let health: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(health["ok"], true);
    assert_eq!(health["device_id"], device_id);

    // The private key exists only in the node's directory.
    let key_pem = std::fs::read_to_string(node.join("device.key.pem")).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (path, bytes) in files_under(&state) {
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key_body),
            "the node's key is in {}",
            path.display()
        );
    }

    // 6. A running node rotates on the operator's request and stays connected.
    let (mut run, events) = spawn_run(node_dir);
    let next = |events: &mpsc::Receiver<(Instant, Value)>, want: &str| -> (Instant, Value) {
        let (at, event) = events
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no {want} event"));
        assert_eq!(event["event"], want, "{event}");
        (at, event)
    };
    let (_, first) = next(&events, "connected");
    wait_until("the device shown connected", || {
        gw.json(&["devices", "list"])["devices"][0]["presence"] == "connected"
    });
    gw.operator(&["devices", "rotate", &device_id]);
    let (_, rotated) = next(&events, "rotated");
    let (_, reconnected) = next(&events, "connected");
    assert_ne!(
        first["cert_expires_at_unix_ms"].as_u64().unwrap(),
        0,
        "{first}"
    );
    assert_eq!(
        rotated["cert_expires_at_unix_ms"],
        reconnected["cert_expires_at_unix_ms"]
    );
    // Once the new certificate is in use, the old one is revoked.
    wait_until("the superseded certificate to be revoked", || {
        let devices = gw.json(&["devices", "list"]);
        let states: Vec<String> = devices["devices"][0]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["state"].as_str().unwrap().to_owned())
            .collect();
        states == ["revoked", "active"]
    });
    let out = palyra(&["node", "health", "--identity", node_dir]);
    assert!(out.status.success(), "health with the rotated key");

    // A restarted node does not act on the same request again.
    run.kill().unwrap();
    run.wait().unwrap();
    let (mut run, events) = spawn_run(node_dir);
    let (_, again) = next(&events, "connected");
    assert_eq!(
        again["cert_expires_at_unix_ms"],
        rotated["cert_expires_at_unix_ms"]
    );
    if let Ok((_, extra)) = events.recv_timeout(Duration::from_secs(2)) {
        panic!("the restarted node acted again: {extra}");
    }

    // 7. Revocation cuts the running node off within a second.
    let revoked_at = Instant::now();
    gw.operator(&["devices", "revoke", &device_id, "--reason", "suite"]);
    let (cut_at, _) = next(&events, "disconnected");
    let elapsed = cut_at.duration_since(revoked_at);
    assert!(
        elapsed < Duration::from_secs(1),
        "cut off after {elapsed:?}"
    );
    let out = palyra(&["node", "health", "--identity", node_dir]);
    assert!(!out.status.success(), "a revoked node connected");
    run.kill().unwrap();
    run.wait().unwrap();
}

/// One HTTP/1.1 exchange on a fresh connection: status, headers (lowercase names), body.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    tcp.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

/// The console page drives the pairing routes with its session cookie and CSRF token, never
/// without the token or from a foreign origin; refusals carry the right statuses.
#[test]
fn console_session_drives_pairing_routes() {
    let tmp = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&tmp.path().join("state"));
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let login = format!("{{\"admin_token\":\"{TOKEN}\"}}");
    let (status, headers, body) = http(
        &addr,
        "POST",
        "/console/v1/auth/login",
        &[("content-type", "application/json")],
        &login,
    );
    assert_eq!(status, 200, "{body}");
    let cookie = headers
        .iter()
        .find(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_owned())
        .unwrap();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let origin = format!("http://{addr}");
    let session = [
        ("cookie", cookie.as_str()),
        ("x-palyra-csrf-token", csrf.as_str()),
        ("origin", origin.as_str()),
    ];

    let list = |h: &[(&str, &str)]| http(&addr, "GET", "/admin/v1/pairing/requests", h, "").0;
    assert_eq!(list(&session), 200);
    assert_eq!(list(&session[..1]), 403, "the cookie alone is not enough");
    assert_eq!(
        list(&[session[0], session[1], ("origin", "http://evil.example")]),
        403,
        "a foreign origin"
    );
    assert_eq!(list(&[]), 401);

    let (status, _, body) = http(
        &addr,
        "POST",
        "/admin/v1/pairing/codes",
        &session,
        r#"{"method":"pin","ttl_seconds":60}"#,
    );
    assert_eq!(status, 201, "{body}");
    let minted: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(minted["code"].as_str().unwrap().len(), 6);
    assert!(minted["invite"].is_null());
    assert!(minted["ca_fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    let codes = http(&addr, "GET", "/admin/v1/pairing/codes", &session, "").2;
    assert!(
        !codes.contains(minted["code"].as_str().unwrap()),
        "a listing shows a code"
    );

    let post = |path: &str, body: &str| http(&addr, "POST", path, &session, body);
    let unknown = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    assert_eq!(
        post(&format!("/admin/v1/pairing/requests/{unknown}/approve"), "").0,
        404
    );
    assert_eq!(
        post("/admin/v1/pairing/codes", r#"{"method":"sms"}"#).0,
        400
    );
    assert_eq!(
        post(
            &format!("/admin/v1/pairing/requests/{unknown}/approve"),
            r#"{"replace":"yes"}"#
        )
        .0,
        400
    );
    assert_eq!(
        post(&format!("/admin/v1/devices/{unknown}/revoke"), "").0,
        404
    );
    assert_eq!(post("/admin/v1/devices/not-a-ulid/revoke", "").0, 400);
    assert_eq!(
        post(&format!("/admin/v1/devices/{unknown}/rotate"), "").0,
        404
    );
    assert_eq!(http(&addr, "GET", "/admin/v1/devices", &session, "").0, 200);
    assert_eq!(http(&addr, "PUT", "/admin/v1/devices", &session, "").0, 405);
}
