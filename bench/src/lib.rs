//! Shared pieces of the benchmark commands: peer processes, their memory, medians.

use anyhow::{anyhow, bail, Context};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process under test, killed when dropped.
pub struct Server {
    child: Child,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time the process has used (user + system), in clock ticks (1/100 s on Linux).
    pub fn cpu_ticks(&self) -> anyhow::Result<u64> {
        cpu_ticks_of(&self.child.id().to_string())
    }
}

/// Waits until the processes `pids` are idle (at most 20 ms of CPU in 200 ms; 10 s at most),
/// after a `sync`: what one subject's turn left behind (dirty pages, connections closing,
/// replication) is then not charged to the subject after it. Runs on a blocking thread, so
/// the runtime's tasks go on meanwhile.
pub async fn settle(pids: &[u32]) -> anyhow::Result<()> {
    let pids = pids.to_vec();
    tokio::task::spawn_blocking(move || settle_blocking(&pids)).await?
}

fn settle_blocking(pids: &[u32]) -> anyhow::Result<()> {
    Command::new("sync").status().context("sync")?;
    let ticks =
        || -> anyhow::Result<u64> { pids.iter().map(|pid| cpu_ticks_of(&pid.to_string())).sum() };
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = ticks()?;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let now = ticks()?;
        if now - last <= 2 {
            break;
        }
        last = now;
    }
    Ok(())
}

/// CPU time (user + system) of process `pid` (or `self`), in clock ticks (1/100 s on Linux).
pub fn cpu_ticks_of(pid: &str) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow!("short /proc stat"))?
            .parse()?)
    };
    Ok(field(11)? + field(12)?)
}

/// Datagrams the kernel dropped because a UDP socket's receive buffer was full (all sockets on
/// this machine: measured around one subject's run, with the others idle, it is that run's).
pub fn udp_receive_drops() -> anyhow::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp")?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        bail!("no Udp lines in /proc/net/snmp");
    };
    let column = names
        .split_whitespace()
        .position(|n| n == "RcvbufErrors")
        .ok_or_else(|| anyhow!("no RcvbufErrors in /proc/net/snmp"))?;
    let value = values
        .split_whitespace()
        .nth(column)
        .ok_or_else(|| anyhow!("short Udp line in /proc/net/snmp"))?;
    Ok(value.parse()?)
}

/// The directory of the running benchmark binary (the other release binaries sit next to it).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe
        .parent()
        .ok_or_else(|| anyhow!("no parent directory"))?
        .to_path_buf())
}

/// Fails with the build command to run if a binary is missing.
pub fn require(bin: &Path, names: &[&str], build: &str) -> anyhow::Result<()> {
    for name in names {
        if !bin.join(name).exists() {
            bail!("{name} not found next to the benchmark; run: {build}");
        }
    }
    Ok(())
}

/// The admin token benchmarks give palyrad (`PALYRA_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "palyra-bench-admin-token";

/// Starts `palyrad` on `state` with every listener on port 0 and returns the server at the
/// address `endpoints.json` names `endpoint` (`node_quic`, `grpc` or `http`).
pub fn start_palyrad(bin: &Path, state: &Path, endpoint: &str) -> anyhow::Result<Server> {
    start_palyrad_exe(&bin.join("palyrad"), state, endpoint)
}

/// [`start_palyrad`] with the `palyrad` executable at `exe` (another build, for a before/after
/// comparison in one run).
pub fn start_palyrad_exe(exe: &Path, state: &Path, endpoint: &str) -> anyhow::Result<Server> {
    start_palyrad_args(exe, state, endpoint, &[])
}

/// [`start_palyrad_exe`] with more arguments (`--config FILE`, ...).
pub fn start_palyrad_args(
    exe: &Path,
    state: &Path,
    endpoint: &str,
    extra: &[&std::ffi::OsStr],
) -> anyhow::Result<Server> {
    let endpoints = state.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    let child = Command::new(exe)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--log-level",
            "warn",
        ])
        .args(extra)
        .env("PALYRA_ADMIN_TOKEN", ADMIN_TOKEN)
        .stdout(Stdio::null())
        .spawn()
        .context("spawn palyrad")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let addr = v[endpoint]
                .as_str()
                .ok_or_else(|| anyhow!("endpoints.json has no {endpoint}"))?
                .parse()?;
            return Ok(Server { child, addr });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let _ = server.child.kill();
    bail!("palyrad did not write {}", endpoints.display())
}

/// Starts a peer that prints its bound address as the first line of stdout.
pub fn start_printing_addr(mut command: Command) -> anyhow::Result<Server> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn peer")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)?;
    let mut server = Server {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    // On a bad line the server is dropped, which kills the process.
    server.addr = line
        .trim()
        .parse()
        .with_context(|| format!("peer printed {line:?} instead of an address"))?;
    Ok(server)
}

/// The median of some measurements.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The median of each subject's runs.
pub fn medians(runs: Vec<Vec<f64>>) -> Vec<f64> {
    runs.into_iter().map(median).collect()
}

