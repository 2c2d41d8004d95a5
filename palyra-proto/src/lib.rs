//! The sans-IO core of Palyra's networking stack: protocol machines only.
//!
//! Every machine here has the same shape:
//!
//! - **Input**: `handle_input(now, bytes)` (`handle_datagram` for QUIC, `handle_text` for the
//!   console stream), commands (`send_*`, `close`), answers to what it asked for (`handle_*`),
//!   and `handle_timeout(now)`.
//! - **Output**, pulled: `poll_transmit()` (bytes or datagrams to write), `poll_event()` (what
//!   happened, or what the application must do: append, read, publish, apply a trust change),
//!   `poll_timeout()` (the next deadline).
//! - **Time** is passed in: `now: Instant` on every input; wall time, where a machine stamps or
//!   checks a date, as `now_ms: u64` (Unix ms; `SystemTime` only where X.509 validity is
//!   computed). **Randomness** comes from an injected `CryptoRngCore`.
//! - **Errors** are typed and map to the protocol's own (QUIC code, HTTP status, WebSocket close
//!   code, gRPC status).
//!
//! Nothing in this crate opens a socket, reads a clock, touches a file, sleeps, spawns or
//! awaits: `palyra-gateway` (the daemon's application) and the runtime adapters
//! (`palyra-tokio`, `palyra-smol`) do. `clippy.toml` enforces it (tests may read the clock to
//! start their simulated time), and CI fails if an async crate enters the dependency tree.

#![cfg_attr(test, allow(clippy::disallowed_methods, clippy::disallowed_types))]

pub mod a2ui;
pub mod cdp;
pub mod enroll;
pub mod frame;
pub mod grpc;
pub mod h2;
pub mod http1;
pub mod identity;
pub mod jsonrpc;
pub mod node;
pub mod openai;
pub mod pb;
pub mod quic;
pub mod sse;
pub mod time;
pub mod transport;
pub mod ws;
