//! The operator plane's HTTP/1.1 + WebSocket stack (palyra-gateway over the tokio or smol runtime)
//! with the conformance-only echo endpoint `GET /conformance/ws-echo` enabled, message limit
//! 64 KiB. Prints the bound address on stdout and serves until stdin closes.

use clap::Parser;
use palyra_gateway::operator::{Operator, OperatorAcceptor};
use palyra_gateway::serve::tcp::TcpHandle;
use palyra_proto::ws::WsConfig;
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
    palyra_interop::serve_until_stdin_eof(&args.driver, |rt| {
        TcpHandle::serve(rt, args.addr, acceptor, None)
    })
}
