//! A service's state kept as one document of a [`DocStore`]: changed in memory under a short
//! lock, handed to the store as a whole, and each change answered once it is durable. Readers
//! see the durable value; changes chain on the latest one. One write per document is in flight at
//! a time: changes made meanwhile go out together in the next write (group commit), and a failed
//! write rolls the latest value back to the durable one, failing the changes made on top of it.
//!
//! Every write is a compare-and-set against the revision the durable value came from. On a store
//! other gateways share, a newer revision (another gateway's write, seen by the store's watch)
//! replaces the value before the next read or change, and a write made against a value that went
//! stale meanwhile is refused with `Conflict` (its changes roll back; the caller may retry).

use super::{pending, DocStore, Pending, StoreError};
use crate::notify::Notifier;
use bytes::Bytes;
use std::sync::{Arc, Mutex, MutexGuard};

/// Answers one change's caller with the outcome of the write that carried it.
type Waiter = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct State<T> {
    /// The value with every change applied, durable or not.
    latest: T,
    /// The value as last written.
    durable: T,
    /// Its encoding, to skip writes that change nothing.
    durable_bytes: Bytes,
    /// The store's revision of the durable value (0: never written).
    revision: u64,
    /// A write is with the store.
    writing: bool,
    /// Changes made since that write started: they go out with the next one.
    waiting: Vec<Waiter>,
}

/// Turns a document's bytes (`None`: never written) into the value.
type Decode<T> = Box<dyn Fn(Option<&[u8]>) -> Result<T, StoreError> + Send + Sync>;

/// One document and the service state it holds.
pub struct Document<T> {
    key: String,
    docs: Arc<dyn DocStore>,
    decode: Decode<T>,
    encode: fn(&T) -> Vec<u8>,
    wake: Option<Arc<Notifier>>,
    state: Mutex<State<T>>,
}