/// The runtime of the peer servers (two workers, like palyrad's), which stop when stdin closes.
pub fn peer_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        std::process::exit(0);
    });
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The builds under test: ours (next to the benchmark) and, with `--before PATH`, another
/// build's `palyrad` (its sibling executables, such as `interop-server`, come from the same
/// directory). Each is a name and the directory of its executables.
pub fn builds(bin: &Path, before: Option<&Path>) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let mut builds = vec![("ours", bin.to_path_buf())];
    if let Some(before) = before {
        let dir = before
            .parent()
            .ok_or_else(|| anyhow!("--before names no directory: {}", before.display()))?;
        if !before.is_file() {
            bail!("--before {}: no such executable", before.display());
        }
        builds.push(("before", dir.to_path_buf()));
    }
    Ok(builds)
}

/// A row's label and its values, each written with `digits` decimals and `unit`.
fn figures(label: &str, values: &[f64], digits: usize, unit: &str) -> String {
    let mut line = format!("{label:<40}");
    for v in values {
        line += &format!(" {:>14}", format!("{v:.digits$}{unit}"));
    }
    line
}

/// A results table: one column per subject (the peer last), then each subject's ratio to it.
pub struct Table {
    names: Vec<String>,
    lines: Vec<String>,
}

impl Table {
    /// A table of the `builds` (see [`builds`]) and then `peer`.
    pub fn for_builds(builds: &[(&str, PathBuf)], peer: &str) -> Self {
        let names: Vec<&str> = builds.iter().map(|(name, _)| *name).chain([peer]).collect();
        Self::new(&names)
    }

    /// A table of `subjects` (the peer last).
    pub fn new<S: AsRef<str>>(subjects: &[S]) -> Self {
        Self {
            names: subjects.iter().map(|s| s.as_ref().to_owned()).collect(),
            lines: Vec::new(),
        }
    }

    /// Adds a row: one value per subject, written with `digits` decimals and `unit`.
    pub fn row(&mut self, label: &str, values: &[f64], digits: usize, unit: &str) {
        let peer = values.last().copied().unwrap_or(0.0);
        let mut line = figures(label, values, digits, unit);
        for v in &values[..values.len().saturating_sub(1)] {
            match peer > 0.0 {
                true => line += &format!(" {:>13.2}", v / peer),
                false => line += &format!(" {:>13}", "-"),
            }
        }
        self.lines.push(line);
    }

    /// Adds a row of figures that have no ratio to the peer (its ratio columns show "-").
    pub fn row_without_ratios(&mut self, label: &str, values: &[f64], digits: usize, unit: &str) {
        let mut line = figures(label, values, digits, unit);
        for _ in 1..values.len() {
            line += &format!(" {:>13}", "-");
        }
        self.lines.push(line);
    }

    /// Prints the header and the rows.
    pub fn print(&self) {
        let mut header = format!("{:<40}", "measure");
        for name in &self.names {
            header += &format!(" {name:>14}");
        }
        if let Some(peer) = self.names.last() {
            for name in &self.names[..self.names.len() - 1] {
                header += &format!(" {:>13}", format!("{name}/{peer}"));
            }
        }
        println!("{header}");
        for line in &self.lines {
            println!("{line}");
        }
    }
}

/// The scripted OpenAI-compatible upstream (`conformance/openai_upstream.py`), stopped when
/// dropped.
pub struct Upstream {
    child: Child,
    /// Where it listens (`HOST:PORT`).
    pub addr: String,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the scripted upstream of the repository at `root` (needs `python3`).
pub fn scripted_upstream(root: &Path) -> anyhow::Result<Upstream> {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(root.join("conformance/openai_upstream.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3 runs the scripted upstream")?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .split_whitespace()
        .last()
        .context("an address")?
        .to_owned();
    Ok(Upstream { child, addr })
}

/// What the model-provider benchmarks share: palyrad built, a two-worker tokio runtime (the
/// clients), and the scripted upstream.
pub struct ModelBench {
    /// Where the release binaries are.
    pub bin: PathBuf,
    /// The clients' runtime.
    pub runtime: tokio::runtime::Runtime,
    /// The same runtime for palyra's clients.
    pub rt: palyra_gateway::runtime::Rt,
    /// The scripted OpenAI-compatible upstream.
    pub upstream: Upstream,
}

impl ModelBench {
    /// Checks the build and starts the runtime and the upstream.
    pub fn start() -> anyhow::Result<Self> {
        let bin = bin_dir()?;
        require(
            &bin,
            &["palyrad"],
            "cargo build --release -p palyra-tokio -p palyra-bench",
        )?;
        let root = bin.join("../..").canonicalize()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let rt: palyra_gateway::runtime::Rt = palyra_tokio::Tokio::new(runtime.handle().clone());
        let upstream = scripted_upstream(&root)?;
        Ok(Self {
            bin,
            runtime,
            rt,
            upstream,
        })
    }
}
