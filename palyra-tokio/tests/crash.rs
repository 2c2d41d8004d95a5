//! Kills the real `palyrad` with SIGKILL while nodes publish, many times, and checks that every
//! acknowledged event is returned by a fresh `node.stream_events` with the acknowledged seq.

use palyra_gateway::serve::node_connection::NodeConnection;
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseKind};
use palyra_proto::quic::ClientLimits;
use palyra_testkit::{client_tls, Gateway, DEV_A, DEV_B};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::Daemon;

fn rt() -> palyra_gateway::runtime::Rt {
    palyra_tokio::Tokio::current()
}

fn spawn_daemon(state: &Path) -> (Daemon, SocketAddr) {
    let (daemon, endpoints) = common::spawn_daemon_with(state, "127.0.0.1:0", &[]);
    let addr = endpoints["node_quic"]
        .as_str()
        .expect("node_quic")
        .parse()
        .expect("addr");
    (daemon, addr)
}

type Acked = Arc<Mutex<BTreeMap<u64, serde_json::Value>>>;

async fn publisher(conn: NodeConnection, round: u32, node: u32, acked: Acked) {
    let mut k = 0u64;
    loop {
        // Several publishes in flight at once, so commits are batched.
        let mut inflight = Vec::new();
        for _ in 0..4 {
            k += 1;
            let payload = serde_json::json!({ "round": round, "node": node, "k": k });
            let request = NodeRequest::PublishEvent(PublishEvent {
                name: "crash.test".into(),
                payload: payload.clone(),
                to: None,
                id: None,
            });
            match conn.request(&request).await {
                Ok(responses) => inflight.push((payload, responses)),
                Err(_) => return,
            }
        }
        for (payload, responses) in inflight {
            match responses.collect().await {
                Ok(frames) => {
                    let frame = &frames[0];
                    assert_eq!(frame.kind, ResponseKind::Ack, "{frame:?}");
                    let seq = frame.seq.expect("ack carries seq");
                    let previous = acked.lock().unwrap().insert(seq, payload);
                    assert!(previous.is_none(), "seq {seq} acknowledged twice");
                }
                Err(_) => return, // the daemon died; unacknowledged events may or may not exist
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_event() {
    let gw = Gateway::new();
    let a = gw.issue(DEV_A);
    let b = gw.issue(DEV_B);
    let acked: Acked = Arc::default();
    let rounds = 8;
    for round in 0..rounds {
        let (daemon, addr) = spawn_daemon(gw.path());
        let mut tasks = Vec::new();
        for (node, bundle) in [&a, &b].into_iter().enumerate() {
            let tls = client_tls(Some(bundle), &bundle.ca_pem, palyra_proto::quic::ALPN);
            let conn =
                NodeConnection::connect(&rt(), addr, "localhost", tls, ClientLimits::default())
                    .await
                    .expect("connect");
            tasks.push(tokio::spawn(publisher(
                conn,
                round,
                node as u32,
                acked.clone(),
            )));
        }
        // Let them publish for a varying while, then pull the plug.
        tokio::time::sleep(Duration::from_millis(150 + 60 * u64::from(round))).await;
        daemon.sigkill();
        // Acks already in the clients' socket buffers still count; after that nothing can arrive
        // (the server is dead and QUIC would only notice at the idle timeout), so stop waiting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for task in tasks {
            task.abort();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "too few events were acknowledged ({}) to mean anything",
        acked.len()
    );

    let (daemon, addr) = spawn_daemon(gw.path());
    let tls = client_tls(Some(&a), &a.ca_pem, palyra_proto::quic::ALPN);
    let conn = NodeConnection::connect(&rt(), addr, "localhost", tls, ClientLimits::default())
        .await
        .expect("connect");
    let frames = conn
        .request(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        })
        .await
        .expect("stream")
        .collect()
        .await
        .expect("events");
    conn.close().await;
    daemon.sigkill();

    let stored: BTreeMap<u64, serde_json::Value> = frames
        .iter()
        .map(|f| {
            (
                f.seq.expect("seq"),
                f.event.as_ref().expect("event").payload.clone(),
            )
        })
        .collect();
    // Gap-free from 1.
    let expected: Vec<u64> = (1..=stored.len() as u64).collect();
    assert_eq!(stored.keys().copied().collect::<Vec<_>>(), expected);
    for (seq, payload) in &acked {
        assert_eq!(
            stored.get(seq),
            Some(payload),
            "acknowledged event seq {seq} lost or changed"
        );
    }
    eprintln!(
        "{} rounds: {} events acknowledged, {} stored (the rest were in flight at the kill)",
        rounds,
        acked.len(),
        stored.len()
    );
}
