//! Approval records, read from the run tapes (each approval request and the answer that resolved
//! it), and ApprovalsService: ListApprovals, GetApproval and ExportApprovals (NDJSON with a
//! SHA-256 hash chain seeded with 64 zeros and closed by a trailer, or a JSON array), streamed in
//! chunks of at most 64 KiB.

use super::engine::RunEngine;
use crate::access::Caller;
use crate::grpc::check_version;
use bytes::Bytes;
use palyra_proto::grpc::service::{decode, CallHandler, PollContext, Reply};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, ApprovalDecisionScope, CanonicalId, RunStreamEvent,
};
use palyra_proto::pb::palyra::gateway::v1::{
    ApprovalDecision, ApprovalExportFormat, ApprovalRecord, ApprovalSubjectType,
    ExportApprovalsRequest, ExportApprovalsResponse, GetApprovalRequest, GetApprovalResponse,
    ListApprovalsRequest, ListApprovalsResponse,
};
use prost::Message;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The export's schema ID.
pub const EXPORT_SCHEMA: &str = "palyra.approvals.export.ndjson.v1";
/// Largest export chunk.
pub const CHUNK_BYTES: usize = 64 * 1024;
/// Largest ListApprovals page.
const MAX_PAGE: usize = 500;
/// Default and largest export.
const EXPORT_DEFAULT: usize = 1000;
const EXPORT_MAX: usize = 5000;

fn canonical(id: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: id.to_owned(),
    })
}

/// Every approval `caller` may see, oldest first.
pub fn records(engine: &RunEngine, caller: &Caller) -> Vec<ApprovalRecord> {
    let mut out: Vec<ApprovalRecord> = Vec::new();
    for (meta, events) in engine.tapes(caller) {
        for bytes in events {
            let Ok(event) = RunStreamEvent::decode(bytes.as_ref()) else {
                continue;
            };
            match event.body {
                Some(Body::ToolApprovalRequest(request)) => {
                    let approval_id = request
                        .approval_id
                        .as_ref()
                        .map(|i| i.ulid.clone())
                        .unwrap_or_default();
                    out.push(ApprovalRecord {
                        v: 1,
                        approval_id: canonical(&approval_id),
                        session_id: canonical(&meta.session_id),
                        run_id: canonical(&meta.run_id),
                        principal: meta.principal.clone(),
                        requested_at_unix_ms: event.timestamp_unix_ms,
                        subject_type: ApprovalSubjectType::Tool as i32,
                        subject_id: request.tool_name.clone(),
                        request_summary: request.request_summary.clone(),
                        decision: ApprovalDecision::Unspecified as i32,
                        prompt: request.prompt.clone(),
                        ..ApprovalRecord::default()
                    });
                }
                Some(Body::ToolApprovalResponse(answer)) => {
                    let id = answer.approval_id.as_ref().map(|i| i.ulid.as_str());
                    let Some(record) = out
                        .iter_mut()
                        .rev()
                        .find(|r| r.approval_id.as_ref().map(|i| i.ulid.as_str()) == id)
                    else {
                        continue;
                    };
                    record.resolved_at_unix_ms = event.timestamp_unix_ms;
                    record.decision = if answer.approved {
                        ApprovalDecision::Allow
                    } else if answer.reason.contains("decision: timeout") {
                        ApprovalDecision::Timeout
                    } else if answer.reason.contains("decision: error") {
                        ApprovalDecision::Error
                    } else {
                        ApprovalDecision::Deny
                    } as i32;
                    record.decision_scope = answer.decision_scope;
                    record.decision_scope_ttl_ms = answer.decision_scope_ttl_ms;
                    record.decision_reason = answer.reason;
                }
                _ => {}
            }
        }
    }
    out.sort_by(|a, b| id_of(a).cmp(id_of(b)));
    out
}

fn id_of(r: &ApprovalRecord) -> &str {
    r.approval_id
        .as_ref()
        .map(|i| i.ulid.as_str())
        .unwrap_or("")
}

struct Filter {
    since: i64,
    until: i64,
    subject_id: String,
    principal: String,
    decision: i32,
    subject_type: i32,
}

/// The filter of a ListApprovals or ExportApprovals request (the same fields in both).
macro_rules! filter {
    ($request:expr) => {
        Filter {
            since: $request.since_unix_ms,
            until: $request.until_unix_ms,
            subject_id: $request.subject_id,
            principal: $request.principal,
            decision: $request.decision,
            subject_type: $request.subject_type,
        }
    };
}