impl<T: Clone + Send + 'static> Document<T> {
    /// Opens the document `key` of `docs`: `decode` turns its bytes (`None` when it was never
    /// written) into the value (again whenever another gateway changed it), `encode` the value
    /// into bytes. Completions wake `wake`.
    pub fn open(
        docs: Arc<dyn DocStore>,
        key: &str,
        decode: impl Fn(Option<&[u8]>) -> Result<T, StoreError> + Send + Sync + 'static,
        encode: fn(&T) -> Vec<u8>,
        wake: Option<Arc<Notifier>>,
    ) -> Result<Arc<Self>, StoreError> {
        let stored = docs.get(key)?;
        let value = decode(stored.as_ref().map(|d| d.value.as_ref()))?;
        let durable_bytes = Bytes::from(encode(&value));
        Ok(Arc::new(Self {
            key: key.to_owned(),
            docs,
            decode: Box::new(decode),
            encode,
            wake,
            state: Mutex::new(State {
                latest: value.clone(),
                durable: value,
                durable_bytes,
                revision: stored.map_or(0, |d| d.revision),
                writing: false,
                waiting: Vec::new(),
            }),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, with a newer revision another gateway wrote taken in first (unless a write of
    /// ours is in flight: its outcome decides).
    fn fresh(&self) -> MutexGuard<'_, State<T>> {
        let mut state = self.lock();
        let newer = self
            .docs
            .revision(&self.key)
            .filter(|r| *r > state.revision);
        if newer.is_some() && !state.writing {
            match self.docs.get(&self.key).and_then(|doc| {
                let doc = doc.ok_or_else(|| StoreError::Corrupt("the document vanished".into()))?;
                Ok(((self.decode)(Some(&doc.value))?, doc))
            }) {
                Ok((value, doc)) => {
                    state.latest = value.clone();
                    state.durable = value;
                    state.durable_bytes = doc.value;
                    state.revision = doc.revision;
                }
                Err(e) => {
                    tracing::warn!(key = %self.key, error = %e, "another gateway's change of the document cannot be read")
                }
            }
        }
        state
    }

    /// Reads the durable value.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.fresh().durable)
    }

    /// Changes the latest value with `change`; its result is answered once the change is
    /// durable (at once when nothing changed and nothing is being written), or the store's
    /// error, after which the change (and any made on top of it meanwhile) is rolled back.
    pub fn update<R: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut T) -> R,
    ) -> Pending<Result<R, StoreError>> {
        let (answer, done) = pending(self.wake.clone());
        self.update_then(change, move |written| done.complete(written));
        answer
    }

    /// Like [`Document::update`], handing the outcome to `then` (on the store's thread, or at
    /// once) instead: for a change that has more to do once it is durable.
    pub fn update_then<R: Send + 'static>(
        self: &Arc<Self>,
        change: impl FnOnce(&mut T) -> R,
        then: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) {
        let mut state = self.fresh();
        let result = change(&mut state.latest);
        let waiter: Waiter = Box::new(move |written| then(written.map(|()| result)));
        if state.writing {
            state.waiting.push(waiter);
            return;
        }
        self.write(state, vec![waiter]);
    }

    /// Starts a write of the latest value carrying `waiters` (or answers them at once when the
    /// value is what is durable already).
    fn write(self: &Arc<Self>, mut state: MutexGuard<'_, State<T>>, waiters: Vec<Waiter>) {
        let bytes = Bytes::from((self.encode)(&state.latest));
        if bytes == state.durable_bytes {
            drop(state);
            for waiter in waiters {
                waiter(Ok(()));
            }
            return;
        }
        state.writing = true;
        let snapshot = state.latest.clone();
        let expect = state.revision;
        drop(state);
        let this = Arc::clone(self);
        self.docs.put(
            &self.key,
            bytes.clone(),
            Some(expect),
            Box::new(move |written| this.written(written, snapshot, bytes, waiters)),
        );
    }

    /// A write completed (on the store's thread): answer its changes, start the next write.
    fn written(
        self: &Arc<Self>,
        written: Result<u64, StoreError>,
        snapshot: T,
        bytes: Bytes,
        waiters: Vec<Waiter>,
    ) {
        let mut state = self.lock();
        state.writing = false;
        match written {
            Ok(revision) => {
                state.durable = snapshot;
                state.durable_bytes = bytes;
                state.revision = revision;
                let next = std::mem::take(&mut state.waiting);
                if next.is_empty() {
                    drop(state);
                } else {
                    self.write(state, next);
                }
                for waiter in waiters {
                    waiter(Ok(()));
                }
            }
            Err(e @ StoreError::Conflict { .. }) => {
                tracing::info!(key = %self.key, error = %e, "document changed by another gateway meanwhile; changes rolled back");
                state.latest = state.durable.clone();
                let later = std::mem::take(&mut state.waiting);
                drop(state);
                for waiter in waiters.into_iter().chain(later) {
                    waiter(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::error!(key = %self.key, error = %e, "document not saved; changes rolled back");
                state.latest = state.durable.clone();
                let later = std::mem::take(&mut state.waiting);
                drop(state);
                for waiter in waiters.into_iter().chain(later) {
                    waiter(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryDocs;
    use std::time::Duration;

    /// A store whose writes fail while `failing` is set.
    struct Flaky {
        inner: MemoryDocs,
        failing: std::sync::atomic::AtomicBool,
    }

    impl DocStore for Flaky {
        fn get(&self, key: &str) -> Result<Option<super::super::Doc>, StoreError> {
            self.inner.get(key)
        }
        fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: super::super::Done<u64>) {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return done(Err(StoreError::Closed));
            }
            self.inner.put(key, value, expect, done)
        }
        fn close(&self) {}
    }

    fn open(docs: Arc<dyn DocStore>) -> Arc<Document<Vec<u32>>> {
        Document::open(
            docs,
            "list.json",
            |bytes| {
                Ok(bytes
                    .map(|b| serde_json::from_slice(b).unwrap())
                    .unwrap_or_default())
            },
            |v| serde_json::to_vec(v).unwrap(),
            None,
        )
        .unwrap()
    }

    fn wait<R>(p: Pending<Result<R, StoreError>>) -> Result<R, StoreError> {
        p.wait_blocking(Duration::from_secs(5)).unwrap()
    }

    #[test]
    fn changes_are_answered_once_durable_and_failed_ones_roll_back() {
        let flaky = Arc::new(Flaky {
            inner: MemoryDocs::default(),
            failing: false.into(),
        });
        let doc = open(flaky.clone());
        assert_eq!(wait(doc.update(|v| v.push(1))).unwrap(), ());
        assert_eq!(doc.read(|v| v.clone()), vec![1]);
        flaky
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(wait(doc.update(|v| v.push(2))).is_err());
        assert_eq!(
            doc.read(|v| v.clone()),
            vec![1],
            "readers saw only durable values"
        );
        flaky
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // The failed change is gone: the next one applies to [1].
        wait(doc.update(|v| v.push(3))).unwrap();
        assert_eq!(doc.read(|v| v.clone()), vec![1, 3]);
        // Nothing changed: answered at once, nothing written.
        assert_eq!(wait(doc.update(|v| v.len())).unwrap(), 2);
        let reopened = open(flaky.clone());
        assert_eq!(reopened.read(|v| v.clone()), vec![1, 3]);
    }

    /// A store two gateways share, whose watch may lag (`watching` off).
    struct SharedDocs {
        inner: MemoryDocs,
        watching: std::sync::atomic::AtomicBool,
    }

    impl DocStore for SharedDocs {
        fn get(&self, key: &str) -> Result<Option<super::super::Doc>, StoreError> {
            self.inner.get(key)
        }
        fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: super::super::Done<u64>) {
            self.inner.put(key, value, expect, done)
        }
        fn revision(&self, key: &str) -> Option<u64> {
            let watching = self.watching.load(std::sync::atomic::Ordering::SeqCst);
            watching
                .then(|| self.inner.get(key).ok().flatten().map(|d| d.revision))
                .flatten()
        }
        fn close(&self) {}
    }

    #[test]
    fn another_gateways_change_is_seen_and_a_stale_write_is_refused() {
        let shared = Arc::new(SharedDocs {
            inner: MemoryDocs::default(),
            watching: true.into(),
        });
        let (a, b) = (open(shared.clone()), open(shared.clone()));
        wait(a.update(|v| v.push(1))).unwrap();
        assert_eq!(b.read(|v| v.clone()), vec![1], "B sees A's change");
        wait(b.update(|v| v.push(2))).unwrap();
        assert_eq!(a.read(|v| v.clone()), vec![1, 2]);
        // A's watch lags: its change is made against a stale value and refused, not merged.
        shared
            .watching
            .store(false, std::sync::atomic::Ordering::SeqCst);
        wait(b.update(|v| v.push(3))).unwrap();
        assert!(matches!(
            wait(a.update(|v| v.push(4))),
            Err(StoreError::Conflict { .. })
        ));
        shared
            .watching
            .store(true, std::sync::atomic::Ordering::SeqCst);
        wait(a.update(|v| v.push(4))).unwrap();
        assert_eq!(b.read(|v| v.clone()), vec![1, 2, 3, 4], "nothing lost");
    }
}
