//! A one-way stop signal from a handle to the tasks and threads it started.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A one-way "stop" broadcast from a handle to the tasks it started.
#[derive(Debug, Default)]
pub struct Stop {
    stopped: AtomicBool,
    event: event_listener::Event,
}

impl Stop {
    /// A signal not raised yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Raises the signal and wakes every waiter.
    pub fn raise(&self) {
        self.stopped.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    /// Whether the signal was raised.
    pub fn is_raised(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Blocks the calling (non-runtime) thread until the signal is raised or `timeout` passes;
    /// returns whether it was raised.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        if self.is_raised() {
            return true;
        }
        let listener = self.event.listen();
        if self.is_raised() {
            return true;
        }
        let _ = event_listener::Listener::wait_timeout(listener, timeout);
        self.is_raised()
    }

    /// Waits until the signal is raised.
    pub async fn wait(&self) {
        loop {
            if self.is_raised() {
                return;
            }
            let listener = self.event.listen();
            if self.is_raised() {
                return;
            }
            listener.await;
        }
    }
}

/// A waiter on a [`Stop`] that a hand-written `poll` can drive.
pub(crate) struct StopWaiter {
    stop: Arc<Stop>,
    listener: Option<event_listener::EventListener>,
}

impl StopWaiter {
    pub(crate) fn new(stop: Arc<Stop>) -> Self {
        Self {
            stop,
            listener: None,
        }
    }

    /// Ready once the signal is raised.
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.stop.is_raised() {
                return Poll::Ready(());
            }
            match &mut self.listener {
                None => self.listener = Some(self.stop.event.listen()),
                Some(listener) => {
                    if std::pin::Pin::new(listener).poll(cx).is_pending() {
                        return if self.stop.is_raised() {
                            Poll::Ready(())
                        } else {
                            Poll::Pending
                        };
                    }
                    self.listener = None;
                }
            }
        }
    }
}
