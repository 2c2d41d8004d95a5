//! `node-bench`: streams the same pre-filled event log to one node over one connection from
//! `palyrad` (ours) and from the quinn reference server, with the same quinn-based client, in the
//! same run. Prints medians and the ratio ours/quinn for events/s (256-byte payloads) and bulk
//! MB/s (64 KiB payloads), and the memory each server spends per idle connection. The servers
//! take turns run by run, so a slow spell of the machine falls on all of them alike.
//! `--before PATH` adds another build of `palyrad` as a third server, for before/after figures
//! from one run.
//!
//! Build first: `cargo build --release -p palyra-tokio -p quinn-peer -p palyra-bench`, then
//! `target/release/node-bench`.

use anyhow::bail;
use clap::Parser;
use palyra_bench::{
    bin_dir, cpu_ticks_of, median, require, start_palyrad_exe, start_printing_addr,
    udp_receive_drops, Server, Table,
};
use palyra_gateway::store::{EventStore, FileEventLog, FileEventLogConfig, NewEvent};
use quinn_peer::{client_config, read_frame, write_frame, ALPN};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Node-plane benchmark, ours vs quinn.
#[derive(Parser)]
struct Args {
    /// Events streamed per run in the events/s test.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Payload size in the events/s test.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Events streamed per run in the bulk test.
    #[arg(long, default_value_t = 2_000)]
    bulk_events: u64,
    /// Payload size in the bulk test.
    #[arg(long, default_value_t = 64 * 1024)]
    bulk_payload: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Idle connections opened for the memory measurement.
    #[arg(long, default_value_t = 200)]
    idle_connections: usize,
    /// Another build's `palyrad` executable, measured alongside as "before".
    #[arg(long)]
    before: Option<PathBuf>,
}

const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

fn event_body(payload: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "name": "bench",
        "device_id": DEVICE,
        "occurred_at_unix_ms": 1_700_000_000_000u64,
        "payload": "x".repeat(payload),
    }))
    .unwrap_or_default()
}

/// A gateway state directory with a device identity and `count` events in the log.
fn prepare_state(palyrad: &Path, dir: &Path, count: u64, payload: usize) -> anyhow::Result<()> {
    let status = Command::new(palyrad)
        .args(["cert", "issue-device", "--device-id", DEVICE, "--state-dir"])
        .arg(dir)
        .arg("--out")
        .arg(dir.join("node"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("palyrad cert issue-device failed");
    }
    let mut log = FileEventLog::open(dir.join("events"), FileEventLogConfig::default())?;
    let body = event_body(payload);
    let mut left = count;
    while left > 0 {
        let n = left.min(1000);
        let batch: Vec<NewEvent> = (0..n)
            .map(|_| NewEvent {
                to: None,
                body: body.clone().into(),
                id: None,
            })
            .collect();
        log.append(&batch)?;
        left -= n;
    }
    Ok(())
}

fn start_quinn(bin: &Path, state: &Path, count: u64, payload: usize) -> anyhow::Result<Server> {
    let id = state.join("identity");
    let mut command = Command::new(bin.join("quinn-server"));
    command
        .arg("--ca")
        .arg(id.join("ca.crt.pem"))
        .arg("--cert")
        .arg(id.join("server.crt.pem"))
        .arg("--key")
        .arg(id.join("server.key.pem"))
        .args([
            "--prefill",
            &count.to_string(),
            "--prefill-payload",
            &payload.to_string(),
        ]);
    start_printing_addr(command)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    state: &Path,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    let node = state.join("node");
    let config = client_config(
        &node.join("ca.crt.pem"),
        Some((&node.join("device.crt.pem"), &node.join("device.key.pem"))),
        ALPN,
    )?;
    Ok(endpoint.connect_with(config, addr, "localhost")?.await?)
}

/// Streams the whole log once; returns (events, frame bytes, seconds).
async fn stream_once(conn: &quinn::Connection, expect: u64) -> anyhow::Result<(u64, u64, f64)> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    write_frame(
        &mut send,
        br#"{"protocol_version":1,"method":"node.stream_events","resume_from":0}"#,
    )
    .await?;
    send.finish()?;
    let (mut events, mut bytes) = (0u64, 0u64);
    while let Some(frame) = read_frame(&mut recv).await? {
        events += 1;
        bytes += frame.len() as u64 + 4;
    }
    let secs = started.elapsed().as_secs_f64();
    if events != expect {
        bail!("streamed {events} events, expected {expect}");
    }
    Ok((events, bytes, secs))
}

struct Measured {
    events_per_sec: f64,
    mb_per_sec: f64,
    /// CPU seconds per run, server and client.
    server_cpu: f64,
    client_cpu: f64,
    /// Median datagrams dropped per run by full UDP receive buffers (loss the congestion
    /// controller reacts to; it makes throughput on loopback vary from run to run).
    drops: f64,
}

/// One server under test with its state and client connection.
struct Subject {
    server: Server,
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    eps: Vec<f64>,
    mbs: Vec<f64>,
    /// CPU ticks the server and the client spent in this subject's runs.
    server_ticks: u64,
    client_ticks: u64,
    drops: Vec<f64>,
}

impl Subject {
    async fn connect(server: Server, state: &Path, expect: u64) -> anyhow::Result<Self> {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        let conn = connect(&endpoint, state, server.addr).await?;
        stream_once(&conn, expect).await?; // warm-up (page cache, caches)
        Ok(Self {
            server,
            _endpoint: endpoint,
            conn,
            eps: Vec::new(),
            mbs: Vec::new(),
            server_ticks: 0,
            client_ticks: 0,
            drops: Vec::new(),
        })
    }

