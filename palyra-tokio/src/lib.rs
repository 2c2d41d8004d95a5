//! tokio driver: UDP pump, timers and tasks around the sans-IO machines of `palyra-proto`.

pub mod agent;
pub mod client;
pub mod config;
pub mod grpc;
pub mod node_identity;
pub mod node_plane;
pub mod operator_client;
pub mod udp;

pub use client::{NodeConnection, Responses};
pub use node_plane::{serve_node_plane, NodePlaneHandle};
