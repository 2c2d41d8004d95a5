//! Capabilities a node serves to the gateway's runs (`palyra node run --capability
//! NAME=COMMAND`): registered with RegisterNode (with the description and input schema of
//! `--capability-spec FILE`), then a StreamNodeEvents stream stays open with a heartbeat every
//! second; each dispatch pushed on it runs COMMAND with the input JSON on stdin, and its stdout
//! (JSON, or text sent as a JSON string) goes back as `capability.result`. A command that exits
//! non-zero, runs past its timeout or writes more than the output cap fails with the reason.

use super::node::{connect_grpc, NodeTarget};
use crate::runtime::{self, Rt};
use crate::serve::grpc_channel::CallEvent;
use anyhow::Context;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    DeviceCapability, NodeCapabilityDispatch, NodeEventRequest, NodeEventResponse,
};
use prost::Message;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Largest output sent back (it must fit one StreamNodeEvents event with its envelope).
pub const MAX_OUTPUT: usize = 48 * 1024;
/// How long a command may run by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(25);

/// One capability this node serves.
#[derive(Debug, Clone, PartialEq)]
pub struct Capability {
    /// Its name.
    pub name: String,
    /// The shell command run for each call (`sh -c`), the input JSON on its stdin.
    pub command: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON schema of its input.
    pub input_schema: Option<Value>,
    /// How long one call may run.
    pub timeout: Duration,
}

/// One entry of a `--capability-spec` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecEntry {
    description: Option<String>,
    input_schema: Option<Value>,
    timeout_secs: Option<u64>,
}

/// Parses `NAME=COMMAND` flags and the optional spec file (a JSON object of NAME →
/// `{"description", "input_schema", "timeout_secs"}`).
pub fn parse(flags: &[String], spec: Option<&Path>) -> anyhow::Result<Vec<Capability>> {
    let specs: BTreeMap<String, SpecEntry> = match spec {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{}: expected a JSON object of NAME -> {{description, input_schema, timeout_secs}}",
                    path.display()
                )
            })?
        }
        None => BTreeMap::new(),
    };
    let mut out: Vec<Capability> = Vec::new();
    for flag in flags {
        let (name, command) = flag
            .split_once('=')
            .with_context(|| format!("--capability {flag:?}: expected NAME=COMMAND"))?;
        let name = name.trim();
        palyra_proto::node::message::validate_event_name(name)
            .map_err(|e| anyhow::anyhow!("--capability {name:?}: {e}"))?;
        anyhow::ensure!(
            !command.trim().is_empty(),
            "--capability {name}: the command is empty"
        );
        anyhow::ensure!(
            !out.iter().any(|c| c.name == name),
            "--capability {name} is given twice"
        );
        let entry = specs.get(name);
        if let Some(schema) = entry.and_then(|e| e.input_schema.as_ref()) {
            anyhow::ensure!(
                schema.is_object(),
                "{name}: input_schema must be a JSON object"
            );
        }
        out.push(Capability {
            name: name.to_owned(),
            command: command.to_owned(),
            description: entry
                .and_then(|e| e.description.clone())
                .unwrap_or_default(),
            input_schema: entry.and_then(|e| e.input_schema.clone()),
            timeout: entry
                .and_then(|e| e.timeout_secs)
                .map_or(DEFAULT_TIMEOUT, Duration::from_secs),
        });
    }
    for name in specs.keys() {
        anyhow::ensure!(
            out.iter().any(|c| &c.name == name),
            "the spec file describes {name}, which no --capability serves"
        );
    }
    Ok(out)
}

