//! Documents in a JetStream key-value bucket ([`KvDocs`]). Every gateway holds the bucket in
//! memory, loaded at open and kept current by a watch, so reads never wait; writes are
//! compare-and-set on the key's revision (`create` for a new key, `update` otherwise) and
//! complete once JetStream acknowledged them.

use crate::connect::{unavailable, Cluster, NatsError};
use async_nats::jetstream::kv::{self, Operation};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use bytes::Bytes;
use futures_util::StreamExt;
use palyra_gateway::store::{Doc, DocStore, Done, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The largest document the bucket takes (NATS's default payload limit is 1 MiB).
pub const MAX_DOC_BYTES: usize = 1024 * 1024 - 4096;

/// A [`DocStore`] on a JetStream key-value bucket.
pub struct KvDocs {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    bucket: String,
    kv: kv::Store,
    docs: RwLock<HashMap<String, Doc>>,
    closed: AtomicBool,
}

impl KvDocs {
    /// Opens (creating if needed) the bucket `PREFIX_<what>`, loads it and starts watching it.
    pub async fn open(cluster: &Cluster, what: &str) -> Result<Self, NatsError> {
        let bucket = cluster.name(what);
        // The bucket's stream as a key-value bucket has it (async-nats's own create asks for
        // account fields nats-server 2.9 does not send).
        let config = stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(MAX_DOC_BYTES).unwrap_or(i32::MAX),
            storage: StorageType::File,
            num_replicas: cluster.replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            ..Default::default()
        };
        let setup = |e: &dyn std::fmt::Display| NatsError::JetStream(format!("bucket {bucket}: {e}"));
        let mut handle = cluster
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| setup(&e))?;
        let last = handle.info().await.map_err(|e| setup(&e))?.state.last_sequence;
        let kv = cluster
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|e| setup(&e))?;
        let mut docs = HashMap::new();
        if last > 0 {
            let mut keys = kv.keys().await.map_err(|e| setup(&e))?;
            while let Some(key) = keys.next().await {
                let key = key.map_err(|e| setup(&e))?;
                if let Some(entry) = kv.entry(key.clone()).await.map_err(|e| setup(&e))? {
                    if entry.operation == Operation::Put {
                        docs.insert(
                            key,
                            Doc {
                                value: entry.value,
                                revision: entry.revision,
                            },
                        );
                    }
                }
            }
        }
        let inner = Arc::new(Inner {
            cluster: cluster.clone(),
            bucket,
            kv,
            docs: RwLock::new(docs),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(watch(Arc::downgrade(&inner), last + 1));
        Ok(Self { inner })
    }
}

impl Inner {
    fn docs(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Doc>> {
        self.docs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `doc` for `key` if it is newer than what is held.
    fn learn(&self, key: &str, doc: Option<Doc>) {
        let mut docs = self.docs.write().unwrap_or_else(|p| p.into_inner());
        match doc {
            Some(doc) => {
                if docs.get(key).is_none_or(|d| d.revision < doc.revision) {
                    docs.insert(key.to_owned(), doc);
                }
            }
            None => {
                docs.remove(key);
            }
        }
    }

    async fn put(&self, key: &str, value: Bytes, expect: Option<u64>) -> Result<u64, StoreError> {
        let what = || format!("writing {key} to bucket {}", self.bucket);
        let written = match expect {
            Some(0) => self.kv.create(key, value.clone()).await.map_err(|e| {
                match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(unavailable(&what(), e)),
                }
            }),
            Some(revision) => self
                .kv
                .update(key, value.clone(), revision)
                .await
                .map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(unavailable(&what(), e)),
                }),
            None => self
                .kv
                .put(key, value.clone())
                .await
                .map_err(|e| Some(unavailable(&what(), e))),
        };
        match written {
            Ok(revision) => {
                self.learn(key, Some(Doc { value, revision }));
                Ok(revision)
            }
            Err(Some(e)) => Err(e),
            Err(None) => {
                // Lost a race: learn the winner's value before answering, so the caller's next
                // attempt is made against it.
                let current = self
                    .kv
                    .entry(key)
                    .await
                    .map_err(|e| unavailable(&what(), e))?
                    .filter(|e| e.operation == Operation::Put)
                    .map(|e| Doc {
                        value: e.value,
                        revision: e.revision,
                    });
                let actual = current.as_ref().map_or(0, |d| d.revision);
                self.learn(key, current);
                Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected: expect.unwrap_or(0),
                    actual,
                })
            }
        }
    }
}

/// Keeps the held documents current from revision `from` on, watching again after failures.
async fn watch(inner: std::sync::Weak<Inner>, mut from: u64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(strong) = inner.upgrade() else { return };
        if strong.closed.load(Ordering::Acquire) {
            return;
        }
        let watcher = strong.kv.watch_all_from_revision(from).await;
        drop(strong);
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(e) => {
                tracing::warn!(error = %e, "watching the state bucket failed; again shortly");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        while let Some(entry) = watcher.next().await {
            let Some(strong) = inner.upgrade() else { return };
            match entry {
                Ok(entry) => {
                    from = entry.revision + 1;
                    let doc = (entry.operation == Operation::Put).then(|| Doc {
                        value: entry.value,
                        revision: entry.revision,
                    });
                    strong.learn(&entry.key, doc);
                }
                Err(e) => {
                    tracing::warn!(bucket = %strong.bucket, error = %e, "state bucket watch failed; watching again");
                    break;
                }
            }
        }
    }
}

impl DocStore for KvDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        Ok(self.inner.docs().get(key).cloned())
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
        Some(self.inner.docs().get(key).map_or(0, |d| d.revision))
    }

    fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
    }
}
