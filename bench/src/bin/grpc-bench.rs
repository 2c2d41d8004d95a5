//! `grpc-bench`: unary GetHealth calls per second against palyrad's gRPC listener and against a
//! tonic server serving the same proto, with the same load generator (h2load) in the same run;
//! streamed messages per second (grpc.testing StreamingOutputCall, our interop server vs tonic's,
//! the same tonic client for both); medians and the ratio ours/tonic; and RSS per idle HTTP/2
//! connection. With `--before PATH` another build's `palyrad` (and the `interop-server` next to
//! it) is measured in the same run, in turns.
//!
//! Build first: `cargo build --release -p palyra-tokio -p palyra-interop -p palyra-bench`; needs
//! `h2load` (Debian nghttp2-client). Then `target/release/grpc-bench`.

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use palyra_bench::{
    bin_dir, builds, medians, require, start_palyrad_exe, start_printing_addr, Server, Table,
};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// gRPC benchmark, ours vs tonic.
#[derive(Parser)]
struct Args {
    /// Calls per h2load run.
    #[arg(long, default_value_t = 100_000)]
    calls: u64,
    /// Connections.
    #[arg(long, default_value_t = 4)]
    connections: u32,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    streams: u32,
    /// Runs per server (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Idle connections for the memory measurement.
    #[arg(long, default_value_t = 200)]
    idle_connections: usize,
    /// Concurrent server streams in the streaming measurement.
    #[arg(long, default_value_t = 8)]
    stream_calls: usize,
    /// Messages per server stream.
    #[arg(long, default_value_t = 20_000)]
    stream_messages: usize,
    /// Payload bytes per streamed message.
    #[arg(long, default_value_t = 64)]
    stream_payload: i32,
    /// Another build's `palyrad` executable, measured alongside as "before".
    #[arg(long)]
    before: Option<PathBuf>,
}

