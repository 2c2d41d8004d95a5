//! grpc.testing.TestService on our stack (h2c), with the tokio or the smol driver. Prints the
//! bound address on stdout and serves until stdin closes.

use clap::Parser;
use std::io::Read;
use std::net::SocketAddr;

/// Interop server on our HTTP/2 + gRPC machines.
#[derive(Parser)]
struct Args {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Runtime driver: tokio or smol.
    #[arg(long, default_value = "tokio")]
    driver: String,
}

fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let routers = palyra_interop::test_service_router();
    match args.driver.as_str() {
        "tokio" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let listener = palyra_tokio::grpc::GrpcListener::h2c(routers);
                let handle = palyra_tokio::grpc::GrpcHandle::start(args.addr, listener).await?;
                println!("{}", handle.local_addr);
                tokio::task::spawn_blocking(wait_for_stdin_eof).await?;
                handle.shutdown().await;
                anyhow::Ok(())
            })
        }
        "smol" => smol::block_on(async {
            let listener = palyra_smol::grpc::GrpcListener::h2c(routers);
            let handle = palyra_smol::grpc::GrpcHandle::start(args.addr, listener)?;
            println!("{}", handle.local_addr);
            smol::unblock(wait_for_stdin_eof).await;
            handle.shutdown().await;
            anyhow::Ok(())
        }),
        other => anyhow::bail!("unknown driver {other:?} (tokio or smol)"),
    }
}