impl Filter {
    fn keeps(&self, r: &ApprovalRecord) -> bool {
        (self.since == 0 || r.requested_at_unix_ms >= self.since)
            && (self.until == 0 || r.requested_at_unix_ms < self.until)
            && (self.subject_id.is_empty() || r.subject_id == self.subject_id)
            && (self.principal.is_empty() || r.principal == self.principal)
            && (self.decision == 0 || r.decision == self.decision)
            && (self.subject_type == 0 || r.subject_type == self.subject_type)
    }
}

/// ListApprovals.
pub fn list(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let request: ListApprovalsRequest = decode(bytes)?;
    check_version(request.v)?;
    let filter = filter!(request);
    let limit = match request.limit as usize {
        0 => 100,
        n => n.min(MAX_PAGE),
    };
    let approvals: Vec<ApprovalRecord> = records(engine, caller)
        .into_iter()
        .filter(|r| id_of(r) > request.after_approval_ulid.as_str())
        .filter(|r| filter.keeps(r))
        .take(limit)
        .collect();
    let next = match approvals.len() == limit {
        true => approvals
            .last()
            .map(|r| id_of(r).to_owned())
            .unwrap_or_default(),
        false => String::new(),
    };
    Ok(ListApprovalsResponse {
        v: 1,
        approvals,
        next_after_approval_ulid: next,
    }
    .encode_to_vec())
}

/// GetApproval.
pub fn get(engine: &RunEngine, caller: &Caller, bytes: &[u8]) -> Result<Vec<u8>, Status> {
    let request: GetApprovalRequest = decode(bytes)?;
    check_version(request.v)?;
    let id = request
        .approval_id
        .as_ref()
        .map(|i| i.ulid.as_str())
        .unwrap_or("");
    let approval = records(engine, caller)
        .into_iter()
        .find(|r| id_of(r) == id)
        .ok_or_else(|| Status::new(Code::NotFound, format!("no approval {id}")))?;
    Ok(GetApprovalResponse {
        v: 1,
        approval: Some(approval),
    }
    .encode_to_vec())
}

/// A record as JSON (the export's item).
pub fn record_json(r: &ApprovalRecord) -> Value {
    let name = |value: i32, f: fn(i32) -> Option<&'static str>| f(value).unwrap_or("unspecified");
    json!({
        "approval_id": id_of(r),
        "session_id": r.session_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or(""),
        "run_id": r.run_id.as_ref().map(|i| i.ulid.as_str()).unwrap_or(""),
        "principal": r.principal,
        "subject_type": name(r.subject_type, |v| ApprovalSubjectType::try_from(v).ok().map(|d| d.as_str_name())),
        "subject_id": r.subject_id,
        "request_summary": r.request_summary,
        "decision": name(r.decision, |v| ApprovalDecision::try_from(v).ok().map(|d| d.as_str_name())),
        "decision_scope": name(r.decision_scope, |v| ApprovalDecisionScope::try_from(v).ok().map(|d| d.as_str_name())),
        "decision_scope_ttl_ms": r.decision_scope_ttl_ms,
        "decision_reason": r.decision_reason,
        "requested_at_unix_ms": r.requested_at_unix_ms,
        "resolved_at_unix_ms": r.resolved_at_unix_ms,
    })
}

/// Hex SHA-256 of `prev` followed by `line`: one link of the export's chain.
pub fn chain(prev: &str, line: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(prev.as_bytes());
    hash.update(line.as_bytes());
    hex::encode(hash.finalize())
}

