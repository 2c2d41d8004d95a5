//! The palyra-quic-v1 node plane: messages, the per-stream request machine, the event log as
//! data, and the request engine both transports (QUIC and NodeService) share.

pub mod agent;
pub mod engine;
pub mod log;
pub mod message;
pub mod stream;

pub use message::*;
pub use stream::{RequestStream, StreamEvent};
