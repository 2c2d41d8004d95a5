//! The serve loops, written once over [`crate::runtime::Runtime`]: the UDP node plane, TCP
//! listeners running any [`palyra_proto::transport::StreamMachine`] (gRPC, HTTP/1.1, TLS), the
//! gRPC client channel and the node-plane client. Each loop reads into buffers, hands the bytes
//! to its machine, writes what the machine emits and sleeps until the machine's next timeout or
//! a wake-up.

pub mod grpc_channel;
pub mod node_connection;
pub mod node_plane;
pub mod tcp;
pub mod udp;

pub use crate::util::stop::Stop;
pub(crate) use crate::util::stop::StopWaiter;
use std::time::Duration;

/// How long a graceful shutdown lets open connections and calls finish.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
