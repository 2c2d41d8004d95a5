//! A sequenced log as a JetStream stream ([`JsLog`]). The stream assigns the seqs, so they are
//! gap-free and the same for every gateway. Each gateway follows the stream with an ordered
//! consumer into a memory window (readers near the head never wait, followers are woken), and
//! reads older records with a short-lived consumer from the seq they ask for.

use crate::connect::{unavailable, Cluster, NatsError};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use futures_util::StreamExt;
use palyra_gateway::notify::Notifier;
use palyra_gateway::store::{
    Done, EventBatch, LogBounds, LogStore, NewEvent, Recent, StoreError, StoredEvent,
};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The header carrying the device an event is addressed to.
const TO_HEADER: &str = "Palyra-To";

/// How long JetStream remembers a `Nats-Msg-Id` to drop a retried publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How often the retained range (first seq) is looked up again.
const BOUNDS_REFRESH: Duration = Duration::from_secs(2);

/// A [`LogStore`] on a JetStream stream.
pub struct JsLog {
    inner: Arc<Inner>,
    /// Appends, to the writer task that sends them in the order they were handed over.
    appends: tokio::sync::mpsc::UnboundedSender<Append>,
}

/// One append: its events, the seq the first must get, and who waits for the seqs.
struct Append {
    events: Vec<NewEvent>,
    expect_first: Option<u64>,
    done: Done<Vec<u64>>,
}

struct Inner {
    cluster: Cluster,
    stream: String,
    /// This incarnation of the stream: its name and when it was created.
    name: String,
    subject: String,
    recent: RwLock<Recent>,
    notifier: Arc<Notifier>,
    /// Message IDs: this gateway's name, a per-start nonce, a counter.
    id_prefix: String,
    next_id: AtomicU64,
    in_flight: Mutex<usize>,
    idle: Condvar,
    closed: AtomicBool,
}

impl JsLog {
    /// Opens (creating if needed) the stream `PREFIX_<what>` retaining about `max_bytes`, and
    /// starts following it with `cache_bytes` of recent records in memory.
    pub async fn open(
        cluster: &Cluster,
        what: &str,
        max_bytes: u64,
        cache_bytes: usize,
    ) -> Result<Self, NatsError> {
        let name = cluster.name(what);
        let subject = format!("{}.{}", cluster.prefix, what.to_ascii_lowercase());
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: cluster.replicas,
            max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            duplicate_window: DUPLICATE_WINDOW,
            allow_direct: true,
            ..Default::default()
        };
        let mut handle = cluster
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {name}: {e}")))?;
        let info = handle
            .info()
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {name}: {e}")))?;
        if info.config.num_replicas != cluster.replicas {
            tracing::warn!(stream = %name, replicas = info.config.num_replicas, configured = cluster.replicas, "the stream exists with another replica count; keeping it");
        }
        let bounds = bounds_of(&info.state);
        let nonce = u64::from(std::process::id()) << 32
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        let inner = Arc::new(Inner {
            cluster: cluster.clone(),
            name: format!("{name}@{:x}", info.created.unix_timestamp_nanos()),
            stream: name,
            subject,
            recent: RwLock::new(Recent::new(cache_bytes, bounds)),
            notifier: Arc::new(Notifier::new()),
            id_prefix: format!("{}-{nonce:x}", cluster.gateway),
            next_id: AtomicU64::new(1),
            in_flight: Mutex::new(0),
            idle: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        // Warm the window with the newest records, then follow from there.
        let from = bounds
            .last_seq
            .saturating_sub((cache_bytes / 256).max(1) as u64)
            .max(bounds.first_seq.saturating_sub(1));
        let warm = inner
            .fetch(from, usize::MAX, cache_bytes.max(1), bounds.last_seq)
            .await
            .map_err(|e| NatsError::JetStream(e.to_string()))?;
        {
            let mut recent = inner.recent_mut();
            for event in warm {
                recent.push(event);
            }
        }
        tokio::spawn(Arc::clone(&inner).follow());
        tokio::spawn(refresh_bounds(Arc::downgrade(&inner)));
        let (appends, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(Arc::clone(&inner).write(queue));
        Ok(Self { inner, appends })
    }
}

fn bounds_of(state: &stream::State) -> LogBounds {
    LogBounds {
        first_seq: if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        },
        last_seq: state.last_sequence,
    }
}

/// The stored form of a stream message `seq`.
fn stored(seq: u64, message: &async_nats::Message) -> StoredEvent {
    let to = message
        .headers
        .as_ref()
        .and_then(|h| h.get(TO_HEADER))
        .map(|v| Arc::from(v.as_str()));
    StoredEvent {
        seq,
        to,
        body: message.payload.clone(),
    }
}

impl Inner {
    fn recent(&self) -> std::sync::RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(|p| p.into_inner())
    }

