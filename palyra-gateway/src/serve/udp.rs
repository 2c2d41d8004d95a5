//! A UDP socket with segmentation offload (GSO/GRO), batched receives and ECN, through
//! `quinn-udp`, over any runtime's readiness ([`UdpIo`]).

use crate::runtime::{Runtime, UdpIo};
use palyra_proto::quic::{Transmit, MAX_TRANSMIT_SEGMENTS};
use quinn_udp::{RecvMeta, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::task::{Context, Poll};

/// Receive buffers per call (recvmmsg batch).
const BATCH: usize = 8;

/// A bound UDP socket driven through `quinn-udp`.
#[derive(Debug)]
pub struct Udp {
    io: Box<dyn UdpIo>,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
}

impl Udp {
    /// Binds `addr` on `rt`.
    pub fn bind(rt: &dyn Runtime, addr: SocketAddr) -> io::Result<Self> {
        let socket = std::net::UdpSocket::bind(addr)?;
        let state = UdpSocketState::new(quinn_udp::UdpSockRef::from(&socket))?;
        socket.set_nonblocking(true)?;
        let io = rt.wrap_udp(socket)?;
        let buf_len = (state.gro_segments() * 1500).max(64 * 1024);
        Ok(Self {
            io,
            state,
            bufs: vec![vec![0; buf_len]; BATCH],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// How many datagrams one send may carry: what the kernel supports, capped by
    /// [`MAX_TRANSMIT_SEGMENTS`].
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_TRANSMIT_SEGMENTS)
    }

    /// Sends what a machine's `poll_transmit` put in `contents`, waiting while the socket is full.
    /// Other errors are logged by `quinn-udp` and dropped: QUIC recovers lost datagrams.
    pub async fn send(&self, t: &Transmit, contents: &[u8]) {
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t.ecn.and_then(quinn_udp::EcnCodepoint::from_bits),
            contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        loop {
            let sent = self.io.try_io(true, &mut || {
                self.state.send(self.io.sock_ref(), &transmit).map(|()| 0)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::future::poll_fn(|cx| self.io.poll_send_ready(cx))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Ready when a receive may succeed.
    pub fn poll_recv_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io.poll_recv_ready(cx)
    }

    /// One batched receive; calls `deliver(from, ecn, datagram)` for every datagram.
    /// Returns `WouldBlock` when nothing is queued.
    pub fn try_recv(
        &mut self,
        mut deliver: impl FnMut(SocketAddr, Option<u8>, &[u8]),
    ) -> io::Result<()> {
        let mut metas = [RecvMeta::default(); BATCH];
        let Self { io, state, bufs } = self;
        let mut slices: Vec<IoSliceMut<'_>> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let count = io.try_io(false, &mut || {
            state.recv(io.sock_ref(), &mut slices, &mut metas)
        })?;
        for (meta, buf) in metas.iter().zip(slices.iter()).take(count) {
            let ecn = meta.ecn.map(|e| e as u8);
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                deliver(meta.addr, ecn, datagram);
            }
        }
        Ok(())
    }
}
