//! Whole conversations between the client and server machines over an in-memory network with a
//! simulated clock: no sockets, no threads, deterministic (the clock is read once, to start).

#![allow(clippy::disallowed_methods)]

use palyra_proto::identity::cert::{self, CertAuthority, Profile, ServerKey, ServerKeyKind};
use palyra_proto::identity::trust::TrustIndex;
use palyra_proto::identity::trust::{DeviceCertRecord, RevokedDevice, TrustSnapshot};
use palyra_proto::node::log::{EventBatch, LogBounds, StoredEvent};
use palyra_proto::node::{ErrorCode, NodeRequest, PublishEvent, ResponseFrame, ResponseKind};
use palyra_proto::quic::server::close_code;
use palyra_proto::quic::tls::{self, ServerCertSlot};
use palyra_proto::quic::ServerEvent;
use palyra_proto::quic::{
    ClientEvent, ClientLimits, NodeClient, NodeServer, NodeServerConfig, RequestId, ServerLimits,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const DEV_A: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const DEV_B: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";

/// A device's certificate and key, as a node holds them.
struct Device {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

/// A gateway CA, its server certificate and trust table, all in memory.
struct Pki {
    ca: CertAuthority,
    trust: Arc<TrustIndex>,
    snapshot: TrustSnapshot,
    slot: Arc<ServerCertSlot>,
    rng: ChaCha20Rng,
}

/// The simulation's wall clock in Unix ms, handed to the server with every datagram.
const WALL_MS: u64 = 1_700_000_000_000;

/// The simulation's wall clock: certificates are issued then, valid for [`VALIDITY`] (rustls
/// checks them against the real clock).
fn wall() -> SystemTime {
    palyra_proto::time::from_unix_ms(WALL_MS)
}

const VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);

impl Pki {
    fn new() -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let ca = CertAuthority::generate(&mut rng, wall(), VALIDITY, "Sim CA").unwrap();
        let key = ServerKey::generate(ServerKeyKind::Ed25519, &mut rng);
        let server = ca
            .issue(
                &mut rng,
                &Profile::Server { hosts: &[] },
                key.spki().unwrap(),
                wall(),
                VALIDITY,
            )
            .unwrap();
        let key = tls::certified_key(vec![server.der], key.pkcs8_der().unwrap()).unwrap();
        Self {
            ca,
            trust: Arc::new(TrustIndex::default()),
            snapshot: TrustSnapshot::default(),
            slot: ServerCertSlot::new(key),
            rng,
        }
    }

    fn device(&mut self, id: &str) -> Device {
        let key = cert::generate_key(&mut self.rng);
        let issued = self
            .ca
            .issue(
                &mut self.rng,
                &Profile::Device { device_id: id },
                cert::spki_of(&key).unwrap(),
                wall(),
                VALIDITY,
            )
            .unwrap();
        self.snapshot.devices.push(DeviceCertRecord {
            device_id: id.into(),
            spki_sha256: cert::hex_fingerprint(&issued.spki_sha256),
            issued_at_unix_ms: 0,
            expires_at_unix_ms: u64::MAX,
            pending: false,
            revoked_at_unix_ms: None,
        });
        self.trust.replace(&self.snapshot);
        Device {
            cert_der: issued.der,
            key_der: cert::key_to_der(&key).unwrap(),
        }
    }

    fn revoke(&mut self, id: &str) {
        self.snapshot.revoked.push(RevokedDevice {
            device_id: id.into(),
            revoked_at_unix_ms: 1,
            reason: "test".into(),
        });
        self.trust.replace(&self.snapshot);
    }

    fn server(&self, limits: ServerLimits) -> NodeServer {
        let tls = tls::server_config(
            self.ca.cert_der(),
            self.slot.clone(),
            self.trust.clone(),
            true,
        )
        .unwrap();
        NodeServer::new(
            NodeServerConfig {
                tls: Arc::new(tls),
                limits,
                mtls_required: true,
            },
            self.trust.clone(),
            &mut ChaCha20Rng::seed_from_u64(7),
        )
        .unwrap()
    }

    fn client_tls(&self, device: Option<&Device>, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
        let identity = device.map(|d| (vec![d.cert_der.clone()], d.key_der.clone()));
        Arc::new(tls::client_config(self.ca.cert_der(), identity, alpn).unwrap())
    }
}

