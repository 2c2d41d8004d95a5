//! `run-bench`: agent runs through palyrad against the model provider read directly.
//!
//! 1. Tokens per second: the scripted OpenAI-compatible upstream (`conformance/
//!    openai_upstream.py`) streams 1,000 tokens at once (`[[tokens:1000]]`). "direct" is our
//!    provider client reading that answer from the upstream; "palyrad" is a RunStream client
//!    reading the same answer through palyrad (the provider client, the run machine, every
//!    event made durable on the run tape before it is sent, gRPC). Ratio palyrad / direct.
//! 2. Time to first token, both ways; the difference is what palyrad adds.
//! 3. Memory per open run: 1,000 runs held open at once (each waiting on a slow upstream answer,
//!    20 connections of 50 streams), palyrad's resident memory before and with them, per run.
//!
//! With `--before PATH` another build's `palyrad` is measured in the same turns, as "before".
//!
//! Build first: `cargo build --release -p palyra-tokio -p palyra-bench`, then
//! `target/release/run-bench`. Needs `python3`.

use anyhow::{bail, Context};
use clap::Parser;
use palyra_bench::{median, start_palyrad_args, ModelBench, Server, Table, Upstream, ADMIN_TOKEN};
use palyra_gateway::client::runs::{canonical, RunsClient};
use palyra_gateway::provider::client::{stream_chat, Endpoint, ProviderSettings};
use palyra_gateway::runtime::Rt;
use palyra_gateway::serve::grpc_channel::CallEvent;
use palyra_proto::openai::call::ChatRequest;
use palyra_proto::openai::chat::{ChatEvent, ChatLimits};
use palyra_proto::pb::palyra::common::v1::{
    run_stream_event::Body, MessageContent, MessageEnvelope, RunStreamEvent, RunStreamRequest,
};
use prost::Message;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Agent-run benchmark.
#[derive(Parser)]
struct Args {
    /// Tokens the upstream streams per answer.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// Answers read per run of the throughput measurement.
    #[arg(long, default_value_t = 10)]
    answers: usize,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Runs held open at once for the memory figure.
    #[arg(long, default_value_t = 1000)]
    open_runs: usize,
    /// Another build's `palyrad` executable, measured alongside as "before".
    #[arg(long)]
    before: Option<PathBuf>,
}

fn palyrad(exe: &Path, state: &Path, upstream: &Upstream) -> anyhow::Result<Server> {
    std::fs::create_dir_all(state)?;
    let config = state.join("palyrad.toml");
    std::fs::write(
        &config,
        format!(
            "[model]\nbase_url = \"http://{}/v1\"\nmodel = \"scripted\"\nidle_timeout_secs = 600\n",
            upstream.addr
        ),
    )?;
    let extra = [std::ffi::OsStr::new("--config"), config.as_os_str()];
    start_palyrad_args(exe, state, "grpc", &extra)
}

/// One answer read directly: (tokens, seconds to the first token, seconds in all).
async fn direct(
    rt: &Rt,
    settings: &ProviderSettings,
    prompt: &str,
) -> anyhow::Result<(usize, f64, f64)> {
    let request = ChatRequest {
        model: "scripted".into(),
        messages: vec![serde_json::json!({"role": "user", "content": prompt})],
        tools: Vec::new(),
        options: Default::default(),
    };
    let started = Instant::now();
    let mut first = None;
    let mut tokens = 0;
    stream_chat(rt, settings, &request, |event| {
        if let ChatEvent::Token(_) = event {
            first.get_or_insert_with(|| started.elapsed().as_secs_f64());
            tokens += 1;
        }
    })
    .await?;
    Ok((
        tokens,
        first.unwrap_or(0.0),
        started.elapsed().as_secs_f64(),
    ))
}

fn start(run_id: &str, prompt: &str, key: &str) -> Vec<u8> {
    RunStreamRequest {
        v: 1,
        run_id: canonical(run_id),
        session_key: key.into(),
        reset_session: true,
        input: Some(MessageEnvelope {
            v: 1,
            content: Some(MessageContent {
                text: prompt.into(),
                attachments: Vec::new(),
            }),
            ..MessageEnvelope::default()
        }),
        ..RunStreamRequest::default()
    }
    .encode_to_vec()
}

