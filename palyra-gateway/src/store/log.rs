//! Sequenced logs: the synchronous engine a log's thread drives ([`EventStore`]: the file log,
//! or [`MemoryEventLog`]), and the interface services use ([`LogStore`]), whose appends complete
//! later and whose recent records are read from memory without waiting for the disk.

use super::worker::Worker;
use super::{Done, EventBatch, LogBounds, NewEvent, StoreError, StoredEvent};
use crate::notify::Notifier;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// A reader behind the memory window gets this much read ahead for it at a time, so a stream
/// through old records is served from memory while the log's thread reads the next stretch.
pub const READ_AHEAD_BYTES: usize = 1024 * 1024;

/// An append-only, sequenced, durable log, driven synchronously by one thread.
pub trait EventStore: Send {
    /// Appends `events` and makes them durable before returning; returns the first assigned seq.
    fn append(&mut self, events: &[NewEvent]) -> Result<u64, StoreError>;
    /// Reads events with `seq > after`, in order, at most `max_events` and about `max_bytes`.
    fn read_after(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;
    /// Current bounds of the retained log.
    fn bounds(&self) -> LogBounds;
    /// Whether `event` can be stored at all (size limits); checked per caller before a batch.
    fn check(&self, _event: &NewEvent) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A sequenced log as services use it: appends are handed over and complete later (group
/// committed), reads of recent records come from memory. File-backed by default; a networked
/// log implements the same interface.
pub trait LogStore: Send + Sync {
    /// Bounds of the durable log.
    fn bounds(&self) -> LogBounds;
    /// Appends `events` in order, as one unit; `done` gets the first seq once they are durable.
    /// With `expect_first`, the append is refused (`Conflict`) unless the events would get
    /// exactly that first seq (a writer that numbers its records itself, as JetStream's expected
    /// last sequence).
    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<u64>);
    /// The records after `after` if memory holds them (or there are none): `None` means ask
    /// [`LogStore::read`].
    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch>;
    /// The records after `after`, from wherever they are; `done` gets them.
    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>);
    /// Notified after every durable append (readers following the log wait on it).
    fn notifier(&self) -> Arc<Notifier>;
    /// Stops taking work and waits until everything handed over is durable.
    fn close(&self);
}

/// A non-durable [`EventStore`] with retention bounded by total bytes, for simulations and tests.
pub struct MemoryEventLog {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    max_bytes: usize,
    last_seq: u64,
}

impl MemoryEventLog {
    /// A log that drops its oldest events once it holds more than `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            last_seq: 0,
        }
    }
}

impl EventStore for MemoryEventLog {
    fn append(&mut self, events: &[NewEvent]) -> Result<u64, StoreError> {
        let first = self.last_seq + 1;
        for event in events {
            self.last_seq += 1;
            let stored = StoredEvent {
                seq: self.last_seq,
                to: event.to.as_deref().map(Into::into),
                body: event.body.clone(),
            };
            self.bytes += stored.size();
            self.events.push_back(stored);
        }
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
        Ok(first)
    }

    fn read_after(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(take_after(&self.events, after, max_events, max_bytes))
    }

    fn bounds(&self) -> LogBounds {
        LogBounds {
            first_seq: self.events.front().map_or(self.last_seq + 1, |e| e.seq),
            last_seq: self.last_seq,
        }
    }
}

/// The events of `events` (consecutive seqs) after `after`, bounded.
fn take_after(
    events: &VecDeque<StoredEvent>,
    after: u64,
    max_events: usize,
    max_bytes: usize,
) -> Vec<StoredEvent> {
    let Some(first) = events.front().map(|e| e.seq) else {
        return Vec::new();
    };
    let skip = after.saturating_add(1).saturating_sub(first);
    let mut out = Vec::new();
    let mut bytes = 0;
    for event in events
        .iter()
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
    {
        if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
            break;
        }
        bytes += event.size();
        out.push(event.clone());
    }
    out
}

/// Recent records in memory, shared by the log's thread (which adds what it made durable) and
/// readers (who copy out under a short read lock).
struct Recent {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    max_bytes: usize,
    bounds: LogBounds,
}