/// What running a command produced: (success, output JSON, error).
pub fn execute(capability: &Capability, input: &[u8]) -> (bool, Value, String) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(&capability.command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return (false, Value::Null, format!("cannot start the command: {e}")),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.take(MAX_OUTPUT as u64 + 1).read_to_end(&mut out);
        }
        out
    });
    let mut stderr = child.stderr.take();
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = stderr.take(4096).read_to_end(&mut err);
        }
        err
    });
    let deadline = std::time::Instant::now() + capability.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => break None,
        }
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        return (
            false,
            Value::Null,
            format!(
                "the command ran past its timeout of {} s",
                capability.timeout.as_secs()
            ),
        );
    };
    if out.len() > MAX_OUTPUT {
        return (
            false,
            Value::Null,
            format!("the command wrote more than {MAX_OUTPUT} bytes"),
        );
    }
    let output = serde_json::from_slice(&out)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&out).trim_end().to_owned()));
    if !status.success() {
        let stderr = String::from_utf8_lossy(&err);
        return (
            false,
            output,
            format!("the command exited with {status}: {}", stderr.trim()),
        );
    }
    (true, output, String::new())
}

fn event(device_id: &str, name: &str, payload: &Value) -> Vec<u8> {
    NodeEventRequest {
        v: 1,
        device_id: Some(CanonicalId {
            ulid: device_id.to_owned(),
        }),
        event_name: name.to_owned(),
        payload_json: serde_json::to_vec(payload).unwrap_or_default(),
        replay: None,
    }
    .encode_to_vec()
}

/// Serves `capabilities` for the node of `target` until the connection fails: registers them,
/// keeps a heartbeat, runs each dispatched call. `report` gets one JSON object per call.
pub async fn serve_once(
    rt: &Rt,
    target: &NodeTarget,
    capabilities: &[Capability],
    report: &(dyn Fn(Value) + Send + Sync),
) -> anyhow::Result<()> {
    let node = connect_grpc(rt, target).await?;
    let device_id = node.device_id.clone();
    let registered = capabilities
        .iter()
        .map(|c| DeviceCapability {
            name: c.name.clone(),
            available: true,
            description: c.description.clone(),
            input_schema_json: c
                .input_schema
                .as_ref()
                .map(|s| serde_json::to_vec(s).unwrap_or_default())
                .unwrap_or_default(),
        })
        .collect::<Vec<_>>();
    node.register_capabilities(std::env::consts::OS, registered)
        .await?;
    let mut call = node.open_events().await?;
    call.send(event(&device_id, "node.started", &json!({})))
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    report(json!({"event": "capabilities_registered",
                  "capabilities": capabilities.iter().map(|c| c.name.clone()).collect::<Vec<_>>()}));
    let (results, rx) = async_channel::unbounded::<Vec<u8>>();
    let mut beat = rt.new_timer(rt.now() + Duration::from_secs(1));
    loop {
        enum Woke {
            Event(Option<CallEvent>),
            Result(Vec<u8>),
            Beat,
        }
        let woke = {
            let mut next = std::pin::pin!(call.next());
            let mut result = std::pin::pin!(rx.recv());
            std::future::poll_fn(|cx| {
                use std::future::Future;
                if let std::task::Poll::Ready(e) = next.as_mut().poll(cx) {
                    return std::task::Poll::Ready(Woke::Event(e));
                }
                if let std::task::Poll::Ready(Ok(r)) = result.as_mut().poll(cx) {
                    return std::task::Poll::Ready(Woke::Result(r));
                }
                beat.as_mut().poll(cx).map(|()| Woke::Beat)
            })
            .await
        };
        match woke {
            Woke::Beat => {
                beat.as_mut().reset(rt.now() + Duration::from_secs(1));
                call.send(event(&device_id, "node.heartbeat", &json!({})))
                    .await
                    .map_err(|s| anyhow::anyhow!("{s}"))?;
            }
            Woke::Result(bytes) => call.send(bytes).await.map_err(|s| anyhow::anyhow!("{s}"))?,
            Woke::Event(None) => anyhow::bail!("the event stream closed"),
            Woke::Event(Some(CallEvent::Finished(status, _))) => {
                anyhow::bail!("the gateway ended the event stream: {status}")
            }
            Woke::Event(Some(CallEvent::Headers(_))) => {}
            Woke::Event(Some(CallEvent::Message(bytes))) => {
                let response = NodeEventResponse::decode(bytes.as_ref())?;
                let Some(dispatch) = response.dispatch else {
                    continue;
                };
                start_call(rt, capabilities, &device_id, dispatch, &results, report);
            }
        }
    }
}