/// Streams `calls` concurrent StreamingOutputCalls of `messages` responses each over one tonic
/// channel; returns messages per second, checking every message arrived with its payload.
async fn stream_rate(args: &Args, addr: SocketAddr) -> anyhow::Result<f64> {
    use palyra_interop::pb::test_service_client::TestServiceClient;
    use palyra_interop::pb::{ResponseParameters, StreamingOutputCallRequest};
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let request = StreamingOutputCallRequest {
        response_parameters: vec![
            ResponseParameters {
                size: args.stream_payload,
                ..Default::default()
            };
            args.stream_messages
        ],
        ..Default::default()
    };
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.stream_calls {
        let mut client = TestServiceClient::new(channel.clone())
            .max_decoding_message_size(8 * 1024 * 1024)
            .max_encoding_message_size(8 * 1024 * 1024);
        let request = request.clone();
        let size = args.stream_payload as usize;
        tasks.spawn(async move {
            let mut stream = client.streaming_output_call(request).await?.into_inner();
            let mut count = 0usize;
            while let Some(message) = stream.message().await? {
                anyhow::ensure!(message.payload.is_some_and(|p| p.body.len() == size));
                count += 1;
            }
            anyhow::Ok(count)
        });
    }
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done??;
    }
    let expected = args.stream_calls * args.stream_messages;
    anyhow::ensure!(total == expected, "received {total} of {expected} messages");
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// One h2load run; returns calls per second, checking that every call succeeded.
fn h2load(args: &Args, addr: SocketAddr, body: &Path) -> anyhow::Result<f64> {
    let output = Command::new("h2load")
        .args([
            "-n",
            &args.calls.to_string(),
            "-c",
            &args.connections.to_string(),
            "-m",
            &args.streams.to_string(),
        ])
        .arg("-d")
        .arg(body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(format!(
            "http://{addr}/palyra.gateway.v1.GatewayService/GetHealth"
        ))
        .output()
        .context("run h2load (Debian package nghttp2-client)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let want = format!("{} succeeded, 0 failed", args.calls);
    if !text.contains(&want) {
        bail!(
            "h2load did not complete every call: {}",
            text.lines().find(|l| l.contains("requests:")).unwrap_or("")
        );
    }
    let rate = text
        .split("finished in")
        .nth(1)
        .and_then(|rest| rest.split(',').nth(1))
        .and_then(|r| r.trim().strip_suffix("req/s"))
        .and_then(|r| r.trim().parse().ok())
        .ok_or_else(|| anyhow!("cannot read h2load's rate"))?;
    Ok(rate)
}

/// Opens idle HTTP/2 connections (preface, SETTINGS exchanged) and returns RSS KiB per connection.
fn idle_memory(server: &Server, count: usize) -> anyhow::Result<f64> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let empty_settings = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let settings_ack = [0u8, 0, 0, 4, 1, 0, 0, 0, 0];
    let open = |addr: SocketAddr| -> anyhow::Result<TcpStream> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(PREFACE)?;
        s.write_all(&empty_settings)?;
        s.write_all(&settings_ack)?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf); // the server's SETTINGS
        Ok(s)
    };
    let first = open(server.addr)?;
    std::thread::sleep(Duration::from_millis(300));
    let before = server.rss_kib()?;
    let mut conns = vec![first];
    for _ in 0..count {
        conns.push(open(server.addr)?);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = server.rss_kib()?;
    drop(conns);
    Ok(after.saturating_sub(before) as f64 / count as f64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    require(
        &bin,
        &[
            "palyrad",
            "tonic-gateway",
            "interop-server",
            "tonic-interop-server",
        ],
        "cargo build --release -p palyra-tokio -p palyra-interop -p palyra-bench",
    )?;
    let builds = builds(&bin, args.before.as_deref())?;
    let work = std::env::temp_dir().join(format!("palyra-grpc-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let body = work.join("get_health.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 2, 0x08, 0x01])?;
    // Every build's palyrad, then tonic (the peer, last).
    let mut servers = Vec::new();
    for (name, dir) in &builds {
        servers.push(start_palyrad_exe(
            &dir.join("palyrad"),
            &work.join(name),
            "grpc",
        )?);
    }
    servers.push(start_printing_addr(Command::new(
        bin.join("tonic-gateway"),
    ))?);
    // Warm up all, then take turns so drift on a shared machine hits all alike.
    let mut unary = vec![Vec::new(); servers.len()];
    for server in &servers {
        h2load(&args, server.addr, &body)?;
    }
    for _ in 0..args.runs {
        for (server, rates) in servers.iter().zip(&mut unary) {
            rates.push(h2load(&args, server.addr, &body)?);
        }
    }
    // Streaming: the same tonic client against every TestService server (stdin kept open: they
    // stop when it closes).
    let mut stream_servers = Vec::new();
    for exe in builds
        .iter()
        .map(|(_, dir)| dir.join("interop-server"))
        .chain([bin.join("tonic-interop-server")])
    {
        let mut command = Command::new(exe);
        command.stdin(std::process::Stdio::piped());
        stream_servers.push(start_printing_addr(command)?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut streamed = vec![Vec::new(); stream_servers.len()];
    // Server CPU ticks in the measured streaming runs: the client is usually the bottleneck
    // here, so what each server spends per message says more about it than the rate does.
    let mut stream_cpu = vec![0u64; stream_servers.len()];
    runtime.block_on(async {
        for server in &stream_servers {
            stream_rate(&args, server.addr).await?;
        }
        for _ in 0..args.runs {
            for (i, server) in stream_servers.iter().enumerate() {
                let before = server.cpu_ticks()?;
                streamed[i].push(stream_rate(&args, server.addr).await?);
                stream_cpu[i] += server.cpu_ticks()?.saturating_sub(before);
            }
        }
        anyhow::Ok(())
    })?;
    drop(stream_servers);
    let mut memory = Vec::new();
    for server in &servers {
        memory.push(idle_memory(server, args.idle_connections)?);
    }
    let _ = std::fs::remove_dir_all(&work);
    println!(
        "gRPC benchmark: GetHealth, h2load -n {} -c {} -m {}, medians of {} runs taken in turns",
        args.calls, args.connections, args.streams, args.runs
    );
    let mut table = Table::for_builds(&builds, "tonic");
    table.row("unary calls", &medians(unary), 0, "/s");
    table.row(
        &format!(
            "streamed msgs ({}x{}, {} B)",
            args.stream_calls, args.stream_messages, args.stream_payload
        ),
        &medians(streamed),
        0,
        "/s",
    );
    let messages = (args.runs * args.stream_calls * args.stream_messages) as f64;
    let cpu: Vec<f64> = stream_cpu
        .iter()
        .map(|&ticks| ticks as f64 * 10.0 / messages * 1e6) // a tick is 10 ms
        .collect();
    table.row("  server CPU per 1M streamed msgs", &cpu, 0, "ms");
    table.row("RSS per idle HTTP/2 connection", &memory, 1, "KiB");
    table.print();
    Ok(())
}
