//! The run tape: every run's events in one durable log (`STATE/runs/log`), each record naming its
//! run. A run opens with its metadata, then its events in order (each a `RunStreamEvent` with
//! its `seq` on the run's tape), and closes with the messages it added to its session's
//! conversation. Reading the log back at start rebuilds every run; a run without a terminal
//! status was cut by a crash and is marked interrupted.

use crate::store::StoreError;
use crate::store::{read_blocking, FileEventLog, FileEventLogConfig, LogService, LogStore};
use bytes::Bytes;
use palyra_proto::pb::palyra::common::v1::{
    journal_event::EventKind, run_stream_event::Body, stream_status::StatusKind,
    tool_decision::DecisionKind, ApprovalDecisionScope, CanonicalId, RunStreamEvent,
};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

/// One record of the tape log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TapeRecord {
    /// The run.
    #[prost(string, tag = "1")]
    pub run_id: String,
    /// What the record is: [`OPEN`], [`EVENT`] or [`TRANSCRIPT`].
    #[prost(uint32, tag = "2")]
    pub kind: u32,
    /// The body: JSON [`RunMeta`], an encoded `RunStreamEvent`, or the JSON transcript.
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

/// A run's first record.
pub const OPEN: u32 = 1;
/// One event of a run.
pub const EVENT: u32 = 2;
/// The messages a finished run added to its session.
pub const TRANSCRIPT: u32 = 3;

/// What a run is, as its first record says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    /// The run.
    pub run_id: String,
    /// Its session.
    pub session_id: String,
    /// Who started it.
    pub principal: String,
    /// What started it (`manual`, `console`, `acp`, ...).
    pub origin: String,
    /// When.
    pub started_at_unix_ms: u64,
    /// The first input, shortened.
    pub prompt: String,
    /// The gateway that drives it, on a tape several gateways share (empty: this one's).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, not streaming yet.
    Accepted,
    /// Streaming or waiting for tools and approvals.
    InProgress,
    /// Finished.
    Done,
    /// Failed.
    Failed,
    /// Cancelled.
    Cancelled,
    /// The daemon stopped before it finished.
    Interrupted,
}

impl RunState {
    /// Its name (`in_progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Accepted => "accepted",
            RunState::InProgress => "in_progress",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::Interrupted => "interrupted",
        }
    }

    /// Whether the run ended.
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunState::Accepted | RunState::InProgress)
    }

    /// The state after `event`.
    pub fn after(self, event: &RunStreamEvent) -> RunState {
        let Some(Body::Status(status)) = &event.body else {
            return self;
        };
        match StatusKind::try_from(status.kind) {
            Ok(StatusKind::Accepted) => RunState::Accepted,
            Ok(StatusKind::InProgress) => RunState::InProgress,
            Ok(StatusKind::Done) => RunState::Done,
            Ok(StatusKind::Cancelled) => RunState::Cancelled,
            Ok(StatusKind::Failed) if status.message.starts_with(INTERRUPTED) => {
                RunState::Interrupted
            }
            Ok(StatusKind::Failed) => RunState::Failed,
            _ => self,
        }
    }
}

/// How the status of an interrupted run begins.
pub const INTERRUPTED: &str = "interrupted";

/// A run read back from the tape.
#[derive(Debug, Clone)]
pub struct LoadedRun {
    /// Its metadata.
    pub meta: RunMeta,
    /// Its events, encoded, in seq order.
    pub events: Vec<Bytes>,
    /// Its state after them.
    pub state: RunState,
    /// The messages it added to its session.
    pub transcript: Vec<Value>,
}

/// The tape log's configuration.
pub fn log_config() -> FileEventLogConfig {
    FileEventLogConfig {
        segment_bytes: 8 * 1024 * 1024,
        max_total_bytes: 512 * 1024 * 1024,
        max_record_bytes: 1024 * 1024,
        cache_bytes: 8 * 1024 * 1024,
    }
}

/// Opens the file-backed tape log under `state_dir`.
pub fn open_file_log(state_dir: &Path) -> Result<Arc<dyn LogStore>, StoreError> {
    let config = log_config();
    let file_log = FileEventLog::open(state_dir.join("runs").join("log"), config)?;
    Ok(Arc::new(LogService::start(
        "palyra-runs",
        Box::new(file_log),
        config.cache_bytes,
    )?))
}

/// Encodes a record.
pub fn record(run_id: &str, kind: u32, body: impl Into<Bytes>) -> Bytes {
    TapeRecord {
        run_id: run_id.to_owned(),
        kind,
        body: body.into(),
    }
    .encode_to_vec()
    .into()
}

