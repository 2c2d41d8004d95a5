//! Documents on JetStream ([`JsDocs`]): each document is a stream of its own
//! (`PREFIX_DOC_<key>`, keeping its latest value), so a compare-and-set is a publish with
//! `Nats-Expected-Last-Sequence`, which a clustered stream's leader serializes with the writes in
//! flight. (A key-value bucket's per-key check, `Nats-Expected-Last-Subject-Sequence`, is only a
//! pre-check on nats-server 2.9: two writers racing on one key can both win; nats-server issue
//! 4320.) Every gateway holds the documents in memory, loaded at open and kept current by one
//! ordered consumer per document, so reads never wait.

use crate::connect::{unavailable, Cluster, NatsError};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use palyra_gateway::store::{Doc, DocStore, Done, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The largest document (NATS's default payload limit is 1 MiB).
pub const MAX_DOC_BYTES: usize = 1024 * 1024 - 4096;

/// How a document's stream says which key it holds.
const DESCRIPTION: &str = "palyra document ";

/// Called when a document changes.
type Watcher = Arc<dyn Fn() + Send + Sync>;

/// A [`DocStore`] on JetStream, one stream per document.
pub struct JsDocs {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    docs: RwLock<HashMap<String, Slot>>,
    watchers: RwLock<HashMap<String, Vec<Watcher>>>,
    id_prefix: String,
    next_id: AtomicU64,
    closed: AtomicBool,
}

/// One document: its stream and its latest value.
struct Slot {
    stream: String,
    subject: String,
    doc: Option<Doc>,
}

/// A key as a stream-name token: its letters and digits, and a hash of the whole key so
/// distinct keys never share a stream.
fn token(key: &str) -> String {
    let readable: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // FNV-1a: stable across builds and platforms.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{readable}_{:08x}", hash as u32)
}

impl JsDocs {
    /// Loads every document of the deployment and starts following each.
    pub async fn open(cluster: &Cluster) -> Result<Self, NatsError> {
        let setup = |e: &dyn std::fmt::Display| NatsError::JetStream(format!("documents: {e}"));
        let prefix = format!("{}_DOC_", cluster.prefix);
        let mut names = cluster.js.stream_names();
        let mut found = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| setup(&e))?;
            if name.starts_with(&prefix) {
                found.push(name);
            }
        }
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let inner = Arc::new(Inner {
            cluster: cluster.clone(),
            docs: RwLock::default(),
            watchers: RwLock::default(),
            id_prefix: format!("{}-{nonce:x}", cluster.gateway),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
        });
        for name in found {
            let stream = cluster.js.get_stream(&name).await.map_err(|e| setup(&e))?;
            let info = stream.cached_info();
            let Some(key) = info
                .config
                .description
                .as_deref()
                .and_then(|d| d.strip_prefix(DESCRIPTION))
            else {
                continue;
            };
            let subject = info.config.subjects.first().cloned().unwrap_or_default();
            let doc = last_doc(&stream, &subject).await.map_err(|e| setup(&e))?;
            let after = doc
                .as_ref()
                .map_or(info.state.last_sequence, |d| d.revision);
            inner.slots_mut().insert(
                key.to_owned(),
                Slot {
                    stream: name.clone(),
                    subject,
                    doc,
                },
            );
            tokio::spawn(follow(Arc::downgrade(&inner), key.to_owned(), after));
        }
        Ok(Self { inner })
    }
}

/// The latest value in a document's stream.
async fn last_doc<I>(
    stream: &async_nats::jetstream::stream::Stream<I>,
    subject: &str,
) -> Result<Option<Doc>, StoreError> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(message) => Ok(Some(Doc {
            value: message.payload,
            revision: message.sequence,
        })),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(unavailable("reading a document", e)),
    }
}

