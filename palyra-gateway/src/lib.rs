//! The Palyra daemon's application, runtime-neutral: the node hub and NodeService, the event-log
//! writer, enrollment, the operator routes (admin, console, webhooks, pairing), the console hub,
//! the stores and the daemon assembly. Protocol machines come from `palyra-proto`; runtimes
//! (`palyra-tokio`, `palyra-smol`) only adapt sockets, timers and tasks.

pub mod access;
#[cfg(unix)]
pub mod browser;
#[cfg(unix)]
pub mod browser_link;
#[cfg(unix)]
pub mod browserd;
pub mod client;
pub mod config;
pub mod console;
#[cfg(unix)]
pub mod control;
pub mod daemon;
pub mod enroll;
pub mod grpc;
pub mod limits;
pub mod node;
pub mod node_client;
pub mod notify;
pub mod operator;
pub mod palyrad;
pub mod provider;
pub mod run;
pub mod runtime;
pub mod serve;
pub mod signals;
pub mod store;
pub mod trust;
pub mod util;
pub mod ws_app;

/// A connection that accepts none of a write for this long is dropped (its peer stopped reading).
pub const WRITE_STALL: std::time::Duration = std::time::Duration::from_secs(60);
