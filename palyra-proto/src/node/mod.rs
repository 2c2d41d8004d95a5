//! The palyra-quic-v1 node plane: messages and the per-stream request machine.

pub mod message;
pub mod stream;

pub use message::*;
pub use stream::{RequestStream, StreamEvent};
