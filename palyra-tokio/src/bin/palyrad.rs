//! `palyrad`, the Palyra gateway daemon, on tokio.

use anyhow::Context;
use palyra_gateway::palyrad;

fn main() -> std::process::ExitCode {
    palyrad::main(|config| {
        let runtime = palyra_tokio::build_runtime(2).context("cannot start the tokio runtime")?;
        let rt = palyra_tokio::Tokio::new(runtime.handle().clone());
        runtime.block_on(palyrad::serve(rt, config))
    })
}