/// Runs one dispatched call off the event loop; its result is queued on `results`.
fn start_call(
    rt: &Rt,
    capabilities: &[Capability],
    device_id: &str,
    dispatch: NodeCapabilityDispatch,
    results: &async_channel::Sender<Vec<u8>>,
    report: &(dyn Fn(Value) + Send + Sync),
) {
    let request_id = dispatch
        .request_id
        .as_ref()
        .map(|i| i.ulid.clone())
        .unwrap_or_default();
    report(
        json!({"event": "capability_call", "capability": dispatch.capability,
                  "request_id": request_id}),
    );
    let capability = capabilities
        .iter()
        .find(|c| c.name == dispatch.capability)
        .cloned();
    let (device, results, rt2) = (device_id.to_owned(), results.clone(), Rt::clone(rt));
    rt.spawn(Box::pin(async move {
        let (success, output, error) = match capability {
            None => (
                false,
                Value::Null,
                format!("this node does not serve {}", dispatch.capability),
            ),
            Some(capability) => {
                let input = dispatch.input_json.clone();
                runtime::unblock(rt2.as_ref(), move || execute(&capability, &input)).await
            }
        };
        let payload = json!({"request_id": request_id, "success": success,
                             "output_json": output, "error": error});
        let _ = results
            .send(event(&device, "capability.result", &payload))
            .await;
    }));
}

/// Serves `capabilities` until `stop` says so, reconnecting with backoff (1 s doubling to 30 s).
pub async fn serve(
    rt: Rt,
    target: NodeTarget,
    capabilities: Vec<Capability>,
    report: std::sync::Arc<dyn Fn(Value) + Send + Sync>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = rt.now();
        if let Err(e) = serve_once(&rt, &target, &capabilities, report.as_ref()).await {
            report(
                json!({"event": "capabilities_disconnected", "error": format!("{e:#}"),
                          "retry_in_ms": backoff.as_millis() as u64}),
            );
        }
        if rt.now().saturating_duration_since(started) > Duration::from_secs(60) {
            backoff = Duration::from_secs(1);
        }
        runtime::sleep(rt.as_ref(), backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_get_their_input_and_report_output_exit_status_and_timeouts() {
        let cap = |command: &str, timeout| Capability {
            name: "t".into(),
            command: command.into(),
            description: String::new(),
            input_schema: None,
            timeout,
        };
        let long = Duration::from_secs(10);
        assert_eq!(
            execute(&cap("cat", long), br#"{"a":1}"#),
            (true, json!({"a": 1}), String::new())
        );
        assert_eq!(
            execute(&cap("echo hi", long), b""),
            (true, json!("hi"), String::new())
        );
        let (ok, _, error) = execute(&cap("echo no >&2; exit 3", long), b"");
        assert!(
            !ok && error.contains("exit status: 3") && error.contains("no"),
            "{error}"
        );
        let (ok, _, error) = execute(&cap("sleep 5", Duration::from_millis(200)), b"");
        assert!(!ok && error.contains("timeout"), "{error}");
        let (ok, _, error) = execute(&cap("head -c 100000 /dev/zero", long), b"");
        assert!(!ok && error.contains("more than"), "{error}");
    }

    #[test]
    fn flags_and_spec_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("spec.json");
        std::fs::write(
            &spec,
            r#"{"echo": {"description": "echoes", "input_schema": {"type": "object"}}}"#,
        )
        .unwrap();
        let caps = parse(&["echo=cat".into()], Some(&spec)).unwrap();
        assert_eq!(caps[0].description, "echoes");
        assert!(parse(&["nocommand".into()], None).is_err());
        assert!(parse(&["a=cat".into(), "a=cat".into()], None).is_err());
        assert!(parse(&["other=cat".into()], Some(&spec))
            .unwrap_err()
            .to_string()
            .contains("describes echo"));
    }
}