struct Sim {
    now: Instant,
    server: NodeServer,
    server_addr: SocketAddr,
    clients: Vec<(SocketAddr, NodeClient, Vec<ClientEvent>)>,
    /// Clients whose datagrams after the first are lost (a stalled handshake).
    stalled: Vec<usize>,
    sent: Vec<usize>,
    /// The event log the simulation keeps for the server (in memory, durable at once).
    log: Vec<StoredEvent>,
}

impl Sim {
    fn new(server: NodeServer) -> Self {
        Self {
            now: Instant::now(),
            server,
            server_addr: "127.0.0.1:7444".parse().unwrap(),
            clients: Vec::new(),
            stalled: Vec::new(),
            sent: Vec::new(),
            log: Vec::new(),
        }
    }

    fn connect(&mut self, tls: Arc<rustls::ClientConfig>) -> usize {
        let addr: SocketAddr = format!("127.0.0.1:{}", 40000 + self.clients.len())
            .parse()
            .unwrap();
        let client = NodeClient::connect(
            tls,
            ClientLimits::default(),
            self.server_addr,
            "localhost",
            self.now,
            &mut ChaCha20Rng::seed_from_u64(self.clients.len() as u64),
        )
        .unwrap();
        self.clients.push((addr, client, Vec::new()));
        self.sent.push(0);
        self.clients.len() - 1
    }

    /// Moves datagrams until quiet; returns true if anything moved.
    fn pump(&mut self) -> bool {
        let mut moved = false;
        let mut buf = Vec::new();
        loop {
            let mut any = false;
            for (index, (addr, client, events)) in self.clients.iter_mut().enumerate() {
                while let Some(t) = client.poll_transmit(self.now, 1, &mut buf) {
                    any = true;
                    self.sent[index] += 1;
                    if self.stalled.contains(&index) && self.sent[index] > 1 {
                        continue;
                    }
                    self.server.handle_datagram(
                        self.now,
                        WALL_MS,
                        *addr,
                        None,
                        None,
                        &buf[..t.size],
                    );
                }
                while let Some(e) = client.poll_event() {
                    events.push(e);
                }
            }
            any |= self.serve_log();
            while let Some(t) = self.server.poll_transmit(self.now, 1, &mut buf) {
                any = true;
                if let Some((_, client, _)) = self
                    .clients
                    .iter_mut()
                    .find(|(a, _, _)| *a == t.destination)
                {
                    client.handle_datagram(self.now, self.server_addr, None, &buf[..t.size]);
                }
            }
            for (_, client, events) in self.clients.iter_mut() {
                while let Some(e) = client.poll_event() {
                    events.push(e);
                }
            }
            any |= self.serve_log();
            if !any {
                return moved;
            }
            moved = true;
        }
    }

    /// Plays the application's part: appends what the server hands out (durable at once, one
    /// batch per call) and answers its reads. Returns whether the server asked for anything.
    fn serve_log(&mut self) -> bool {
        let mut asked = false;
        while let Some(event) = self.server.poll_event() {
            match event {
                ServerEvent::Append { stream, event } => {
                    asked = true;
                    let seq = self.log.len() as u64 + 1;
                    self.log.push(StoredEvent {
                        seq,
                        to: event.to.as_deref().map(Into::into),
                        body: event.body,
                    });
                    self.server.complete_append(self.now, stream, Ok(seq));
                    self.server.handle_log_grown(self.now);
                }
                ServerEvent::ReadEvents {
                    stream,
                    after,
                    max_events,
                    ..
                } => {
                    asked = true;
                    let events = self
                        .log
                        .iter()
                        .filter(|e| e.seq > after)
                        .take(max_events)
                        .cloned()
                        .collect();
                    let bounds = LogBounds {
                        first_seq: 1,
                        last_seq: self.log.len() as u64,
                    };
                    self.server
                        .handle_events(self.now, stream, Ok(EventBatch { events, bounds }));
                }
                _ => {}
            }
        }
        asked
    }

