//! `cluster-bench`: the node plane's publish path and resuming readers on the file store and on
//! a three-replica JetStream stream, beside the raw JetStream publish rate of the same cluster.
//!
//! 1. Publish: one paired node publishes `--events` events of `--payload` bytes, `--window`
//!    publishes in flight, through one gateway; an event counts once the gateway acknowledged it
//!    (after it was durable: fsynced on the file store, acknowledged by JetStream on the
//!    cluster). "file" is a `palyrad` on the file store, "cluster" gateway A of three `palyrad`
//!    on a three-server JetStream cluster (R3 streams), "raw JetStream" the async-nats client
//!    publishing the same payloads with a `Nats-Msg-Id` to an R3 stream of the same cluster,
//!    the same number in flight. Events/s and the median and 99th-percentile acknowledgement
//!    latency, ratios to raw JetStream; and the CPU every nats-server, every `palyrad` and this
//!    client used per 1,000 events during the turn (where a two-core machine's time goes).
//! 2. Resuming readers: `--subscribers` nodes connect at once and each reads the whole log from
//!    seq 1 (`node.stream_events`, `resume_from: 0`); on the cluster they are spread over the
//!    three gateways. Events/s delivered in all; ratio cluster / file.
//!
//! Subjects take turns run by run, each after the servers went idle; medians of `--runs`.
//! Build first: `cargo build --release -p palyra-tokio -p palyra-bench`, then
//! `target/release/cluster-bench`. Needs `nats-server` (Debian's package) on `PATH`.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use palyra_bench::{bin_dir, median, require, Server, Table, ADMIN_TOKEN};
use palyra_gateway::serve::node_connection::NodeConnection;
use palyra_proto::node::{NodeRequest, PublishEvent, ResponseKind};
use palyra_proto::quic::ClientLimits;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Cluster benchmark.
#[derive(Parser)]
struct Args {
    /// Events published per run and subject.
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Publishes in flight at once.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Resuming readers at once.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Another build's `palyrad`, measured on the file store in the same turns ("file before").
    #[arg(long)]
    before: Option<PathBuf>,
}