/// One answer read through palyrad: (tokens, seconds to the first token, seconds in all).
async fn through(client: &RunsClient, prompt: &str) -> anyhow::Result<(usize, f64, f64)> {
    let started = Instant::now();
    let mut call = client
        .open("GatewayService", "RunStream")
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    call.send(start(&ulid::Ulid::new().to_string(), prompt, "bench"))
        .await
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut first = None;
    let mut tokens = 0;
    while let Some(event) = call.next().await {
        match event {
            CallEvent::Message(bytes) => {
                let event = RunStreamEvent::decode(bytes.as_ref())?;
                if matches!(&event.body, Some(Body::ModelToken(t)) if !t.token.is_empty()) {
                    first.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    tokens += 1;
                }
            }
            CallEvent::Finished(status, _) if status.code != palyra_proto::grpc::Code::Ok => {
                bail!("run failed: {status}")
            }
            CallEvent::Finished(..) => break,
            CallEvent::Headers(_) => {}
        }
    }
    Ok((
        tokens,
        first.unwrap_or(0.0),
        started.elapsed().as_secs_f64(),
    ))
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
    let builds = palyra_bench::builds(&bin, args.before.as_deref())?;
    let daemons = builds
        .iter()
        .map(|(name, dir_of)| palyrad(&dir_of.join("palyrad"), &dir.path().join(name), &up))
        .collect::<anyhow::Result<Vec<Server>>>()?;
    let daemon = &daemons[0];
    let settings = ProviderSettings {
        endpoint: Endpoint::parse(&format!("http://{}/v1", up.addr)).map_err(anyhow::Error::msg)?,
        api_key: None,
        tls: None,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
        max_retries: 0,
        limits: ChatLimits::default(),
    };
    let prompt = format!("[[tokens:{}]]", args.tokens);
    // Subjects: each build's palyrad, then the upstream read directly (the peer, last).
    let mut names: Vec<String> = builds
        .iter()
        .map(|(name, _)| match *name {
            "ours" => "palyrad".to_owned(),
            other => format!("palyrad {other}"),
        })
        .collect();
    names.push("direct".into());
    let (mut rate, mut ttft) = (vec![Vec::new(); names.len()], vec![Vec::new(); names.len()]);
    runtime.block_on(async {
        let mut clients = Vec::new();
        for daemon in &daemons {
            let client =
                RunsClient::connect(&rt, &daemon.addr.to_string(), ADMIN_TOKEN, None).await?;
            // Warm each path once.
            through(&client, &prompt).await?;
            clients.push(client);
        }
        direct(&rt, &settings, &prompt).await?;
        for run in 0..args.runs {
            // In turns (the order rotating run by run), so all see the same machine state.
            for turn in 0..names.len() {
                let i = (run + turn) % names.len();
                let subject = &names[i];
                let (mut tokens, mut secs, mut firsts) = (0usize, 0.0, Vec::new());
                for _ in 0..args.answers {
                    let (n, first, all) = match clients.get(i) {
                        Some(client) => through(client, &prompt).await?,
                        None => direct(&rt, &settings, &prompt).await?,
                    };
                    anyhow::ensure!(
                        n == args.tokens,
                        "{subject} read {n} tokens, not {}",
                        args.tokens
                    );
                    tokens += n;
                    secs += all;
                    firsts.push(first * 1000.0);
                }
                rate[i].push(tokens as f64 / secs);
                ttft[i].push(median(firsts));
            }
        }
        anyhow::Ok(())
    })?;
    // Memory per open run.
    let before = daemon.rss_kib()?;
    let open = runtime.block_on(async {
        let mut calls = Vec::new();
        let mut clients = Vec::new();
        for c in 0..args.open_runs.div_ceil(50) {
            let client =
                RunsClient::connect(&rt, &daemon.addr.to_string(), ADMIN_TOKEN, None).await?;
            for s in 0..50.min(args.open_runs - c * 50) {
                let call = client
                    .open("GatewayService", "RunStream")
                    .await
                    .map_err(|s| anyhow::anyhow!("{s}"))?;
                let key = format!("open-{c}-{s}");
                call.send(start(
                    &ulid::Ulid::new().to_string(),
                    "held [[slow:120000]] a b",
                    &key,
                ))
                .await
                .map_err(|s| anyhow::anyhow!("{s}"))?;
                calls.push(call);
            }
            clients.push(client);
        }
        // Every run is accepted and streaming: its first token arrived.
        for call in &mut calls {
            loop {
                match call.next().await.context("stream ended")? {
                    CallEvent::Message(bytes) => {
                        let e = RunStreamEvent::decode(bytes.as_ref())?;
                        match e.body {
                            Some(Body::ModelToken(_)) => break,
                            Some(Body::Status(s)) if s.kind == 4 => {
                                bail!("a run failed: {}", s.message)
                            }
                            _ => {}
                        }
                    }
                    CallEvent::Finished(status, _) => bail!("run ended: {status}"),
                    CallEvent::Headers(_) => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let with = daemon.rss_kib()?;
        anyhow::Ok((with, calls, clients))
    })?;
    let (with, calls, clients) = open;
    let per_run = (with.saturating_sub(before)) as f64 / args.open_runs as f64;
    drop(calls);
    drop(clients);

    let rates: Vec<f64> = rate.into_iter().map(median).collect();
    let firsts: Vec<f64> = ttft.into_iter().map(median).collect();
    println!(
        "run-bench: {} tokens per answer, {} answers per run, median of {} runs; upstream: conformance/openai_upstream.py",
        args.tokens, args.answers, args.runs
    );
    let mut table = Table::new(&names);
    table.row("tokens/s received", &rates, 0, "");
    table.row("time to first token", &firsts, 2, " ms");
    table.print();
    println!(
        "time to first token added by palyrad: {:.2} ms",
        firsts[0] - firsts[names.len() - 1]
    );
    println!(
        "memory with {} runs open: {} KiB before, {} KiB with them: {:.1} KiB per run",
        args.open_runs, before, with, per_run
    );
    Ok(())
}
