//! Documents split by key ([`SplitDocs`]): the few that describe one gateway's own files (the
//! console log's snapshot, while that log is a file of each gateway) stay in files beside them;
//! every other document is shared on JetStream.

use bytes::Bytes;
use palyra_gateway::store::{Doc, DocStore, Done, StoreError};
use std::sync::Arc;

/// A [`DocStore`] sending `local_keys` to `local` and everything else to `shared`.
pub struct SplitDocs {
    local: Arc<dyn DocStore>,
    shared: Arc<dyn DocStore>,
    local_keys: Vec<&'static str>,
}

impl SplitDocs {
    /// `local_keys` in `local`, the rest in `shared`.
    pub fn new(
        local: Arc<dyn DocStore>,
        shared: Arc<dyn DocStore>,
        local_keys: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        Self {
            local,
            shared,
            local_keys: local_keys.into_iter().collect(),
        }
    }

    fn store(&self, key: &str) -> &dyn DocStore {
        if self.local_keys.contains(&key) {
            self.local.as_ref()
        } else {
            self.shared.as_ref()
        }
    }
}

impl DocStore for SplitDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        self.store(key).get(key)
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        self.store(key).put(key, value, expect, done)
    }

    fn revision(&self, key: &str) -> Option<u64> {
        self.store(key).revision(key)
    }

    fn watch(&self, key: &str, changed: Arc<dyn Fn() + Send + Sync>) {
        self.store(key).watch(key, changed)
    }

    fn close(&self) {
        self.local.close();
        self.shared.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palyra_gateway::store::MemoryDocs;

    fn put(docs: &dyn DocStore, key: &str, value: &'static str) {
        docs.put(
            key,
            Bytes::from_static(value.as_bytes()),
            None,
            Box::new(|r| {
                r.expect("written");
            }),
        );
    }

    #[test]
    fn local_keys_stay_local_and_the_rest_is_shared() {
        let (local, shared) = (
            Arc::new(MemoryDocs::default()),
            Arc::new(MemoryDocs::default()),
        );
        let split = SplitDocs::new(local.clone(), shared.clone(), ["console/state.json"]);
        put(&split, "console/state.json", "mine");
        put(&split, "tokens.json", "ours");
        assert!(local.get("console/state.json").unwrap().is_some());
        assert!(shared.get("console/state.json").unwrap().is_none());
        assert!(shared.get("tokens.json").unwrap().is_some());
        assert!(local.get("tokens.json").unwrap().is_none());
        assert_eq!(
            split.get("tokens.json").unwrap().unwrap().value,
            Bytes::from_static(b"ours")
        );
    }
}