    fn recent_mut(&self) -> std::sync::RwLockWriteGuard<'_, Recent> {
        self.recent.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream's records after `after`, by an ordered consumer of their own.
    async fn messages_after(&self, after: u64) -> Result<crate::connect::Ordered, String> {
        let deliver = DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        };
        crate::connect::ordered(&self.cluster, &self.stream, self.subject.clone(), deliver).await
    }

    /// The records after `after` up to `until`, at most `max_events` and about `max_bytes`,
    /// read with a consumer of their own.
    async fn fetch(
        &self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
        until: u64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut out = Vec::new();
        if after >= until || max_events == 0 {
            return Ok(out);
        }
        let what = || format!("reading stream {}", self.stream);
        let mut messages = self
            .messages_after(after)
            .await
            .map_err(|e| unavailable(&what(), e))?;
        let mut bytes = 0;
        let deadline = Instant::now() + self.cluster.timeout;
        while out.len() < max_events && (bytes < max_bytes || out.is_empty()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match tokio::time::timeout(left, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(e))) => return Err(unavailable(&what(), e)),
                Ok(None) => break,
                Err(_) => return Err(unavailable(&what(), "timed out")),
            };
            let info = message.info().map_err(|e| unavailable(&what(), e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            let event = stored(seq, &message);
            bytes += event.size();
            out.push(event);
            if pending == 0 || seq >= until {
                break;
            }
        }
        Ok(out)
    }

    /// Follows the stream from the window's end for as long as the log is open, re-subscribing
    /// after failures (the ordered consumer itself mends gaps and reconnects).
    async fn follow(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        while !self.closed.load(Ordering::Acquire) {
            let after = self.recent().bounds().last_seq;
            match self.follow_once(after).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "following the stream failed; again shortly");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn follow_once(&self, after: u64) -> Result<(), StoreError> {
        let what = || format!("following stream {}", self.stream);
        let mut messages = self
            .messages_after(after)
            .await
            .map_err(|e| unavailable(&what(), e))?;
        while let Some(message) = messages.next().await {
            if self.closed.load(Ordering::Acquire) {
                return Ok(());
            }
            let message = message.map_err(|e| unavailable(&what(), e))?;
            let seq = message
                .info()
                .map_err(|e| unavailable(&what(), e))?
                .stream_sequence;
            let mut recent = self.recent_mut();
            let bounds = recent.bounds();
            if seq <= bounds.last_seq {
                continue;
            }
            if seq != bounds.last_seq + 1 {
                // Records were removed from the stream (never by us): start the window anew.
                tracing::warn!(stream = %self.stream, expected = bounds.last_seq + 1, got = seq, "the stream has a gap");
                recent.clear();
            }
            recent.push(stored(seq, &message));
            recent.set_bounds(LogBounds {
                first_seq: bounds.first_seq.min(seq),
                last_seq: seq,
            });
            drop(recent);
            self.notifier.notify();
        }
        Err(unavailable(&what(), "the subscription ended"))
    }

    /// Sends the appends in the order they were handed over (so the stream keeps a writer's
    /// order across appends, as a file log does), each one's acknowledgements awaited apart.
    async fn write(self: Arc<Self>, mut queue: tokio::sync::mpsc::UnboundedReceiver<Append>) {
        while let Some(append) = queue.recv().await {
            let deadline = Instant::now() + self.cluster.timeout * 2;
            let messages = self.messages(append.events, append.expect_first);
            let mut acks = Vec::with_capacity(messages.len());
            let mut failed = None;
            for message in &messages {
                match self.send(message.clone(), deadline).await {
                    Ok(ack) => acks.push(ack),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                (append.done)(Err(e));
                self.finish();
                continue;
            }
            let inner = Arc::clone(&self);
            tokio::spawn(async move {
                let result = inner
                    .confirm(acks, &messages, append.expect_first, deadline)
                    .await;
                (append.done)(result);
                inner.finish();
            });
        }
    }

    /// The stream messages of `events`, each with its message ID (and the expected last seq).
    fn messages(&self, events: Vec<NewEvent>, expect_first: Option<u64>) -> Vec<PublishMessage> {
        events
            .into_iter()
            .enumerate()
            .map(|(i, event)| {
                // The publisher's own ID makes its retry through any gateway one event; ours
                // makes our own retries one.
                let id = event.id.unwrap_or_else(|| {
                    let n = self.next_id.fetch_add(1, Ordering::Relaxed);
                    format!("{}-{n}", self.id_prefix)
                });
                let mut message = PublishMessage::build().payload(event.body).message_id(id);
                if let Some(to) = event.to {
                    message = message.header(TO_HEADER, to.as_str());
                }
                if let Some(first) = expect_first {
                    message = message.expected_last_sequence(first + i as u64 - 1);
                }
                message
            })
            .collect()
    }

    /// Waits for the acknowledgement of every message sent, publishing again with the same ID
    /// (JetStream drops the duplicate) while a leader is being elected.
    async fn confirm(
        &self,
        acks: Vec<async_nats::jetstream::context::PublishAckFuture>,
        messages: &[PublishMessage],
        expect_first: Option<u64>,
        deadline: Instant,
    ) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::with_capacity(messages.len());
        for (ack, message) in acks.into_iter().zip(messages) {
            let mut ack = ack;
            loop {
                match ack.await {
                    Ok(ack) => {
                        seqs.push(ack.sequence);
                        break;
                    }
                    Err(e) => match e.kind() {
                        PublishErrorKind::WrongLastSequence => {
                            return Err(StoreError::Conflict {
                                key: self.stream.clone(),
                                expected: expect_first.unwrap_or(0),
                                actual: self.recent().bounds().last_seq + 1,
                            })
                        }
                        PublishErrorKind::TimedOut
                        | PublishErrorKind::BrokenPipe
                        | PublishErrorKind::StreamNotFound
                            if Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            ack = self.send(message.clone(), deadline).await?;
                        }
                        _ => {
                            return Err(unavailable(
                                &format!("publishing to stream {}", self.stream),
                                e,
                            ))
                        }
                    },
                }
            }
        }
        Ok(seqs)
    }

    async fn send(
        &self,
        message: PublishMessage,
        deadline: Instant,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, StoreError> {
        loop {
            match self
                .cluster
                .js
                .send_publish(self.subject.clone(), message.clone())
                .await
            {
                Ok(ack) => return Ok(ack),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "publish not sent; again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(unavailable(
                        &format!("publishing to stream {}", self.stream),
                        e,
                    ))
                }
            }
        }
    }

    fn start(&self) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        *self.in_flight.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        true
    }

    fn finish(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.idle.notify_all();
        }
    }
}

