//! grpc.testing.TestService on our stack (h2c), with the tokio or the smol driver. Prints the
//! bound address on stdout and serves until stdin closes.

use clap::Parser;
use palyra_gateway::grpc::GrpcListener;
use palyra_gateway::serve::tcp::TcpHandle;
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let routers = palyra_interop::test_service_router();
    palyra_interop::serve_until_stdin_eof(&args.driver, |rt| {
        TcpHandle::start(rt, args.addr, GrpcListener::h2c(routers))
    })
}
