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
    /// Whether nothing is in progress (no request being served, or the handshake not done yet):
    /// a listener at its connection cap sheds such connections first.
    fn is_idle(&self) -> bool {
        false
    }
}

/// Builds the machine of each accepted connection: what a listener serves.
pub trait Acceptor: Send + Sync {
    /// A machine for a connection from `peer` accepted at `now`.
    fn accept(&self, now: Instant, peer: SocketAddr) -> Result<Box<dyn StreamMachine>, String>;
    /// A machine refusing a connection over the listener's cap with the protocol's own answer
    /// (HTTP 503 with `Retry-After`, HTTP/2 GOAWAY), then closing; `None`: just close it.
    fn refuse(&self, _now: Instant, _peer: SocketAddr) -> Option<Box<dyn StreamMachine>> {
        None
    }
}

/// How long a refused connection is kept after the refusal was written, so the peer reads it
/// before the socket closes (closing with unread input would reset the connection).
pub const REFUSAL_LINGER: std::time::Duration = std::time::Duration::from_millis(500);

/// A connection refused at once: writes `answer`, discards what the peer sends, and closes at
/// the peer's end of stream or [`REFUSAL_LINGER`] later.
pub struct Refusal {
    answer: Option<Bytes>,
    deadline: Instant,
    done: bool,
}

impl Refusal {
    /// A refusal accepted at `now` answering `answer`.
    pub fn new(now: Instant, answer: Bytes) -> Self {
        Self {
            answer: Some(answer),
            deadline: now + REFUSAL_LINGER,
            done: false,
        }
    }
}

impl StreamMachine for Refusal {
    fn handle_input(&mut self, _now: Instant, _bytes: &[u8]) {}
    fn handle_timeout(&mut self, now: Instant) {
        self.done |= now >= self.deadline;
    }
    fn handle_wake(&mut self, _now: Instant) {}
    fn poll_timeout(&self) -> Option<Instant> {
        (!self.done).then_some(self.deadline)
    }
    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.answer.take()
    }
    fn is_closed(&self) -> bool {
        self.answer.is_none() && self.done
    }
    fn handle_eof(&mut self) {
        self.done = true;
    }
    fn go_away(&mut self) {
        self.done = true;
    }
    fn is_idle(&self) -> bool {
        true
    }
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
    fn is_idle(&self) -> bool {
        (**self).is_idle()
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
