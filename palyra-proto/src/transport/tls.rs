//! TLS around any [`StreamMachine`], sans-IO: rustls records in and out of memory buffers.
//!
//! [`TlsStream::server`] creates the inner machine only once the handshake is done, handing it the
//! verified [`PeerIdentity`] (so authorization happens per call, against the live trust index);
//! [`TlsStream::client`] wraps a machine that may queue bytes before the handshake ends. A TLS
//! failure sends the alert rustls chose and closes; a handshake not done within the timeout closes.

use super::{PeerIdentity, StreamMachine};
use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a peer may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Plaintext read from rustls per step.
const PLAINTEXT_CHUNK: usize = 16 * 1024;

type Factory<M> = Box<dyn FnOnce(PeerIdentity, Instant) -> M + Send>;

/// A TLS connection carrying a [`StreamMachine`].
pub struct TlsStream<M: StreamMachine> {
    tls: rustls::Connection,
    inner: Option<M>,
    factory: Option<Factory<M>>,
    handshake_deadline: Option<Instant>,
    /// Set when TLS failed or the peer closed: only the final records remain to be written.
    failed: Option<String>,
    out: Vec<u8>,
    eof: bool,
}

/// Errors setting up a TLS connection.
#[derive(Debug, thiserror::Error)]
#[error("TLS setup failed: {0}")]
pub struct TlsSetupError(String);

impl<M: StreamMachine> TlsStream<M> {
    /// Server side: `make` builds the inner machine once the client is authenticated (or not).
    pub fn server(
        config: Arc<rustls::ServerConfig>,
        now: Instant,
        make: impl FnOnce(PeerIdentity, Instant) -> M + Send + 'static,
    ) -> Result<Self, TlsSetupError> {
        let mut tls =
            rustls::ServerConnection::new(config).map_err(|e| TlsSetupError(e.to_string()))?;
        tls.set_buffer_limit(None);
        Ok(Self::with(tls.into(), None, Some(Box::new(make)), now))
    }

    /// Client side: `inner` starts at once; its bytes are sent when the handshake completes.
    pub fn client(
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
        inner: M,
        now: Instant,
    ) -> Result<Self, TlsSetupError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| TlsSetupError(format!("server name {server_name:?}: {e}")))?;
        let mut tls = rustls::ClientConnection::new(config, name)
            .map_err(|e| TlsSetupError(e.to_string()))?;
        tls.set_buffer_limit(None);
        Ok(Self::with(tls.into(), Some(inner), None, now))
    }

    fn with(
        tls: rustls::Connection,
        inner: Option<M>,
        factory: Option<Factory<M>>,
        now: Instant,
    ) -> Self {
        let mut stream = Self {
            tls,
            inner,
            factory,
            handshake_deadline: Some(now + HANDSHAKE_TIMEOUT),
            failed: None,
            out: Vec::new(),
            eof: false,
        };
        stream.flush_tls();
        stream
    }

    /// The inner machine (absent on the server side until the handshake is done).
    pub fn inner(&self) -> Option<&M> {
        self.inner.as_ref()
    }

    /// Mutable access to the inner machine.
    pub fn inner_mut(&mut self) -> Option<&mut M> {
        self.inner.as_mut()
    }

    /// Whether the handshake completed.
    pub fn is_established(&self) -> bool {
        !self.tls.is_handshaking()
    }

    fn fail(&mut self, reason: String) {
        if self.failed.is_none() {
            self.failed = Some(reason);
        }
        self.flush_tls();
    }

    fn flush_tls(&mut self) {
        while self.tls.wants_write() {
            if self.tls.write_tls(&mut self.out).is_err() {
                break;
            }
        }
    }

    /// Moves the inner machine's output into TLS records.
    fn pump_inner_output(&mut self) {
        if self.failed.is_some() {
            return;
        }
        if let Some(inner) = self.inner.as_mut() {
            while let Some(bytes) = inner.poll_transmit() {
                if self.tls.writer().write_all(&bytes).is_err() {
                    break;
                }
            }
            if inner.is_closed() && !self.tls.is_handshaking() {
                self.tls.send_close_notify();
            }
        }
        self.flush_tls();
    }

    fn after_handshake(&mut self, now: Instant) {
        if self.tls.is_handshaking() {
            return;
        }
        self.handshake_deadline = None;
        if let Some(make) = self.factory.take() {
            let leaf = self
                .tls
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|c| c.as_ref().to_vec());
            self.inner = Some(make(PeerIdentity::from_leaf(leaf), now));
        }
    }

    fn read_plaintext(&mut self, now: Instant) {
        let mut buf = [0u8; PLAINTEXT_CHUNK];
        loop {
            match self.tls.reader().read(&mut buf) {
                Ok(0) => {
                    // close_notify: the peer will send nothing more.
                    if !self.eof {
                        self.eof = true;
                        if let Some(inner) = self.inner.as_mut() {
                            inner.handle_eof();
                        }
                    }
                    return;
                }
                Ok(n) => match self.inner.as_mut() {
                    Some(inner) => inner.handle_input(now, &buf[..n]),
                    None => return,
                },
                Err(_) => return,
            }
        }
    }
}

impl<M: StreamMachine> StreamMachine for TlsStream<M> {
    fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.failed.is_none() {
            match self.tls.read_tls(&mut bytes) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    self.fail(format!("TLS read: {e}"));
                    break;
                }
            }
            if let Err(e) = self.tls.process_new_packets() {
                self.fail(format!("TLS: {e}"));
                break;
            }
            self.after_handshake(now);
            self.read_plaintext(now);
        }
        self.pump_inner_output();
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.handshake_deadline.is_some_and(|d| now >= d) {
            self.handshake_deadline = None;
            self.fail("TLS handshake timed out".to_owned());
            return;
        }
        if let Some(inner) = self.inner.as_mut() {
            inner.handle_timeout(now);
        }
        self.pump_inner_output();
    }

    fn handle_wake(&mut self, now: Instant) {
        if let Some(inner) = self.inner.as_mut() {
            inner.handle_wake(now);
        }
        self.pump_inner_output();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        let inner = self.inner.as_ref().and_then(|m| m.poll_timeout());
        [self.handshake_deadline, inner].into_iter().flatten().min()
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.pump_inner_output();
        if self.out.is_empty() {
            None
        } else {
            Some(Bytes::from(std::mem::take(&mut self.out)))
        }
    }

    fn is_closed(&self) -> bool {
        if !self.out.is_empty() {
            return false;
        }
        self.failed.is_some()
            || self.inner.as_ref().is_some_and(|m| m.is_closed())
            || (self.eof && self.inner.is_none())
    }

    fn handle_eof(&mut self) {
        self.eof = true;
        match self.inner.as_mut() {
            Some(inner) => inner.handle_eof(),
            None => self.fail("connection closed during the TLS handshake".to_owned()),
        }
        self.pump_inner_output();
    }

    fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    fn wants_input(&self) -> bool {
        self.inner.as_ref().is_none_or(|m| m.wants_input())
    }

    fn is_idle(&self) -> bool {
        // Still in the handshake (half-open), or the inner machine is idle.
        self.inner.as_ref().is_none_or(|m| m.is_idle())
    }

    fn go_away(&mut self) {
        match self.inner.as_mut() {
            Some(inner) => inner.go_away(),
            None => self.fail("shutting down".to_owned()),
        }
        self.pump_inner_output();
    }
}
