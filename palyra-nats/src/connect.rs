//! The connection to the NATS cluster ([`connect`]) and what every store of a deployment shares
//! ([`Cluster`]): the client, the JetStream context, the names' prefix, the replica count.

use async_nats::jetstream;
use palyra_gateway::config::NatsConfig;
use palyra_gateway::store::StoreError;
use std::time::Duration;

/// Why the JetStream backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No server of the list could be reached (or it refused the credentials).
    #[error("cannot connect to NATS ({servers}): {reason}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// A configuration file (credentials, TLS) cannot be read.
    #[error("{0}")]
    Config(String),
    /// JetStream refused or could not answer a setup request.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// A local (file) store could not be opened.
    #[error("{0}")]
    Local(String),
}

/// A deployment's view of the cluster: one connection shared by its stores.
#[derive(Clone)]
pub struct Cluster {
    /// The NATS client.
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The runtime the stores' work runs on.
    pub rt: tokio::runtime::Handle,
    /// Stream and bucket prefix.
    pub prefix: String,
    /// Replicas per stream and bucket.
    pub replicas: usize,
    /// This gateway's name.
    pub gateway: String,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl Cluster {
    /// The name of the deployment's stream or bucket `what` (`PREFIX_EVENTS`).
    pub fn name(&self, what: &str) -> String {
        format!("{}_{what}", self.prefix)
    }
}

/// How long the first connection may take before `palyrad` gives up with a clear error.
const FIRST_CONNECT: Duration = Duration::from_secs(20);

/// Connects to the servers of `config` (reconnecting forever afterwards, and logging it) on the
/// current tokio runtime.
pub async fn connect(config: &NatsConfig) -> Result<Cluster, NatsError> {
    let servers = config.servers.join(", ");
    let mut addrs = Vec::with_capacity(config.servers.len());
    for server in &config.servers {
        addrs.push(
            server
                .parse::<async_nats::ServerAddr>()
                .map_err(|e| NatsError::Config(format!("store.servers: {server:?}: {e}")))?,
        );
    }
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("palyrad {}", config.gateway_name))
        .connection_timeout(config.request_timeout)
        .request_timeout(Some(config.request_timeout))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("NATS connected"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("NATS disconnected; reconnecting")
                }
                other => tracing::warn!(event = %other, "NATS"),
            }
        });
    if let Some(path) = &config.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| NatsError::Config(format!("store.creds_file {}: {e}", path.display())))?;
    }
    if let Some((user, password)) = &config.user_password {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.token {
        options = options.token(token.clone());
    }
    if let Some(ca) = &config.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some((cert, key)) = &config.tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    let client = tokio::time::timeout(FIRST_CONNECT, options.connect(addrs))
        .await
        .map_err(|_| NatsError::Connect {
            servers: servers.clone(),
            reason: format!("no server answered within {FIRST_CONNECT:?}"),
        })?
        .map_err(|e| NatsError::Connect {
            servers: servers.clone(),
            reason: e.to_string(),
        })?;
    let js = jetstream::ContextBuilder::new()
        .timeout(config.request_timeout)
        .build(client.clone());
    Ok(Cluster {
        client,
        js,
        rt: tokio::runtime::Handle::current(),
        prefix: config.prefix.clone(),
        replicas: config.replicas,
        gateway: config.gateway_name.clone(),
        timeout: config.request_timeout,
    })
}

/// A store error for a JetStream request that failed for a reason a retry may mend.
pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what}: {e}"))
}

/// The messages of an ordered consumer.
pub(crate) type Ordered = async_nats::jetstream::consumer::push::Ordered;

/// Starts an ordered push consumer on `stream` delivering what `filter` and `deliver` select
/// (its consumer mends gaps and reconnects by itself); why not, as text.
pub(crate) async fn ordered(
    cluster: &Cluster,
    stream: &str,
    filter: String,
    deliver: async_nats::jetstream::consumer::DeliverPolicy,
) -> Result<Ordered, String> {
    let config = async_nats::jetstream::consumer::push::OrderedConfig {
        deliver_subject: cluster.client.new_inbox(),
        filter_subject: filter,
        deliver_policy: deliver,
        ..Default::default()
    };
    cluster
        .js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| e.to_string())?
        .create_consumer(config)
        .await
        .map_err(|e| e.to_string())?
        .messages()
        .await
        .map_err(|e| e.to_string())
}
