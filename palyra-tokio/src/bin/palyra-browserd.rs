//! `palyra-browserd`, the browser automation daemon, on tokio.

use anyhow::Context;
use palyra_gateway::browserd;

fn main() -> std::process::ExitCode {
    browserd::main(|args| {
        let runtime = palyra_tokio::build_runtime(2).context("cannot start the tokio runtime")?;
        let rt = palyra_tokio::Tokio::new(runtime.handle().clone());
        runtime.block_on(browserd::serve(rt, args))
    })
}
