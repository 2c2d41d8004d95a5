//! A slow store does not slow anyone else down: the daemon is assembled over stores whose every
//! write takes 200 ms to become durable (as a networked store across a slow link would), and
//! while writes on four listeners wait for it (a QUIC publish, `POST /admin/v1/events`, a chat
//! message, `RegisterNode`), other connections on every listener are answered at once.

use crate::grpc::Client;
use crate::{call, client_tls, device_tls, Driver, DEV_A, DEV_B};
use bytes::Bytes;
use palyra_gateway::daemon::{Daemon, DaemonSettings, ListenAddrs, Running, Stores};
use palyra_gateway::node::NodePlaneOptions;
use palyra_gateway::notify::Notifier;
use palyra_gateway::serve::tcp::ListenerLimits;
use palyra_gateway::store::{
    DeviceBundle, Doc, DocStore, Done, EventBatch, IdentityDir, LogBounds, LogStore, NewEvent,
    StoreError,
};
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseKind};
use palyra_proto::pb::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
use palyra_proto::pb::palyra::node::v1::RegisterNodeRequest;
use palyra_proto::quic::tls::ALPN_H2;
use prost::Message;
use rand_core::OsRng;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long every write takes to become durable.
const WRITE_DELAY: Duration = Duration::from_millis(200);
/// What an answer that waited for nobody's write must stay under (loopback answers take ~1 ms;
/// one that queued behind a slow write would take at least [`WRITE_DELAY`]).
const PROMPT: Duration = Duration::from_millis(100);
const TOKEN: &str = "slow-store-token";

type Job = Box<dyn FnOnce() + Send>;

/// Hands jobs to the wrapped store [`WRITE_DELAY`] after they were made, in order, on its own
/// thread (so writes to one key still complete in the order they were made).
struct Delayer {
    jobs: Mutex<mpsc::Sender<(Instant, Job)>>,
    delayed: AtomicUsize,
}

impl Delayer {
    fn start() -> Arc<Self> {
        let (tx, rx) = mpsc::channel::<(Instant, Job)>();
        std::thread::Builder::new()
            .name("slow-store".into())
            .spawn(move || {
                for (due, job) in rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    job();
                }
            })
            .expect("delay thread");
        Arc::new(Self {
            jobs: Mutex::new(tx),
            delayed: AtomicUsize::new(0),
        })
    }

    fn later(&self, job: impl FnOnce() + Send + 'static) {
        self.delayed.fetch_add(1, Ordering::Relaxed);
        let due = Instant::now() + WRITE_DELAY;
        let sent = self
            .jobs
            .lock()
            .expect("delayer")
            .send((due, Box::new(job)));
        sent.expect("delay thread runs");
    }

    /// Waits until every job handed over so far has run.
    fn drain(&self) {
        let (tx, rx) = mpsc::channel();
        let sent = self.jobs.lock().expect("delayer").send((
            Instant::now(),
            Box::new(move || {
                let _ = tx.send(());
            }),
        ));
        sent.expect("delay thread runs");
        rx.recv().expect("drained");
    }
}

/// A document store whose writes take [`WRITE_DELAY`].
struct SlowDocs {
    inner: Arc<dyn DocStore>,
    delay: Arc<Delayer>,
}

impl DocStore for SlowDocs {
    fn get(&self, key: &str) -> Result<Option<Doc>, StoreError> {
        self.inner.get(key)
    }

    fn put(&self, key: &str, value: Bytes, expect: Option<u64>, done: Done<u64>) {
        let inner = Arc::clone(&self.inner);
        let key = key.to_owned();
        self.delay
            .later(move || inner.put(&key, value, expect, done));
    }

    fn close(&self) {
        self.delay.drain();
        self.inner.close();
    }
}

/// An event log whose appends take [`WRITE_DELAY`].
struct SlowLog {
    inner: Arc<dyn LogStore>,
    delay: Arc<Delayer>,
}

impl LogStore for SlowLog {
    fn bounds(&self) -> LogBounds {
        self.inner.bounds()
    }

    fn append(&self, events: Vec<NewEvent>, expect_first: Option<u64>, done: Done<Vec<u64>>) {
        let inner = Arc::clone(&self.inner);
        self.delay
            .later(move || inner.append(events, expect_first, done));
    }

    fn read_cached(&self, after: u64, max_events: usize, max_bytes: usize) -> Option<EventBatch> {
        self.inner.read_cached(after, max_events, max_bytes)
    }

