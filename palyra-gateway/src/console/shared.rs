//! The console hub on a log other gateways write too (a JetStream stream): the log is the
//! truth, and every gateway adds up the same records in the same order to the same state.
//!
//! A gateway writes one record at a time, prepared against the state of every record before
//! it and appended with the seq it must get (JetStream's expected last sequence). When another
//! gateway got that seq first, the write is refused: the hub reads the records it missed and
//! prepares the command again against the new state. So no record in the log was made against
//! a state its readers do not have, and a publisher is answered once its record is durable.
//! Records other gateways write are added up as the log's follower brings them.

use super::{decode_record, Command, ConsoleError, ConsoleHub, Entry, Inner, Prepared, Published};
use crate::store::{Completer, NewEvent, StoreError, StoredEvent};
use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Times a command is prepared again after other gateways' records took its seq.
const MAX_ATTEMPTS: u32 = 64;

/// How long a refused write waits for the follower to bring the record that took its seq
/// before it is tried again anyway.
const BEHIND_PATIENCE_MS: u64 = 2_000;

/// How long the writer waits before reading the log again after a read that brought nothing.
const READ_RETRY_MS: u64 = 500;

/// The seqs of this gateway's own records remembered (for [`ConsoleHub::wrote_here`]).
const OWN_SEQS: usize = 65_536;

/// How often the follower looks at the log even when nothing woke it.
const FOLLOW_TICK: Duration = Duration::from_secs(1);

/// Publishes waiting for the one write in flight.
#[derive(Default)]
pub(super) struct Writer {
    queue: VecDeque<Job>,
    /// A write or a read of the log is in flight: the state waits for its outcome.
    busy: bool,
    /// A write was refused at this seq (another gateway has it) at this time (ms): new writes
    /// wait until the records up to it were added up.
    behind: Option<(u64, u64)>,
    /// No read of the log before this time (ms): the last one brought nothing.
    read_after_ms: u64,
    /// The seqs of the latest records this gateway wrote (at most [`OWN_SEQS`]).
    own: VecDeque<u64>,
}

impl Writer {
    /// Whether this gateway wrote record `seq` (one of its latest [`OWN_SEQS`]).
    pub(super) fn wrote(&self, seq: u64) -> bool {
        self.own.binary_search(&seq).is_ok()
    }

    /// Commands waiting or being written.
    pub(super) fn waiting(&self) -> u64 {
        self.queue.iter().map(|job| job.commands.len() as u64).sum()
    }
}

/// One publish: its commands not written yet and the results of those that were.
struct Job {
    commands: VecDeque<Command>,
    results: Vec<Result<Published, ConsoleError>>,
    done: Completer<Vec<Result<Published, ConsoleError>>>,
    attempts: u32,
}

/// What the writer does next.
enum Step {
    /// Nothing (idle, or waiting for a write, a read or the follower).
    Wait,
    /// Look again (something was done under the lock).
    Again,
    /// Read the log after this seq (not in memory), then look again.
    Read(u64),
    /// Write this record of this entry at this seq.
    Write(NewEvent, Entry, u64),
    /// Answer this publisher, then look again.
    Answer(Job),
}

impl ConsoleHub {
    /// Queues `commands` for the writer (a shared log's publish).
    pub(super) fn publish_shared(
        self: &Arc<Self>,
        commands: Vec<Command>,
        done: Completer<Vec<Result<Published, ConsoleError>>>,
    ) {
        let count = commands.len();
        if let Some(writer) = self.lock().shared.as_mut() {
            writer.queue.push_back(Job {
                commands: commands.into(),
                results: Vec::with_capacity(count),
                done,
                attempts: 0,
            });
        }
        self.pump();
    }

    /// Moves the writer on as far as it goes without waiting.
    fn pump(self: &Arc<Self>) {
        loop {
            match self.next_step() {
                Step::Wait => return,
                Step::Again => {}
                Step::Answer(job) => job.done.complete(job.results),
                Step::Read(after) => {
                    let hub = Arc::clone(self);
                    self.log.read(
                        after,
                        512,
                        8 * 1024 * 1024,
                        Box::new(move |result| {
                            hub.read_back(after, result);
                            hub.notifier.notify();
                            hub.pump();
                        }),
                    );
                    return;
                }
                Step::Write(record, entry, seq) => {
                    let hub = Arc::clone(self);
                    let bytes = record.body.len();
                    self.log.append(
                        vec![record],
                        Some(seq),
                        Box::new(move |stored| {
                            hub.written(seq, &entry, bytes, stored);
                            hub.notifier.notify();
                            hub.pump();
                        }),
                    );
                    return;
                }
            }
        }
    }

