//! The shared node-plane suite on the tokio driver.

use palyra_gateway::node::NodePlane;
use palyra_proto::node::ResponseFrame;
use palyra_proto::quic::ClientLimits;
use palyra_testkit::{node_plane_suite, Driver};
use palyra_tokio::{NodeConnection, NodePlaneHandle, Responses};
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

struct Tokio;

impl Driver for Tokio {
    const NAME: &'static str = "tokio";
    type Server = NodePlaneHandle;
    type Conn = NodeConnection;
    type Stream = Responses;

    fn start(plane: NodePlane) -> (Self::Server, SocketAddr) {
        let handle = runtime()
            .block_on(NodePlaneHandle::start(
                "127.0.0.1:0".parse().unwrap(),
                plane,
            ))
            .expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn stop(server: Self::Server) {
        runtime().block_on(server.shutdown()).expect("shutdown");
    }

    fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Self::Conn, String> {
        runtime()
            .block_on(NodeConnection::connect(
                addr,
                "localhost",
                tls,
                ClientLimits::default(),
            ))
            .map_err(|e| e.to_string())
    }

    fn open(conn: &Self::Conn, payload: Vec<u8>) -> Self::Stream {
        runtime()
            .block_on(conn.request_raw(payload))
            .expect("request")
    }

    fn next(stream: &mut Self::Stream, timeout: Duration) -> Result<Option<ResponseFrame>, String> {
        runtime().block_on(async {
            match tokio::time::timeout(timeout, stream.next()).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err("timeout".into()),
            }
        })
    }

    fn close(conn: Self::Conn) {
        runtime().block_on(conn.close());
    }

    type Grpc = palyra_tokio::grpc::GrpcHandle;

    fn start_grpc(
        routers: palyra_proto::grpc::service::RouterFactory,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        notifier: Option<std::sync::Arc<palyra_gateway::notify::Notifier>>,
    ) -> (Self::Grpc, SocketAddr) {
        let listener = palyra_tokio::grpc::GrpcListener {
            tls,
            notifier,
            ..palyra_tokio::grpc::GrpcListener::h2c(routers)
        };
        let handle = runtime()
            .block_on(palyra_tokio::grpc::GrpcHandle::start(
                "127.0.0.1:0".parse().unwrap(),
                listener,
            ))
            .expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn start_listener(
        acceptor: std::sync::Arc<dyn palyra_proto::transport::Acceptor>,
        notifier: Option<std::sync::Arc<palyra_gateway::notify::Notifier>>,
    ) -> (Self::Grpc, SocketAddr) {
        let handle = runtime()
            .block_on(palyra_tokio::grpc::GrpcHandle::serve(
                "127.0.0.1:0".parse().unwrap(),
                acceptor,
                notifier,
            ))
            .expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn stop_grpc(server: Self::Grpc) {
        runtime().block_on(server.shutdown());
    }
}

node_plane_suite!(Tokio);
