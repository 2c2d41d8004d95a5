//! The NATS JetStream store backend: several `palyrad` instances share their state on one
//! JetStream cluster (ordering, replication and failover are JetStream's), behind the store
//! interfaces of `palyra-gateway`:
//!
//! - [`JsLog`]: a sequenced log as a stream (`PREFIX_EVENTS`): every gateway sees the same
//!   gap-free seqs; publishes carry a `Nats-Msg-Id`, so a retry is stored once, and are answered
//!   only once JetStream acknowledged them;
//! - [`KvDocs`]: documents in a key-value bucket (`PREFIX_STATE`), every write a compare-and-set
//!   on the key's revision, kept current on each gateway by a watch (trust records included:
//!   [`palyra_gateway::store::DocTrust`]).
//!
//! The client is async-nats on tokio; the store calls are synchronous and complete later, so
//! they hand their work to the runtime and answer from its tasks.

mod connect;
mod kv;
mod log;

pub use connect::{connect, Cluster, NatsError};
pub use kv::KvDocs;
pub use log::JsLog;

use palyra_gateway::config::NatsConfig;
use palyra_gateway::daemon::Stores;
use std::path::Path;

/// Opens the shared stores for `config` (creating the streams and buckets a new deployment
/// lacks): the node-plane event log and the documents with the trust records on JetStream; the
/// console log and the run tape stay in files under `state_dir` (this gateway's own).
pub async fn open_stores(
    cluster: &Cluster,
    config: &NatsConfig,
    state_dir: &Path,
    cache_bytes: usize,
) -> Result<Stores, NatsError> {
    tracing::info!(servers = ?config.servers, prefix = %config.prefix, replicas = config.replicas, gateway = %config.gateway_name, "state on NATS JetStream");
    let events = JsLog::open(cluster, "EVENTS", config.max_event_bytes, cache_bytes).await?;
    let docs = std::sync::Arc::new(KvDocs::open(cluster, "STATE").await?);
    let files = |e: palyra_gateway::store::StoreError| NatsError::Local(e.to_string());
    Ok(Stores {
        trust: Some(std::sync::Arc::new(palyra_gateway::store::DocTrust::new(
            docs.clone(),
        ))),
        docs,
        events: std::sync::Arc::new(events),
        console: palyra_gateway::console::open_file_log(state_dir).map_err(files)?,
        runs: palyra_gateway::run::tape::open_file_log(state_dir).map_err(files)?,
    })
}
