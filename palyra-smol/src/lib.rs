//! smol driver: UDP pump, timers and tasks (async-io) around the sans-IO machines of `palyra-proto`.

pub mod client;
pub mod grpc;
pub mod node_plane;
pub mod udp;

pub use client::{NodeConnection, Responses};
pub use node_plane::{serve_node_plane, NodePlaneHandle};
