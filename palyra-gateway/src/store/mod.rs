//! Durable state behind store interfaces whose writes complete later, so a service hands a
//! write over and answers once it is durable, and no request path waits on a disk under a lock:
//!
//! - [`LogStore`]: sequenced append-only logs (the node-plane event log, the console log);
//! - [`DocStore`]: small documents with revisions (node registry, enrollment state, webhook
//!   nonces, console sessions), compare-and-set ready for a networked backend.
//!
//! The file backends are the embedded default: checksummed append-only segment files and atomic
//! documents (temp file, fsync, rename, fsync of the directory), each written by its own thread
//! ([`worker::Worker`]) that commits whatever queued up meanwhile in one batch. The gateway's and
//! a node's identity directories ([`IdentityDir`], [`NodeIdentityDir`]) are files too, used at
//! start and by offline commands.

mod atomic;
pub mod docs;
pub mod document;
mod event_log;
mod identity_dir;
pub mod log;
pub mod measured;
mod node_identity;
pub mod pending;
mod shared_trust;
pub mod worker;

pub use atomic::{fsync_dir, read_json, read_optional, write_atomic, write_json};
pub use docs::{Doc, DocStore, FileDocStore, MemoryDocs};
pub use document::Document;
pub use event_log::{FileEventLog, FileEventLogConfig, FileLogReader, Recovery};
pub use identity_dir::{
    create_private_dir, unix_ms, DeviceBundle, DeviceIdentityFiles, IdentityDir, IdentityError,
    ServerIdentity, TrustRecords, CA_VALIDITY,
};
pub use log::{
    read_blocking, EventStore, LogService, LogStore, MemoryEventLog, MemoryLog, QuickReader, Recent,
};
pub use measured::{MeasuredDocs, MeasuredLog, StoreMetrics};
pub use node_identity::{GatewayRecord, NodeIdentityDir, PendingPairing};
pub use palyra_proto::node::log::{EventBatch, LogBounds, NewEvent, StoredEvent};
pub use pending::{pending, Completer, Pending};
pub use shared_trust::{DocTrust, TRUST_KEY};

use std::sync::Arc;

/// Errors of the stores.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O error, with what was being done. The cause is part of the
    /// message (and not a separate source), so an error chain shows it once.
    #[error("{context}: {cause}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        cause: Arc<std::io::Error>,
    },
    /// Stored data failed validation somewhere other than a torn tail.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A record is larger than the store accepts.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Record size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// A compare-and-set write found another revision than the one it was made against.
    #[error("{key} changed meanwhile (revision {actual}, expected {expected})")]
    Conflict {
        /// The document.
        key: String,
        /// The revision the write expected.
        expected: u64,
        /// The revision found.
        actual: u64,
    },
    /// The store cannot be reached or cannot commit now (a networked store without its quorum):
    /// retry later.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store is shut down.
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// Wraps an I/O error with what the store was doing.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io {
            context,
            cause: Arc::new(source),
        }
    }
}

/// The seq of a one-event append (see [`LogStore::append`]).
pub fn only_seq(appended: Result<Vec<u64>, StoreError>) -> Result<u64, StoreError> {
    appended.and_then(|seqs| {
        seqs.first()
            .copied()
            .ok_or_else(|| StoreError::Corrupt("an append returned no seq".into()))
    })
}

/// Receives the outcome of a store operation, on the store's thread: keep it short (hand the
/// result over and wake whoever waits).
pub type Done<T> = Box<dyn FnOnce(Result<T, StoreError>) + Send>;