    /// Runs until `done` or `limit` of simulated time, firing timers when the network is quiet.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        loop {
            self.pump();
            if done(self) {
                return true;
            }
            let next = self
                .clients
                .iter_mut()
                .filter_map(|(_, c, _)| c.poll_timeout())
                .chain(self.server.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    for (_, c, _) in self.clients.iter_mut() {
                        c.handle_timeout(self.now);
                    }
                }
                _ => return done(self),
            }
        }
    }

    fn events(&self, client: usize) -> &[ClientEvent] {
        &self.clients[client].2
    }

    fn responses(&self, client: usize, request: RequestId) -> Vec<ResponseFrame> {
        self.events(client)
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Response { request: r, frame } if *r == request => Some(frame.clone()),
                _ => None,
            })
            .collect()
    }

    fn is_done(&self, client: usize, request: RequestId) -> bool {
        self.events(client).iter().any(|e| matches!(e, ClientEvent::Done { request: r } | ClientEvent::Failed { request: r, .. } if *r == request))
    }

    fn request(&mut self, client: usize, req: &NodeRequest) -> Vec<ResponseFrame> {
        let id = self.clients[client].1.request(req);
        assert!(
            self.run_until(Duration::from_secs(5), |s| s.is_done(client, id)),
            "request {req:?} did not finish"
        );
        assert!(
            self.events(client)
                .iter()
                .any(|e| matches!(e, ClientEvent::Done { request } if *request == id)),
            "{:?}",
            self.events(client)
        );
        self.responses(client, id)
    }

    fn lost_reason(&self, client: usize) -> Option<String> {
        self.events(client).iter().find_map(|e| match e {
            ClientEvent::ConnectionLost { reason } => Some(reason.clone()),
            _ => None,
        })
    }
}

fn publish(name: &str, n: u64, to: Option<&str>) -> NodeRequest {
    NodeRequest::PublishEvent(PublishEvent {
        name: name.into(),
        payload: serde_json::json!({ "n": n }),
        to: to.map(str::to_owned),
        id: None,
    })
}

#[test]
fn health_publish_and_stream_with_resume() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let c = sim.connect(pki.client_tls(Some(&a), tls::ALPN));

    let health = sim.request(c, &NodeRequest::Health);
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].kind, ResponseKind::Health);
    assert_eq!(health[0].node_rpc_mtls_required, Some(true));
    assert_eq!(health[0].device_id.as_deref(), Some(DEV_A));
    assert_eq!(health[0].server_time_unix_ms, Some(1_700_000_000_000));

    for n in 1..=5 {
        let ack = sim.request(c, &publish("sensor.temp", n, None));
        assert_eq!(ack.len(), 1);
        assert_eq!(
            (ack[0].kind, ack[0].ok, ack[0].seq),
            (ResponseKind::Ack, true, Some(n))
        );
    }
    let all = sim.request(
        c,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    assert_eq!(
        all.iter().map(|f| f.seq.unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    let ev = all[2].event.as_ref().unwrap();
    assert_eq!(ev.device_id, DEV_A);
    assert_eq!(ev.name, "sensor.temp");
    assert_eq!(ev.payload["n"], 3);
    let resumed = sim.request(
        c,
        &NodeRequest::StreamEvents {
            resume_from: Some(3),
            follow: false,
        },
    );
    assert_eq!(
        resumed.iter().map(|f| f.seq.unwrap()).collect::<Vec<_>>(),
        vec![4, 5]
    );
    let ahead = sim.request(
        c,
        &NodeRequest::StreamEvents {
            resume_from: Some(99),
            follow: false,
        },
    );
    assert_eq!(ahead[0].error, Some(ErrorCode::ResumeGap));
}

#[test]
fn addressed_events_reach_only_their_device_and_follow_pushes_live() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let b = pki.device(DEV_B);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let ca = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    let cb = sim.connect(pki.client_tls(Some(&b), tls::ALPN));
    let follow = sim.clients[cb].1.request(&NodeRequest::StreamEvents {
        resume_from: None,
        follow: true,
    });
    sim.run_until(Duration::from_secs(1), |_| false);
    sim.request(ca, &publish("to.everyone", 1, None));
    sim.request(ca, &publish("to.a", 2, Some(DEV_A)));
    sim.request(ca, &publish("to.b", 3, Some(DEV_B)));
    sim.run_until(Duration::from_secs(1), |s| {
        s.responses(cb, follow).len() >= 2
    });
    let seen: Vec<_> = sim
        .responses(cb, follow)
        .iter()
        .map(|f| f.event.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(seen, vec!["to.everyone", "to.b"]);
    assert!(!sim.is_done(cb, follow), "a follow stream stays open");
    let a_view = sim.request(
        ca,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    let names: Vec<_> = a_view
        .iter()
        .map(|f| f.event.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, vec!["to.everyone", "to.a"]);
}

#[test]
fn protocol_errors_are_answered_per_stream() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let c = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (
            br#"{"protocol_version":2,"method":"node.health","new_field":1}"#.to_vec(),
            ErrorCode::ProtocolMismatch,
        ),
        (
            br#"{"protocol_version":1,"method":"node.reboot"}"#.to_vec(),
            ErrorCode::UnsupportedMethod,
        ),
        (b"not json".to_vec(), ErrorCode::InvalidRequest),
    ];
    for (payload, code) in cases {
        let id = sim.clients[c].1.request_raw(&payload);
        sim.run_until(Duration::from_secs(2), |s| s.is_done(c, id));
        let frames = sim.responses(c, id);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].error, Some(code));
        assert!(!frames[0].ok);
    }
    let id = sim.clients[c].1.request_bytes(vec![0x7f, 0xff, 0xff, 0xff]);
    sim.run_until(Duration::from_secs(2), |s| s.is_done(c, id));
    assert_eq!(
        sim.responses(c, id)[0].error,
        Some(ErrorCode::FrameTooLarge)
    );
    // The connection is still fine.
    assert_eq!(sim.request(c, &NodeRequest::Health).len(), 1);
}