/// Reads every run of `log`, in the order they started (at open, before anything is served).
/// Records of runs whose first record is no longer retained are skipped.
pub fn load(log: &dyn LogStore) -> Result<Vec<LoadedRun>, StoreError> {
    let mut runs: Vec<LoadedRun> = Vec::new();
    let mut index = std::collections::HashMap::new();
    let mut after = log.bounds().first_seq.saturating_sub(1);
    loop {
        let batch = read_blocking(log, after, 4096, 16 * 1024 * 1024)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for stored in batch {
            let corrupt = |e: &dyn std::fmt::Display| {
                StoreError::Corrupt(format!("run tape record {}: {e}", stored.seq))
            };
            let rec = TapeRecord::decode(stored.body.as_ref()).map_err(|e| corrupt(&e))?;
            match rec.kind {
                OPEN => {
                    let meta: RunMeta =
                        serde_json::from_slice(&rec.body).map_err(|e| corrupt(&e))?;
                    index.insert(rec.run_id.clone(), runs.len());
                    runs.push(LoadedRun {
                        meta,
                        events: Vec::new(),
                        state: RunState::Accepted,
                        transcript: Vec::new(),
                    });
                }
                EVENT => {
                    let Some(run) = index.get(&rec.run_id).map(|i| &mut runs[*i]) else {
                        continue;
                    };
                    let event =
                        RunStreamEvent::decode(rec.body.as_ref()).map_err(|e| corrupt(&e))?;
                    run.state = run.state.after(&event);
                    run.events.push(rec.body);
                }
                TRANSCRIPT => {
                    if let Some(run) = index.get(&rec.run_id).map(|i| &mut runs[*i]) {
                        run.transcript =
                            serde_json::from_slice(&rec.body).map_err(|e| corrupt(&e))?;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(runs)
}

/// One event as JSON (what `palyra agent run --json` prints, one per line, and what the admin
/// API and the console show of a tape).
pub fn event_json(event: &RunStreamEvent) -> Value {
    let id = |i: &Option<CanonicalId>| i.as_ref().map(|i| i.ulid.clone()).unwrap_or_default();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut out = json!({"seq": event.seq, "run_id": id(&event.run_id),
                         "timestamp_unix_ms": event.timestamp_unix_ms});
    let body = match &event.body {
        Some(Body::ModelToken(t)) => {
            json!({"type": "model_token", "token": t.token, "is_final": t.is_final})
        }
        Some(Body::Status(s)) => json!({"type": "status",
            "kind": StatusKind::try_from(s.kind).map(|k| k.as_str_name()).unwrap_or("STATUS_KIND_UNSPECIFIED"),
            "message": s.message}),
        Some(Body::ToolProposal(p)) => {
            json!({"type": "tool_proposal", "proposal_id": id(&p.proposal_id),
            "tool_name": p.tool_name, "input_json": text(&p.input_json), "approval_required": p.approval_required})
        }
        Some(Body::ToolApprovalRequest(r)) => json!({"type": "tool_approval_request",
            "proposal_id": id(&r.proposal_id), "approval_id": id(&r.approval_id), "tool_name": r.tool_name,
            "input_json": text(&r.input_json), "summary": r.request_summary,
            "timeout_seconds": r.prompt.as_ref().map(|p| p.timeout_seconds).unwrap_or(0)}),
        Some(Body::ToolApprovalResponse(r)) => json!({"type": "tool_approval_response",
            "proposal_id": id(&r.proposal_id), "approval_id": id(&r.approval_id), "approved": r.approved,
            "reason": r.reason,
            "decision_scope": ApprovalDecisionScope::try_from(r.decision_scope).map(|s| s.as_str_name()).unwrap_or("")}),
        Some(Body::ToolDecision(d)) => {
            json!({"type": "tool_decision", "proposal_id": id(&d.proposal_id),
            "kind": DecisionKind::try_from(d.kind).map(|k| k.as_str_name()).unwrap_or(""), "reason": d.reason,
            "approval_required": d.approval_required, "policy_enforced": d.policy_enforced})
        }
        Some(Body::ToolResult(r)) => {
            json!({"type": "tool_result", "proposal_id": id(&r.proposal_id),
            "success": r.success, "output_json": text(&r.output_json), "error": r.error})
        }
        Some(Body::ToolAttestation(a)) => {
            json!({"type": "tool_attestation", "proposal_id": id(&a.proposal_id),
            "attestation_id": id(&a.attestation_id), "execution_sha256": a.execution_sha256,
            "executed_at_unix_ms": a.executed_at_unix_ms, "timed_out": a.timed_out, "executor": a.executor})
        }
        Some(Body::A2uiUpdate(u)) => {
            json!({"type": "a2ui_update", "surface": u.surface, "patch_json": text(&u.patch_json)})
        }
        Some(Body::JournalEvent(j)) => json!({"type": "journal_event",
            "kind": EventKind::try_from(j.kind).map(|k| k.as_str_name()).unwrap_or(""),
            "payload": serde_json::from_slice::<Value>(&j.payload_json).unwrap_or(Value::Null)}),
        None => json!({"type": "unknown"}),
    };
    if let (Some(out), Value::Object(body)) = (out.as_object_mut(), body) {
        out.extend(body);
    }
    out
}
