//! `/admin/v1/runs`: the agent runs for the admin (already authenticated) and the console's
//! Runs view: the list with states, one run with its tape, abort, and an operator's answer to
//! the approval a run waits for (`POST /admin/v1/runs/{id}/approve` or `/deny`): how the
//! operator decides for runs whose caller cannot, such as the OpenAI-compatible API's.

use super::OperatorConnection;
use crate::access::Caller;
use crate::run::approvals::pending_approval;
use crate::run::engine::RunInput;
use crate::run::tape::event_json;
use http::StatusCode;
use palyra_proto::pb::palyra::common::v1::{
    ApprovalDecisionScope, CanonicalId, RunStreamEvent, ToolApprovalResponse,
};
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
                    let pending = pending_approval(&tape).map(|(proposal, approval, tool)| {
                        json!({"proposal_id": proposal, "approval_id": approval, "tool": tool})
                    });
                    let body = json!({"run": summary, "events": events,
                                      "truncated": tape.len() > MAX_EVENTS,
                                      "pending_approval": pending});
                    self.json(now, StatusCode::OK, body)
                }
                None => self.error(
                    now,
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no run {id}"),
                ),
            },
            (["runs", id, "screenshots", name], &M::GET) => {
                match engine.screenshot(&caller, id, name) {
                    Some(png) => {
                        let mut headers = super::security_headers();
                        headers.insert("content-type", http::HeaderValue::from_static("image/png"));
                        headers.insert(
                            "cache-control",
                            http::HeaderValue::from_static("private, max-age=3600"),
                        );
                        self.respond(now, StatusCode::OK, &headers, bytes::Bytes::from(png))
                    }
                    None => self.error(
                        now,
                        StatusCode::NOT_FOUND,
                        "not_found",
                        &format!("run {id} has no screenshot {name}"),
                    ),
                }
            }
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
            (["runs", id, verb @ ("approve" | "deny")], &M::POST) => {
                let approved = *verb == "approve";
                let pending = engine
                    .get(&caller, id)
                    .and_then(|(_, tape)| pending_approval(&tape));
                let Some((proposal, approval, tool)) = pending else {
                    return self.error(
                        now,
                        StatusCode::CONFLICT,
                        "no_pending_approval",
                        &format!("run {id} waits for no approval"),
                    );
                };
                let answer = ToolApprovalResponse {
                    proposal_id: Some(CanonicalId {
                        ulid: proposal.clone(),
                    }),
                    approved,
                    reason: format!(
                        "{} by the operator",
                        if approved { "approved" } else { "denied" }
                    ),
                    approval_id: Some(CanonicalId { ulid: approval }),
                    decision_scope: ApprovalDecisionScope::Once as i32,
                    decision_scope_ttl_ms: 0,
                };
                match engine.send(&caller, id, RunInput::Approval(answer)) {
                    Ok(()) => self.json(
                        now,
                        StatusCode::OK,
                        json!({"run_id": id, "proposal_id": proposal, "tool": tool, "approved": approved}),
                    ),
                    Err(status) => self.error(now, StatusCode::CONFLICT, "run_ended", &status.message),
                }
            }
            (["runs"] | ["runs", _], _) => self.not_allowed(now, "GET"),
            (["runs", _, "approve" | "deny"], _) => self.not_allowed(now, "POST"),
            (["runs", _, "abort"], _) => self.not_allowed(now, "POST"),
            _ => self.error(now, StatusCode::NOT_FOUND, "not_found", "no such run route"),
        }
    }
}
