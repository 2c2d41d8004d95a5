//! Offline certificate commands against a running daemon: `palyrad cert issue-device` tells the
//! daemon over its control socket, so the new certificate is accepted on the very next
//! handshake; `palyrad cert revoke` cuts the device off at once.

use crate::flood::{addr, start};
use crate::{call, Driver};
use palyra_gateway::store::DeviceIdentityFiles;
use palyra_proto::node::NodeRequest;
use palyra_proto::quic::tls;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cert_command(binary: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(binary)
        .arg("cert")
        .args(args)
        .output()
        .expect("run the cert command");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON summary")
}

/// Issues device certificates offline while `binary` runs and connects with each at once; then
/// revokes one offline and finds it refused at once and its open connection closed.
pub fn offline_certificates_take_effect_at_once<D: Driver>(binary: &Path) {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let (_daemon, endpoints) = start(binary, &state, &dir.path().join("log"), None);
    let quic = addr(&endpoints, "node_quic");
    let state_arg = state.to_str().expect("utf-8 path");
    let mut connections = Vec::new();
    for i in 0..5 {
        let out = dir.path().join(format!("node-{i}"));
        let summary = cert_command(
            binary,
            &[
                "issue-device",
                "--state-dir",
                state_arg,
                "--out",
                out.to_str().expect("path"),
            ],
        );
        assert_eq!(summary["daemon"], "reloaded", "[{}] {summary}", D::NAME);
        let files = DeviceIdentityFiles::load(&out).expect("identity files");
        let tls = Arc::new(
            tls::client_config(
                &files.ca_der,
                Some((vec![files.cert_der.clone()], files.key_der.clone())),
                tls::ALPN,
            )
            .expect("client TLS"),
        );
        // The very next handshake: no retry, no wait.
        let conn = D::connect(quic, tls).unwrap_or_else(|e| {
            panic!(
                "[{}] certificate {i} issued offline was refused: {e}",
                D::NAME
            )
        });
        let health = call::<D>(&conn, &NodeRequest::Health);
        assert!(health[0].ok, "[{}] {health:?}", D::NAME);
        connections.push((
            summary["device_id"].as_str().expect("id").to_owned(),
            files,
            conn,
        ));
    }
    let (device, files, conn) = connections.remove(0);
    // A stream following the log: it ends when the connection is closed.
    let mut stream = D::open(
        &conn,
        crate::payload(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: true,
        }),
    );
    let revoked = Instant::now();
    let summary = cert_command(
        binary,
        &["revoke", "--state-dir", state_arg, "--device-id", &device],
    );
    assert_eq!(summary["daemon"], "reloaded", "{summary}");
    let tls = Arc::new(
        tls::client_config(
            &files.ca_der,
            Some((vec![files.cert_der], files.key_der)),
            tls::ALPN,
        )
        .expect("client TLS"),
    );
    let again = D::connect(quic, tls);
    assert!(
        again.is_err(),
        "[{}] a certificate revoked offline still connects",
        D::NAME
    );
    // The open connection is closed too, within a second.
    let ended = loop {
        match D::next(&mut stream, Duration::from_secs(3)) {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    assert!(
        revoked.elapsed() < Duration::from_secs(1),
        "[{}] the revoked device's connection stayed open {:?} ({ended:?})",
        D::NAME,
        revoked.elapsed()
    );
    // A request on the closed connection fails at once (it does not wait for the drain).
    let asked = Instant::now();
    let mut late = D::open(&conn, crate::payload(&NodeRequest::Health));
    let answer = D::next(&mut late, Duration::from_secs(5));
    assert!(
        answer.is_err() && asked.elapsed() < Duration::from_millis(500),
        "[{}] {answer:?} after {:?}",
        D::NAME,
        asked.elapsed()
    );
    for (_, _, conn) in connections {
        D::close(conn);
    }
}
