//! A result that arrives later, such as a store write completing: polled machines (gRPC call
//! handlers, HTTP routes) look at it when their connection is woken; async code awaits it.

use crate::notify::Notifier;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Shared<T> {
    value: Mutex<Option<T>>,
    ready: AtomicBool,
    event: event_listener::Event,
    wake: Option<Arc<Notifier>>,
}

/// The waiting side of a result that arrives later.
pub struct Pending<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ready", &self.is_ready())
            .finish()
    }
}

/// The completing side: [`Completer::complete`] stores the result, wakes awaiting tasks and, when
/// one was given, the connections waiting on `wake`.
pub struct Completer<T> {
    shared: Arc<Shared<T>>,
}

/// A pending result and its completer; `wake` is notified when the result arrives (the notifier
/// the waiting connection's task listens to).
pub fn pending<T>(wake: Option<Arc<Notifier>>) -> (Pending<T>, Completer<T>) {
    let shared = Arc::new(Shared {
        value: Mutex::new(None),
        ready: AtomicBool::new(false),
        event: event_listener::Event::new(),
        wake,
    });
    (
        Pending {
            shared: Arc::clone(&shared),
        },
        Completer { shared },
    )
}

impl<T> Completer<T> {
    /// Delivers the result.
    pub fn complete(self, value: T) {
        *self.shared.value.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
        self.shared.ready.store(true, Ordering::Release);
        self.shared.event.notify(usize::MAX);
        if let Some(wake) = &self.shared.wake {
            wake.notify();
        }
    }
}

impl<T> Pending<T> {
    /// Whether the result arrived (and was not taken yet).
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    /// Takes the result if it arrived.
    pub fn take(&self) -> Option<T> {
        if !self.is_ready() {
            return None;
        }
        self.shared
            .value
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Blocks the calling (non-runtime) thread until the result arrives or `timeout` passes.
    pub fn wait_blocking(&self, timeout: std::time::Duration) -> Option<T> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if self.is_ready() {
                return self.take();
            }
            let listener = self.shared.event.listen();
            if self.is_ready() {
                return self.take();
            }
            if event_listener::Listener::wait_deadline(listener, deadline).is_none()
                && !self.is_ready()
            {
                return None;
            }
        }
    }

    /// Waits for the result (`None` if it was taken already).
    pub async fn wait(&self) -> Option<T> {
        loop {
            if self.is_ready() {
                return self.take();
            }
            let listener = self.shared.event.listen();
            if self.is_ready() {
                return self.take();
            }
            listener.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_is_taken_once_and_wakes_the_connection() {
        let wake = Arc::new(Notifier::new());
        let before = wake.version();
        let (pending, completer) = pending::<u32>(Some(Arc::clone(&wake)));
        assert!(pending.take().is_none());
        completer.complete(7);
        assert!(wake.version() > before);
        assert_eq!(pending.take(), Some(7));
        assert_eq!(pending.take(), None);
    }
}