    /// Decides the writer's next step (under the lock, doing what needs no waiting).
    fn next_step(&self) -> Step {
        let now_ms = (self.clock)();
        let bounds = self.log.bounds();
        let mut inner = self.lock();
        let durable_seq = inner.durable_seq;
        let Some(writer) = inner.shared.as_mut() else {
            return Step::Wait;
        };
        if writer.busy {
            return Step::Wait;
        }
        if bounds.last_seq > durable_seq {
            if let Some(batch) = self.log.read_cached(durable_seq, 512, 8 * 1024 * 1024) {
                if !batch.events.is_empty() {
                    inner.ingest(&batch.events, bounds.first_seq);
                    return Step::Again;
                }
            }
            if now_ms < writer.read_after_ms {
                return Step::Wait;
            }
            writer.busy = true;
            return Step::Read(durable_seq);
        }
        if let Some((seq, since)) = writer.behind {
            if durable_seq < seq && now_ms.saturating_sub(since) < BEHIND_PATIENCE_MS {
                return Step::Wait;
            }
            writer.behind = None;
        }
        let Some(job) = writer.queue.front_mut() else {
            return Step::Wait;
        };
        let Some(command) = job.commands.front().cloned() else {
            return writer.queue.pop_front().map_or(Step::Wait, Step::Answer);
        };
        let seq = durable_seq + 1;
        let prepared = inner
            .prepare(command, seq, now_ms)
            .and_then(|prepared| match prepared {
                Prepared::New(entry, published) => {
                    inner.state.apply(&entry)?;
                    Ok((Some(entry), published))
                }
                Prepared::Existing(published) => Ok((None, published)),
            });
        let Some(writer) = inner.shared.as_mut() else {
            return Step::Wait;
        };
        let Some(job) = writer.queue.front_mut() else {
            return Step::Wait;
        };
        match prepared {
            Ok((Some(entry), published)) => {
                job.results.push(Ok(published));
                writer.busy = true;
                Step::Write(self.encode(&entry, seq), entry, seq)
            }
            done => {
                job.commands.pop_front();
                job.results.push(done.map(|(_, published)| published));
                Step::Again
            }
        }
    }

    /// The write of the front command's `entry` at `seq` completed.
    fn written(&self, seq: u64, entry: &Entry, bytes: usize, stored: Result<Vec<u64>, StoreError>) {
        let now_ms = (self.clock)();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(writer) = inner.shared.as_mut() else {
            return;
        };
        writer.busy = false;
        let Some(job) = writer.queue.front_mut() else {
            return;
        };
        match stored {
            Ok(_) => {
                job.commands.pop_front();
                job.attempts = 0;
                writer.own.push_back(seq);
                if writer.own.len() > OWN_SEQS {
                    writer.own.pop_front();
                }
                let _ = inner.durable.apply(entry);
                inner.durable_seq = seq;
                inner.next_seq = seq + 1;
                inner.unsaved += 1;
                inner.unsaved_bytes += bytes;
            }
            Err(StoreError::Conflict { .. }) if job.attempts < MAX_ATTEMPTS => {
                // Another gateway wrote `seq` first: the command is prepared again once its
                // record was added up.
                job.attempts += 1;
                job.results.pop();
                writer.behind = Some((seq, now_ms));
                inner.state = inner.durable.clone();
            }
            Err(e) => {
                tracing::warn!(error = %e, "a console record was not stored");
                job.commands.pop_front();
                if let Some(last) = job.results.last_mut() {
                    *last = Err(ConsoleError::store(format!("not stored: {e}")));
                }
                inner.state = inner.durable.clone();
            }
        }
        self.save_if_due(inner);
    }

    /// A read of the log after `after` (records the follower's memory did not hold) completed.
    fn read_back(&self, after: u64, result: Result<crate::store::EventBatch, StoreError>) {
        let now_ms = (self.clock)();
        let mut inner = self.lock();
        let inner = &mut *inner;
        if let Some(writer) = inner.shared.as_mut() {
            writer.busy = false;
            writer.read_after_ms = now_ms + READ_RETRY_MS;
        }
        match result {
            Ok(batch) => inner.ingest(&batch.events, batch.bounds.first_seq),
            Err(e) => tracing::warn!(after, error = %e, "reading the shared console log failed"),
        }
        self.save_if_due(inner);
    }

    /// Follows the shared log while the hub lives: adds up other gateways' records and wakes
    /// the console connections when the log grew (spawned by the daemon; `None` for a log only
    /// this gateway writes).
    pub fn follow(
        self: &Arc<Self>,
        rt: Arc<dyn crate::runtime::Runtime>,
    ) -> Option<crate::runtime::BoxFuture<()>> {
        self.lock().shared.as_ref()?;
        let weak: Weak<Self> = Arc::downgrade(self);
        let log_notifier = self.log.notifier();
        Some(Box::pin(async move {
            let mut seen = 0;
            loop {
                let listener = log_notifier.listen();
                {
                    let Some(hub) = weak.upgrade() else { return };
                    let changed = log_notifier.changed_since(&mut seen);
                    // Added up first, so whoever is woken finds the new records in the hub.
                    hub.pump();
                    if changed {
                        hub.notifier.notify();
                    }
                }
                let tick = crate::runtime::sleep_until(rt.as_ref(), rt.now() + FOLLOW_TICK);
                futures_lite::future::or(listener, tick).await;
            }
        }))
    }
}

impl Inner {
    /// Adds up the log's records after `durable_seq` (other gateways', or this one's read back
    /// after a lost answer) while nothing of this gateway's is in flight; `first_seq` is the
    /// oldest the log retains.
    fn ingest(&mut self, records: &[StoredEvent], first_seq: u64) {
        for record in records {
            if record.seq <= self.durable_seq {
                continue;
            }
            if record.seq != self.durable_seq + 1 {
                tracing::warn!(
                    from = self.durable_seq + 1,
                    to = record.seq - 1,
                    first_seq,
                    "console records were dropped by the shared log's retention before this gateway read them"
                );
            }
            match decode_record(&record.body) {
                // A record that does not apply is skipped by every gateway alike.
                Ok(entry) => {
                    let _ = self.durable.apply(&entry);
                    let _ = self.state.apply(&entry);
                }
                Err(e) => {
                    tracing::warn!(seq = record.seq, error = %e, "skipping an undecodable console record")
                }
            }
            self.durable_seq = record.seq;
            self.next_seq = record.seq + 1;
            self.unsaved += 1;
            self.unsaved_bytes += record.body.len();
        }
    }
}
