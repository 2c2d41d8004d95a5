//! `node-bench`: streams the same pre-filled event log to one node over one connection from
//! `palyrad` (ours) and from the quinn reference server, with the same quinn-based client, in the
//! same run. Prints medians and the ratio ours/quinn for events/s (256-byte payloads) and bulk
//! MB/s (64 KiB payloads), and the memory each server spends per idle connection.
//!
//! Build first: `cargo build --release -p palyra-tokio -p quinn-peer -p palyra-bench`, then
//! `target/release/node-bench`.

use anyhow::bail;
use clap::Parser;
use palyra_bench::{bin_dir, median, require, start_palyrad, start_printing_addr, Server};
use palyra_gateway::store::{EventStore, FileEventLog, FileEventLogConfig, NewEvent};
use quinn_peer::{client_config, read_frame, write_frame, ALPN};
use std::net::SocketAddr;
use std::path::Path;
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
fn prepare_state(bin: &Path, dir: &Path, count: u64, payload: usize) -> anyhow::Result<()> {
    let status = Command::new(bin.join("palyrad"))
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
}

async fn measure(
    server: &Server,
    state: &Path,
    expect: u64,
    runs: usize,
) -> anyhow::Result<Measured> {
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = connect(&endpoint, state, server.addr).await?;
    stream_once(&conn, expect).await?; // warm-up (page cache, caches)
    let (mut eps, mut mbs) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (events, bytes, secs) = stream_once(&conn, expect).await?;
        eps.push(events as f64 / secs);
        mbs.push(bytes as f64 / secs / 1e6);
    }
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    Ok(Measured {
        events_per_sec: median(eps),
        mb_per_sec: median(mbs),
    })
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
    let work = std::env::temp_dir().join(format!("palyra-bench-{}", std::process::id()));
    let small = work.join("small");
    let bulk = work.join("bulk");
    std::fs::create_dir_all(&work)?;
    eprintln!(
        "preparing logs: {} x {} B and {} x {} B ...",
        args.events, args.payload, args.bulk_events, args.bulk_payload
    );
    prepare_state(&bin, &small, args.events, args.payload)?;
    prepare_state(&bin, &bulk, args.bulk_events, args.bulk_payload)?;

    let mut rows = Vec::new();
    for (label, state, count, payload) in [
        (
            "events/s (256 B payloads)",
            &small,
            args.events,
            args.payload,
        ),
        (
            "bulk (64 KiB payloads)",
            &bulk,
            args.bulk_events,
            args.bulk_payload,
        ),
    ] {
        let ours = {
            let server = start_palyrad(&bin, state, "node_quic")?;
            measure(&server, state, count, args.runs).await?
        };
        let quinn = {
            let server = start_quinn(&bin, state, count, payload)?;
            measure(&server, state, count, args.runs).await?
        };
        rows.push((label, ours, quinn));
    }
    let ours_mem = {
        let server = start_palyrad(&bin, &small, "node_quic")?;
        idle_memory(&server, &small, args.idle_connections).await?
    };
    let quinn_mem = {
        let server = start_quinn(&bin, &small, 0, 0)?;
        idle_memory(&server, &small, args.idle_connections).await?
    };
    let _ = std::fs::remove_dir_all(&work);

    println!("node plane benchmark: one connection, one stream, medians of {} runs (same client for both)", args.runs);
    println!(
        "{:<28} {:>16} {:>16} {:>10}",
        "measure", "ours", "quinn", "ours/quinn"
    );
    for (label, ours, quinn) in &rows {
        println!(
            "{:<28} {:>14.0}/s {:>14.0}/s {:>10.2}",
            format!("{label} events"),
            ours.events_per_sec,
            quinn.events_per_sec,
            ours.events_per_sec / quinn.events_per_sec
        );
        println!(
            "{:<28} {:>13.1}MB/s {:>13.1}MB/s {:>10.2}",
            format!("{label} MB"),
            ours.mb_per_sec,
            quinn.mb_per_sec,
            ours.mb_per_sec / quinn.mb_per_sec
        );
    }
    println!(
        "{:<28} {:>14.1}KiB {:>14.1}KiB {:>10.2}",
        "RSS per idle connection",
        ours_mem,
        quinn_mem,
        ours_mem / quinn_mem.max(0.1)
    );
    Ok(())
}
