//! Wakes connection tasks when shared state changes (node registry, capability queue, event log,
//! console log, store completions). Runtime-neutral (event-listener), so every runtime waits on
//! it the same way.

use std::sync::atomic::{AtomicU64, Ordering};

/// Wakes connection tasks when shared state changes. Runtime-neutral (event-listener), so the
/// tokio and smol drivers wait on it the same way.
///
/// Race-free use: take a listener, compare [`Notifier::version`] with the last one handled and
/// handle a change, then await the listener.
#[derive(Debug, Default)]
pub struct Notifier {
    event: event_listener::Event,
    version: AtomicU64,
}

impl Notifier {
    /// A notifier nobody listens to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bumps the version and wakes every listener.
    pub fn notify(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.event.notify(usize::MAX);
    }

    /// A counter bumped by every [`Notifier::notify`].
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// A future completing at the next [`Notifier::notify`].
    pub fn listen(&self) -> event_listener::EventListener {
        self.event.listen()
    }

    /// Whether a notification came since `seen` (which is then brought up to date).
    pub fn changed_since(&self, seen: &mut u64) -> bool {
        let version = self.version();
        let changed = version != *seen;
        *seen = version;
        changed
    }
}
