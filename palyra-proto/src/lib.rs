//! The sans-IO core of Palyra's networking stack.
//!
//! Every protocol machine here takes bytes, datagrams, commands and the current time as input and
//! is polled for output (`poll_transmit`, `poll_event`, `poll_timeout`). Nothing in this crate opens
//! a socket, reads a clock, sleeps or spawns; the runtime drivers (`palyra-tokio`, `palyra-smol`) do.

pub mod a2ui;
pub mod console;
pub mod enroll;
pub mod frame;
pub mod gateway;
pub mod grpc;
pub mod h2;
pub mod http1;
pub mod identity;
pub mod node;
pub mod operator;
pub mod pb;
pub mod quic;
pub mod store;
pub mod transport;
pub mod ws;