    fn finish(self) -> Measured {
        self.conn.close(0u32.into(), b"done");
        let runs = self.eps.len().max(1) as f64;
        Measured {
            events_per_sec: median(self.eps),
            mb_per_sec: median(self.mbs),
            server_cpu: self.server_ticks as f64 / 100.0 / runs,
            client_cpu: self.client_ticks as f64 / 100.0 / runs,
            drops: median(self.drops),
        }
    }
}

/// Streams the log `runs` times from every subject, taking turns (the order rotating run by
/// run).
async fn measure(
    subjects: Vec<Subject>,
    expect: u64,
    runs: usize,
) -> anyhow::Result<Vec<Measured>> {
    let mut subjects = subjects;
    let n = subjects.len();
    for run in 0..runs {
        for turn in 0..n {
            let subject = &mut subjects[(run + turn) % n];
            let (server0, client0) = (subject.server.cpu_ticks()?, cpu_ticks_of("self")?);
            let drops0 = udp_receive_drops()?;
            let (events, bytes, secs) = stream_once(&subject.conn, expect).await?;
            subject
                .drops
                .push(udp_receive_drops()?.saturating_sub(drops0) as f64);
            subject.server_ticks += subject.server.cpu_ticks()?.saturating_sub(server0);
            subject.client_ticks += cpu_ticks_of("self")?.saturating_sub(client0);
            subject.eps.push(events as f64 / secs);
            subject.mbs.push(bytes as f64 / secs / 1e6);
        }
    }
    Ok(subjects.into_iter().map(Subject::finish).collect())
}

async fn idle_memory(server: &Server, state: &Path, count: usize) -> anyhow::Result<f64> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    // One connection first, so one-time allocations are not counted per connection.
    let first = connect(&endpoint, state, server.addr).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib()?;
    let mut conns = vec![first];
    for _ in 0..count {
        conns.push(connect(&endpoint, state, server.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib()?;
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    endpoint.wait_idle().await;
    Ok((after.saturating_sub(before)) as f64 / count as f64)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    require(
        &bin,
        &["palyrad", "quinn-server"],
        "cargo build --release -p palyra-tokio -p quinn-peer -p palyra-bench",
    )?;
    let mut builds = vec![("ours", bin.join("palyrad"))];
    if let Some(before) = &args.before {
        if !before.is_file() {
            bail!("--before {}: no such executable", before.display());
        }
        builds.push(("before", before.clone()));
    }
    let work = std::env::temp_dir().join(format!("palyra-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "preparing logs: {} x {} B and {} x {} B ...",
        args.events, args.payload, args.bulk_events, args.bulk_payload
    );
    // Each build gets its own copy of both logs (and its own identity).
    let mut states = Vec::new();
    for (name, palyrad) in &builds {
        let small = work.join(name).join("small");
        let bulk = work.join(name).join("bulk");
        prepare_state(palyrad, &small, args.events, args.payload)?;
        prepare_state(palyrad, &bulk, args.bulk_events, args.bulk_payload)?;
        states.push((small, bulk));
    }

    let mut rows = Vec::new();
    for (label, bulk, count, payload) in [
        (
            "events/s (256 B payloads)",
            false,
            args.events,
            args.payload,
        ),
        (
            "bulk (64 KiB payloads)",
            true,
            args.bulk_events,
            args.bulk_payload,
        ),
    ] {
        let mut subjects = Vec::new();
        for ((_, palyrad), (small, big)) in builds.iter().zip(&states) {
            let state = if bulk { big } else { small };
            let server = start_palyrad_exe(palyrad, state, "node_quic")?;
            subjects.push(Subject::connect(server, state, count).await?);
        }
        let state = if bulk { &states[0].1 } else { &states[0].0 };
        let quinn = start_quinn(&bin, state, count, payload)?;
        subjects.push(Subject::connect(quinn, state, count).await?);
        rows.push((label, measure(subjects, count, args.runs).await?));
    }
    let mut memory = Vec::new();
    for ((_, palyrad), (small, _)) in builds.iter().zip(&states) {
        let server = start_palyrad_exe(palyrad, small, "node_quic")?;
        memory.push(idle_memory(&server, small, args.idle_connections).await?);
    }
    memory.push({
        let server = start_quinn(&bin, &states[0].0, 0, 0)?;
        idle_memory(&server, &states[0].0, args.idle_connections).await?
    });
    let _ = std::fs::remove_dir_all(&work);

    let names: Vec<&str> = builds
        .iter()
        .map(|(name, _)| *name)
        .chain(["quinn"])
        .collect();
    println!(
        "node plane benchmark: one connection, one stream, medians of {} runs taken in turns (same client for all)",
        args.runs
    );
    let mut table = Table::new(&names);
    for (label, measured) in &rows {
        let column = |f: fn(&Measured) -> f64| measured.iter().map(f).collect::<Vec<f64>>();
        table.row(
            &format!("{label} events"),
            &column(|m| m.events_per_sec),
            0,
            "/s",
        );
        table.row(&format!("{label} MB"), &column(|m| m.mb_per_sec), 1, "MB/s");
        table.row(
            &format!("{label} server CPU s/run"),
            &column(|m| m.server_cpu),
            3,
            "",
        );
        table.row(
            &format!("{label} client CPU s/run"),
            &column(|m| m.client_cpu),
            3,
            "",
        );
        table.row(
            &format!("{label} UDP drops/run"),
            &column(|m| m.drops),
            0,
            "",
        );
    }
    table.row("RSS per idle connection", &memory, 1, "KiB");
    table.print();
    Ok(())
}
