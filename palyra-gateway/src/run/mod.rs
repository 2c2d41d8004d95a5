//! Agent runs: the run machine (IO-free), the durable run tape, sessions, the engine that drives
//! runs over the model provider and the node hub, and the gRPC services (RunStream, AbortRun,
//! sessions, approvals).

pub mod approvals;
pub mod browser_tools;
pub mod engine;
pub mod gateway_tools;
pub mod machine;
pub mod service;
pub mod sessions;
pub mod tape;
