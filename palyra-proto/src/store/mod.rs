//! The node-plane event log as the QUIC machine sees it: events to append, events read back,
//! and the log's bounds. Durable implementations live in `palyra-gateway`.

mod memory;

pub use memory::MemoryEventLog;

use bytes::Bytes;
use std::sync::Arc;

/// Errors of the durable stores.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An operating-system I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Stored data failed validation somewhere other than a torn tail.
    #[error("event log is corrupt: {0}")]
    Corrupt(String),
    /// A record is larger than the store accepts.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Record size.
        len: usize,
        /// Limit.
        max: usize,
    },
}

impl StoreError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
        let context = context.into();
        move |source| StoreError::Io { context, source }
    }
}

/// An event to append: who it is addressed to and its serialized body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Device the event is addressed to; `None` means every device.
    pub to: Option<String>,
    /// The event body as JSON (`{"name":..,"device_id":..,"occurred_at_unix_ms":..,"payload":..}`).
    pub body: Bytes,
}

/// An event read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Sequence number, starting at 1, gap-free.
    pub seq: u64,
    /// Device the event is addressed to; `None` means every device.
    pub to: Option<Arc<str>>,
    /// The event body as JSON (shared, never copied after it is read).
    pub body: Bytes,
}

impl StoredEvent {
    /// Whether `device_id` may see this event: broadcast events and events addressed to it.
    pub fn visible_to(&self, device_id: &str) -> bool {
        self.to.as_deref().is_none_or(|to| to == device_id)
    }

    /// Bytes this event takes in memory and on disk, roughly.
    pub fn size(&self) -> usize {
        self.body.len() + self.to.as_ref().map_or(0, |t| t.len()) + 32
    }
}

/// What the log holds right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBounds {
    /// First sequence number still retained (`last_seq + 1` when the log holds nothing).
    pub first_seq: u64,
    /// Last sequence number ever assigned (0 before the first event).
    pub last_seq: u64,
}

/// An append-only, sequenced, durable event log.
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
}
