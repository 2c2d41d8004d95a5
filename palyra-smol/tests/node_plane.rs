//! The shared node-plane suite on the smol driver.

use futures_lite::future;
use palyra_gateway::node::NodePlane;
use palyra_proto::node::ResponseFrame;
use palyra_proto::quic::ClientLimits;
use palyra_smol::{NodeConnection, NodePlaneHandle, Responses};
use palyra_testkit::{node_plane_suite, Driver};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

struct Smol;

impl Driver for Smol {
    const NAME: &'static str = "smol";
    type Server = NodePlaneHandle;
    type Conn = NodeConnection;
    type Stream = Responses;

    fn start(plane: NodePlane) -> (Self::Server, SocketAddr) {
        let handle = NodePlaneHandle::start("127.0.0.1:0".parse().unwrap(), plane).expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn stop(server: Self::Server) {
        smol::block_on(server.shutdown()).expect("shutdown");
    }

    fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Self::Conn, String> {
        smol::block_on(NodeConnection::connect(
            addr,
            "localhost",
            tls,
            ClientLimits::default(),
        ))
        .map_err(|e| e.to_string())
    }

    fn open(conn: &Self::Conn, payload: Vec<u8>) -> Self::Stream {
        smol::block_on(conn.request_raw(payload)).expect("request")
    }

    fn next(stream: &mut Self::Stream, timeout: Duration) -> Result<Option<ResponseFrame>, String> {
        smol::block_on(async {
            let next = async { stream.next().await.map_err(|e| e.to_string()) };
            let expire = async {
                async_io::Timer::after(timeout).await;
                Err("timeout".to_owned())
            };
            future::or(next, expire).await
        })
    }

    fn close(conn: Self::Conn) {
        smol::block_on(conn.close());
    }

    type Grpc = palyra_smol::grpc::GrpcHandle;

    fn start_grpc(
        routers: palyra_proto::grpc::service::RouterFactory,
        tls: Option<std::sync::Arc<rustls::ServerConfig>>,
        notifier: Option<std::sync::Arc<palyra_gateway::notify::Notifier>>,
    ) -> (Self::Grpc, SocketAddr) {
        let listener = palyra_smol::grpc::GrpcListener {
            tls,
            notifier,
            ..palyra_smol::grpc::GrpcListener::h2c(routers)
        };
        let handle = palyra_smol::grpc::GrpcHandle::start("127.0.0.1:0".parse().unwrap(), listener)
            .expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn start_listener(
        acceptor: std::sync::Arc<dyn palyra_proto::transport::Acceptor>,
        notifier: Option<std::sync::Arc<palyra_gateway::notify::Notifier>>,
    ) -> (Self::Grpc, SocketAddr) {
        let handle = palyra_smol::grpc::GrpcHandle::serve(
            "127.0.0.1:0".parse().unwrap(),
            acceptor,
            notifier,
        )
        .expect("bind");
        let addr = handle.local_addr;
        (handle, addr)
    }

    fn stop_grpc(server: Self::Grpc) {
        smol::block_on(server.shutdown());
    }
}

node_plane_suite!(Smol);
