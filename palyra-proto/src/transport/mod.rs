//! What drivers run over a TCP connection: any [`StreamMachine`] (the gRPC server or client
//! connection, optionally wrapped in [`tls`]), and the [`Notifier`] that wakes connection tasks
//! when shared state (node registry, capability queue, event log) changes.

pub mod tls;

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// A sans-IO machine speaking over a reliable byte stream.
///
/// The driver loop is always the same: write what [`StreamMachine::poll_transmit`] yields; close
/// the socket once [`StreamMachine::is_closed`]; otherwise wait for bytes, the timer of
/// [`StreamMachine::poll_timeout`] or a [`Notifier`] wake-up, and feed what happened.
pub trait StreamMachine: Send {
    /// Bytes read from the transport.
    fn handle_input(&mut self, now: Instant, bytes: &[u8]);
    /// The timer from [`StreamMachine::poll_timeout`] expired.
    fn handle_timeout(&mut self, now: Instant);
    /// Shared state changed (a [`Notifier`] fired): application handlers may have output.
    fn handle_wake(&mut self, now: Instant);
    /// The next instant at which [`StreamMachine::handle_timeout`] must be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next bytes to write.
    fn poll_transmit(&mut self) -> Option<Bytes>;
    /// Whether the connection is finished (the driver closes the socket after writing).
    fn is_closed(&self) -> bool;
    /// The transport reached end of file.
    fn handle_eof(&mut self);
    /// Graceful shutdown: stop taking new work, finish what is open.
    fn go_away(&mut self);
    /// Why the connection failed below the application (e.g. a TLS alert), for the log.
    fn failure(&self) -> Option<&str> {
        None
    }
    /// Whether the driver should read more now (false: the machine holds enough unprocessed
    /// input; wait for output or a wake-up first).
    fn wants_input(&self) -> bool {
        true
    }
}

/// Builds the machine of each accepted connection: what a listener serves.
pub trait Acceptor: Send + Sync {
    /// A machine for a connection from `peer` accepted at `now`.
    fn accept(&self, now: Instant, peer: SocketAddr) -> Result<Box<dyn StreamMachine>, String>;
}

impl StreamMachine for Box<dyn StreamMachine> {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        (**self).handle_input(now, bytes)
    }
    fn handle_timeout(&mut self, now: Instant) {
        (**self).handle_timeout(now)
    }
    fn handle_wake(&mut self, now: Instant) {
        (**self).handle_wake(now)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        (**self).poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        (**self).poll_transmit()
    }
    fn is_closed(&self) -> bool {
        (**self).is_closed()
    }
    fn handle_eof(&mut self) {
        (**self).handle_eof()
    }
    fn go_away(&mut self) {
        (**self).go_away()
    }
    fn failure(&self) -> Option<&str> {
        (**self).failure()
    }
    fn wants_input(&self) -> bool {
        (**self).wants_input()
    }
}

/// The TLS facts about the peer of a connection, for authorization by the application.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The end-entity certificate the peer presented (DER), after chain verification.
    pub leaf_der: Option<Vec<u8>>,
    /// SHA-256 of that certificate's SubjectPublicKeyInfo (the device identity).
    pub spki_sha256: Option<[u8; 32]>,
    /// The peer's address (for per-address limits such as pairing-code throttles).
    pub remote: Option<std::net::SocketAddr>,
}

impl PeerIdentity {
    /// The identity of a peer that presented `leaf_der` (fingerprint computed here).
    pub fn from_leaf(leaf_der: Option<Vec<u8>>) -> Self {
        let spki_sha256 = leaf_der
            .as_deref()
            .and_then(|der| crate::identity::cert::cert_spki_fingerprint(der).ok());
        Self {
            leaf_der,
            spki_sha256,
            remote: None,
        }
    }
}

/// A driver drops a peer that accepts none of a write for this long (it stopped reading).
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);

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
