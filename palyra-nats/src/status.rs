//! The cluster as an operator sees it (`palyra cluster status`): the gateways and the nodes
//! each holds (from the presence stream), the NATS server this gateway is connected to and the
//! others it knows, and the health of every stream of the deployment (leader, replicas
//! current or lagging).

use crate::connect::Cluster;
use async_nats::jetstream::stream::Info;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// One gateway as the presence stream knows it.
#[derive(Debug, Clone)]
pub(crate) struct GatewaySeen {
    /// Its name.
    pub name: String,
    /// How long ago its last heartbeat was sent (ms).
    pub age_ms: u64,
    /// When it started (Unix ms).
    pub started_at_unix_ms: u64,
    /// Its palyrad version.
    pub version: String,
    /// The nodes it holds now.
    pub nodes: Vec<String>,
}

/// The report: gateways, NATS, streams.
pub(crate) async fn report(cluster: &Cluster, gateways: Vec<GatewaySeen>) -> Value {
    let info = cluster.client.server_info();
    let state = format!("{:?}", cluster.client.connection_state()).to_lowercase();
    let gateways: Vec<Value> = gateways
        .into_iter()
        .map(|g| {
            json!({"name": g.name, "this": g.name == cluster.gateway, "age_ms": g.age_ms,
                   "started_at_unix_ms": g.started_at_unix_ms, "version": g.version, "nodes": g.nodes})
        })
        .collect();
    let streams = match tokio::time::timeout(cluster.timeout, streams(cluster)).await {
        Ok(Ok(streams)) => json!(streams),
        Ok(Err(e)) => json!({"error": e}),
        Err(_) => {
            json!({"error": format!("no answer from JetStream within {} ms", cluster.timeout.as_millis())})
        }
    };
    json!({
        "backend": "nats",
        "gateway": cluster.gateway,
        "prefix": cluster.prefix,
        "replicas": cluster.replicas,
        "gateways": gateways,
        "nats": {
            "state": state,
            "server_name": info.server_name,
            "server_version": info.version,
            "server": format!("{}:{}", info.host, info.port),
            "known_servers": info.connect_urls,
            "max_payload": info.max_payload,
        },
        "streams": streams,
    })
}

/// Every stream of the deployment (its prefix) with its health.
async fn streams(cluster: &Cluster) -> Result<Vec<Value>, String> {
    let prefix = format!("{}_", cluster.prefix);
    let mut list = cluster.js.streams();
    let mut out = Vec::new();
    while let Some(info) = list.next().await {
        let info = info.map_err(|e| format!("listing streams: {e}"))?;
        if info.config.name.starts_with(&prefix) {
            out.push(stream(&info));
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(out)
}

/// One stream's health: `ok` when it has a leader and every replica is current and online.
fn stream(info: &Info) -> Value {
    let cluster = info.cluster.as_ref();
    let leader = cluster.and_then(|c| c.leader.clone());
    let replicas: Vec<Value> = cluster
        .map(|c| {
            c.replicas
                .iter()
                .map(|p| {
                    json!({"name": p.name, "current": p.current, "offline": p.offline,
                           "lag": p.lag.unwrap_or(0), "active_ms": p.active.as_millis() as u64})
                })
                .collect()
        })
        .unwrap_or_default();
    // A stream of a single server (no cluster) is healthy as long as it answers.
    let healthy = cluster
        .is_none_or(|c| c.leader.is_some() && c.replicas.iter().all(|p| p.current && !p.offline));
    json!({
        "name": info.config.name,
        "description": info.config.description,
        "replicas": info.config.num_replicas,
        "leader": leader,
        "followers": replicas,
        "ok": healthy,
        "messages": info.state.messages,
        "bytes": info.state.bytes,
        "first_seq": info.state.first_sequence,
        "last_seq": info.state.last_sequence,
    })
}