    fn read(&self, after: u64, max_events: usize, max_bytes: usize, done: Done<EventBatch>) {
        self.inner.read(after, max_events, max_bytes, done)
    }

    fn notifier(&self) -> Arc<Notifier> {
        self.inner.notifier()
    }

    fn close(&self) {
        self.delay.drain();
        self.inner.close();
    }
}

/// The daemon over the file stores of `state`, each write delayed by [`WRITE_DELAY`].
fn slow_daemon<D: Driver>(state: &std::path::Path) -> (Running, Arc<Delayer>) {
    let node = NodePlaneOptions::default();
    let files = Stores::files(state, &node).expect("file stores");
    let delay = Delayer::start();
    let stores = Stores {
        docs: Arc::new(SlowDocs {
            inner: files.docs,
            delay: Arc::clone(&delay),
        }),
        events: Arc::new(SlowLog {
            inner: files.events,
            delay: Arc::clone(&delay),
        }),
        console: Arc::new(SlowLog {
            inner: files.console,
            delay: Arc::clone(&delay),
        }),
        runs: Arc::new(SlowLog {
            inner: files.runs,
            delay: Arc::clone(&delay),
        }),
        trust: None,
        peers: None,
    };
    let settings = DaemonSettings {
        state_dir: state.to_owned(),
        node,
        grpc_tls: false,
        http_tls: false,
        enrollment: Default::default(),
        advertise_addr: None,
        console_origins: Vec::new(),
        admin_token: Some(TOKEN.into()),
        version: "suite".into(),
        git_hash: "unknown".into(),
        runs: Default::default(),
        openai: Default::default(),
        browser: None,
    };
    let random = Arc::new(|buf: &mut [u8]| rand_core::RngCore::fill_bytes(&mut OsRng, buf));
    let daemon = Daemon::open_with(settings, stores, random, &mut OsRng).expect("daemon");
    let any = crate::loopback();
    let addrs = ListenAddrs {
        node: any,
        grpc: any,
        http: any,
    };
    let running = daemon
        .serve(&D::runtime(), &addrs, ListenerLimits::default())
        .expect("serve");
    (running, delay)
}

/// One HTTP/1.1 request on a fresh connection; the status code.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read");
    let status = answer.get(9..12).and_then(|s| s.parse().ok());
    status.unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn register(device: &str) -> Vec<u8> {
    RegisterNodeRequest {
        v: 1,
        device_id: Some(CanonicalId {
            ulid: device.into(),
        }),
        platform: "linux-x86_64".into(),
        capabilities: Vec::new(),
        replay: None,
    }
    .encode_to_vec()
}

/// Runs `f` on its own thread; joined for its result and how long it took.
fn timed<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<(T, Duration)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let out = f();
        (out, started.elapsed())
    })
}

fn issue(ids: &IdentityDir, device: &str) -> DeviceBundle {
    ids.issue_device(
        &mut OsRng,
        SystemTime::now(),
        device,
        Duration::from_secs(3600),
    )
    .expect("issue device")
}