/// Looks the stream's first seq up now and then (retention moves it).
async fn refresh_bounds(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(BOUNDS_REFRESH).await;
        let Some(inner) = inner.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if let Ok(stream) = inner.cluster.js.get_stream(&inner.stream).await {
            let first = bounds_of(&stream.cached_info().state).first_seq;
            let mut recent = inner.recent_mut();
            let bounds = recent.bounds();
            if first > bounds.first_seq {
                recent.set_bounds(LogBounds {
                    first_seq: first.min(bounds.last_seq + 1),
                    last_seq: bounds.last_seq,
                });
            }
        }
    }
}

impl LogStore for JsLog {
    fn bounds(&self) -> LogBounds {
        self.inner.recent().bounds()
    }

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>) {
        if events.is_empty() {
            return done(Ok(Vec::new()));
        }
        if !self.inner.start() {
            return done(Err(StoreError::Closed));
        }
        let append = Append {
            events,
            expect_first,
            done,
        };
        if let Err(refused) = self.appends.send(append) {
            self.inner.finish();
            (refused.0.done)(Err(StoreError::Closed));
        }
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        self.inner.recent().read(after, max_events, max_bytes)
    }

    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>) {
        if let Some(batch) = self.read_cached(after, max_events, max_bytes) {
            return done(Ok(batch));
        }
        let inner = Arc::clone(&self.inner);
        self.inner.cluster.rt.spawn(async move {
            let bounds = inner.recent().bounds();
            let after = after.max(bounds.first_seq.saturating_sub(1));
            let result = inner
                .fetch(after, max_events, max_bytes, bounds.last_seq)
                .await
                .map(|events| EventBatch { events, bounds });
            done(result);
        });
    }

    fn notifier(&self) -> Arc<Notifier> {
        Arc::clone(&self.inner.notifier)
    }

    fn shared_name(&self) -> Option<String> {
        Some(self.inner.name.clone())
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let mut n = self
            .inner
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + self.inner.cluster.timeout * 3;
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(stream = %self.inner.stream, in_flight = *n, "publishes still unacknowledged at close");
                return;
            }
            n = self
                .inner
                .idle
                .wait_timeout(n, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}
