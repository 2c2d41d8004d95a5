//! Other gateways' runs on a tape several gateways share (a JetStream stream): each gateway
//! drives the runs started through it and follows the others', so a run started on one
//! gateway is listed, streamed and replayed by every gateway. Input for a run (approvals,
//! cancellation) goes to the gateway driving it.

use super::{Entry, RunEngine};
use crate::run::tape::{RunMeta, RunState, TapeRecord, EVENT, OPEN, TRANSCRIPT};
use crate::runtime::{BoxFuture, Rt};
use crate::store::StoredEvent;
use palyra_proto::pb::palyra::common::v1::RunStreamEvent;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;

/// How often the follower looks at the tape even when nothing woke it.
const FOLLOW_TICK: Duration = Duration::from_secs(1);

/// Records read from the tape at once.
const READ_RECORDS: usize = 1024;
/// ... and about this many bytes.
const READ_BYTES: usize = 8 * 1024 * 1024;

impl RunEngine {
    /// Follows a shared tape while the engine lives, taking in the runs other gateways drive
    /// (spawned by the daemon; `None` for a tape only this gateway writes).
    pub fn follow(self: &Arc<Self>, rt: Rt) -> Option<BoxFuture<()>> {
        self.tape.shared_name()?;
        let weak = Arc::downgrade(self);
        let notifier = self.tape.notifier();
        Some(Box::pin(async move {
            loop {
                let listener = notifier.listen();
                {
                    let Some(engine) = weak.upgrade() else { return };
                    engine.take_in();
                }
                let tick = crate::runtime::sleep_until(rt.as_ref(), rt.now() + FOLLOW_TICK);
                futures_lite::future::or(listener, tick).await;
            }
        }))
    }

    /// Takes in what the tape holds beyond what was followed, from memory or, behind it, by a
    /// read that completes later.
    fn take_in(self: &Arc<Self>) {
        loop {
            let after = {
                let runs = self.lock();
                if runs.following {
                    return;
                }
                runs.followed
            };
            if self.tape.bounds().last_seq <= after {
                return;
            }
            match self.tape.read_cached(after, READ_RECORDS, READ_BYTES) {
                Some(batch) if !batch.events.is_empty() => self.take_in_records(&batch.events),
                _ => {
                    self.lock().following = true;
                    let engine = Arc::clone(self);
                    self.tape.read(
                        after,
                        READ_RECORDS,
                        READ_BYTES,
                        Box::new(move |result| {
                            engine.lock().following = false;
                            match result {
                                Ok(batch) if !batch.events.is_empty() => {
                                    engine.take_in_records(&batch.events);
                                    engine.take_in();
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    tracing::warn!(error = %e, "reading the shared run tape failed; again shortly")
                                }
                            }
                        }),
                    );
                    return;
                }
            }
        }
    }

    /// Applies the records of other gateways' runs (this gateway's own are skipped: they went
    /// into its entries as they were written).
    fn take_in_records(&self, records: &[StoredEvent]) {
        let own = self.config.gateway.as_deref().unwrap_or_default();
        let mut runs = self.lock();
        for stored in records {
            if stored.seq <= runs.followed {
                continue;
            }
            runs.followed = stored.seq;
            let Ok(record) = TapeRecord::decode(stored.body.as_ref()) else {
                tracing::warn!(seq = stored.seq, "skipping an undecodable run tape record");
                continue;
            };
            match record.kind {
                OPEN => {
                    let Ok(meta) = serde_json::from_slice::<RunMeta>(&record.body) else {
                        continue;
                    };
                    if meta.gateway.is_empty()
                        || meta.gateway == own
                        || runs.map.contains_key(&meta.run_id)
                    {
                        continue;
                    }
                    runs.order.push(meta.run_id.clone());
                    runs.map.insert(meta.run_id.clone(), foreign_entry(meta));
                }
                EVENT => {
                    let Some(entry) = runs.map.get_mut(&record.run_id).filter(|e| e.foreign) else {
                        continue;
                    };
                    let Ok(event) = RunStreamEvent::decode(record.body.as_ref()) else {
                        continue;
                    };
                    entry.state = entry.state.after(&event);
                    entry.emitted_state = entry.state;
                    entry.events.push(record.body);
                    entry.next_seq = entry.events.len() as u64;
                    entry.closed = entry.state.is_terminal();
                }
                TRANSCRIPT => {
                    if let Some(entry) = runs.map.get_mut(&record.run_id).filter(|e| e.foreign) {
                        entry.transcript = serde_json::from_slice(&record.body).unwrap_or_default();
                    }
                }
                _ => {}
            }
        }
        drop(runs);
        self.wake.notify();
    }
}