/// The NDJSON export of `records`: each line is a record with `prev_hash` and `hash` (the
/// SHA-256 of the previous hash and the line as it would be without `hash`), then a trailer.
pub fn ndjson(records: &[ApprovalRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut prev = "0".repeat(64);
    for record in records {
        let mut line = record_json(record);
        line["schema"] = json!(EXPORT_SCHEMA);
        line["record_type"] = json!("approval");
        line["prev_hash"] = json!(prev);
        let hash = chain(&prev, &line.to_string());
        line["hash"] = json!(hash);
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
        prev = hash;
    }
    let mut trailer = json!({"schema": EXPORT_SCHEMA, "record_type": "export_trailer",
                             "count": records.len(), "prev_hash": prev});
    trailer["hash"] = json!(chain(&prev, &trailer.to_string()));
    out.extend_from_slice(trailer.to_string().as_bytes());
    out.push(b'\n');
    out
}

/// ExportApprovals: the export, streamed in chunks as flow control allows.
pub struct Export {
    engine: Arc<RunEngine>,
    caller: Caller,
    body: Option<Bytes>,
    offset: usize,
    seq: u32,
    done: bool,
}

impl Export {
    /// An export for `caller`.
    pub fn new(engine: Arc<RunEngine>, caller: Caller) -> Self {
        Self {
            engine,
            caller,
            body: None,
            offset: 0,
            seq: 0,
            done: false,
        }
    }
}

impl CallHandler for Export {
    fn on_message(&mut self, message: Bytes, reply: &mut Reply) {
        if self.body.is_some() || self.done {
            self.done = true;
            return reply.finish(Status::new(
                Code::InvalidArgument,
                "ExportApprovals takes exactly one request message",
            ));
        }
        let request: ExportApprovalsRequest = match decode(&message) {
            Ok(r) => r,
            Err(status) => {
                self.done = true;
                return reply.finish(status);
            }
        };
        if let Err(status) = check_version(request.v) {
            self.done = true;
            return reply.finish(status);
        }
        let filter = filter!(request);
        let limit = match request.limit as usize {
            0 => EXPORT_DEFAULT,
            n => n.min(EXPORT_MAX),
        };
        let records: Vec<ApprovalRecord> = records(&self.engine, &self.caller)
            .into_iter()
            .filter(|r| filter.keeps(r))
            .take(limit)
            .collect();
        let body = match ApprovalExportFormat::try_from(request.format) {
            Ok(ApprovalExportFormat::Json) => {
                let items: Vec<Value> = records.iter().map(record_json).collect();
                Value::Array(items).to_string().into_bytes()
            }
            _ => ndjson(&records),
        };
        self.body = Some(body.into());
    }

    fn on_half_close(&mut self, reply: &mut Reply) {
        if self.body.is_none() && !self.done {
            self.done = true;
            reply.finish(Status::new(
                Code::InvalidArgument,
                "ExportApprovals takes exactly one request message",
            ));
        }
    }

    fn poll(&mut self, cx: &PollContext, reply: &mut Reply) {
        let Some(body) = &self.body else { return };
        if self.done {
            return;
        }
        while self.offset < body.len() && cx.queued_bytes < 4 * CHUNK_BYTES {
            let end = (self.offset + CHUNK_BYTES).min(body.len());
            self.seq += 1;
            reply.message(
                ExportApprovalsResponse {
                    v: 1,
                    chunk: body.slice(self.offset..end).to_vec(),
                    chunk_seq: self.seq,
                    done: false,
                }
                .encode_to_vec(),
            );
            self.offset = end;
            if reply.messages.len() >= 4 {
                break;
            }
        }
        if self.offset >= body.len() {
            self.seq += 1;
            reply.message(
                ExportApprovalsResponse {
                    v: 1,
                    chunk: Vec::new(),
                    chunk_seq: self.seq,
                    done: true,
                }
                .encode_to_vec(),
            );
            self.done = true;
            reply.finish(Status::ok());
        }
    }
}

/// The approval request a run's tape leaves unanswered: (proposal ID, approval ID, tool).
pub fn pending_approval(tape: &[Bytes]) -> Option<(String, String, String)> {
    let id = |i: &Option<CanonicalId>| i.as_ref().map(|i| i.ulid.clone()).unwrap_or_default();
    let mut pending = None;
    for bytes in tape {
        match RunStreamEvent::decode(bytes.as_ref())
            .ok()
            .and_then(|e| e.body)
        {
            Some(Body::ToolApprovalRequest(r)) => {
                pending = Some((id(&r.proposal_id), id(&r.approval_id), r.tool_name))
            }
            Some(Body::ToolDecision(d))
                if pending.as_ref().is_some_and(|p| p.0 == id(&d.proposal_id)) =>
            {
                pending = None
            }
            // DONE, FAILED and CANCELLED end whatever was waiting.
            Some(Body::Status(s)) if (3..=5).contains(&s.kind) => pending = None,
            _ => {}
        }
    }
    pending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_export_chain_links_every_line_and_the_trailer() {
        let record = ApprovalRecord {
            approval_id: canonical("01ARZ3NDEKTSV4RRFFQ69G5FAV"),
            principal: "user:a".into(),
            subject_id: "shell".into(),
            decision: ApprovalDecision::Allow as i32,
            ..ApprovalRecord::default()
        };
        let out = String::from_utf8(ndjson(&[record.clone(), record])).unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        let mut prev = "0".repeat(64);
        for line in &lines {
            assert_eq!(line["prev_hash"], json!(prev));
            let mut unhashed = line.clone();
            let hash = unhashed.as_object_mut().unwrap().remove("hash").unwrap();
            // Recomputed over the line as written before its hash was added.
            assert_eq!(hash, json!(chain(&prev, &unhashed.to_string())));
            prev = hash.as_str().unwrap().to_owned();
        }
        assert_eq!(lines[2]["record_type"], "export_trailer");
        assert_eq!(lines[2]["count"], 2);
        assert_eq!(lines[0]["decision"], "APPROVAL_DECISION_ALLOW");
    }
}
