//! Durable state: the file-backed stores (append-only checksummed logs, atomic documents, the
//! gateway's identity directory, a node's identity directory) over the event types of
//! `palyra_proto::store`.

mod atomic;
mod event_log;
mod identity_dir;
mod node_identity;

pub use atomic::{fsync_dir, read_optional, write_atomic};
pub use event_log::{FileEventLog, FileEventLogConfig, Recovery};
pub use identity_dir::{
    unix_ms, DeviceBundle, DeviceIdentityFiles, IdentityDir, IdentityError, ServerIdentity,
    CA_VALIDITY,
};
pub use node_identity::{GatewayRecord, NodeIdentityDir, PendingPairing};
pub use palyra_proto::store::{
    EventStore, LogBounds, MemoryEventLog, NewEvent, StoreError, StoredEvent,
};
