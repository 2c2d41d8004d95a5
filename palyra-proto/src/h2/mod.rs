//! HTTP/2 (RFC 9113): HPACK, frames, and the connection machine.

pub mod conn;
pub mod frame;
pub mod hpack;
pub mod validate;
