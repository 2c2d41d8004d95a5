//! `/admin/v1/runs`: the agent runs for the admin (already authenticated) and the console's
//! Runs view: the list with states, one run with its tape, and abort.

use super::OperatorConnection;
use crate::access::Caller;
use crate::run::tape::event_json;
use http::StatusCode;
use palyra_proto::pb::palyra::common::v1::RunStreamEvent;
use prost::Message;
use serde_json::{json, Value};
use std::time::Instant;

/// Runs listed at most.
pub const MAX_LISTED: usize = 200;
/// Tape events shown at most for one run (the rest is counted, not sent).
pub const MAX_EVENTS: usize = 10_000;

impl OperatorConnection {
    /// `/admin/v1/runs...` (no request body).
    pub(crate) fn runs_route(&mut self, now: Instant, path: &str, method: &http::Method) {
        use http::Method as M;
        let Some(admin) = &self.operator.admin else {
            return;
        };
        let Some(engine) = admin.runs.clone() else {
            return self.error(
                now,
                StatusCode::NOT_FOUND,
                "not_found",
                "this daemon runs no agents",
            );
        };
        let caller = Caller::admin();
        let segments: Vec<&str> = path.trim_start_matches("/admin/v1/").split('/').collect();
        match (segments.as_slice(), method) {
            (["runs"], &M::GET) => {
                let runs = engine.list(&caller, MAX_LISTED);
                let body = json!({"runs": runs, "provider_configured": engine.has_provider()});
                self.json(now, StatusCode::OK, body)
            }
            (["runs", id], &M::GET) => match engine.get(&caller, id) {
                Some((summary, tape)) => {
                    let events: Vec<Value> = tape
                        .iter()
                        .take(MAX_EVENTS)
                        .filter_map(|b| RunStreamEvent::decode(b.as_ref()).ok())
                        .map(|e| event_json(&e))
                        .collect();
                    let body = json!({"run": summary, "events": events,
                                      "truncated": tape.len() > MAX_EVENTS});
                    self.json(now, StatusCode::OK, body)
                }
                None => self.error(
                    now,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no run {id}"),
                ),
            },
            (["runs", id, "abort"], &M::POST) => {
                match engine.cancel(&caller, id, "aborted through the admin API") {
                    Ok(requested) => self.json(
                        now,
                        StatusCode::OK,
                        json!({"run_id": id, "cancel_requested": requested}),
                    ),
                    Err(status) => {
                        self.error(now, StatusCode::NOT_FOUND, "not_found", &status.message)
                    }
                }
            }
            (["runs"] | ["runs", _], _) => self.not_allowed(now, "GET"),
            (["runs", _, "abort"], _) => self.not_allowed(now, "POST"),
            _ => self.error(now, StatusCode::NOT_FOUND, "not_found", "no such run route"),
        }
    }
}
