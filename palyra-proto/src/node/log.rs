//! The node-plane event log as data: an event to append, an event read back with its sequence
//! number, the log's bounds, and a batch of reads. The log itself (durable, group-committed)
//! belongs to the application; the machines only ask for appends and reads and take the results.

use bytes::Bytes;
use std::sync::Arc;

/// An event to append: who it is addressed to and its serialized body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// Device the event is addressed to; `None` means every device.
    pub to: Option<String>,
    /// The event body as JSON (`{"name":..,"device_id":..,"occurred_at_unix_ms":..,"payload":..}`).
    pub body: Bytes,
    /// The publisher's ID for it (`device/id`), the same on a retry: a shared log stores the
    /// event once. `None`: the gateway's own events, and publishes without an ID.
    pub id: Option<String>,
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

/// What a read of the log returns: the events after the requested seq and the log's bounds then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    /// Events with `seq > after`, in order.
    pub events: Vec<StoredEvent>,
    /// The log's bounds when the read was served.
    pub bounds: LogBounds,
}

/// The log could not serve a read or make an append durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event log unavailable: {0}")]
pub struct LogUnavailable(pub String);
