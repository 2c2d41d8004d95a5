//! The operator plane's HTTP/1.1 + WebSocket stack (palyra-proto over the tokio or smol driver)
//! with the conformance-only echo endpoint `GET /conformance/ws-echo` enabled, message limit
//! 64 KiB. Prints the bound address on stdout and serves until stdin closes.

use clap::Parser;
use palyra_gateway::operator::{Operator, OperatorAcceptor};
use palyra_proto::ws::WsConfig;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// WebSocket echo server on our stack.
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
    let ws = WsConfig {
        max_message: 64 * 1024,
        max_frame: 64 * 1024,
        ..WsConfig::default()
    };
    let acceptor = Arc::new(OperatorAcceptor {
        operator: Operator::with_ws_echo("conformance", Instant::now(), ws),
        config: Default::default(),
        tls: None,
    });
    match args.driver.as_str() {
        "tokio" => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let handle =
                    palyra_tokio::grpc::GrpcHandle::serve(args.addr, acceptor, None).await?;
                println!("{}", handle.local_addr);
                tokio::task::spawn_blocking(wait_for_stdin_eof).await?;
                handle.shutdown().await;
                anyhow::Ok(())
            })
        }
        "smol" => smol::block_on(async {
            let handle = palyra_smol::grpc::GrpcHandle::serve(args.addr, acceptor, None)?;
            println!("{}", handle.local_addr);
            smol::unblock(wait_for_stdin_eof).await;
            handle.shutdown().await;
            anyhow::Ok(())
        }),
        other => anyhow::bail!("unknown driver {other:?} (tokio or smol)"),
    }
}
