//! `operator-bench`: the operator plane against its best peers, in the same run.
//!
//! 1. `GET /healthz` with `wrk` (keep-alive): palyrad's HTTP/1.1 listener vs a hyper server
//!    answering the same body and headers.
//! 2. WebSocket fan-out of A2UI patches from one publisher to N subscribers: palyrad's
//!    `/console/v1/stream` (every patch validated, applied, fsynced to the console log on
//!    `/dev/shm`, then pulled by each subscriber) vs a tokio-tungstenite relay server (a
//!    broadcast channel, no validation, no durability). Rate = subscribers x patches / time until
//!    every subscriber holds the final version (a lagging palyra subscriber may get coalesced
//!    snapshots; that counts as delivering the state). Memory = server RSS growth per connected
//!    subscriber.
//!
//! Runs take turns between the servers; medians are printed with ratios (ours / peer). With
//! `--before PATH` another build's `palyrad` is measured in the same run, as "before".

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use palyra_bench::{
    bin_dir, builds, medians, require, start_palyrad_exe, start_printing_addr, Server, Table,
};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(
    about = "Operator plane: /healthz vs hyper (wrk), WebSocket fan-out vs tokio-tungstenite"
)]
struct Args {
    /// Measured runs per server (alternating).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// wrk duration per run, seconds.
    #[arg(long, default_value_t = 5)]
    wrk_seconds: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    wrk_connections: usize,
    /// Fan-out subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Patches published per fan-out run.
    #[arg(long, default_value_t = 200)]
    patches: usize,
    /// Another build's `palyrad` executable, measured alongside as "before".
    #[arg(long)]
    before: Option<PathBuf>,
}

fn wrk(args: &Args, addr: SocketAddr) -> anyhow::Result<f64> {
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{}", args.wrk_connections),
            &format!("-d{}s", args.wrk_seconds),
            &format!("http://{addr}/healthz"),
        ])
        .output()
        .context("running wrk (Debian: apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors against {addr}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk output:\n{text}"))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(addr: SocketAddr, ours: bool) -> anyhow::Result<Ws> {
    let path = if ours { "/console/v1/stream" } else { "/" };
    let mut request = format!("ws://{addr}{path}").into_client_request()?;
    if ours {
        let headers = request.headers_mut();
        headers.insert(
            "authorization",
            format!("Bearer {}", palyra_bench::ADMIN_TOKEN).parse()?,
        );
        headers.insert("sec-websocket-protocol", "palyra.console.v1".parse()?);
    }
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    if ours {
        ws.send(Message::text(
            json!({"type":"hello","resume":null,"agent":"bench"}).to_string(),
        ))
        .await?;
        loop {
            let msg = ws.next().await.ok_or_else(|| anyhow!("closed"))??;
            if let Message::Text(t) = msg {
                if serde_json::from_str::<Value>(&t)?["type"] == "snapshot.done" {
                    break;
                }
            }
        }
    }
    Ok(ws)
}

fn patch(i: usize) -> String {
    json!({"type":"a2ui.patch","surface":"bench",
           "ops":[{"op":"replace","path":"/components/0/props/value","value": format!("update {i}")}]})
    .to_string()
}

