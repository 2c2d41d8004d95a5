//! In-memory event log with the same semantics as the file log, for simulations and tests.

use super::{EventStore, LogBounds, NewEvent, StoreError, StoredEvent};
use std::collections::VecDeque;

/// A non-durable [`EventStore`] with retention bounded by total bytes.
pub struct MemoryEventLog {
    events: VecDeque<StoredEvent>,
    bytes: usize,
    max_bytes: usize,
    last_seq: u64,
}

impl MemoryEventLog {
    /// A log that drops its oldest events once it holds more than `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            events: VecDeque::new(),
            bytes: 0,
            max_bytes,
            last_seq: 0,
        }
    }
}

impl EventStore for MemoryEventLog {
    fn append(&mut self, events: &[NewEvent]) -> Result<u64, StoreError> {
        let first = self.last_seq + 1;
        for event in events {
            self.last_seq += 1;
            let stored = StoredEvent {
                seq: self.last_seq,
                to: event.to.as_deref().map(Into::into),
                body: event.body.clone(),
            };
            self.bytes += stored.size();
            self.events.push_back(stored);
        }
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size();
            }
        }
        Ok(first)
    }

    fn read_after(
        &mut self,
        after: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let first = self.bounds().first_seq;
        let skip = after.saturating_add(1).saturating_sub(first);
        let mut out = Vec::new();
        let mut bytes = 0;
        for event in self
            .events
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        {
            if out.len() >= max_events || (bytes >= max_bytes && !out.is_empty()) {
                break;
            }
            bytes += event.size();
            out.push(event.clone());
        }
        Ok(out)
    }

    fn bounds(&self) -> LogBounds {
        LogBounds {
            first_seq: self.events.front().map_or(self.last_seq + 1, |e| e.seq),
            last_seq: self.last_seq,
        }
    }
}