/// A free loopback port (bound, then released for a server to take).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Three nats-server processes in one JetStream cluster, killed when dropped.
struct Nats {
    servers: Vec<Child>,
    client: Vec<u16>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for server in &mut self.servers {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

impl Nats {
    fn start(dir: &Path) -> anyhow::Result<Self> {
        let ports = |n| {
            (0..n)
                .map(|_| free_port())
                .collect::<anyhow::Result<Vec<u16>>>()
        };
        let (client, routes, monitor) = (ports(3)?, ports(3)?, ports(3)?);
        let route_urls: Vec<String> = routes
            .iter()
            .map(|p| format!("\"nats://127.0.0.1:{p}\""))
            .collect();
        let mut nats = Self {
            servers: Vec::new(),
            client,
        };
        for i in 0..3 {
            let config = dir.join(format!("n{i}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\nmax_payload: 8MB\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: bench, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    nats.client[i],
                    monitor[i],
                    dir.join(format!("js{i}")).display(),
                    routes[i],
                    route_urls.join(", ")
                ),
            )?;
            let child = Command::new("nats-server")
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("nats-server not found: apt-get install nats-server")?;
            nats.servers.push(child);
        }
        for port in monitor {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !http_get(port, "/healthz").is_some_and(|b| b.contains("\"ok\"")) {
                if Instant::now() > deadline {
                    bail!("nats-server on monitor port {port} not healthy in 30 s");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(nats)
    }

    fn urls(&self) -> String {
        self.client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A plain HTTP/1.1 GET on loopback; the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text.split_once("\r\n\r\n")?.1.to_owned())
}

/// One `palyrad` under test: its node-plane and operator addresses.
struct Gateway {
    server: Server,
    node: SocketAddr,
    http: String,
}

fn start_gateway(palyrad: &Path, state: &Path, extra: &[&str]) -> anyhow::Result<Gateway> {
    let args: Vec<&std::ffi::OsStr> = extra.iter().map(std::ffi::OsStr::new).collect();
    let server = palyra_bench::start_palyrad_args(palyrad, state, "node_quic", &args)?;
    let endpoints: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("endpoints.json"))?)?;
    let http = endpoints["http"]
        .as_str()
        .ok_or_else(|| anyhow!("endpoints.json has no http"))?;
    Ok(Gateway {
        node: server.addr,
        http: format!("http://{http}"),
        server,
    })
}

/// Runs the `palyra` CLI with the admin token; its stdout.
fn palyra(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin.join("palyra"))
        .args(args)
        .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()?;
    if !out.status.success() {
        bail!("palyra {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Pairs a node identity at `identity` through `gw` (code, enroll, approve), as a user would.
fn pair(bin: &Path, gw: &Gateway, identity: &Path) -> anyhow::Result<()> {
    let code: serde_json::Value = serde_json::from_str(&palyra(
        bin,
        &[
            "pairing", "code", "--daemon", &gw.http, "--method", "qr", "--json",
        ],
    )?)?;
    let invite = code["invite"]
        .as_str()
        .ok_or_else(|| anyhow!("no invite"))?;
    let mut enroll = Command::new(bin.join("palyra"))
        .args(["node", "enroll", "--invite", invite, "--gateway"])
        .arg(gw.node.to_string())
        .arg("--identity")
        .arg(identity)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list: serde_json::Value = serde_json::from_str(&palyra(
            bin,
            &["pairing", "list", "--daemon", &gw.http, "--json"],
        )?)?;
        let pending = list["requests"].as_array().and_then(|r| {
            r.iter()
                .find(|r| r["state"] == "pending_approval")
                .and_then(|r| r["request_id"].as_str().map(str::to_owned))
        });
        if let Some(request) = pending {
            palyra(bin, &["pairing", "approve", &request, "--daemon", &gw.http])?;
            break;
        }
        if Instant::now() > deadline {
            bail!("no pairing request on {}", gw.http);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if !enroll.wait()?.success() {
        bail!("palyra node enroll failed");
    }
    Ok(())
}

/// The node's TLS client configuration.
fn node_tls(identity: &Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let files = palyra_gateway::store::DeviceIdentityFiles::load(identity)?;
    Ok(Arc::new(palyra_proto::quic::tls::client_config(
        &files.ca_der,
        Some((vec![files.cert_der.clone()], files.key_der.clone())),
        palyra_proto::quic::ALPN,
    )?))
}

async fn connect(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> anyhow::Result<NodeConnection> {
    let rt: palyra_gateway::runtime::Rt = palyra_tokio::Tokio::current();
    NodeConnection::connect(
        &rt,
        addr,
        "localhost",
        Arc::clone(tls),
        ClientLimits::default(),
    )
    .await
    .map_err(|e| anyhow!("connect {addr}: {e}"))
}

/// CPU clock ticks used so far by the NATS servers, by every `palyrad` and by this process.
struct Cpu {
    nats: u64,
    gateways: u64,
    client: u64,
}

impl Cpu {
    fn now(nats: &Nats, gateways: &[&Gateway]) -> anyhow::Result<Self> {
        let mut cpu = Self {
            nats: 0,
            gateways: 0,
            client: palyra_bench::cpu_ticks_of("self")?,
        };
        for server in &nats.servers {
            cpu.nats += palyra_bench::cpu_ticks_of(&server.id().to_string())?;
        }
        for gateway in gateways {
            cpu.gateways += gateway.server.cpu_ticks()?;
        }
        Ok(cpu)
    }

    /// Waits until every server is idle ([`palyra_bench::settle`]): the turn before may leave
    /// work behind (JetStream replicating, every gateway following the stream, writeback).
    async fn settle(nats: &Nats, gateways: &[&Gateway]) -> anyhow::Result<()> {
        let pids: Vec<u32> = nats
            .servers
            .iter()
            .map(Child::id)
            .chain(gateways.iter().map(|g| g.server.pid()))
            .collect();
        palyra_bench::settle(&pids).await
    }

    /// Milliseconds of CPU per 1,000 events since `before`: NATS, gateways, client.
    fn per_thousand(&self, before: &Self, events: usize) -> [f64; 3] {
        let ms = |ticks: u64| ticks as f64 * 10.0 * 1000.0 / events as f64;
        [
            ms(self.nats - before.nats),
            ms(self.gateways - before.gateways),
            ms(self.client - before.client),
        ]
    }
}

/// Events/s, median and p99 acknowledgement latency (ms) of a publish run.
struct Published {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn summarize(mut latencies: Vec<Duration>, elapsed: Duration) -> Published {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Published {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Publishes `events` through the node plane with `window` in flight.
async fn publish_node(conn: &NodeConnection, args: &Args) -> anyhow::Result<Published> {
    let payload = serde_json::json!({ "x": "a".repeat(args.payload) });
    let request = Arc::new(NodeRequest::PublishEvent(PublishEvent {
        name: "bench.event".into(),
        payload,
        to: None,
        id: None,
    }));
    windowed(args, |_| {
        let request = Arc::clone(&request);
        async move {
            let at = Instant::now();
            let frames = conn.request(&request).await?.collect().await?;
            match frames.first().map(|f| f.kind) {
                Some(ResponseKind::Ack) => Ok(at.elapsed()),
                other => Err(anyhow!("publish answered {other:?}: {frames:?}")),
            }
        }
    })
    .await
}

/// Runs `publish(i)` for `args.events` events, `args.window` in flight at once; the rate and
/// acknowledgement latencies of the run.
async fn windowed<F>(args: &Args, mut publish: impl FnMut(usize) -> F) -> anyhow::Result<Published>
where
    F: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let started = Instant::now();
    let mut in_flight = futures_util::stream::FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(args.events);
    let mut sent = 0;
    while latencies.len() < args.events {
        while sent < args.events && in_flight.len() < args.window {
            in_flight.push(publish(sent));
            sent += 1;
        }
        let next = futures_util::StreamExt::next(&mut in_flight).await;
        latencies.push(next.ok_or_else(|| anyhow!("nothing in flight"))??);
    }
    Ok(summarize(latencies, started.elapsed()))
}

/// Publishes the same events straight to a JetStream stream with `window` acks in flight.
async fn publish_raw(
    js: &async_nats::jetstream::Context,
    args: &Args,
    run: usize,
) -> anyhow::Result<Published> {
    use async_nats::jetstream::message::PublishMessage;
    let body = bytes::Bytes::from(
        serde_json::json!({"name": "bench.event", "payload": {"x": "a".repeat(args.payload)}})
            .to_string(),
    );
    windowed(args, |sent| {
        let message = PublishMessage::build()
            .payload(body.clone())
            .message_id(format!("bench-{run}-{sent}"));
        async move {
            let at = Instant::now();
            let ack = js.send_publish("bench.raw", message).await?;
            ack.await?;
            Ok(at.elapsed())
        }
    })
    .await
}

/// `count` readers, the i-th on `gateways[i % len]`, each reading the log from seq 1; events/s
/// delivered in all.
async fn readers(
    tls: &Arc<rustls::ClientConfig>,
    gateways: &[SocketAddr],
    count: usize,
) -> anyhow::Result<f64> {
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        conns.push(connect(tls, gateways[i % gateways.len()]).await?);
    }
    let started = Instant::now();
    let reads = conns.iter().map(|conn| async move {
        let mut responses = conn
            .request(&NodeRequest::StreamEvents {
                resume_from: Some(0),
                follow: false,
            })
            .await?;
        let mut events = 0u64;
        while let Some(frame) = responses.next().await? {
            if frame.event.is_some() {
                events += 1;
            }
        }
        anyhow::Ok(events)
    });
    let counts = futures_util::future::try_join_all(reads).await?;
    let elapsed = started.elapsed().as_secs_f64();
    for conn in conns {
        conn.close().await;
    }
    Ok(counts.iter().sum::<u64>() as f64 / elapsed)
}

/// What publishes in a turn: a node connected to a gateway, or the raw JetStream client.
enum Publisher {
    Node(NodeConnection),
    Raw(async_nats::jetstream::Context),
}

/// Who is read in a turn: the node identity and the gateways its readers spread over.
struct Readers {
    tls: Arc<rustls::ClientConfig>,
    gateways: Vec<SocketAddr>,
}

/// A `palyrad` on the file store (`exe`) with a node paired through it.
async fn file_subject(
    bin: &Path,
    exe: &Path,
    root: &Path,
    name: &str,
) -> anyhow::Result<(Gateway, NodeConnection, Readers)> {
    let gateway = start_gateway(exe, &root.join(name), &[])?;
    let identity = root.join(format!("node-{name}"));
    pair(bin, &gateway, &identity)?;
    let tls = node_tls(&identity)?;
    let conn = connect(&tls, gateway.node).await?;
    let readers = Readers {
        tls,
        gateways: vec![gateway.node],
    };
    Ok((gateway, conn, readers))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    require(
        &bin,
        &["palyrad", "palyra"],
        "cargo build --release -p palyra-tokio -p palyra-bench",
    )?;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    eprintln!("starting three nats-server, three palyrad on them and palyrad on the file store...");
    let nats = Nats::start(root)?;
    let urls = nats.urls();
    let mut cluster = Vec::new();
    for name in ["a", "b", "c"] {
        let state = root.join(name);
        if name != "a" {
            let identity = state.join("identity");
            std::fs::create_dir_all(&identity)?;
            for pem in ["ca.crt.pem", "ca.key.pem"] {
                std::fs::copy(root.join("a/identity").join(pem), identity.join(pem))?;
            }
        }
        let gateway_name = format!("gw-{name}");
        cluster.push(start_gateway(
            &bin.join("palyrad"),
            &state,
            &[
                "--store-backend",
                "nats",
                "--nats-server",
                &urls,
                "--gateway-name",
                &gateway_name,
            ],
        )?);
    }
    let cluster_id = root.join("node-cluster");
    pair(&bin, &cluster[0], &cluster_id)?;
    let cluster_tls = node_tls(&cluster_id)?;
    let servers = urls
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    let raw = async_nats::connect(servers.as_slice()).await?;
    let js = async_nats::jetstream::new(raw);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        num_replicas: 3,
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("BENCH_RAW stream: {e}"))?;

    // Subjects: the file store (and another build's), the cluster, raw JetStream (the peer, last).
    let mut names = vec!["file"];
    let mut gateways = Vec::new();
    let mut publishers = Vec::new();
    let mut readers = Vec::new();
    let (gateway, conn, read) = file_subject(&bin, &bin.join("palyrad"), root, "file").await?;
    gateways.push(gateway);
    publishers.push(Publisher::Node(conn));
    readers.push(read);
    if let Some(before) = &args.before {
        let (gateway, conn, read) = file_subject(&bin, before, root, "before").await?;
        names.push("file before");
        gateways.push(gateway);
        publishers.push(Publisher::Node(conn));
        readers.push(read);
    }
    names.push("cluster R3");
    publishers.push(Publisher::Node(
        connect(&cluster_tls, cluster[0].node).await?,
    ));
    readers.push(Readers {
        tls: cluster_tls,
        gateways: cluster.iter().map(|g| g.node).collect(),
    });
    names.push("raw JetStream");
    publishers.push(Publisher::Raw(js));

    let n = publishers.len();
    let (mut rates, mut p50, mut p99) = (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
    let mut cpu = vec![[vec![], vec![], vec![]]; n];
    let every: Vec<&Gateway> = gateways.iter().chain(&cluster).collect();
    let mut delivered = vec![vec![]; readers.len()];
    for run in 0..args.runs {
        for turn in 0..n {
            let subject = (run + turn) % n;
            Cpu::settle(&nats, &every).await?;
            let before = Cpu::now(&nats, &every)?;
            let result = match &publishers[subject] {
                Publisher::Node(conn) => publish_node(conn, &args).await?,
                Publisher::Raw(js) => publish_raw(js, &args, run).await?,
            };
            let used = Cpu::now(&nats, &every)?.per_thousand(&before, args.events);
            for (column, ms) in cpu[subject].iter_mut().zip(used) {
                column.push(ms);
            }
            rates[subject].push(result.rate);
            p50[subject].push(result.p50_ms);
            p99[subject].push(result.p99_ms);
        }
        for turn in 0..readers.len() {
            let subject = (run + turn) % readers.len();
            Cpu::settle(&nats, &every).await?;
            let read = &readers[subject];
            delivered[subject]
                .push(self::readers(&read.tls, &read.gateways, args.subscribers).await?);
        }
        eprintln!("run {} of {} done", run + 1, args.runs);
    }
    let med = |v: &Vec<Vec<f64>>| v.iter().cloned().map(median).collect::<Vec<f64>>();
    println!(
        "publish: {} events of {} B, {} in flight, one node through one gateway; medians of {} runs",
        args.events, args.payload, args.window, args.runs
    );
    let mut table = Table::new(&names);
    table.row("events/s acknowledged", &med(&rates), 0, "");
    table.row("ack latency p50", &med(&p50), 2, " ms");
    table.row("ack latency p99", &med(&p99), 2, " ms");
    let cpu_row = |part: usize| {
        cpu.iter()
            .map(|parts| median(parts[part].clone()))
            .collect::<Vec<f64>>()
    };
    table.row_without_ratios("CPU per 1,000 events: nats-server", &cpu_row(0), 0, " ms");
    table.row_without_ratios("CPU per 1,000 events: palyrad", &cpu_row(1), 0, " ms");
    table.row_without_ratios("CPU per 1,000 events: client", &cpu_row(2), 0, " ms");
    table.print();
    println!(
        "\nresuming readers: {} nodes at once, each reading the whole log from seq 1 ({} events at the last run); \
         the cluster's spread over its 3 gateways",
        args.subscribers,
        args.events * args.runs
    );
    // Readers' columns: the cluster, another build's file store if any, ours last (the
    // reference of the ratios).
    let delivered = med(&delivered);
    let before = args.before.is_some();
    let mut columns = vec!["cluster R3"];
    let mut values = vec![delivered[delivered.len() - 1]];
    if before {
        columns.push("file before");
        values.push(delivered[1]);
    }
    columns.push("file");
    values.push(delivered[0]);
    let mut table = Table::new(&columns);
    table.row("events/s delivered in all", &values, 0, "");
    table.print();
    for publisher in publishers {
        if let Publisher::Node(conn) = publisher {
            conn.close().await;
        }
    }
    drop(gateways);
    drop(cluster);
    drop(nats);
    Ok(())
}
