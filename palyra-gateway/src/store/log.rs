//! Sequenced logs: the synchronous engine a log's thread drives ([`EventStore`]: the file log,
//! or [`MemoryEventLog`]), and the interface services use ([`LogStore`]), whose appends complete
//! later and whose records are read on the caller's thread where that never waits for the disk
//! (recent ones from memory, older ones from the page cache).

use super::worker::Worker;
use super::{Done, EventBatch, LogBounds, NewEvent, StoreError, StoredEvent};
use crate::notify::Notifier;
use std::collections::VecDeque;
use std::sync::{Arc, RwLock};

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
    /// A reader other threads may use, if the engine has reads that never wait for a device.
    fn quick_reader(&self) -> Option<Arc<dyn QuickReader>> {
        None
    }
}

/// Reads of an [`EventStore`] that any thread may make, because they never wait for a device.
pub trait QuickReader: Send + Sync {
    /// The records after `after` (as [`EventStore::read_after`], possibly fewer) if they can be
    /// had without waiting; `None` leaves the read to the log's thread.
    fn try_read_after(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Option<Vec<StoredEvent>>;
}

/// A sequenced log as services use it: appends are handed over and complete later (group
/// committed), reads of recent records come from memory. File-backed by default; a networked
/// log implements the same interface.
pub trait LogStore: Send + Sync {
    /// Bounds of the durable log.
    fn bounds(&self) -> LogBounds;
    /// Appends `events` in order; `done` gets each one's seq once they are durable (consecutive
    /// on a log only this gateway writes; a shared log may interleave other gateways' records).
    /// With `expect_first`, the append is refused (`Conflict`) unless the events would get
    /// exactly the seqs from that one on (a writer that numbers its records itself, as
    /// JetStream's expected last sequence).
    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>);
    /// The records after `after` if they can be had without waiting for the disk (from memory
    /// or the page cache; or there are none): `None` means ask [`LogStore::read`].
    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch>;
    /// The records after `after`, from wherever they are; `done` gets them.
    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>);
    /// Notified after every durable append (readers following the log wait on it).
    fn notifier(&self) -> Arc<Notifier>;
    /// Stops taking work and waits until everything handed over is durable.
    fn close(&self);
    /// The log's own name when other gateways write it too (a shared stream); `None` for a
    /// log only this gateway writes.
    fn shared_name(&self) -> Option<String> {
        None
    }
}

/// Reads the records of `log` after `after`, waiting for the disk if needed: for opening a
/// service's state, before anything is served (never on a runtime worker).
pub fn read_blocking(
    log: &dyn LogStore,
    after: u64,
    max: usize,
    max_bytes: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    if let Some(batch) = log.read_cached(after, max, max_bytes) {
        return Ok(batch.events);
    }
    let (answer, done) = super::pending(None);
    log.read(after, max, max_bytes, Box::new(move |r| done.complete(r)));
    answer
        .wait_blocking(std::time::Duration::from_secs(60))
        .unwrap_or(Err(StoreError::Closed))
        .map(|batch| batch.events)
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
    let skip = usize::try_from(skip).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(max_events.min(events.len().saturating_sub(skip)));
    let mut bytes = 0;
    for event in events.iter().skip(skip) {
        if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
            break;
        }
        bytes += event.size();
        out.push(event.clone());
    }
    out
}

/// Recent records in memory, shared by the log's writer (which adds what it made durable) and
/// readers (who copy out under a short read lock). Seqs are consecutive.
pub struct Recent {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    max_bytes: usize,
    bounds: LogBounds,
}

impl Recent {
    /// An empty window of about `max_bytes` over a log with `bounds`.
    pub fn new(max_bytes: usize, bounds: LogBounds) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            bounds,
        }
    }

    /// The bounds of the log (not of the window).
    pub fn bounds(&self) -> LogBounds {
        self.bounds
    }

    /// The records after `after` if the window holds them (or there are none yet).
    pub fn read(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        let bounds = self.bounds;
        let covered = after >= bounds.last_seq
            || self
                .events
                .front()
                .is_some_and(|e| e.seq <= after.saturating_add(1).max(bounds.first_seq));
        covered.then(|| EventBatch {
            events: take_after(&self.events, after, max_events, max_bytes),
            bounds,
        })
    }

    /// Adds the next record (its seq follows the last one's), dropping the oldest over the size.
    pub fn push(&mut self, event: StoredEvent) {
        self.bytes += event.size();
        self.events.push_back(event);
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
    }

    /// Drops every record of the window (the bounds stay).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }

    /// Takes the log's new bounds, dropping records before its first.
    pub fn set_bounds(&mut self, bounds: LogBounds) {
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

enum Job {
    Append(Vec<NewEvent>, Option<u64>, Done<Vec<u64>>),
    Read {
        after: u64,
        max_events: usize,
        max_bytes: usize,
        done: Done<EventBatch>,
    },
}

/// A [`LogStore`] over any [`EventStore`], which its own thread drives: consecutive appends
/// queued while the thread was busy are committed with one write and one fsync. Readers are
/// served on their own thread from the memory window or the engine's [`QuickReader`], and by
/// the log's thread otherwise.
pub struct LogService {
    worker: Worker<Job>,
    recent: Arc<RwLock<Recent>>,
    quick: Option<Arc<dyn QuickReader>>,
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
        let mut recent = Recent::new(cache_bytes, bounds);
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
        let quick = store.quick_reader();
        let notifier = Arc::new(Notifier::new());
        let shared = Shared {
            recent: Arc::clone(&recent),
            wake: Arc::clone(&notifier),
        };
        let worker = Worker::spawn(name, move |jobs| run_jobs(store.as_mut(), &shared, jobs))
            .map_err(StoreError::io(format!("starting the {name} thread")))?;
        Ok(Self {
            worker,
            recent,
            quick,
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
    wake: Arc<Notifier>,
}

/// Runs one batch of jobs on the log's thread: runs of appends become one store append; a read
/// sees every append queued before it.
fn run_jobs(store: &mut dyn EventStore, shared: &Shared, jobs: Vec<Job>) {
    let mut appends: Vec<Append> = Vec::new();
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
                let events = store.read_after(after, max_events, max_bytes);
                done(events.map(|events| EventBatch {
                    events,
                    bounds: store.bounds(),
                }));
            }
        }
    }
    commit(store, shared, appends);
}