impl Recent {
    fn push(&mut self, event: StoredEvent) {
        self.bytes += event.size();
        self.events.push_back(event);
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    fn set_bounds(&mut self, bounds: LogBounds) {
        self.bounds = bounds;
        while self
            .events
            .front()
            .is_some_and(|e| e.seq < bounds.first_seq)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
    }
}

/// Records read ahead of a reader behind the memory window: consecutive seqs, at most about
/// twice [`READ_AHEAD_BYTES`].
#[derive(Default)]
struct Ahead {
    events: VecDeque<StoredEvent>,
    bytes: usize,
}

impl Ahead {
    /// Whether the records after `after` start here.
    fn covers(&self, after: u64) -> bool {
        let next = after.saturating_add(1);
        match (self.events.front(), self.events.back()) {
            (Some(front), Some(back)) => front.seq <= next && next <= back.seq,
            _ => false,
        }
    }

    /// Adds `events` (read after `after`): appended when they continue what is held, else
    /// they replace it; the oldest go beyond the bound.
    fn extend(&mut self, after: u64, events: Vec<StoredEvent>) {
        if self.events.back().is_none_or(|b| b.seq != after) {
            self.events.clear();
            self.bytes = 0;
        }
        for event in events {
            self.bytes += event.size();
            self.events.push_back(event);
        }
        while self.bytes > 2 * READ_AHEAD_BYTES && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    /// Hands over (moves, not copies) the records after `after`, bounded; what is before them is
    /// dropped. The buffer serves one reader at a time: the events leave it as they are read,
    /// so the reader's thread alone touches them from then on.
    fn take(&mut self, after: u64, max_events: usize, max_bytes: usize) -> Vec<StoredEvent> {
        while self.events.front().is_some_and(|e| e.seq <= after) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < max_events && (bytes < max_bytes || out.is_empty()) {
            let Some(event) = self.events.pop_front() else {
                break;
            };
            bytes += event.size();
            self.bytes -= event.size();
            out.push(event);
        }
        out
    }

    /// The records after `after` if they start here (see [`Ahead::take`]), and, once less than
    /// half a stretch is left, the seq after which the next stretch is to be read.
    fn serve(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Option<(Vec<StoredEvent>, Option<u64>)> {
        if !self.covers(after) {
            return None;
        }
        let events = self.take(after, max_events, max_bytes);
        let last = self
            .events
            .back()
            .or(events.last())
            .map_or(after, |e| e.seq);
        let refill = (self.bytes < READ_AHEAD_BYTES / 2).then_some(last);
        Some((events, refill))
    }
}

enum Job {
    Append(Vec<NewEvent>, Option<u64>, Done<u64>),
    /// Read the stretch after `after` into the read-ahead buffer.
    ReadAhead {
        after: u64,
    },
    Read {
        after: u64,
        max_events: usize,
        max_bytes: usize,
        done: Done<EventBatch>,
    },
}

/// A [`LogStore`] over any [`EventStore`], which its own thread drives: consecutive appends
/// queued while the thread was busy are committed with one write and one fsync.
pub struct LogService {
    worker: Worker<Job>,
    recent: Arc<RwLock<Recent>>,
    ahead: Arc<RwLock<Ahead>>,
    /// A read-ahead job is queued or running.
    reading_ahead: Arc<AtomicBool>,
    notifier: Arc<Notifier>,
}

impl LogService {
    /// Starts thread `name` driving `store`; the last `cache_bytes` of records are kept in memory
    /// for readers.
    pub fn start(
        name: &str,
        mut store: Box<dyn EventStore>,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let bounds = store.bounds();
        let mut recent = Recent {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes: cache_bytes,
            bounds,
        };
        // Warm the cache with the newest records, so readers resuming near the head never wait.
        let mut after = bounds
            .last_seq
            .saturating_sub((cache_bytes / 256).max(1) as u64)
            .max(bounds.first_seq.saturating_sub(1));
        loop {
            let batch = store.read_after(after, 4096, 4 * 1024 * 1024)?;
            let Some(last) = batch.last() else { break };
            after = last.seq;
            for event in batch {
                recent.push(event);
            }
        }
        let recent = Arc::new(RwLock::new(recent));
        let ahead = Arc::new(RwLock::new(Ahead::default()));
        let reading_ahead = Arc::new(AtomicBool::new(false));
        let notifier = Arc::new(Notifier::new());
        let shared = Shared {
            recent: Arc::clone(&recent),
            ahead: Arc::clone(&ahead),
            reading_ahead: Arc::clone(&reading_ahead),
            wake: Arc::clone(&notifier),
        };
        let worker = Worker::spawn(name, move |jobs| run_jobs(store.as_mut(), &shared, jobs))
            .map_err(StoreError::io(format!("starting the {name} thread")))?;
        Ok(Self {
            worker,
            recent,
            ahead,
            reading_ahead,
            notifier,
        })
    }

    fn recent(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the log's thread shares with readers.
struct Shared {
    recent: Arc<RwLock<Recent>>,
    ahead: Arc<RwLock<Ahead>>,
    reading_ahead: Arc<AtomicBool>,
    wake: Arc<Notifier>,
}

/// Runs one batch of jobs on the log's thread: runs of appends become one store append. A read
/// behind the memory window is answered first; the stretch after it is read ahead once the
/// batch's appends are durable.
fn run_jobs(store: &mut dyn EventStore, shared: &Shared, jobs: Vec<Job>) {
    let mut appends: Vec<Append> = Vec::new();
    let mut read_ahead: Option<u64> = None;
    let mut asked_ahead = false;
    for job in jobs {
        match job {
            Job::Append(events, expect, done) => appends.push((events, expect, done)),
            Job::Read {
                after,
                max_events,
                max_bytes,
                done,
            } => {
                commit(store, shared, std::mem::take(&mut appends));
                // A reader that ran past the read-ahead buffer while it was being filled waited
                // for exactly that fill: answer from it rather than reading the disk again.
                let buffered = shared
                    .ahead
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .serve(after, max_events, max_bytes);
                let result = match buffered {
                    Some((events, refill)) => {
                        read_ahead = refill.or(read_ahead);
                        Ok(events)
                    }
                    None => store
                        .read_after(after, max_events, max_bytes)
                        .inspect(|events| {
                            if let Some(last) = events.last() {
                                read_ahead = Some(last.seq);
                            }
                        }),
                };
                done(result.map(|events| EventBatch {
                    events,
                    bounds: store.bounds(),
                }));
            }
            Job::ReadAhead { after } => {
                read_ahead = Some(after);
                asked_ahead = true;
            }
        }
    }
    commit(store, shared, appends);
    if let Some(after) = read_ahead {
        fill_ahead(store, shared, after);
    }
    if asked_ahead {
        shared.reading_ahead.store(false, Ordering::Release);
    }
}

/// Reads about [`READ_AHEAD_BYTES`] after `after` into the read-ahead buffer.
fn fill_ahead(store: &mut dyn EventStore, shared: &Shared, after: u64) {
    let Ok(events) = store.read_after(after, 1 << 16, READ_AHEAD_BYTES) else {
        return;
    };
    if !events.is_empty() {
        let mut ahead = shared.ahead.write().unwrap_or_else(|p| p.into_inner());
        ahead.extend(after, events);
    }
}

/// One caller's append: its events, the first seq it expects, its completion.
type Append = (Vec<NewEvent>, Option<u64>, Done<u64>);

/// Appends every caller's events with one store append (one fsync), then tells each caller its
/// first seq. A caller whose events cannot be stored at all, or would not get the first seq it
/// expects, is refused alone.
fn commit(store: &mut dyn EventStore, shared: &Shared, appends: Vec<Append>) {
    if appends.is_empty() {
        return;
    }
    let next = store.bounds().last_seq + 1;
    let mut batch = Vec::new();
    let mut callers = Vec::new();
    for (events, expect, done) in appends {
        let first = next + batch.len() as u64;
        if let Some(expected) = expect.filter(|e| *e != first) {
            done(Err(StoreError::Conflict {
                key: "log".into(),
                expected,
                actual: first,
            }));
            continue;
        }
        match events.iter().try_for_each(|e| store.check(e)) {
            Ok(()) => {
                callers.push((batch.len(), events.len(), done));
                batch.extend(events);
            }
            Err(e) => done(Err(e)),
        }
    }
    if callers.is_empty() {
        return;
    }
    match store.append(&batch) {
        Ok(first) => {
            {
                let mut recent = shared.recent.write().unwrap_or_else(|p| p.into_inner());
                for (i, event) in batch.into_iter().enumerate() {
                    recent.push(StoredEvent {
                        seq: first + i as u64,
                        to: event.to.as_deref().map(Into::into),
                        body: event.body,
                    });
                }
                recent.set_bounds(store.bounds());
            }
            for (offset, _, done) in callers {
                done(Ok(first + offset as u64));
            }
            shared.wake.notify();
        }
        Err(e) => {
            for (_, _, done) in callers {
                done(Err(e.clone()));
            }
        }
    }
}

impl LogStore for LogService {
    fn bounds(&self) -> LogBounds {
        self.recent().bounds
    }

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<u64>) {
        if let Err(Job::Append(_, _, done)) =
            self.worker.submit(Job::Append(events, expect_first, done))
        {
            done(Err(StoreError::Closed));
        }
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        let recent = self.recent();
        let bounds = recent.bounds;
        let covered = after >= bounds.last_seq
            || recent
                .events
                .front()
                .is_some_and(|e| e.seq <= after.saturating_add(1).max(bounds.first_seq));
        if covered {
            return Some(EventBatch {
                events: take_after(&recent.events, after, max_events, max_bytes),
                bounds,
            });
        }
        drop(recent);
        // Behind the memory window: what was read ahead, asking for the next stretch once less
        // than half of one is left (one read-ahead job at a time).
        let (events, refill) = self
            .ahead
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .serve(after, max_events, max_bytes)?;
        if let Some(last) = refill.filter(|_| !self.reading_ahead.swap(true, Ordering::AcqRel)) {
            if self.worker.submit(Job::ReadAhead { after: last }).is_err() {
                self.reading_ahead.store(false, Ordering::Release);
            }
        }
        Some(EventBatch { events, bounds })
    }

    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>) {
        let job = Job::Read {
            after,
            max_events,
            max_bytes,
            done,
        };
        if let Err(Job::Read { done, .. }) = self.worker.submit(job) {
            done(Err(StoreError::Closed));
        }
    }

    fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.notifier)
    }

