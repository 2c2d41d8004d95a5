//! The NATS JetStream store backend: several `palyrad` instances share their state on one
//! JetStream cluster (ordering, replication and failover are JetStream's), behind the store
//! interfaces of `palyra-gateway`:
//!
//! - [`JsLog`]: a sequenced log as a stream (`PREFIX_EVENTS`): every gateway sees the same
//!   gap-free seqs; publishes carry a `Nats-Msg-Id`, so a retry is stored once, and are answered
//!   only once JetStream acknowledged them;
//! - [`JsDocs`]: documents, each a stream of its own (`PREFIX_DOC_<key>`), every write a
//!   compare-and-set on its revision, kept current on each gateway by a consumer (trust records
//!   included: [`palyra_gateway::store::DocTrust`]).
//!
//! - the console log as a stream (`PREFIX_CONSOLE`) every gateway follows, so a console on one
//!   gateway sees what was posted through another and resumes by cursor on any of them;
//! - the run tape as a stream (`PREFIX_RUNS`): each gateway drives its own runs and follows the
//!   others', so every gateway lists, streams and replays every run;
//!
//! - [`NatsPeers`]: which gateway holds which node (a presence stream whose entries expire), and
//!   capability calls carried over NATS request/reply to the gateway holding the node.
//!
//! The client is async-nats on tokio; the store calls are synchronous and complete later, so
//! they hand their work to the runtime and answer from its tasks.

mod connect;
mod docs;
mod log;
mod peers;
mod split;
mod status;

pub use connect::{connect, Cluster, NatsError};
pub use docs::JsDocs;
pub use log::JsLog;
pub use peers::NatsPeers;
pub use split::SplitDocs;

use palyra_gateway::config::NatsConfig;
use palyra_gateway::daemon::Stores;
use palyra_gateway::store::DocStore;
use std::path::Path;
use std::sync::Arc;

/// Opens the shared stores for `config` (creating the streams and buckets a new deployment
/// lacks): the node-plane event log, the console log, the run tape and the documents (trust
/// records included) on JetStream; the few documents a gateway keeps for itself
/// ([`palyra_gateway::console::LOCAL_DOCS`]) stay in files under `state_dir`.
pub async fn open_stores(
    cluster: &Cluster,
    config: &NatsConfig,
    state_dir: &Path,
    cache_bytes: usize,
) -> Result<Stores, NatsError> {
    tracing::info!(servers = ?config.servers, prefix = %config.prefix, replicas = config.replicas, gateway = %config.gateway_name, "state on NATS JetStream");
    let events =
        ready(|| JsLog::open(cluster, "EVENTS", config.max_event_bytes, cache_bytes)).await?;
    let console =
        ready(|| JsLog::open(cluster, "CONSOLE", CONSOLE_BYTES, CONSOLE_CACHE_BYTES)).await?;
    let runs = ready(|| JsLog::open(cluster, "RUNS", RUNS_BYTES, RUNS_CACHE_BYTES)).await?;
    let shared: Arc<dyn DocStore> = Arc::new(ready(|| JsDocs::open(cluster)).await?);
    let peers = ready(|| NatsPeers::open(cluster)).await?;
    let files = |e: palyra_gateway::store::StoreError| NatsError::Local(e.to_string());
    let local: Arc<dyn DocStore> =
        Arc::new(palyra_gateway::store::FileDocStore::open(state_dir).map_err(files)?);
    Ok(Stores {
        trust: Some(Arc::new(palyra_gateway::store::DocTrust::new(Arc::clone(
            &shared,
        )))),
        docs: Arc::new(SplitDocs::new(
            local,
            shared,
            palyra_gateway::console::LOCAL_DOCS,
        )),
        events: Arc::new(events),
        peers: Some(Arc::new(peers)),
        console: Arc::new(console),
        runs: Arc::new(runs),
    })
}

/// The console log's retention (records beyond it are dropped oldest first; the state saved
/// every 1,024 records keeps what they added up to).
const CONSOLE_BYTES: u64 = 256 * 1024 * 1024;
/// The console log's recent records kept in memory.
const CONSOLE_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The run tape's retention (the oldest runs' records are dropped first).
const RUNS_BYTES: u64 = 512 * 1024 * 1024;
/// The run tape's recent records kept in memory.
const RUNS_CACHE_BYTES: usize = 8 * 1024 * 1024;

/// How long a starting gateway waits for JetStream (a cluster starting with it elects its
/// leaders meanwhile).
const SETUP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a setup step until it succeeds, JetStream's refusals being retried for
/// [`SETUP_PATIENCE`].
async fn ready<T, F: std::future::Future<Output = Result<T, NatsError>>>(
    mut step: impl FnMut() -> F,
) -> Result<T, NatsError> {
    let deadline = std::time::Instant::now() + SETUP_PATIENCE;
    loop {
        match step().await {
            Err(NatsError::JetStream(reason)) if std::time::Instant::now() < deadline => {
                tracing::warn!(%reason, "JetStream is not ready; trying again");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}
