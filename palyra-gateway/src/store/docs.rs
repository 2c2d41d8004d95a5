//! Small documents with revisions ([`DocStore`]): each service keeps its state in memory and
//! hands every change over as a whole document; the write completes later and the service answers
//! then. The file backend ([`FileDocStore`]) writes each document atomically (0600) on its own
//! thread, coalescing writes to one key that queued up during a slow write.

use super::worker::Worker;
use super::{write_atomic, Done, StoreError};
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A document and its revision (1 for the first write a store saw; bumped by every write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// The document's bytes.
    pub value: Bytes,
    /// Its revision.
    pub revision: u64,
}

/// Documents by key (`enroll/state.json`, `nodes.json`, ...), written durably and completed
/// later. File-backed by default; a networked key-value store implements the same interface.
pub trait DocStore: Send + Sync {
    /// The document under `key` as last written (services read their documents when they open).
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError>;
    /// Replaces the document under `key`, if its revision is still `expect` when given
    /// (compare-and-set; `Conflict` otherwise); `done` gets the new revision once it is durable.
    /// Writes to one key complete in the order they were made.
    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>);
    /// The newest revision of `key` known here, on a store other gateways write too (kept
    /// current by a watch): a [`super::Document`] reloads when it is newer than its own. `None`
    /// (the default) on a store only this gateway writes.
    fn revision(&self, _key: &str) -> Option<u64> {
        None
    }
    /// Calls `changed` whenever another gateway's write of `key` arrives (on the store's
    /// thread: keep it short). A store only this gateway writes never calls it (the default).
    fn watch(&self, _key: &str, _changed: Arc<dyn Fn() + Send + Sync>) {}
    /// Stops taking writes and waits until every write handed over is durable.
    fn close(&self);
}

struct Write {
    key: String,
    value: Bytes,
    done: Done<u64>,
    revision: u64,
}

/// [`DocStore`] over files under a state directory.
pub struct FileDocStore {
    root: PathBuf,
    docs: Arc<Mutex<HashMap<String, Doc>>>,
    worker: Worker<Write>,
}

/// The path of `key` under `root`; keys are relative paths without `..`.
fn key_path(root: &Path, key: &str) -> Result<PathBuf, StoreError> {
    let relative = Path::new(key);
    let plain = !key.is_empty()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(StoreError::Corrupt(format!(
            "document key {key:?} is not a relative path"
        )));
    }
    Ok(root.join(relative))
}

impl FileDocStore {
    /// A store of the documents under `root` (the state directory).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(StoreError::io(format!("creating {}", root.display())))?;
        let base = root.clone();
        let worker = Worker::spawn("palyra-docs", move |writes: Vec<Write>| {
            write_batch(&base, writes)
        })
        .map_err(StoreError::io("starting the document store thread"))?;
        Ok(Self {
            root,
            docs: Arc::new(Mutex::new(HashMap::new())),
            worker,
        })
    }

    fn docs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Doc>> {
        self.docs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes the newest value of every key in `writes`, then completes every write of that key.
fn write_batch(root: &Path, writes: Vec<Write>) {
    let mut by_key: Vec<(String, Vec<Write>)> = Vec::new();
    for write in writes {
        match by_key.iter_mut().find(|(k, _)| *k == write.key) {
            Some((_, list)) => list.push(write),
            None => by_key.push((write.key.clone(), vec![write])),
        }
    }
    for (key, list) in by_key {
        let Some(newest) = list.last() else { continue };
        let result = key_path(root, &key).and_then(|path| {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(StoreError::io(format!("creating {}", dir.display())))?;
            }
            write_atomic(&path, &newest.value)
        });
        for write in list {
            let revision = write.revision;
            (write.done)(result.clone().map(|()| revision));
        }
    }
}

impl DocStore for FileDocStore {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        if let Some(doc) = self.docs().get(key) {
            return Ok(Some(doc.clone()));
        }
        let path = key_path(&self.root, key)?;
        let value = match std::fs::read(&path) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()))(e)),
        };
        let doc = Doc { value, revision: 1 };
        self.docs()
            .entry(key.to_owned())
            .or_insert_with(|| doc.clone());
        Ok(Some(doc))
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        if let Err(e) = key_path(&self.root, key) {
            return done(Err(e));
        }
        let revision = {
            let mut docs = self.docs();
            let current = docs.get(key).map_or(0, |d| d.revision);
            if let Some(expected) = expect.filter(|e| *e != current) {
                drop(docs);
                return done(Err(StoreError::Conflict {
                    key: key.to_owned(),
                    expected,
                    actual: current,
                }));
            }
            let revision = current + 1;
            docs.insert(
                key.to_owned(),
                Doc {
                    value: value.clone(),
                    revision,
                },
            );
            revision
        };
        let write = Write {
            key: key.to_owned(),
            value,
            done,
            revision,
        };
        if let Err(write) = self.worker.submit(write) {
            (write.done)(Err(StoreError::Closed));
        }
    }

    fn close(&self) {
        self.worker.close();
    }
}

/// A [`DocStore`] in memory that completes every write at once (simulations and tests).
#[derive(Default)]
pub struct MemoryDocs {
    docs: Mutex<HashMap<String, Doc>>,
}

impl DocStore for MemoryDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        Ok(self
            .docs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned())
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let current = docs.get(key).map_or(0, |d| d.revision);
        let result = match expect.filter(|e| *e != current) {
            Some(expected) => Err(StoreError::Conflict {
                key: key.to_owned(),
                expected,
                actual: current,
            }),
            None => {
                docs.insert(
                    key.to_owned(),
                    Doc {
                        value,
                        revision: current + 1,
                    },
                );
                Ok(current + 1)
            }
        };
        drop(docs);
        done(result);
    }

    fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn put(
        store: &FileDocStore,
        key: &str,
        value: &str,
        expect: Option<u64>,
    ) -> Result<u64, StoreError> {
        let (tx, rx) = mpsc::channel();
        store.put(
            key,
            Bytes::from(value.to_owned()),
            expect,
            Box::new(move |r| tx.send(r).unwrap()),
        );
        rx.recv().unwrap()
    }

    #[test]
    fn documents_are_durable_private_and_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileDocStore::open(dir.path()).unwrap();
        assert_eq!(store.get("enroll/state.json").unwrap(), None);
        assert_eq!(put(&store, "enroll/state.json", "one", Some(0)).unwrap(), 1);
        assert_eq!(put(&store, "enroll/state.json", "two", None).unwrap(), 2);
        assert!(matches!(
            put(&store, "enroll/state.json", "stale", Some(1)),
            Err(StoreError::Conflict { actual: 2, .. })
        ));
        let path = dir.path().join("enroll/state.json");
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(put(&store, "../escape", "x", None).is_err());
        assert!(put(&store, "/abs", "x", None).is_err());
        store.close();
        let again = FileDocStore::open(dir.path()).unwrap();
        assert_eq!(
            again.get("enroll/state.json").unwrap().unwrap().value,
            Bytes::from_static(b"two")
        );
    }
}