    fn close(&self) {
        self.worker.close();
    }
}

/// A [`LogStore`] in memory that completes every append and read at once, on the caller's
/// thread: deterministic, for simulations, fuzzing and tests.
pub struct MemoryLog {
    log: std::sync::Mutex<MemoryEventLog>,
    notifier: Arc<Notifier>,
}

impl MemoryLog {
    /// A log keeping about `max_bytes` of events.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            log: std::sync::Mutex::new(MemoryEventLog::new(max_bytes)),
            notifier: Arc::new(Notifier::new()),
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, MemoryEventLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl LogStore for MemoryLog {
    fn bounds(&self) -> LogBounds {
        self.log().bounds()
    }

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<u64>) {
        let mut log = self.log();
        let first = log.bounds().last_seq + 1;
        let result = match expect_first.filter(|e| *e != first) {
            Some(expected) => Err(StoreError::Conflict {
                key: "log".into(),
                expected,
                actual: first,
            }),
            None => log.append(&events),
        };
        drop(log);
        done(result);
        self.notifier.notify();
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        let mut log = self.log();
        let events = log.read_after(after, max_events, max_bytes).ok()?;
        Some(EventBatch {
            events,
            bounds: log.bounds(),
        })
    }

    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>) {
        let batch = self.read_cached(after, max_events, max_bytes);
        done(batch.ok_or(StoreError::Closed));
    }

    fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.notifier)
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn event(n: u32) -> NewEvent {
        NewEvent {
            to: None,
            body: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        }
    }

    /// An engine whose appends take `delay` and which counts them.
    struct Slow {
        inner: MemoryEventLog,
        delay: Duration,
        appends: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl EventStore for Slow {
        fn append(&mut self, events: &[NewEvent]) -> Result<u64, StoreError> {
            std::thread::sleep(self.delay);
            self.appends
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.append(events)
        }
        fn read_after(
            &mut self,
            after: u64,
            max_events: usize,
            max_bytes: usize,
        ) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.read_after(after, max_events, max_bytes)
        }
        fn bounds(&self) -> LogBounds {
            self.inner.bounds()
        }
        fn check(&self, event: &NewEvent) -> Result<(), StoreError> {
            if event.body.len() > 64 {
                return Err(StoreError::RecordTooLarge {
                    len: event.body.len(),
                    max: 64,
                });
            }
            Ok(())
        }
    }

    #[test]
    fn appends_queued_during_a_commit_share_the_next_one_and_readers_see_them_from_memory() {
        let appends = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let log = LogService::start(
            "test-log",
            Box::new(Slow {
                inner: MemoryEventLog::new(1 << 20),
                delay: Duration::from_millis(50),
                appends: Arc::clone(&appends),
            }),
            1 << 20,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let grown = log.notifier().version();
        for n in 0..10 {
            let tx = tx.clone();
            log.append(
                vec![event(n)],
                None,
                Box::new(move |r| tx.send((n, r)).unwrap()),
            );
        }
        let big = NewEvent {
            to: None,
            body: bytes::Bytes::from(vec![b'x'; 100]),
        };
        let tx2 = tx.clone();
        log.append(
            vec![big],
            None,
            Box::new(move |r| tx2.send((99, r)).unwrap()),
        );
        let mut results: Vec<(u32, Result<u64, StoreError>)> =
            (0..11).map(|_| rx.recv().unwrap()).collect();
        results.sort_by_key(|(n, _)| *n);
        for (n, result) in &results[..10] {
            assert_eq!(result.as_ref().unwrap(), &(u64::from(*n) + 1), "in order");
        }
        assert!(
            matches!(results[10].1, Err(StoreError::RecordTooLarge { .. })),
            "only the oversized caller is refused"
        );
        assert!(
            appends.load(std::sync::atomic::Ordering::SeqCst) <= 3,
            "group commit"
        );
        assert!(log.notifier().version() > grown);
        let batch = log.read_cached(4, 100, 1 << 20).expect("in memory");
        assert_eq!(batch.events.first().map(|e| e.seq), Some(5));
        assert_eq!(batch.bounds.last_seq, 10);
        let (tx, rx) = mpsc::channel();
        log.read(0, 3, 1 << 20, Box::new(move |r| tx.send(r).unwrap()));
        assert_eq!(rx.recv().unwrap().unwrap().events.len(), 3);
        // A writer numbering its own records: the next seq is 11, so 12 is refused, 11 taken.
        let (tx, rx) = mpsc::channel();
        let tx2 = tx.clone();
        log.append(
            vec![event(1)],
            Some(12),
            Box::new(move |r| tx.send(r).unwrap()),
        );
        log.append(
            vec![event(1)],
            Some(11),
            Box::new(move |r| tx2.send(r).unwrap()),
        );
        assert!(matches!(
            rx.recv().unwrap(),
            Err(StoreError::Conflict {
                expected: 12,
                actual: 11,
                ..
            })
        ));
        assert_eq!(rx.recv().unwrap().unwrap(), 11);
        log.close();
        let (tx, rx) = mpsc::channel();
        log.append(
            vec![event(1)],
            Some(12),
            Box::new(move |r| tx.send(r).unwrap()),
        );
        assert!(matches!(rx.recv().unwrap(), Err(StoreError::Closed)));
    }

    #[test]
    fn reads_behind_the_memory_window_go_to_the_store() {
        let mut engine = MemoryEventLog::new(1 << 20);
        let events: Vec<NewEvent> = (0..100).map(event).collect();
        engine.append(&events).unwrap();
        let log = LogService::start("test-log", Box::new(engine), 1024).unwrap();
        assert!(log.read_cached(0, 10, 1 << 20).is_none(), "not in memory");
        let head = log
            .read_cached(100, 10, 1 << 20)
            .expect("nothing new is known");
        assert!(head.events.is_empty());
        let (tx, rx) = mpsc::channel();
        log.read(0, 10, 1 << 20, Box::new(move |r| tx.send(r).unwrap()));
        let batch = rx.recv().unwrap().unwrap();
        assert_eq!(batch.events[0].seq, 1);
        assert_eq!(batch.bounds.last_seq, 100);
    }

    #[test]
    fn a_reader_streaming_behind_the_memory_window_is_read_ahead_for() {
        // 20 000 records of ~1 KiB, 1 KiB of them kept in memory.
        let mut engine = MemoryEventLog::new(64 << 20);
        let body = "x".repeat(1000);
        let events: Vec<NewEvent> = (0..20_000)
            .map(|n| NewEvent {
                to: None,
                body: bytes::Bytes::from(format!("{{\"n\":{n},\"b\":\"{body}\"}}")),
            })
            .collect();
        engine.append(&events).unwrap();
        let log = LogService::start("test-log", Box::new(engine), 1024).unwrap();
        let (tx, rx) = mpsc::channel();
        log.read(0, 256, 256 << 10, Box::new(move |r| tx.send(r).unwrap()));
        let first = rx.recv().unwrap().unwrap();
        let mut after = first.events.last().unwrap().seq;
        // The stretch after it is read ahead: the next reads are answered from memory, and the
        // log's thread keeps reading ahead while the reader consumes.
        let mut from_memory = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while after < 20_000 && std::time::Instant::now() < deadline {
            match log.read_cached(after, 256, 256 << 10) {
                Some(batch) => {
                    let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
                    assert_eq!(seqs.first(), Some(&(after + 1)), "gap-free");
                    after = *seqs.last().unwrap();
                    from_memory += 1;
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert_eq!(after, 20_000, "read to the end");
        assert!(from_memory >= 70, "{from_memory} reads from memory");
    }
}
