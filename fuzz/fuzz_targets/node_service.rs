//! NodeService handlers (RegisterNode, StreamNodeEvents, ExecuteCapability) called by a paired
//! device with arbitrary request messages, through the real gRPC client and server machines:
//! never panics, every call ends or keeps waiting within its bounds, the hub stays bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::node::hub::NodeHub;
use palyra_gateway::node::service::{node_router, WallClock};
use palyra_proto::grpc::client::GrpcClient;
use palyra_proto::grpc::service::ServerConnection;
use palyra_proto::identity::trust::{DeviceCertRecord, TrustIndex, TrustSnapshot};
use palyra_proto::transport::{PeerIdentity, StreamMachine};
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const FINGERPRINT: [u8; 32] = [7; 32];

fn pump(client: &mut GrpcClient, server: &mut ServerConnection, now: Instant) {
    for _ in 0..64 {
        let mut moved = false;
        while let Some(bytes) = client.poll_transmit() {
            server.handle_input(now, &bytes);
            moved = true;
        }
        while let Some(bytes) = server.poll_transmit() {
            client.handle_input(now, &bytes);
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let trust = Arc::new(TrustIndex::new(&TrustSnapshot {
        devices: vec![DeviceCertRecord {
            device_id: DEVICE.into(),
            spki_sha256: hex::encode(FINGERPRINT),
            issued_at_unix_ms: 0,
            expires_at_unix_ms: u64::MAX,
            pending: false,
            revoked_at_unix_ms: None,
        }],
        revoked: Vec::new(),
    }));
    let hub = Arc::new(NodeHub::in_memory(trust));
    let registered = hub.register(DEVICE, "fuzz", Vec::new(), 1).take();
    assert!(matches!(registered, Some(Ok(()))), "in memory, at once");
    let clock: WallClock = Arc::new(|| 1);
    let routers = node_router(Arc::clone(&hub), clock, None, None).expect("descriptors");
    let now = Instant::now();
    let peer = PeerIdentity {
        leaf_der: None,
        spki_sha256: Some(FINGERPRINT),
        remote: None,
    };
    let mut server = ServerConnection::with_peer(Default::default(), routers(), peer, now);
    let mut client = GrpcClient::new("localhost", None, now);
    pump(&mut client, &mut server, now);
    // Messages are the input split at 0xFF bytes; the first byte of each picks the method.
    for message in data.split(|b| *b == 0xFF).take(32) {
        let Some((&which, body)) = message.split_first() else {
            continue;
        };
        let method = match which % 3 {
            0 => "RegisterNode",
            1 => "StreamNodeEvents",
            _ => "ExecuteCapability",
        };
        let path = format!("/palyra.node.v1.NodeService/{method}");
        let Ok(call) = client.start_call(now, &path, &[], Some(Duration::from_secs(5))) else {
            continue;
        };
        let _ = client.send_message(call, body);
        if which & 0x80 == 0 {
            let _ = client.close_send(call);
        }
        pump(&mut client, &mut server, now);
        // The in-memory log answered at once; the handlers see it when woken.
        server.handle_wake(now);
        pump(&mut client, &mut server, now);
    }
    // Every deadline passes: each call ends.
    let later = now + Duration::from_secs(60);
    server.handle_timeout(later);
    client.handle_timeout(later);
    pump(&mut client, &mut server, later);
});
