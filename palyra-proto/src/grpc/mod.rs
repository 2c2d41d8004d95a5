//! gRPC over the HTTP/2 machine: message framing, status, deadlines, metadata.

pub mod client;
pub mod codec;
pub mod server;
pub mod service;
pub mod services;

pub use codec::{Code, Status};

use crate::h2::frame::StreamId;
use std::collections::HashMap;
use std::time::Instant;

/// Calls (by stream) whose deadline has passed at `now`; shared by the client and server.
pub(crate) fn expired_calls<C>(
    calls: &HashMap<StreamId, C>,
    deadline: impl Fn(&C) -> Option<Instant>,
    now: Instant,
) -> Vec<StreamId> {
    calls
        .iter()
        .filter(|(_, c)| deadline(c).is_some_and(|d| now >= d))
        .map(|(id, _)| *id)
        .collect()
}

/// The earliest of the calls' deadlines and the connection's own timer.
pub(crate) fn next_deadline<C>(
    calls: &HashMap<StreamId, C>,
    deadline: impl Fn(&C) -> Option<Instant>,
    connection: Option<Instant>,
) -> Option<Instant> {
    calls.values().filter_map(deadline).chain(connection).min()
}
