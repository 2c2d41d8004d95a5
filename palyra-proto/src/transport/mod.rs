//! What drivers run over a TCP connection: any [`StreamMachine`] (the gRPC server or client
//! connection, optionally wrapped in [`tls`]), the [`Acceptor`] that builds one per accepted
//! connection, and the TLS facts about the peer ([`PeerIdentity`]).

pub mod tls;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Instant;

/// A sans-IO machine speaking over a reliable byte stream.
///
/// The driver loop is always the same: write what [`StreamMachine::poll_transmit`] yields; close
/// the socket once [`StreamMachine::is_closed`]; otherwise wait for bytes, the timer of
/// [`StreamMachine::poll_timeout`] or a wake-up from shared state, and feed what happened.
pub trait StreamMachine: Send {
    /// Bytes read from the transport.
    fn handle_input(&mut self, now: Instant, bytes: &[u8]);
    /// The timer from [`StreamMachine::poll_timeout`] expired.
    fn handle_timeout(&mut self, now: Instant);
    /// Shared state changed (the application woke the connection): handlers may have output.
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
