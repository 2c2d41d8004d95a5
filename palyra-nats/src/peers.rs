//! The other gateways over NATS ([`NatsPeers`]):
//!
//! - presence: each gateway publishes, for every node it served within the presence window,
//!   `PREFIX.presence.<device>` = its name into the stream `PREFIX_PRESENCE`, which keeps the
//!   latest per device and drops it after [`PRESENCE_TTL`] (a gateway that died stops
//!   refreshing, so its nodes' entries expire); each gateway follows the stream into a map;
//! - calls: a gateway answers requests on `PREFIX.gw.<name>.call` by running the capability on
//!   the node connected to it and replying with the node's answer.

use crate::connect::{unavailable, Cluster, NatsError};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use futures_util::StreamExt;
use palyra_gateway::node::hub::{CapabilityResult, NodeHub, NodeRecord, PRESENCE_WINDOW};
use palyra_gateway::node::peers::{Peers, RemoteCall};
use palyra_gateway::store::{unix_ms, Done};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// How long a presence entry lasts unless refreshed.
pub const PRESENCE_TTL: Duration = Duration::from_secs(20);

/// How often a gateway refreshes the presence of its nodes (and looks for new ones).
const REFRESH: Duration = Duration::from_secs(1);

/// The longest capability input or output carried between gateways.
const MAX_CALL_BYTES: usize = 768 * 1024;

/// [`Peers`] over NATS.
pub struct NatsPeers {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Cluster,
    subject: String,
    /// Device -> its presence entry.
    holders: RwLock<HashMap<String, Holder>>,
    /// Gateway -> its last heartbeat.
    gateways: RwLock<HashMap<String, Heartbeat>>,
    /// When this gateway started (Unix ms).
    started_at_unix_ms: u64,
    /// This gateway's version.
    version: String,
}

/// A gateway's heartbeat in the presence stream.
struct Heartbeat {
    seen: Instant,
    started_at_unix_ms: u64,
    version: String,
}

/// The presence subject token of a gateway's heartbeat (device IDs never start with `_`).
const GATEWAY_TOKEN: &str = "_gw_";

/// Who holds a node, since when, and the node as it registered there.
struct Holder {
    gateway: String,
    seen: Instant,
    node: NodeRecord,
}

impl NatsPeers {
    /// Opens (creating if needed) the presence stream and starts following it.
    pub async fn open(cluster: &Cluster) -> Result<Self, NatsError> {
        let name = cluster.name("PRESENCE");
        let subject = format!("{}.presence", cluster.prefix);
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{subject}.*")],
            max_messages_per_subject: 1,
            max_age: PRESENCE_TTL,
            storage: StorageType::File,
            num_replicas: cluster.replicas,
            discard: DiscardPolicy::Old,
            ..Default::default()
        };
        cluster
            .js
            .get_or_create_stream(config)
            .await
            .map_err(|e| NatsError::JetStream(format!("stream {name}: {e}")))?;
        let inner = Arc::new(Inner {
            cluster: cluster.clone(),
            subject,
            holders: RwLock::default(),
            gateways: RwLock::default(),
            started_at_unix_ms: unix_ms(SystemTime::now()),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
        tokio::spawn(follow(Arc::downgrade(&inner), name));
        Ok(Self { inner })
    }
}

impl Inner {
    /// The gateways whose heartbeat has not expired, with the nodes each holds.
    fn gateways_seen(&self) -> Vec<crate::status::GatewaySeen> {
        let holders = self.holders.read().unwrap_or_else(|p| p.into_inner());
        let gateways = self.gateways.read().unwrap_or_else(|p| p.into_inner());
        let mut seen: Vec<crate::status::GatewaySeen> = gateways
            .iter()
            .filter(|(_, h)| h.seen.elapsed() < PRESENCE_TTL)
            .map(|(name, h)| {
                let mut nodes: Vec<String> = holders
                    .iter()
                    .filter(|(_, holder)| {
                        &holder.gateway == name && holder.seen.elapsed() < PRESENCE_TTL
                    })
                    .map(|(device, _)| device.clone())
                    .collect();
                nodes.sort();
                crate::status::GatewaySeen {
                    name: name.clone(),
                    age_ms: h.seen.elapsed().as_millis() as u64,
                    started_at_unix_ms: h.started_at_unix_ms,
                    version: h.version.clone(),
                    nodes,
                }
            })
            .collect();
        seen.sort_by(|a, b| a.name.cmp(&b.name));
        seen
    }

