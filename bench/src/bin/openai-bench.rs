//! `openai-bench`: the same streaming chat-completions client against palyrad's
//! OpenAI-compatible API and directly against the model provider.
//!
//! 1. Tokens per second: 64 streams at once, each a 1,000-token answer of the scripted upstream
//!    (`conformance/openai_upstream.py`, `[[tokens:1000]]`). "direct" is our provider client
//!    reading the upstream; "palyrad" is the same client reading `POST /v1/chat/completions`
//!    of palyrad, whose run reads the upstream, makes every event durable on its tape, and
//!    streams it as `chat.completion.chunk` events. Ratio palyrad / direct.
//! 2. Time to first token of those streams, both ways; the difference is what palyrad adds.
//! 3. Memory per open stream: streams held open at once (each answer waits after its first
//!    token), palyrad's resident memory before and with them, per stream.
//!
//! Build first: `cargo build --release -p palyra-tokio -p palyra-bench`, then
//! `target/release/openai-bench`. Needs `python3`.

use anyhow::Context;
use clap::Parser;
use palyra_bench::{median, start_palyrad_args, ModelBench, Server, Table, ADMIN_TOKEN};
use palyra_gateway::client::operator::Daemon;
use palyra_gateway::operator::api::MintToken;
use palyra_gateway::provider::client::{stream_chat, Endpoint, ProviderSettings};
use palyra_gateway::runtime::Rt;
use palyra_proto::openai::call::ChatRequest;
use palyra_proto::openai::chat::{ChatEvent, ChatLimits};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// OpenAI-compatible API benchmark.
#[derive(Parser)]
struct Args {
    /// Tokens the upstream streams per answer.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Streams at once.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Streams held open at once for the memory figure.
    #[arg(long, default_value_t = 256)]
    open_streams: usize,
}

fn palyrad(bin: &Path, state: &Path, upstream: &str) -> anyhow::Result<Server> {
    std::fs::create_dir_all(state)?;
    let config = state.join("palyrad.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbase_url = \"http://{upstream}/v1\"\nmodel = \"scripted\"\nidle_timeout_secs = 600\n\
             [openai]\nrequests_per_minute = 1000000\nconcurrency = 4096\n"
        ),
    )?;
    let extra = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    start_palyrad_args(&bin.join("palyrad"), state, "http", &extra)
}

fn settings(base_url: &str, key: Option<String>) -> anyhow::Result<ProviderSettings> {
    Ok(ProviderSettings {
        endpoint: Endpoint::parse(base_url).map_err(anyhow::Error::msg)?,
        api_key: key,
        tls: None,
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(600),
        max_retries: 0,
        limits: ChatLimits::default(),
    })
}

fn request(prompt: &str) -> ChatRequest {
    ChatRequest {
        model: "scripted".into(),
        messages: vec![serde_json::json!({"role": "user", "content": prompt})],
        tools: Vec::new(),
        options: Default::default(),
    }
}

/// `streams` answers read at once: (tokens in all, seconds in all, each stream's seconds to
/// its first token).
async fn round(
    settings: &Arc<ProviderSettings>,
    rt: &Rt,
    prompt: &str,
    streams: usize,
) -> anyhow::Result<(usize, f64, Vec<f64>)> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (settings, rt, request) = (Arc::clone(settings), Arc::clone(rt), request(prompt));
            tokio::spawn(async move {
                let mut first = None;
                let mut tokens = 0usize;
                let began = Instant::now();
                stream_chat(&rt, &settings, &request, |event| {
                    if let ChatEvent::Token(_) = event {
                        first.get_or_insert_with(|| began.elapsed().as_secs_f64() * 1000.0);
                        tokens += 1;
                    }
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                anyhow::Ok((tokens, first.unwrap_or(0.0)))
            })
        })
        .collect();
    let (mut tokens, mut firsts) = (0, Vec::new());
    for task in tasks {
        let (n, first) = task.await??;
        tokens += n;
        firsts.push(first);
    }
    Ok((tokens, started.elapsed().as_secs_f64(), firsts))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ModelBench {
        bin,
        runtime,
        rt,
        upstream: up,
    } = ModelBench::start()?;
    let dir = tempfile::tempdir()?;
    let daemon = palyrad(&bin, &dir.path().join("state"), &up.addr)?;
    let admin = Daemon::new(&format!("http://{}", daemon.addr), None, ADMIN_TOKEN.into())?;
    let key = admin
        .send(&MintToken {
            principal: "user:bench".into(),
            scopes: vec!["openai:use".into()],
            label: "openai-bench".into(),
            ttl_seconds: None,
        })
        .context("mint an API key")?
        .value
        .token;
    let ours = Arc::new(settings(&format!("http://{}/v1", daemon.addr), Some(key))?);
    let direct = Arc::new(settings(&format!("http://{}/v1", up.addr), None)?);
    let subjects = [("palyrad", &ours), ("direct", &direct)];
    let prompt = format!("[[tokens:{}]]", args.tokens);
    let (mut rate, mut ttft) = (vec![Vec::new(), Vec::new()], vec![Vec::new(), Vec::new()]);
    runtime.block_on(async {
        for (_, s) in &subjects {
            round(s, &rt, &prompt, 4).await?; // warm both paths
        }
        for _ in 0..args.runs {
            // In turns, so both see the same machine state.
            for (i, (name, s)) in subjects.iter().enumerate() {
                let (tokens, secs, firsts) = round(s, &rt, &prompt, args.streams).await?;
                anyhow::ensure!(
                    tokens == args.tokens * args.streams,
                    "{name} read {tokens} tokens, not {}",
                    args.tokens * args.streams
                );
                rate[i].push(tokens as f64 / secs);
                ttft[i].push(median(firsts));
            }
        }
        anyhow::Ok(())
    })?;

    // Memory per open stream: each answer waits after its first token.
    let before = daemon.rss_kib()?;
    let seen = Arc::new(AtomicUsize::new(0));
    let held: Vec<_> = (0..args.open_streams)
        .map(|_| {
            let (settings, rt, seen) = (Arc::clone(&ours), Arc::clone(&rt), Arc::clone(&seen));
            runtime.spawn(async move {
                let mut counted = false;
                let _ = stream_chat(
                    &rt,
                    &settings,
                    &request("[[hold:120000]] held a b"),
                    |event| {
                        if matches!(event, ChatEvent::Token(_)) && !counted {
                            counted = true;
                            seen.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                )
                .await;
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < args.open_streams {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {} streams opened",
            seen.load(Ordering::Relaxed),
            args.open_streams
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let with = daemon.rss_kib()?;
    for task in &held {
        task.abort();
    }
    let per_stream = with.saturating_sub(before) as f64 / args.open_streams as f64;

    let rates: Vec<f64> = rate.into_iter().map(median).collect();
    let firsts: Vec<f64> = ttft.into_iter().map(median).collect();
    println!(
        "openai-bench: {} streams at once, {} tokens per answer, median of {} runs; upstream: conformance/openai_upstream.py",
        args.streams, args.tokens, args.runs
    );
    let mut table = Table::new(&["palyrad", "direct"]);
    table.row("tokens/s received", &rates, 0, "");
    table.row("time to first token", &firsts, 2, " ms");
    table.print();
    println!(
        "tokens/s palyrad / direct: {:.2}; time to first token added by palyrad: {:.2} ms",
        rates[0] / rates[1],
        firsts[0] - firsts[1]
    );
    println!(
        "memory with {} streams open: {} KiB before, {} KiB with them: {:.1} KiB per stream",
        args.open_streams, before, with, per_stream
    );
    Ok(())
}