#[test]
fn wrong_alpn_and_missing_certificate_fail_the_handshake() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let wrong = sim.connect(pki.client_tls(Some(&a), b"h3"));
    let anonymous = sim.connect(pki.client_tls(None, tls::ALPN));
    sim.run_until(Duration::from_secs(15), |s| {
        s.lost_reason(wrong).is_some() && s.lost_reason(anonymous).is_some()
    });
    let wrong_reason = sim.lost_reason(wrong).unwrap();
    // TLS alert 120 (no_application_protocol), QUIC crypto error 0x178.
    assert!(wrong_reason.contains("error 120"), "{wrong_reason}");
    let anon_reason = sim.lost_reason(anonymous).unwrap();
    assert!(!anon_reason.is_empty());
    assert_eq!(sim.server.connection_count(), 0);
}

#[test]
fn revocation_closes_the_live_connection_and_blocks_the_next_handshake() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let c = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    assert_eq!(sim.request(c, &NodeRequest::Health).len(), 1);
    pki.revoke(DEV_A);
    let revoked_at = sim.now;
    sim.server.handle_trust_change(sim.now);
    assert!(sim.run_until(Duration::from_secs(1), |s| s.lost_reason(c).is_some()));
    assert!(sim.now - revoked_at < Duration::from_secs(1));
    let reason = sim.lost_reason(c).unwrap();
    assert!(
        reason.contains(&format!("{:#x}", close_code::REVOKED)) || reason.contains("revoked"),
        "{reason}"
    );
    let again = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    sim.run_until(Duration::from_secs(15), |s| s.lost_reason(again).is_some());
    assert!(sim.lost_reason(again).is_some());
    assert_eq!(sim.server.connection_count(), 0);
}

#[test]
fn connection_slots_are_taken_after_the_handshake() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let limits = ServerLimits {
        max_connections: 1,
        ..ServerLimits::default()
    };
    let mut sim = Sim::new(pki.server(limits));
    let first = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    assert_eq!(sim.request(first, &NodeRequest::Health).len(), 1);
    // Over the cap: refused at once, before any handshake work (CONNECTION_REFUSED).
    let second = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    let started = sim.now;
    sim.run_until(Duration::from_secs(5), |s| s.lost_reason(second).is_some());
    let reason = sim.lost_reason(second).unwrap();
    assert!(
        reason.contains("refused to accept a new connection"),
        "{reason}"
    );
    assert!(sim.now - started < Duration::from_secs(1), "at once");
    assert_eq!(sim.server.connection_count(), 1);
    assert_eq!(sim.server.handshake_count(), 0);
}

#[test]
fn idle_connections_time_out_and_release_their_slot() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let c = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    assert_eq!(sim.request(c, &NodeRequest::Health).len(), 1);
    assert_eq!(sim.server.connection_count(), 1);
    // Cut the client off: drop it, then let the server's idle timer fire.
    sim.clients.clear();
    sim.run_until(Duration::from_secs(60), |s| s.server.is_idle());
    assert_eq!(sim.server.connection_count(), 0);
    assert!(sim.log.is_empty());
}

#[test]
fn streams_of_one_connection_are_served_concurrently() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let c = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    // A follow stream that never ends must not block later requests on the same connection.
    let follow = sim.clients[c].1.request(&NodeRequest::StreamEvents {
        resume_from: None,
        follow: true,
    });
    let health = sim.request(c, &NodeRequest::Health);
    assert_eq!(health.len(), 1);
    let ack = sim.request(c, &publish("x", 1, None));
    assert_eq!(ack[0].seq, Some(1));
    sim.run_until(Duration::from_secs(1), |s| {
        !s.responses(c, follow).is_empty()
    });
    assert_eq!(sim.responses(c, follow)[0].seq, Some(1));
}

