//! What the `palyra` CLI and nodes run against a gateway: the node's identity (enroll, run,
//! rotate), the operator client of the admin API, and the demo agent on the console stream.

pub mod acp;
#[cfg(unix)]
pub mod browser;
pub mod capabilities;
pub mod commands;
pub mod demo_agent;
pub mod identity;
pub mod node;
pub mod operator;
pub mod runs;
