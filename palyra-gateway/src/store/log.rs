//! Sequenced logs: the synchronous engine a log's thread drives ([`EventStore`]: the file log,
//! or [`MemoryEventLog`]), and the interface services use ([`LogStore`]), whose appends complete
//! later and whose recent records are read from memory without waiting for the disk.

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

enum Job {
    Append(Vec<NewEvent>, Option<u64>, Done<u64>),
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
        let notifier = Arc::new(Notifier::new());
        let (shared, wake) = (Arc::clone(&recent), Arc::clone(&notifier));
        let worker = Worker::spawn(name, move |jobs| {
            run_jobs(store.as_mut(), &shared, &wake, jobs)
        })
        .map_err(StoreError::io(format!("starting the {name} thread")))?;
        Ok(Self {
            worker,
            recent,
            notifier,
        })
    }

    fn recent(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs one batch of jobs on the log's thread: runs of appends become one store append.
fn run_jobs(store: &mut dyn EventStore, recent: &RwLock<Recent>, wake: &Notifier, jobs: Vec<Job>) {
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
                commit(store, recent, wake, std::mem::take(&mut appends));
                let result = store
                    .read_after(after, max_events, max_bytes)
                    .map(|events| EventBatch {
                        events,
                        bounds: store.bounds(),
                    });
                done(result);
            }
        }
    }
    commit(store, recent, wake, appends);
}

/// One caller's append: its events, the first seq it expects, its completion.
type Append = (Vec<NewEvent>, Option<u64>, Done<u64>);

/// Appends every caller's events with one store append (one fsync), then tells each caller its
/// first seq. A caller whose events cannot be stored at all, or would not get the first seq it
/// expects, is refused alone.
fn commit(
    store: &mut dyn EventStore,
    recent: &RwLock<Recent>,
    wake: &Notifier,
    appends: Vec<Append>,
) {
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
                let mut recent = recent.write().unwrap_or_else(|p| p.into_inner());
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
            wake.notify();
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
        covered.then(|| EventBatch {
            events: take_after(&recent.events, after, max_events, max_bytes),
            bounds,
        })
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
}