/// One fan-out run: returns (updates delivered per second, server RSS KiB per subscriber).
async fn fanout(
    server: &Server,
    ours: bool,
    subscribers: usize,
    patches: usize,
    round: usize,
) -> anyhow::Result<(f64, f64)> {
    let addr = server.addr;
    let mut publisher = connect(addr, ours).await?;
    let surface = format!("bench{round}");
    let final_version = 1 + patches as u64;
    if ours {
        let doc = json!({"v":1,"surface":surface,"components":[{"id":"t","type":"text","props":{"value":"start"}}]});
        publisher
            .send(Message::text(
                json!({"type":"a2ui.snapshot","document":doc}).to_string(),
            ))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.rss_kib()?;
    let mut subs = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        subs.push(connect(addr, ours).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib()?;
    let per_conn = after.saturating_sub(before) as f64 / subscribers as f64;
    let mut tasks = Vec::with_capacity(subscribers);
    for mut ws in subs {
        let surface = surface.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = 0usize;
            while let Some(msg) = ws.next().await {
                let Message::Text(text) = msg? else { continue };
                if ours {
                    let v: Value = serde_json::from_str(&text)?;
                    if v["surface"] == surface.as_str()
                        && v["version"].as_u64() == Some(final_version)
                    {
                        return anyhow::Ok(Instant::now());
                    }
                } else {
                    seen += 1;
                    if seen == patches {
                        return anyhow::Ok(Instant::now());
                    }
                }
            }
            bail!("subscriber stream ended early")
        }));
    }
    let started = Instant::now();
    for i in 0..patches {
        let text = if ours {
            let mut v: Value = serde_json::from_str(&patch(i))?;
            v["surface"] = json!(surface);
            v.to_string()
        } else {
            patch(i)
        };
        publisher.send(Message::text(text)).await?;
    }
    let mut last = started;
    for t in tasks {
        let done = tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .context("fan-out timed out")???;
        last = last.max(done);
    }
    let elapsed = last.duration_since(started).as_secs_f64();
    Ok(((subscribers * patches) as f64 / elapsed, per_conn))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = bin_dir()?;
    require(
        &bin,
        &["palyrad", "hyper-healthz", "tt-fanout"],
        "cargo build --release -p palyra-tokio -p palyra-bench",
    )?;
    // The console log fsyncs every publish: keep it on memory-backed storage where there is one,
    // so the run measures the network stack rather than the disk.
    let work = tempfile::Builder::new()
        .prefix("palyra-operator-bench-")
        .tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())?;
    let builds = builds(&bin, args.before.as_deref())?;
    let mut palyrads = Vec::new();
    for (name, dir) in &builds {
        palyrads.push(start_palyrad_exe(
            &dir.join("palyrad"),
            &work.path().join(name),
            "http",
        )?);
    }
    let mut hyper = Command::new(bin.join("hyper-healthz"));
    hyper.stdin(Stdio::piped());
    let hyper = start_printing_addr(hyper)?;
    let mut relay = Command::new(bin.join("tt-fanout"));
    relay.stdin(Stdio::piped());
    let relay = start_printing_addr(relay)?;

    // Every palyrad, then the peer (last); warm-up, then turns.
    let http: Vec<&Server> = palyrads.iter().chain([&hyper]).collect();
    let mut rps = vec![Vec::new(); http.len()];
    for server in &http {
        wrk(&args, server.addr)?;
    }
    // Turns rotate run by run.
    for run in 0..args.runs {
        for turn in 0..http.len() {
            let i = (run + turn) % http.len();
            rps[i].push(wrk(&args, http[i].addr)?);
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let fan: Vec<(&Server, bool)> = palyrads
        .iter()
        .map(|p| (p, true))
        .chain([(&relay, false)])
        .collect();
    let mut rates = vec![Vec::new(); fan.len()];
    let mut memory = vec![Vec::new(); fan.len()];
    runtime.block_on(async {
        for round in 0..args.runs {
            for turn in 0..fan.len() {
                let i = (round + turn) % fan.len();
                let (server, ours) = fan[i];
                let (rate, mem) =
                    fanout(server, ours, args.subscribers, args.patches, round).await?;
                rates[i].push(rate);
                memory[i].push(mem);
            }
        }
        anyhow::Ok(())
    })?;

    println!(
        "operator plane benchmark: medians of {} runs taken in turns; the peer is hyper for \
         /healthz and a tokio-tungstenite relay for the fan-out",
        args.runs
    );
    let mut table = Table::for_builds(&builds, "peer");
    table.row(
        &format!(
            "GET /healthz (wrk -c{} -d{}s)",
            args.wrk_connections, args.wrk_seconds
        ),
        &medians(rps),
        0,
        "/s",
    );
    table.row(
        &format!("WS fan-out ({}x{} patches)", args.subscribers, args.patches),
        &medians(rates),
        0,
        "/s",
    );
    table.row(
        "memory per subscriber (lower is better)",
        &medians(memory),
        1,
        "KiB",
    );
    table.print();
    Ok(())
}