/// Writes that wait 200 ms for their store on the node plane (QUIC), the operator plane (admin
/// event, chat message) and the node TLS listener (RegisterNode); meanwhile other connections on
/// the node plane, the node TLS listener, the gateway gRPC listener and the operator plane are
/// answered promptly, every one of them before the first slow write is.
pub fn slow_store_delays_nobody_else<D: Driver>() {
    let dir = tempfile::tempdir().expect("dir");
    let state = dir.path().join("state");
    let ids = IdentityDir::open(state.join("identity")).expect("identity dir");
    let a = issue(&ids, DEV_A);
    let b = issue(&ids, DEV_B);
    let (running, delay) = slow_daemon::<D>(&state);
    let bound = running.endpoints;

    // Connections are made before the writes: the probes measure requests, not handshakes.
    let writer = D::connect(bound.node_quic, device_tls(&a)).expect("QUIC A");
    let prober = D::connect(bound.node_quic, device_tls(&b)).expect("QUIC B");
    let mut registrar =
        Client::tls(bound.node_tcp, client_tls(Some(&a), &a.ca_pem, ALPN_H2)).expect("node TLS");
    let mut node_tls =
        Client::tls(bound.node_tcp, client_tls(Some(&b), &b.ca_pem, ALPN_H2)).expect("node TLS B");
    let mut gateway = Client::h2c(bound.grpc).expect("gateway gRPC");
    let check = HealthCheckRequest {
        service: String::new(),
    }
    .encode_to_vec();
    // Warm every path once (first calls may build per-connection state).
    node_tls
        .unary("/grpc.health.v1.Health/Check", &check)
        .expect("warm node TLS");
    gateway
        .unary(
            "/palyra.gateway.v1.GatewayService/GetHealth",
            &HealthRequest { v: 1 }.encode_to_vec(),
        )
        .expect("warm gateway");
    call::<D>(&prober, &NodeRequest::Health);
    let writes_before = delay.delayed.load(Ordering::Relaxed);

    let fired = Instant::now();
    let http_addr = bound.http;
    let slow = vec![
        (
            "QUIC publish",
            timed(move || {
                let ack = call::<D>(
                    &writer,
                    &NodeRequest::PublishEvent(PublishEvent {
                        name: "sensor.temp".into(),
                        payload: serde_json::json!({"c": 21}),
                        to: None,
                        id: None,
                    }),
                );
                ack.first().map(|f| f.kind) == Some(ResponseKind::Ack)
            }),
        ),
        (
            "POST /admin/v1/events",
            timed(move || {
                let body = r#"{"name":"ops.notice","payload":{"m":1}}"#;
                http(http_addr, "POST", "/admin/v1/events", body) == 201
            }),
        ),
        (
            "chat message",
            timed(move || {
                let body = r#"{"message_id":"m-1","text":"hello"}"#;
                let path = "/admin/v1/chat/sessions/s-1/messages";
                http(http_addr, "POST", path, body) == 201
            }),
        ),
        (
            "RegisterNode",
            timed(move || {
                registrar
                    .unary("/palyra.node.v1.NodeService/RegisterNode", &register(DEV_A))
                    .is_ok()
            }),
        ),
    ];
    // Let every slow write reach its store before probing.
    while delay.delayed.load(Ordering::Relaxed) < writes_before + slow.len() {
        assert!(
            fired.elapsed() < Duration::from_secs(5),
            "[{}] the slow writes did not all reach the store",
            D::NAME
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    let mut probes: Vec<(&str, Duration, bool)> = Vec::new();
    let mut probe = |name: &'static str, f: &mut dyn FnMut() -> bool| {
        let started = Instant::now();
        let ok = f();
        probes.push((name, started.elapsed(), ok));
    };
    probe("GET /healthz", &mut || {
        http(http_addr, "GET", "/healthz", "") == 200
    });
    probe("GET /admin/v1/status", &mut || {
        http(http_addr, "GET", "/admin/v1/status", "") == 200
    });
    probe("gateway GetHealth", &mut || {
        let answer = gateway.unary(
            "/palyra.gateway.v1.GatewayService/GetHealth",
            &HealthRequest { v: 1 }.encode_to_vec(),
        );
        answer
            .ok()
            .and_then(|m| HealthResponse::decode(m.as_ref()).ok())
            .is_some_and(|h| h.status == "ok")
    });
    probe("node TLS Health/Check", &mut || {
        let answer = node_tls.unary("/grpc.health.v1.Health/Check", &check);
        answer
            .ok()
            .and_then(|m| HealthCheckResponse::decode(m.as_ref()).ok())
            .is_some_and(|h| h.status == 1)
    });
    probe("QUIC node.health", &mut || {
        let health = call::<D>(&prober, &NodeRequest::Health);
        health.first().map(|f| f.kind) == Some(ResponseKind::Health)
    });
    let probed = fired.elapsed();

    let mut first_write = Duration::MAX;
    for (name, handle) in slow {
        let (ok, took) = handle.join().expect("slow write thread");
        assert!(ok, "[{}] {name} failed", D::NAME);
        assert!(
            took >= WRITE_DELAY,
            "[{}] {name} answered after {took:?}, before its store was durable",
            D::NAME
        );
        first_write = first_write.min(took);
    }
    for (name, took, ok) in &probes {
        assert!(ok, "[{}] {name} failed while the store was slow", D::NAME);
        assert!(
            *took < PROMPT,
            "[{}] {name} took {took:?} while a slow write was in flight (probes: {probes:?})",
            D::NAME
        );
    }
    assert!(
        probed < first_write,
        "[{}] the probes ({probed:?}) were not all answered before the first slow write \
         ({first_write:?})",
        D::NAME
    );
    D::block_on(running.shutdown(&D::runtime())).expect("shutdown");
}