#[test]
fn stalled_handshakes_time_out_on_the_server_and_are_bounded() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let limits = ServerLimits {
        max_handshakes: 1,
        ..ServerLimits::default()
    };
    let mut sim = Sim::new(pki.server(limits));
    // A client that sends its first flight and then goes silent.
    let stalled = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    sim.stalled.push(stalled);
    sim.pump();
    assert_eq!(sim.server.handshake_count(), 1);
    // While it holds the only handshake slot, a second handshake is refused at once.
    let refused = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    sim.run_until(Duration::from_secs(2), |s| s.lost_reason(refused).is_some());
    let reason = sim.lost_reason(refused).expect("refused");
    assert!(reason.to_lowercase().contains("refused"), "{reason}");
    // The server gives up on the stalled handshake after 10 s, not the 30 s idle timeout.
    let start = sim.now;
    sim.run_until(Duration::from_secs(30), |s| s.server.handshake_count() == 0);
    let waited = sim.now - start;
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(11),
        "{waited:?}"
    );
    // And the slot is free again.
    sim.stalled.clear();
    let later = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    assert_eq!(sim.request(later, &NodeRequest::Health).len(), 1);
}

#[test]
fn a_certificate_the_gateway_does_not_know_gets_alert_46() {
    let mut pki = Pki::new();
    let known = pki.device(DEV_A);
    let unknown = pki.device(DEV_B);
    // Signed by the CA, but not (or no longer) in the trust records.
    pki.snapshot.devices.retain(|d| d.device_id == DEV_A);
    pki.trust.replace(&pki.snapshot);
    let mut sim = Sim::new(pki.server(ServerLimits::default()));
    let ok = sim.connect(pki.client_tls(Some(&known), tls::ALPN));
    assert_eq!(sim.request(ok, &NodeRequest::Health).len(), 1);
    let refused = sim.connect(pki.client_tls(Some(&unknown), tls::ALPN));
    sim.run_until(Duration::from_secs(5), |s| s.lost_reason(refused).is_some());
    let reason = sim.lost_reason(refused).expect("refused");
    assert!(reason.contains("error 46"), "{reason}");
}

#[test]
fn at_the_handshake_limit_a_fresh_client_sheds_a_stalled_handshake() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let limits = ServerLimits {
        max_handshakes: 1,
        ..ServerLimits::default()
    };
    let mut sim = Sim::new(pki.server(limits));
    let stalled = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    sim.stalled.push(stalled);
    sim.pump();
    assert_eq!(sim.server.handshake_count(), 1);
    // Once the half-open handshake is older than shed_handshakes_after, a fresh client takes
    // its slot instead of being refused.
    sim.run_until(Duration::from_millis(1100), |_| false);
    let fresh = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    assert_eq!(sim.request(fresh, &NodeRequest::Health).len(), 1);
    assert!(sim.lost_reason(fresh).is_none());
    assert_eq!(sim.server.connection_count(), 1);
}

#[test]
fn optional_client_certificates_allow_anonymous_reads_but_not_publishing() {
    let mut pki = Pki::new();
    let a = pki.device(DEV_A);
    let tls_config = tls::server_config(
        pki.ca.cert_der(),
        pki.slot.clone(),
        pki.trust.clone(),
        false,
    )
    .unwrap();
    let server = NodeServer::new(
        NodeServerConfig {
            tls: Arc::new(tls_config),
            limits: ServerLimits::default(),
            mtls_required: false,
        },
        pki.trust.clone(),
        &mut ChaCha20Rng::seed_from_u64(9),
    )
    .unwrap();
    let mut sim = Sim::new(server);
    let device = sim.connect(pki.client_tls(Some(&a), tls::ALPN));
    sim.request(device, &publish("for.all", 1, None));
    sim.request(device, &publish("for.a", 2, Some(DEV_A)));
    let anonymous = sim.connect(pki.client_tls(None, tls::ALPN));
    let health = sim.request(anonymous, &NodeRequest::Health);
    assert_eq!(health[0].node_rpc_mtls_required, Some(false));
    assert_eq!(health[0].device_id, None);
    let refused = sim.request(anonymous, &publish("x", 3, None));
    assert_eq!(refused[0].error, Some(ErrorCode::Unauthorized));
    // Anonymous readers see broadcast events only.
    let seen = sim.request(
        anonymous,
        &NodeRequest::StreamEvents {
            resume_from: None,
            follow: false,
        },
    );
    assert_eq!(
        seen.iter().map(|f| f.seq.unwrap()).collect::<Vec<_>>(),
        vec![1]
    );
}
