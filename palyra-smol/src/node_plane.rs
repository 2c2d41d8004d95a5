//! Serves the node plane: one task owns the UDP socket and the [`NodeServer`] machine.

use crate::udp::Udp;
use async_io::Timer;
use futures_lite::future;
use palyra_gateway::node::{NodePlane, MAINTENANCE_INTERVAL};
use palyra_gateway::store::unix_ms;
use rand_core::OsRng;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

/// How long a graceful shutdown waits for connections to close.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A running node plane.
pub struct NodePlaneHandle {
    /// The bound UDP address.
    pub local_addr: SocketAddr,
    shutdown: async_channel::Sender<()>,
    task: smol::Task<io::Result<()>>,
}

impl NodePlaneHandle {
    /// Binds `addr` and serves `plane` on a new task of smol's global executor.
    pub fn start(addr: SocketAddr, plane: NodePlane) -> io::Result<Self> {
        let socket = Udp::bind(addr)?;
        let local_addr = socket.local_addr()?;
        let (shutdown, signal) = async_channel::bounded(1);
        let task = smol::spawn(serve_node_plane(socket, plane, signal));
        Ok(Self {
            local_addr,
            shutdown,
            task,
        })
    }

    /// Closes every connection with an application close and waits for the task to end.
    pub async fn shutdown(self) -> io::Result<()> {
        let _ = self.shutdown.send(()).await;
        self.task.await
    }
}

enum Wake {
    Readable(io::Result<()>),
    Timer,
    Notified,
    Shutdown,
}

/// The serve loop: receive datagrams, feed the machine, commit publishes, send what it emits,
/// sleep until its next timeout. Ends after `shutdown` fires and connections have closed.
pub async fn serve_node_plane(
    mut socket: Udp,
    mut plane: NodePlane,
    shutdown: async_channel::Receiver<()>,
) -> io::Result<()> {
    let mut send_buf = Vec::with_capacity(1500);
    let mut next_maintenance = Instant::now() + MAINTENANCE_INTERVAL;
    let mut stop_by: Option<Instant> = None;
    // The node service hands events to the log through the hub; its notifier wakes us.
    let notifier = plane.hub.notifier();
    loop {
        let listener = notifier.listen();
        let now = Instant::now();
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
        let readable = async { Wake::Readable(socket.readable().await) };
        let timer = async {
            Timer::at(wake).await;
            Wake::Timer
        };
        let notified = async {
            listener.await;
            Wake::Notified
        };
        let stop = async {
            if stop_by.is_some() {
                future::pending::<()>().await;
            }
            let _ = shutdown.recv().await;
            Wake::Shutdown
        };
        match future::or(readable, future::or(timer, future::or(notified, stop))).await {
            Wake::Readable(ready) => {
                ready?;
                let now = Instant::now();
                // Drain what is queued, bounded so timers and sends are not starved.
                for _ in 0..32 {
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
            Wake::Timer => plane.server.handle_timeout(Instant::now()),
            Wake::Notified => {}
            Wake::Shutdown => {
                tracing::info!("node plane shutting down");
                let now = Instant::now();
                plane.server.shutdown(now);
                stop_by = Some(now + SHUTDOWN_GRACE);
            }
        }
    }
}
