//! The other gateways of a cluster, as the node plane needs them ([`Peers`]): which gateway
//! holds a node's connection (presence), and a capability call carried to that gateway. The
//! transport (NATS request/reply, a presence stream with a TTL) is the store backend's; this
//! crate only says what it must do.

use super::hub::{CapabilityResult, NodeHub, NodeRecord};
use crate::store::Done;
use std::sync::Arc;
use std::time::Duration;

/// A capability call for a node connected to another gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCall {
    /// The node.
    pub device_id: String,
    /// The capability.
    pub capability: String,
    /// Its input, JSON (may be empty).
    pub input_json: Vec<u8>,
    /// The largest output accepted.
    pub max_payload_bytes: u64,
    /// How long the node may take.
    pub timeout: Duration,
}

/// The other gateways of a cluster.
pub trait Peers: Send + Sync {
    /// Starts serving `hub`'s nodes to the other gateways: their calls for nodes connected here,
    /// and this gateway's presence for them.
    fn attach(&self, hub: Arc<NodeHub>);
    /// The other gateway holding `device_id`'s connection now, if one does.
    fn holder(&self, device_id: &str) -> Option<String>;
    /// The nodes other gateways hold now, as they registered there.
    fn nodes(&self) -> Vec<NodeRecord>;
    /// Carries `call` to `gateway`; `done` gets the node's answer, or why there is none.
    fn call(&self, gateway: &str, call: RemoteCall, done: Done<CapabilityResult>);
    /// A report of the cluster for operators (`palyra cluster status`): the gateways and their
    /// nodes, the servers of the shared store and the health of its streams, as JSON.
    fn status(&self, done: Done<serde_json::Value>);
}