/// One caller's append: its events, the first seq it expects, its completion.
type Append = (Vec<NewEvent>, Option<u64>, Done<Vec<u64>>);

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
            for (offset, count, done) in callers {
                let start = first + offset as u64;
                done(Ok((start..start + count as u64).collect()));
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

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>) {
        if let Err(Job::Append(_, _, done)) =
            self.worker.submit(Job::Append(events, expect_first, done))
        {
            done(Err(StoreError::Closed));
        }
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        let recent = self.recent();
        let bounds = recent.bounds;
        if let Some(batch) = recent.read(after, max_events, max_bytes) {
            return Some(batch);
        }
        drop(recent);
        // Behind the memory window: from the engine, if it can without waiting.
        let events = self
            .quick
            .as_ref()?
            .try_read_after(after, max_events, max_bytes)?;
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
    shared_name: Option<String>,
}

impl MemoryLog {
    /// A log keeping about `max_bytes` of events.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            log: std::sync::Mutex::new(MemoryEventLog::new(max_bytes)),
            notifier: Arc::new(Notifier::new()),
            shared_name: None,
        }
    }

    /// A log that, like a stream several gateways share, is named `name` (simulations of a
    /// cluster: each hub or engine on it behaves as on a shared log).
    pub fn shared(max_bytes: usize, name: &str) -> Self {
        Self {
            shared_name: Some(name.to_owned()),
            ..Self::new(max_bytes)
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

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>) {
        let mut log = self.log();
        let first = log.bounds().last_seq + 1;
        let result = match expect_first.filter(|e| *e != first) {
            Some(expected) => Err(StoreError::Conflict {
                key: "log".into(),
                expected,
                actual: first,
            }),
            None => log
                .append(&events)
                .map(|first| (first..first + events.len() as u64).collect()),
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

    fn shared_name(&self) -> Option<String> {
        self.shared_name.clone()
    }
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
            id: None,
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
            id: None,
        };
        let tx2 = tx.clone();
        log.append(
            vec![big],
            None,
            Box::new(move |r| tx2.send((99, r)).unwrap()),
        );
        let mut results: Vec<(u32, Result<Vec<u64>, StoreError>)> =
            (0..11).map(|_| rx.recv().unwrap()).collect();
        results.sort_by_key(|(n, _)| *n);
        for (n, result) in &results[..10] {
            assert_eq!(result.as_ref().unwrap(), &[u64::from(*n) + 1], "in order");
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
        assert_eq!(rx.recv().unwrap().unwrap(), [11]);
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
    #[cfg(target_os = "linux")] // reads that refuse to wait for the disk
    fn a_reader_behind_the_memory_window_reads_the_page_cache_on_its_own_thread() {
        // 20 000 records of ~1 KiB in small segments, 1 KiB of them kept in memory.
        let dir = tempfile::tempdir().unwrap();
        let config = super::super::FileEventLogConfig {
            segment_bytes: 1 << 20,
            max_total_bytes: 1 << 30,
            max_record_bytes: 4096,
            cache_bytes: 0,
        };
        let mut engine = super::super::FileEventLog::open(dir.path(), config).unwrap();
        let body = "x".repeat(1000);
        let events: Vec<NewEvent> = (0..20_000)
            .map(|n| NewEvent {
                to: None,
                body: bytes::Bytes::from(format!("{{\"n\":{n},\"b\":\"{body}\"}}")),
                id: None,
            })
            .collect();
        engine.append(&events).unwrap();
        let log = LogService::start("test-log", Box::new(engine), 1024).unwrap();
        // Streaming from the start: a segment the log has no read handle for yet is read by the
        // log's thread (which opens one), the rest on this thread, from the page cache the
        // appends just filled.
        let (mut after, mut quick, mut slow) = (0, 0, 0);
        while after < 20_000 {
            let batch = match log.read_cached(after, 256, 256 << 10) {
                Some(batch) => {
                    quick += 1;
                    batch
                }
                None => {
                    slow += 1;
                    let (tx, rx) = mpsc::channel();
                    log.read(
                        after,
                        256,
                        256 << 10,
                        Box::new(move |r| tx.send(r).unwrap()),
                    );
                    rx.recv().unwrap().unwrap()
                }
            };
            let seqs: Vec<u64> = batch.events.iter().map(|e| e.seq).collect();
            assert_eq!(seqs.first(), Some(&(after + 1)), "gap-free");
            after = *seqs.last().unwrap();
            assert!(
                batch.events.iter().all(|e| e.body.starts_with(b"{\"n\":")),
                "records intact"
            );
        }
        let segments = std::fs::read_dir(dir.path()).unwrap().count();
        assert!(segments >= 20, "{segments} segments");
        assert!(
            slow <= segments,
            "{slow} reads went to the log's thread: at most one per segment"
        );
        assert!(quick >= 50, "{quick} reads on the reader's thread");
    }
}
