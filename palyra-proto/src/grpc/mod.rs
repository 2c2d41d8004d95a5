//! gRPC over the HTTP/2 machine: message framing, status, deadlines, metadata.

pub mod client;
pub mod codec;
pub mod server;
pub mod service;
pub mod services;

pub use codec::{Code, Status};
