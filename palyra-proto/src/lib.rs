//! The sans-IO core of Palyra's networking stack: protocol machines only.
//!
//! Every protocol machine here takes bytes, datagrams, commands and the current time as input and
//! is polled for output (`poll_transmit`, `poll_event`, `poll_timeout`). Nothing in this crate opens
//! a socket, reads a clock, touches a file, sleeps, spawns or awaits: `palyra-gateway` (the
//! daemon's application) and the runtime adapters (`palyra-tokio`, `palyra-smol`) do. The lint
//! configuration in `clippy.toml` enforces it (tests may read the clock to start their simulated
//! time).

#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod a2ui;
pub mod enroll;
pub mod frame;
pub mod grpc;
pub mod h2;
pub mod http1;
pub mod identity;
pub mod node;
pub mod pb;
pub mod quic;
pub mod time;
pub mod transport;
pub mod ws;