    /// Whether `holder` is another gateway and its entry has not expired.
    fn current(&self, holder: &Holder) -> bool {
        holder.gateway != self.cluster.gateway && holder.seen.elapsed() < PRESENCE_TTL
    }
}

/// Follows the presence stream (the latest entry per device, then every new one).
async fn follow(inner: std::sync::Weak<Inner>, stream: String) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (cluster, filter) = (strong.cluster.clone(), format!("{}.*", strong.subject));
        drop(strong);
        let deliver = DeliverPolicy::LastPerSubject;
        let mut messages = match crate::connect::ordered(&cluster, &stream, filter, deliver).await {
            Ok(messages) => messages,
            Err(e) => {
                tracing::warn!(error = %e, "following presence failed; again shortly");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(Ok(message)) = messages.next().await {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let Some(device) = message.subject.rsplit('.').next() else {
                continue;
            };
            let Ok(entry) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let (Some(gateway), Some(at)) =
                (entry["gateway"].as_str(), entry["at_unix_ms"].as_u64())
            else {
                continue;
            };
            let age = unix_ms(SystemTime::now()).saturating_sub(at);
            let Some(seen) = Instant::now().checked_sub(Duration::from_millis(age)) else {
                continue;
            };
            if device.strip_prefix(GATEWAY_TOKEN) == Some(gateway) {
                let heartbeat = Heartbeat {
                    seen,
                    started_at_unix_ms: entry["started_at_unix_ms"].as_u64().unwrap_or(0),
                    version: entry["version"].as_str().unwrap_or_default().to_owned(),
                };
                strong
                    .gateways
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(gateway.to_owned(), heartbeat);
                continue;
            }
            let Ok(node) = serde_json::from_value::<NodeRecord>(entry["node"].clone()) else {
                continue;
            };
            if node.device_id != device {
                continue;
            }
            strong
                .holders
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    device.to_owned(),
                    Holder {
                        gateway: gateway.to_owned(),
                        seen,
                        node,
                    },
                );
        }
    }
}

