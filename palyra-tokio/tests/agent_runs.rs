//! Agent runs with the real binaries: the new user's path (a scripted OpenAI-compatible upstream
//! as `[model] base_url`, a node paired with the CLI serving a capability with `palyra node run`,
//! `palyra agent run` approving the tool call on stdin, `palyra runs show` printing the tape),
//! and `palyrad` SIGKILLed mid-run, repeatedly: after the restart the tape holds every event the
//! client saw and the run reads interrupted.

use palyra_gateway::client::runs::{canonical, RunsClient};
use palyra_gateway::serve::grpc_channel::CallEvent;
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, MessageContent, MessageEnvelope, RunStreamEvent, RunStreamRequest,
};
use palyra_proto::pb::palyra::gateway::v1::{ListRunsRequest, ListRunsResponse};
use palyra_testkit::provider::Upstream;
use prost::Message;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

const ADMIN: &str = "agent-runs-admin";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path, upstream: &Upstream) -> String {
    let path = dir.join("palyrad.toml");
    std::fs::write(
        &path,
        format!(
            "[model]\nbase_url = \"http://{}/v1\"\nmodel = \"scripted\"\n",
            upstream.addr
        ),
    )
    .unwrap();
    path.to_string_lossy().into_owned()
}

fn palyra(args: &[&str], envs: &[(&str, &str)], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_palyra"))
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("palyra");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_new_user_runs_the_agent_with_a_node_tool_approved_on_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("");
    let config = config(dir.path(), &upstream);
    let state = dir.path().join("state");
    let (_daemon, endpoints) = common::spawn_daemon_args(
        &state,
        "127.0.0.1:0",
        &["--config", &config],
        &[("PALYRA_ADMIN_TOKEN", ADMIN)],
    );
    let http = format!("http://{}", endpoints["http"].as_str().unwrap());
    let grpc = endpoints["grpc"].as_str().unwrap().to_owned();
    let env = [
        ("PALYRA_ADMIN_TOKEN", ADMIN),
        ("PALYRA_DAEMON_URL", http.as_str()),
        ("PALYRA_GRPC", grpc.as_str()),
    ];
    // Pair a node with the CLI.
    let (ok, invite, err) = palyra(&["pairing", "code", "--method", "qr"], &env, "");
    assert!(ok, "{err}");
    let identity = dir.path().join("node");
    let identity_arg = identity.to_string_lossy().into_owned();
    let mut enroll = Killed(
        Command::new(env!("CARGO_BIN_EXE_palyra"))
            .args([
                "node",
                "enroll",
                "--invite",
                invite.trim(),
                "--identity",
                &identity_arg,
            ])
            .envs(env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let request = loop {
        let (_, out, _) = palyra(&["pairing", "list", "--json"], &env, "");
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let pending = listed["requests"].as_array().and_then(|r| {
            r.iter()
                .find(|r| r["state"] == "pending_approval")
                .map(|r| r["request_id"].as_str().unwrap().to_owned())
        });
        if let Some(id) = pending {
            break id;
        }
        assert!(Instant::now() < deadline, "no pairing request");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(palyra(&["pairing", "approve", &request], &env, "").0);
    assert!(enroll.0.wait().unwrap().success(), "enrolled");
    // The node serves a capability with a description for the model.
    let spec = dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"system.echo": {"description": "Echoes its input", "input_schema": {"type": "object"}}}"#,
    )
    .unwrap();
    let spec_arg = spec.to_string_lossy().into_owned();
    let node = Killed(
        Command::new(env!("CARGO_BIN_EXE_palyra"))
            .args([
                "node",
                "run",
                "--identity",
                &identity_arg,
                "--capability",
                "system.echo=cat",
                "--capability-spec",
                &spec_arg,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut node = node;
    let mut lines = std::io::BufReader::new(node.0.stdout.take().unwrap()).lines();
    let registered = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("capabilities_registered"));
    assert!(registered, "the node registered its capability");
    // The agent calls it after the person answers `y`.
    let (ok, out, err) = palyra(
        &[
            "agent",
            "run",
            "--session",
            "demo",
            r#"check [[tool:system_echo {"text":"hi"}]]"#,
        ],
        &env,
        "y\n",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(r#"Tool system_echo said: {"text":"hi"}"#),
        "{out}"
    );
    assert!(
        err.contains("[approval] the agent wants to run system_echo"),
        "{err}"
    );
    assert!(err.contains("[tool] result"), "{err}");
    // The tape.
    let (ok, listed, _) = palyra(&["runs", "list", "--json"], &env, "");
    assert!(ok);
    let run: serde_json::Value = serde_json::from_str(listed.lines().next().unwrap()).unwrap();
    assert_eq!(run["state"], "done");
    let id = run["run_id"].as_str().unwrap();
    let (ok, tape, err) = palyra(&["runs", "show", id], &env, "");
    assert!(ok, "{err}");
    for step in [
        "status ACCEPTED",
        "tool_proposal system_echo",
        "tool_approval_request system_echo",
        "tool_approval_response approved",
        "tool_decision allow",
        "tool_result ok",
        "tool_attestation sha256=",
        "status DONE",
    ] {
        assert!(tape.contains(step), "{step} missing from\n{tape}");
    }
    // Denied on the terminal: the model hears it.
    let (ok, out, _) = palyra(
        &[
            "agent",
            "run",
            "--session",
            "demo2",
            r#"again [[tool:system_echo {"n":2}]]"#,
        ],
        &env,
        "n\n",
    );
    assert!(ok);
    assert!(out.contains("denied"), "{out}");
    // An API token without runs:write cannot start a run.
    let (ok, token, err) = palyra(
        &[
            "tokens",
            "create",
            "--principal",
            "user:reader",
            "--scope",
            "runs:read",
        ],
        &env,
        "",
    );
    assert!(ok, "{err}");
    let reader = [
        ("PALYRA_TOKEN", token.trim()),
        ("PALYRA_GRPC", grpc.as_str()),
    ];
    let (ok, _, err) = palyra(&["agent", "run", "hi"], &reader, "");
    assert!(!ok && err.contains("lacks the scope runs:write"), "{err}");
    let (ok, out, _) = palyra(&["runs", "list"], &reader, "");
    assert!(
        ok && out.lines().count() == 1,
        "the reader sees no one else's runs: {out}"
    );
}

fn rt() -> palyra_gateway::runtime::Rt {
    palyra_tokio::Tokio::current()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_run_leaves_every_seen_event_and_an_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::start("");
    let config = config(dir.path(), &upstream);
    let state = dir.path().join("state");
    let spawn = || {
        let (daemon, endpoints) = common::spawn_daemon_args(
            &state,
            "127.0.0.1:0",
            &["--config", &config],
            &[("PALYRA_ADMIN_TOKEN", ADMIN)],
        );
        (daemon, endpoints["grpc"].as_str().unwrap().to_owned())
    };
    for round in 0..3 {
        let (daemon, grpc) = spawn();
        let client = RunsClient::connect(&rt(), &grpc, ADMIN, None)
            .await
            .unwrap();
        let run = ulid::Ulid::new().to_string();
        let mut call = client.open("GatewayService", "RunStream").await.unwrap();
        let first = RunStreamRequest {
            v: 1,
            run_id: canonical(&run),
            session_key: "crash".into(),
            input: Some(MessageEnvelope {
                v: 1,
                content: Some(MessageContent {
                    text: "crash [[slow:40]] a b c d e f g h i j k l m n o p q r s t u v w x y z"
                        .into(),
                    attachments: Vec::new(),
                }),
                ..MessageEnvelope::default()
            }),
            ..RunStreamRequest::default()
        };
        call.send(first.encode_to_vec()).await.unwrap();
        let mut seen = Vec::new();
        let wanted = 6 + round * 4;
        while seen.len() < wanted {
            match call.next().await.expect("an event") {
                CallEvent::Message(bytes) => seen.push(bytes),
                CallEvent::Finished(status, _) => panic!("ended early: {status:?}"),
                CallEvent::Headers(_) => {}
            }
        }
        daemon.sigkill();
        drop(call);
        drop(client);
        let (_daemon, endpoints) = common::spawn_daemon_args(
            &state,
            "127.0.0.1:0",
            &["--config", &config],
            &[("PALYRA_ADMIN_TOKEN", ADMIN)],
        );
        let grpc = endpoints["grpc"].as_str().unwrap().to_owned();
        let client = RunsClient::connect(&rt(), &grpc, ADMIN, None)
            .await
            .unwrap();
        let mut tape = Vec::new();
        let end = palyra_gateway::client::runs::replay(&client, &run, 0, |e| {
            tape.push(e.clone());
            Ok(())
        })
        .await
        .unwrap();
        assert_ne!(end.code, palyra_proto::grpc::Code::Ok);
        let seen: Vec<RunStreamEvent> = seen
            .iter()
            .map(|b| RunStreamEvent::decode(b.as_ref()).unwrap())
            .collect();
        assert!(
            tape.len() > seen.len(),
            "round {round}: the tape ends with the interruption"
        );
        assert_eq!(
            &tape[..seen.len()],
            &seen[..],
            "round {round}: every event seen is on the tape"
        );
        let Some(Body::Status(last)) = &tape.last().unwrap().body else {
            panic!("the tape ends with a status")
        };
        assert!(last.message.starts_with("interrupted"), "{}", last.message);
        let listed: ListRunsResponse = client
            .unary(
                "GatewayService",
                "ListRuns",
                &ListRunsRequest {
                    v: 1,
                    limit: 10,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let state_of = listed
            .runs
            .iter()
            .find(|r| r.run_id.as_ref().unwrap().ulid == run)
            .map(|r| r.state.clone());
        assert_eq!(state_of.as_deref(), Some("interrupted"));
    }
}
