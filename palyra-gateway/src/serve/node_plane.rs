//! Serves the node plane: one task owns the UDP socket and the [`NodePlane`] (the QUIC machine,
//! the live identity and the event log).

use super::udp::Udp;
use super::{Stop, StopWaiter, SHUTDOWN_GRACE};
use crate::node::NodePlane;
use crate::runtime::{self, Rt, Task};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

/// Datagram batches received before the loop turns to timers and sends again.
const RECV_BATCHES: usize = 32;

/// A running node plane.
pub struct NodePlaneHandle {
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    stop: Arc<Stop>,
    task: Task<io::Result<()>>,
}

impl NodePlaneHandle {
    /// Binds `addr` and serves `plane` on a new task.
    pub fn start(rt: &Rt, addr: SocketAddr, plane: NodePlane) -> io::Result<Self> {
        let socket = Udp::bind(rt.as_ref(), addr)?;
        let local_addr = socket.local_addr()?;
        let stop = Stop::new();
        let task = runtime::spawn(
            rt.as_ref(),
            serve_node_plane(Rt::clone(rt), socket, plane, Arc::clone(&stop)),
        );
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// Closes every connection with an application close and waits for the task to end.
    pub async fn shutdown(self) -> io::Result<()> {
        self.stop.raise();
        self.task
            .join()
            .await
            .unwrap_or_else(|| Err(io::Error::other("node plane task ended abnormally")))
    }
}

enum Wake {
    Readable(io::Result<()>),
    Timer,
    Notified,
    Shutdown,
}

/// The serve loop: receive datagrams, feed the machine, hand its log work over and its
/// completed work back, send what it emits, sleep until its next timeout or a wake-up. Ends after
/// `stop` is raised and connections have closed.
pub async fn serve_node_plane(
    rt: Rt,
    mut socket: Udp,
    mut plane: NodePlane,
    stop: Arc<Stop>,
) -> io::Result<()> {
    let mut send_buf = Vec::with_capacity(1500);
    let mut stop_by: Option<Instant> = None;
    let far = || rt.now() + Duration::from_secs(3600);
    let mut timer = rt.new_timer(far());
    let mut stopping = StopWaiter::new(stop);
    let [wake, grown] = plane.wakers();
    let mut seen_growth = grown.version();
    loop {
        let mut woken = wake.listen();
        let mut growth = grown.listen();
        let now = rt.now();
        if grown.changed_since(&mut seen_growth) {
            plane.log_grown(now);
        }
        plane.pump(now);
        while let Some(t) = plane
            .server
            .poll_transmit(now, socket.max_segments(), &mut send_buf)
        {
            socket.send(&t, &send_buf[..t.size]).await;
        }
        if let Some(deadline) = stop_by {
            if plane.server.is_idle() || now >= deadline {
                plane.stop_maintenance();
                return Ok(());
            }
        }
        let deadline = [plane.server.poll_timeout(), stop_by]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(far);
        timer.as_mut().reset(deadline);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(ready) = socket.poll_recv_ready(cx) {
                return Poll::Ready(Wake::Readable(ready));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if std::pin::Pin::new(&mut woken).poll(cx).is_ready()
                || std::pin::Pin::new(&mut growth).poll(cx).is_ready()
            {
                return Poll::Ready(Wake::Notified);
            }
            if stop_by.is_none() && stopping.poll(cx).is_ready() {
                return Poll::Ready(Wake::Shutdown);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Wake::Readable(ready) => {
                ready?;
                let now = rt.now();
                let now_ms = (plane.clock)();
                // Drain what is queued, bounded so timers and sends are not starved.
                for _ in 0..RECV_BATCHES {
                    let server = &mut plane.server;
                    match socket.try_recv(|from, ecn, datagram| {
                        server.handle_datagram(now, now_ms, from, None, ecn, datagram)
                    }) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            tracing::debug!(error = %e, "UDP receive error");
                            break;
                        }
                    }
                }
            }
            Wake::Timer => plane.server.handle_timeout(rt.now()),
            Wake::Notified => {}
            Wake::Shutdown => {
                tracing::info!("node plane shutting down");
                let now = rt.now();
                plane.shutdown(now);
                stop_by = Some(now + SHUTDOWN_GRACE);
            }
        }
    }
}