/// Publishes this gateway's presence for the nodes `hub` served within the presence window.
async fn refresh_presence(inner: Arc<Inner>, hub: Arc<NodeHub>) {
    let mut published: HashMap<String, Instant> = HashMap::new();
    let mut heartbeat: Option<Instant> = None;
    loop {
        let now_ms = unix_ms(SystemTime::now());
        if heartbeat.is_none_or(|at| at.elapsed() >= PRESENCE_TTL / 4) {
            let entry = json!({ "gateway": inner.cluster.gateway, "at_unix_ms": now_ms,
                                "started_at_unix_ms": inner.started_at_unix_ms, "version": inner.version });
            let subject = format!("{}.{GATEWAY_TOKEN}{}", inner.subject, inner.cluster.gateway);
            match inner
                .cluster
                .js
                .publish(subject, entry.to_string().into())
                .await
            {
                Ok(_) => heartbeat = Some(Instant::now()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot publish this gateway's heartbeat; will retry")
                }
            }
        }
        for node in hub.nodes() {
            let recent = now_ms.saturating_sub(node.last_seen_at_unix_ms)
                < PRESENCE_WINDOW.as_millis() as u64;
            let due = published
                .get(&node.device_id)
                .is_none_or(|at| at.elapsed() >= PRESENCE_TTL / 4);
            if !recent || !due {
                continue;
            }
            let entry =
                json!({ "gateway": inner.cluster.gateway, "at_unix_ms": now_ms, "node": node });
            let subject = format!("{}.{}", inner.subject, node.device_id);
            match inner
                .cluster
                .js
                .publish(subject, entry.to_string().into())
                .await
            {
                Ok(_) => {
                    published.insert(node.device_id.clone(), Instant::now());
                }
                Err(e) => tracing::warn!(error = %e, "cannot publish presence; will retry"),
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Answers other gateways' calls for the nodes connected here.
async fn serve_calls(inner: Arc<Inner>, hub: Arc<NodeHub>) {
    let subject = format!("{}.gw.{}.call", inner.cluster.prefix, inner.cluster.gateway);
    loop {
        let mut calls = match inner.cluster.client.subscribe(subject.clone()).await {
            Ok(calls) => calls,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take calls from other gateways; again shortly");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = calls.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            let (inner, hub) = (Arc::clone(&inner), Arc::clone(&hub));
            tokio::spawn(async move {
                let answer = match decode_call(&message.payload) {
                    Ok(call) => run_here(&hub, call, &inner.cluster.gateway).await,
                    Err(e) => failure(e),
                };
                let body = encode_result(&answer);
                if let Err(e) = inner.cluster.client.publish(reply, body.into()).await {
                    tracing::warn!(error = %e, "cannot answer another gateway's call");
                }
            });
        }
    }
}

fn failure(error: impl Into<String>) -> CapabilityResult {
    CapabilityResult {
        success: false,
        output_json: Vec::new(),
        error: error.into(),
    }
}

/// Runs `call` on the node connected here and waits for its answer.
async fn run_here(hub: &NodeHub, call: RemoteCall, gateway: &str) -> CapabilityResult {
    let request = match hub.enqueue(
        &call.device_id,
        &call.capability,
        call.input_json,
        call.max_payload_bytes,
    ) {
        Ok(id) => id,
        Err(e) => {
            return failure(format!(
                "gateway {gateway} cannot dispatch to the node: {e}"
            ))
        }
    };
    let deadline = Instant::now() + call.timeout;
    let notifier = hub.notifier();
    loop {
        let listener = notifier.listen();
        if let Some(result) = hub.take_result(&request) {
            return result;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            hub.abandon(&request);
            return failure(format!(
                "the node did not answer within {} s",
                call.timeout.as_secs()
            ));
        }
        let _ = tokio::time::timeout(left, listener).await;
    }
}

fn encode_call(call: &RemoteCall) -> Vec<u8> {
    json!({
        "device_id": call.device_id,
        "capability": call.capability,
        "input_json": String::from_utf8_lossy(&call.input_json),
        "max_payload_bytes": call.max_payload_bytes,
        "timeout_ms": call.timeout.as_millis() as u64,
    })
    .to_string()
    .into_bytes()
}

fn decode_call(bytes: &[u8]) -> Result<RemoteCall, String> {
    if bytes.len() > MAX_CALL_BYTES {
        return Err(format!("the call is larger than {MAX_CALL_BYTES} bytes"));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad call: {e}"))?;
    let text = |key: &str| {
        value[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("bad call: no {key}"))
    };
    Ok(RemoteCall {
        device_id: text("device_id")?,
        capability: text("capability")?,
        input_json: text("input_json")?.into_bytes(),
        max_payload_bytes: value["max_payload_bytes"].as_u64().unwrap_or(0),
        timeout: Duration::from_millis(value["timeout_ms"].as_u64().unwrap_or(30_000).min(600_000)),
    })
}

fn encode_result(result: &CapabilityResult) -> Vec<u8> {
    json!({
        "success": result.success,
        "output_json": String::from_utf8_lossy(&result.output_json),
        "error": result.error,
    })
    .to_string()
    .into_bytes()
}

fn decode_result(bytes: &[u8]) -> Result<CapabilityResult, String> {
    if bytes.len() > MAX_CALL_BYTES {
        return Err(format!("the answer is larger than {MAX_CALL_BYTES} bytes"));
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad answer: {e}"))?;
    Ok(CapabilityResult {
        success: value["success"].as_bool().unwrap_or(false),
        output_json: value["output_json"]
            .as_str()
            .unwrap_or_default()
            .as_bytes()
            .to_vec(),
        error: value["error"].as_str().unwrap_or_default().to_owned(),
    })
}

impl Peers for NatsPeers {
    fn attach(&self, hub: Arc<NodeHub>) {
        let inner = Arc::clone(&self.inner);
        self.inner
            .cluster
            .rt
            .spawn(refresh_presence(Arc::clone(&inner), Arc::clone(&hub)));
        self.inner.cluster.rt.spawn(serve_calls(inner, hub));
    }

    fn holder(&self, device_id: &str) -> Option<String> {
        let holders = self.inner.holders.read().unwrap_or_else(|p| p.into_inner());
        let holder = holders.get(device_id)?;
        self.inner.current(holder).then(|| holder.gateway.clone())
    }

    fn nodes(&self) -> Vec<NodeRecord> {
        let holders = self.inner.holders.read().unwrap_or_else(|p| p.into_inner());
        holders
            .values()
            .filter(|h| self.inner.current(h))
            .map(|h| h.node.clone())
            .collect()
    }

    fn status(&self, done: Done<Value>) {
        let inner = Arc::clone(&self.inner);
        self.inner.cluster.rt.spawn(async move {
            let gateways = inner.gateways_seen();
            done(Ok(crate::status::report(&inner.cluster, gateways).await));
        });
    }

    fn call(&self, gateway: &str, call: RemoteCall, done: Done<CapabilityResult>) {
        let subject = format!("{}.gw.{gateway}.call", self.inner.cluster.prefix);
        let body = encode_call(&call);
        if body.len() > MAX_CALL_BYTES {
            return done(Ok(failure(format!(
                "the input is too large to carry to gateway {gateway}"
            ))));
        }
        let client = self.inner.cluster.client.clone();
        let timeout = call.timeout + Duration::from_secs(1);
        let gateway = gateway.to_owned();
        self.inner.cluster.rt.spawn(async move {
            let request = async_nats::Request::new()
                .payload(body.into())
                .timeout(Some(timeout));
            let answer = match client.send_request(subject, request).await {
                Ok(message) => decode_result(&message.payload)
                    .map_err(|e| unavailable(&format!("gateway {gateway}"), e)),
                Err(e) => Err(unavailable(&format!("calling gateway {gateway}"), e)),
            };
            done(answer);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_and_answers_round_trip_and_bad_ones_are_refused() {
        let call = RemoteCall {
            device_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(),
            capability: "echo".into(),
            input_json: br#"{"text":"hi"}"#.to_vec(),
            max_payload_bytes: 1024,
            timeout: Duration::from_secs(5),
        };
        assert_eq!(decode_call(&encode_call(&call)).unwrap(), call);
        let result = CapabilityResult {
            success: true,
            output_json: br#"{"ok":1}"#.to_vec(),
            error: String::new(),
        };
        assert_eq!(decode_result(&encode_result(&result)).unwrap(), result);
        assert!(decode_call(b"not json").is_err());
        assert!(decode_call(br#"{"device_id":"x"}"#)
            .unwrap_err()
            .contains("capability"));
        assert!(decode_call(&vec![b' '; MAX_CALL_BYTES + 1]).is_err());
    }
}
