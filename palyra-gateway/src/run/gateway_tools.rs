//! Tools of the gateway itself, offered to runs beside node capabilities: they connect a run to
//! the other planes.
//!
//! - `palyra_publish_event` puts an event into the node-plane event log, for every node or one
//!   (`{"name", "payload", "to"?}` → `{"seq"}`), as the admin API's `POST /admin/v1/events` does;
//! - `palyra_patch_surface` patches an A2UI surface on the console with JSON-Patch operations
//!   (`{"surface", "ops", "base_version"?}` → `{"surface", "version"}`), through the
//!   [`Surfaces`] the daemon hands the engine (the console is a plane above the runs).

use super::machine::ToolSpec;
use crate::node::hub::{CapabilityResult, NodeHub};
use crate::store::{pending, NewEvent, Pending};
use crate::util::WallClock;
use palyra_proto::a2ui::state::{Command, ConsoleError, Published};
use palyra_proto::node::message::{validate_event_name, EventBody};
use serde_json::{json, Value};
use std::sync::Arc;

/// Publishes an event into the node-plane log.
pub const PUBLISH_EVENT: &str = "palyra_publish_event";
/// Patches an A2UI surface on the console.
pub const PATCH_SURFACE: &str = "palyra_patch_surface";
/// Largest event payload a run may publish (it must fit a node-plane event frame).
pub const MAX_PAYLOAD: usize = 60 * 1024;

/// The console's surfaces, as runs may change them.
pub trait Surfaces: Send + Sync {
    /// Applies `command`; answered once it is durable on the console log.
    fn publish(&self, command: Command) -> Pending<Vec<Result<Published, ConsoleError>>>;
}

/// The gateway tools a run is offered (the surface tool only when there is a console).
pub fn specs(with_surfaces: bool) -> Vec<ToolSpec> {
    let mut specs = vec![ToolSpec {
        name: PUBLISH_EVENT.into(),
        description: "Publish an event to the fleet's nodes through the gateway's event log. \
                      Returns the event's sequence number."
            .into(),
        parameters: json!({"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "description": "event name, printable ASCII without spaces, at most 128 bytes"},
            "payload": {"description": "the event's JSON payload"},
            "to": {"type": "string", "description": "a device ID (ULID) to address one node only"}}}),
        approval_required: true,
        sensitive: false,
    }];
    if with_surfaces {
        specs.push(ToolSpec {
            name: PATCH_SURFACE.into(),
            description: "Change an A2UI surface shown in the operator console with JSON-Patch \
                          operations (RFC 6902). Returns the surface's new version."
                .into(),
            parameters: json!({"type": "object", "required": ["surface", "ops"], "properties": {
                "surface": {"type": "string"},
                "ops": {"type": "array", "items": {"type": "object"}},
                "base_version": {"type": "integer", "description": "fail unless the surface is at this version"}}}),
            approval_required: true,
            sensitive: false,
        });
    }
    specs
}

fn failed(error: impl Into<String>) -> CapabilityResult {
    CapabilityResult {
        success: false,
        output_json: Vec::new(),
        error: error.into(),
    }
}

fn ok(output: Value) -> CapabilityResult {
    CapabilityResult {
        success: true,
        output_json: output.to_string().into_bytes(),
        error: String::new(),
    }
}

/// Runs gateway tool `name` with `input`.
pub async fn run(
    hub: &NodeHub,
    surfaces: Option<&Arc<dyn Surfaces>>,
    clock: &WallClock,
    name: &str,
    input: &[u8],
) -> CapabilityResult {
    let input: Value = match serde_json::from_slice(input) {
        Ok(v) => v,
        Err(e) => return failed(format!("the input is not JSON: {e}")),
    };
    match name {
        PUBLISH_EVENT => publish(hub, clock, &input).await,
        PATCH_SURFACE => match surfaces {
            Some(surfaces) => patch(surfaces.as_ref(), &input).await,
            None => failed("this gateway has no console"),
        },
        other => failed(format!("no gateway tool {other}")),
    }
}

async fn publish(hub: &NodeHub, clock: &WallClock, input: &Value) -> CapabilityResult {
    let Some(name) = input.get("name").and_then(Value::as_str) else {
        return failed("name (a string) is required");
    };
    if let Err(e) = validate_event_name(name) {
        return failed(format!("name: {e}"));
    }
    let to = match input.get("to") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if palyra_proto::identity::is_canonical_device_id(id) => {
            Some(id.clone())
        }
        Some(_) => return failed("to must be a canonical device ID (ULID)"),
    };
    let payload = input.get("payload").cloned().unwrap_or(Value::Null);
    let body = EventBody {
        name: name.to_owned(),
        device_id: "gateway".into(),
        occurred_at_unix_ms: clock(),
        payload,
        to: to.clone(),
    };
    let encoded = serde_json::to_vec(&body).unwrap_or_default();
    if encoded.len() > MAX_PAYLOAD {
        return failed(format!("the event is larger than {MAX_PAYLOAD} bytes"));
    }
    let (stored, done) = pending(Some(hub.notifier()));
    hub.log().append(
        vec![NewEvent {
            to,
            body: encoded.into(),
            id: None,
        }],
        None,
        Box::new(move |result| done.complete(crate::store::only_seq(result))),
    );
    match stored.wait().await {
        Some(Ok(seq)) => ok(json!({"seq": seq})),
        Some(Err(e)) => failed(format!("the event log failed: {e}")),
        None => failed("the event log closed"),
    }
}

async fn patch(surfaces: &dyn Surfaces, input: &Value) -> CapabilityResult {
    let Some(surface) = input.get("surface").and_then(Value::as_str) else {
        return failed("surface (a string) is required");
    };
    let Some(ops) = input.get("ops").filter(|o| o.is_array()) else {
        return failed("ops (an array of JSON-Patch operations) is required");
    };
    let base_version = match input.get("base_version") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(v) => Some(v),
            None => return failed("base_version must be a non-negative integer"),
        },
    };
    let command = Command::Patch {
        surface: surface.to_owned(),
        base_version,
        ops: ops.clone(),
    };
    match surfaces.publish(command).wait().await.map(|mut r| r.pop()) {
        Some(Some(Ok(published))) => {
            ok(json!({"surface": published.id, "version": published.version}))
        }
        Some(Some(Err(e))) => failed(format!("{}: {}", e.code, e.message)),
        _ => failed("the console closed"),
    }
}