impl Inner {
    fn slots(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Slot>> {
        self.docs.read().unwrap_or_else(|p| p.into_inner())
    }

    fn slots_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Slot>> {
        self.docs.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream and subject of `key`, creating its stream the first time.
    async fn slot(self: &Arc<Self>, key: &str) -> Result<(String, String), StoreError> {
        if let Some(slot) = self.slots().get(key) {
            return Ok((slot.stream.clone(), slot.subject.clone()));
        }
        let token = token(key);
        let name = format!("{}_DOC_{token}", self.cluster.prefix);
        let subject = format!("{}.doc.{token}", self.cluster.prefix);
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("{DESCRIPTION}{key}")),
            subjects: vec![subject.clone()],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(MAX_DOC_BYTES).unwrap_or(i32::MAX),
            storage: StorageType::File,
            num_replicas: self.cluster.replicas,
            discard: DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            allow_direct: true,
            ..Default::default()
        };
        let stream = self
            .cluster
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| unavailable(&format!("creating the stream of {key}"), e))?;
        let doc = last_doc(&stream, &subject).await?;
        let after = doc
            .as_ref()
            .map_or(stream.cached_info().state.last_sequence, |d| d.revision);
        let mut slots = self.slots_mut();
        if !slots.contains_key(key) {
            slots.insert(
                key.to_owned(),
                Slot {
                    stream: name.clone(),
                    subject: subject.clone(),
                    doc,
                },
            );
            tokio::spawn(follow(Arc::downgrade(self), key.to_owned(), after));
        }
        Ok((name, subject))
    }

    /// Takes `doc` for `key` if it is newer than what is held, and tells the key's watchers.
    fn learn(&self, key: &str, doc: Doc) {
        let newer = {
            let mut slots = self.slots_mut();
            let Some(slot) = slots.get_mut(key) else {
                return;
            };
            let newer = slot.doc.as_ref().is_none_or(|d| d.revision < doc.revision);
            if newer {
                slot.doc = Some(doc);
            }
            newer
        };
        if newer {
            let watchers = self.watchers.read().unwrap_or_else(|p| p.into_inner());
            for watcher in watchers.get(key).into_iter().flatten() {
                watcher();
            }
        }
    }

    async fn put(
        self: &Arc<Self>,
        key: &str,
        value: Bytes,
        expect: Option<u64>,
    ) -> Result<u64, StoreError> {
        let (stream, subject) = self.slot(key).await?;
        let what = || format!("writing {key}");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = PublishMessage::build()
            .payload(value.clone())
            .message_id(format!("{}-{id}", self.id_prefix));
        if let Some(revision) = expect {
            message = message.expected_last_sequence(revision);
        }
        let deadline = Instant::now() + self.cluster.timeout * 2;
        let acked = loop {
            let sent = self
                .cluster
                .js
                .send_publish(subject.clone(), message.clone())
                .await;
            let outcome = match sent {
                Ok(ack) => ack.await,
                Err(e) => Err(e),
            };
            match outcome {
                Ok(ack) => break Ok(ack.sequence),
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => break Err(None),
                Err(e)
                    if matches!(
                        e.kind(),
                        PublishErrorKind::TimedOut
                            | PublishErrorKind::BrokenPipe
                            | PublishErrorKind::StreamNotFound
                    ) && Instant::now() < deadline =>
                {
                    // A leader is being elected: again, with the same message ID, so a write
                    // that did land is not made twice.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => break Err(Some(unavailable(&what(), e))),
            }
        };
        tracing::debug!(key, ?expect, ok = acked.is_ok(), "document written");
        match acked {
            Ok(revision) => {
                self.learn(key, Doc { value, revision });
                Ok(revision)
            }
            Err(Some(e)) => Err(e),
            Err(None) => {
                // Lost a race: learn the winner's value before answering, so the caller's next
                // attempt is made against it.
                let handle = self
                    .cluster
                    .js
                    .get_stream_no_info(&stream)
                    .await
                    .map_err(|e| unavailable(&what(), e))?;
                let current = last_doc(&handle, &subject).await?;
                let actual = current.as_ref().map_or(0, |d| d.revision);
                if let Some(doc) = current {
                    self.learn(key, doc);
                }
                Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected: expect.unwrap_or(0),
                    actual,
                })
            }
        }
    }
}

/// Keeps `key`'s value current from after revision `after` on, following again after failures.
async fn follow(inner: std::sync::Weak<Inner>, key: String, mut after: u64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        if strong.closed.load(Ordering::Acquire) {
            return;
        }
        let Some((stream, subject)) = strong
            .slots()
            .get(&key)
            .map(|s| (s.stream.clone(), s.subject.clone()))
        else {
            return;
        };
        let cluster = strong.cluster.clone();
        drop(strong);
        let deliver = DeliverPolicy::ByStartSequence {
            start_sequence: after + 1,
        };
        let mut messages = match crate::connect::ordered(&cluster, &stream, subject, deliver).await
        {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(%key, error = %e, "following a document failed; again shortly");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(message) = messages.next().await {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let Ok(message) = message else { break };
            let Ok(info) = message.info() else { break };
            after = info.stream_sequence;
            strong.learn(
                &key,
                Doc {
                    value: message.payload.clone(),
                    revision: after,
                },
            );
        }
    }
}

impl DocStore for JsDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        if let Some(slot) = self.inner.slots().get(key) {
            return Ok(slot.doc.clone());
        }
        // A document this deployment never wrote: make its stream (once, at open).
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = Arc::clone(&self.inner);
        let owned = key.to_owned();
        self.inner.cluster.rt.spawn(async move {
            let _ = tx.send(inner.slot(&owned).await);
        });
        rx.recv_timeout(self.inner.cluster.timeout * 2)
            .map_err(|_| unavailable(&format!("opening {key}"), "timed out"))??;
        Ok(self.inner.slots().get(key).and_then(|s| s.doc.clone()))
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        if self.inner.closed.load(Ordering::Acquire) {
            return done(Err(StoreError::Closed));
        }
        if value.len() > MAX_DOC_BYTES {
            return done(Err(StoreError::RecordTooLarge {
                len: value.len(),
                max: MAX_DOC_BYTES,
            }));
        }
        let inner = Arc::clone(&self.inner);
        let key = key.to_owned();
        self.inner.cluster.rt.spawn(async move {
            done(inner.put(&key, value, expect).await);
        });
    }

    fn revision(&self, key: &str) -> Option<u64> {
        Some(
            self.inner
                .slots()
                .get(key)
                .and_then(|s| s.doc.as_ref())
                .map_or(0, |d| d.revision),
        )
    }

    fn watch(&self, key: &str, changed: Arc<dyn Fn() + Send + Sync>) {
        self.inner
            .watchers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .push(changed);
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::token;

    #[test]
    fn keys_become_distinct_stream_name_tokens() {
        assert_eq!(
            token("enroll/state.json").len(),
            "enroll_state_json_".len() + 8
        );
        assert!(token("enroll/state.json").starts_with("enroll_state_json_"));
        assert_ne!(token("a/b"), token("a.b"), "same letters, different keys");
        assert!(token("x y/../z")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }
}
