//! A UDP socket with segmentation offload (GSO/GRO), batched receives and ECN, via `quinn-udp`.

use async_io::Async;
use palyra_proto::quic::{Transmit, MAX_TRANSMIT_SEGMENTS};
use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};

/// Receive buffers per call (recvmmsg batch).
const BATCH: usize = 8;

/// An async-io UDP socket driven through `quinn-udp`.
pub struct Udp {
    socket: Async<UdpSocket>,
    state: UdpSocketState,
    bufs: Vec<Vec<u8>>,
}

impl Udp {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let socket = Async::new(socket)?;
        let buf_len = (state.gro_segments() * 1500).max(64 * 1024);
        Ok(Self {
            socket,
            state,
            bufs: vec![vec![0; buf_len]; BATCH],
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.get_ref().local_addr()
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
            match self
                .state
                .send(UdpSockRef::from(self.socket.get_ref()), &transmit)
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if self.socket.writable().await.is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    }

    /// Waits until a receive may succeed.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// One batched receive; calls `deliver(from, ecn, datagram)` for every datagram.
    /// Returns `WouldBlock` when nothing is queued.
    pub fn try_recv(
        &mut self,
        mut deliver: impl FnMut(SocketAddr, Option<u8>, &[u8]),
    ) -> io::Result<()> {
        let mut metas = [RecvMeta::default(); BATCH];
        let mut slices: Vec<IoSliceMut<'_>> =
            self.bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
        let count = self.state.recv(
            UdpSockRef::from(self.socket.get_ref()),
            &mut slices,
            &mut metas,
        )?;
        for (meta, buf) in metas.iter().zip(slices.iter()).take(count) {
            let ecn = meta.ecn.map(|e| e as u8);
            for datagram in buf[..meta.len].chunks(meta.stride.max(1)) {
                deliver(meta.addr, ecn, datagram);
            }
        }
        Ok(())
    }
}