/// The entry of a run another gateway drives, before its events arrive.
fn foreign_entry(meta: RunMeta) -> Entry {
    Entry {
        meta,
        events: Vec::new(),
        state: RunState::Accepted,
        emitted_state: RunState::Accepted,
        transcript: Vec::new(),
        inbox: None,
        next_seq: 0,
        closed: false,
        failure: None,
        attached: 0,
        pace: Arc::default(),
        foreign: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::engine::RunsConfig;
    use crate::run::tape;
    use crate::store::{LogStore, MemoryLog, NewEvent};
    use palyra_proto::pb::palyra::common::v1::stream_status::StatusKind;

    fn write(tape: &MemoryLog, run_id: &str, kind: u32, body: Vec<u8>) {
        let record = NewEvent {
            to: None,
            body: tape::record(run_id, kind, body),
            id: None,
        };
        tape.append(vec![record], None, Box::new(|r| assert!(r.is_ok())));
    }

    fn meta(run_id: &str, gateway: &str) -> Vec<u8> {
        serde_json::to_vec(&RunMeta {
            run_id: run_id.into(),
            session_id: "s".into(),
            principal: "admin".into(),
            origin: "manual".into(),
            started_at_unix_ms: 1,
            prompt: "hi".into(),
            gateway: gateway.into(),
        })
        .unwrap()
    }

    fn status(run_id: &str, seq: u64, kind: StatusKind) -> Vec<u8> {
        super::super::status_event(run_id, seq, kind, String::new()).encode_to_vec()
    }

    fn engine(tape: &Arc<MemoryLog>) -> Arc<RunEngine> {
        let docs: Arc<dyn crate::store::DocStore> = Arc::new(crate::store::MemoryDocs::default());
        let trust = Arc::new(palyra_proto::identity::trust::TrustIndex::default());
        let hub = Arc::new(crate::node::hub::NodeHub::in_memory(trust));
        let sessions = Arc::new(crate::run::sessions::SessionStore::open(docs, None).unwrap());
        let config = RunsConfig {
            gateway: Some("gw-b".into()),
            ..RunsConfig::default()
        };
        RunEngine::open(
            Arc::clone(tape) as Arc<dyn LogStore>,
            sessions,
            hub,
            Arc::new(Default::default()),
            Arc::new(|| 5),
            config,
        )
        .unwrap()
    }

    #[test]
    fn other_gateways_runs_are_followed_and_never_marked_interrupted_here() {
        let tape = Arc::new(MemoryLog::shared(1 << 20, "runs"));
        // gw-a's run is in progress; gw-b's own unfinished run was cut by its crash.
        write(&tape, "A1", OPEN, meta("A1", "gw-a"));
        write(&tape, "A1", EVENT, status("A1", 1, StatusKind::InProgress));
        write(&tape, "B1", OPEN, meta("B1", "gw-b"));
        let engine = engine(&tape);
        let caller = crate::access::Caller::admin();
        let state = |id: &str| {
            engine
                .list(&caller, 10)
                .into_iter()
                .find(|r| r.meta.run_id == id)
                .map(|r| r.state)
        };
        assert_eq!(state("A1"), Some("in_progress"), "A's run is A's to end");
        assert_eq!(state("B1"), Some("interrupted"));
        assert!(
            engine.read("A1", 0, 1 << 20).unwrap().end.is_none(),
            "still streaming"
        );
        // A's run goes on and ends; a new run of A appears; B follows both.
        write(&tape, "A1", EVENT, status("A1", 2, StatusKind::Done));
        write(&tape, "A2", OPEN, meta("A2", "gw-a"));
        engine.take_in();
        assert_eq!(state("A1"), Some("done"));
        assert_eq!(state("A2"), Some("accepted"));
        let read = engine.read("A1", 0, 1 << 20).unwrap();
        assert_eq!(read.events.len(), 2);
        assert!(read
            .end
            .is_some_and(|s| s.code == palyra_proto::grpc::Code::Ok));
        let refused = engine.send(
            &caller,
            "A2",
            crate::run::engine::RunInput::Cancel("x".into()),
        );
        assert!(refused
            .unwrap_err()
            .message
            .contains("runs on gateway gw-a"));
    }
}
