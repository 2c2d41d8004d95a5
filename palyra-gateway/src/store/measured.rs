//! How the stores behave, for `/metrics` ([`StoreMetrics`]): the latency of every write and
//! disk or network read, and the errors by kind, kept by wrappers around any backend's stores
//! ([`MeasuredLog`], [`MeasuredDocs`]), so the file store and JetStream are measured alike.

use super::{Doc, DocStore, Done, EventBatch, LogBounds, LogStore, NewEvent, StoreError};
use crate::notify::Notifier;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// One operation of one store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    store: &'static str,
    op: &'static str,
}

/// One kind of failure of one operation of one store.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Failure {
    store: &'static str,
    op: &'static str,
    kind: &'static str,
}

type Latency = Family<Op, Histogram, fn() -> Histogram>;

/// Latency histograms and error counters of the stores.
#[derive(Clone)]
pub struct StoreMetrics {
    latency: Latency,
    errors: Family<Failure, Counter>,
}

impl std::fmt::Debug for StoreMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreMetrics")
    }
}

fn histogram() -> Histogram {
    // 50 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            latency: Latency::new_with_constructor(histogram),
            errors: Family::default(),
        }
    }
}

/// The label of a store error.
fn kind(error: &StoreError) -> &'static str {
    match error {
        StoreError::Conflict { .. } => "conflict",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Closed => "closed",
        StoreError::RecordTooLarge { .. } => "too_large",
        StoreError::Corrupt(_) => "corrupt",
        _ => "io",
    }
}

impl StoreMetrics {
    /// Adds the metrics to `registry` (`palyra_store_seconds`, `palyra_store_errors`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "palyra_store_seconds",
            "Latency of store writes and of reads that waited for a disk or the network",
            self.latency.clone(),
        );
        registry.register(
            "palyra_store_errors",
            "Store operations that failed, by kind (conflict, unavailable, io, ...)",
            self.errors.clone(),
        );
    }

    /// The timer of `store`/`op` (its histogram looked up once, not at every operation).
    fn timer(&self, store: &'static str, op: &'static str) -> Timer {
        Timer {
            store,
            op,
            latency: self.latency.get_or_create(&Op { store, op }).clone(),
            errors: self.errors.clone(),
        }
    }

    /// How many operations of `store`/`op` were measured (tests, status).
    pub fn count(&self, store: &'static str, op: &'static str) -> u64 {
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.register("m", "", self.latency.clone());
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        let needle = format!("m_count{{store=\"{store}\",op=\"{op}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// One operation of one store: its latency histogram and the error counters.
#[derive(Clone)]
struct Timer {
    store: &'static str,
    op: &'static str,
    latency: Histogram,
    errors: Family<Failure, Counter>,
}

impl Timer {
    /// Wraps `done` so the operation is recorded when it completes.
    fn timed<T: 'static>(&self, done: Done<T>) -> Done<T> {
        let timer = self.clone();
        let started = Instant::now();
        Box::new(move |result| {
            timer.latency.observe(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                timer
                    .errors
                    .get_or_create(&Failure {
                        store: timer.store,
                        op: timer.op,
                        kind: kind(e),
                    })
                    .inc();
            }
            done(result)
        })
    }
}

/// A [`LogStore`] whose appends and reads are measured as `store`.
pub struct MeasuredLog {
    inner: Arc<dyn LogStore>,
    append: Timer,
    read: Timer,
}

impl MeasuredLog {
    /// Measures `inner` as `store` into `metrics`.
    pub fn wrap(
        store: &'static str,
        inner: Arc<dyn LogStore>,
        metrics: &StoreMetrics,
    ) -> Arc<dyn LogStore> {
        Arc::new(Self {
            inner,
            append: metrics.timer(store, "append"),
            read: metrics.timer(store, "read"),
        })
    }
}

impl LogStore for MeasuredLog {
    fn bounds(&self) -> LogBounds {
        self.inner.bounds()
    }

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>) {
        let done = self.append.timed(done);
        self.inner.append(events, expect_first, done);
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        self.inner.read_cached(after, max_events, max_bytes)
    }

    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>) {
        let done = self.read.timed(done);
        self.inner.read(after, max_events, max_bytes, done);
    }

    fn notifier(&self) -> Arc<Notifier> {
        self.inner.notifier()
    }

    fn close(&self) {
        self.inner.close();
    }

    fn shared_name(&self) -> Option<String> {
        self.inner.shared_name()
    }
}

/// A [`DocStore`] whose writes are measured as `docs`.
pub struct MeasuredDocs {
    inner: Arc<dyn DocStore>,
    put: Timer,
}

impl MeasuredDocs {
    /// Measures `inner` into `metrics`.
    pub fn wrap(inner: Arc<dyn DocStore>, metrics: &StoreMetrics) -> Arc<dyn DocStore> {
        Arc::new(Self {
            inner,
            put: metrics.timer("docs", "put"),
        })
    }
}

impl DocStore for MeasuredDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        self.inner.get(key)
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        let done = self.put.timed(done);
        self.inner.put(key, value, expect, done);
    }

    fn revision(&self, key: &str) -> Option<u64> {
        self.inner.revision(key)
    }

    fn watch(&self, key: &str, changed: Arc<dyn Fn() + Send + Sync>) {
        self.inner.watch(key, changed);
    }

    fn close(&self) {
        self.inner.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_timed_and_failures_counted_by_kind() {
        let metrics = StoreMetrics::default();
        let log = MeasuredLog::wrap(
            "events",
            Arc::new(super::super::MemoryLog::new(1 << 20)),
            &metrics,
        );
        let event = || NewEvent {
            to: None,
            body: Bytes::from_static(b"x"),
            id: None,
        };
        log.append(vec![event()], None, Box::new(|r| assert!(r.is_ok())));
        log.append(vec![event()], Some(7), Box::new(|r| assert!(r.is_err())));
        assert_eq!(metrics.count("events", "append"), 2);
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                r#"palyra_store_errors_total{store="events",op="append",kind="conflict"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains("palyra_store_seconds_bucket"), "{text}");
    }
}
