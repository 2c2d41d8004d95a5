//! Serves the node plane: one task owns the UDP socket and the [`NodePlane`] (the QUIC machine,
//! the live identity and the event log).

use super::udp::Udp;
use super::{Stop, StopWaiter, SHUTDOWN_GRACE};
use crate::node::{NodePlane, MAINTENANCE_INTERVAL};
use crate::runtime::{self, Rt, Task};
use palyra_proto::time::unix_ms;
use rand_core::OsRng;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Instant, SystemTime};

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

/// The serve loop: receive datagrams, feed the machine, commit publishes, send what it emits,
/// sleep until its next timeout. Ends after `stop` is raised and connections have closed.
pub async fn serve_node_plane(
    rt: Rt,
    mut socket: Udp,
    mut plane: NodePlane,
    stop: Arc<Stop>,
) -> io::Result<()> {
    let mut send_buf = Vec::with_capacity(1500);
    let mut next_maintenance = rt.now() + MAINTENANCE_INTERVAL;
    let mut stop_by: Option<Instant> = None;
    let mut timer = rt.new_timer(next_maintenance);
    let mut stopping = StopWaiter::new(stop);
    // The node service hands events to the log through the hub; its notifier wakes us.
    let notifier = plane.hub.notifier();
    loop {
        let mut listener = notifier.listen();
        let now = rt.now();
        plane.server.set_wall_clock(unix_ms(SystemTime::now()));
        if now >= next_maintenance {
            plane.maintain(now, SystemTime::now(), &mut OsRng);
            next_maintenance = now + MAINTENANCE_INTERVAL;
        }
        plane.commit_and_log(now);
        while let Some(t) = plane
            .server
            .poll_transmit(now, socket.max_segments(), &mut send_buf)
        {
            socket.send(&t, &send_buf[..t.size]).await;
        }
        if let Some(deadline) = stop_by {
            if plane.server.is_idle() || now >= deadline {
                return Ok(());
            }
        }
        let wake = [plane.server.poll_timeout(), Some(next_maintenance), stop_by]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_maintenance);
        timer.as_mut().reset(wake);
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(ready) = socket.poll_recv_ready(cx) {
                return Poll::Ready(Wake::Readable(ready));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if std::pin::Pin::new(&mut listener).poll(cx).is_ready() {
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
                // Drain what is queued, bounded so timers and sends are not starved.
                for _ in 0..RECV_BATCHES {
                    let server = &mut plane.server;
                    match socket.try_recv(|from, ecn, datagram| {
                        server.handle_datagram(now, from, None, ecn, datagram)
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
                plane.server.shutdown(now);
                stop_by = Some(now + SHUTDOWN_GRACE);
            }
        }
    }
}
