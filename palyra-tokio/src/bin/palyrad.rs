//! `palyrad`, the Palyra gateway daemon, on tokio.

use anyhow::Context;
use palyra_gateway::config::StoreConfig;
use palyra_gateway::palyrad;

fn main() -> std::process::ExitCode {
    palyrad::main(|config| {
        let runtime = palyra_tokio::build_runtime(2).context("cannot start the tokio runtime")?;
        let rt = palyra_tokio::Tokio::new(runtime.handle().clone());
        let stores = match &config.store {
            StoreConfig::File => None,
            #[cfg(feature = "nats")]
            StoreConfig::Nats(nats) => Some(runtime.block_on(async {
                let cluster = palyra_nats::connect(nats).await?;
                palyra_nats::open_stores(
                    &cluster,
                    nats,
                    &config.state_dir,
                    config.node.log.cache_bytes,
                )
                .await
                .context("cannot open the state on NATS JetStream")
            })?),
            #[cfg(not(feature = "nats"))]
            StoreConfig::Nats(_) => None,
        };
        runtime.block_on(palyrad::serve_with(rt, config, stores))
    })
}
