//! A connection flood against a real daemon binary under a small open-file limit: 1,000
//! connections opened against each listener (the three TCP listeners, and QUIC Initials against
//! the node plane), held, then closed. The daemon must stay healthy: a fresh `GET /healthz` is
//! answered within a second after the flood, the log holds fewer than 100 lines about it, and
//! the daemon used less than a third of a core during it.

use palyra_proto::quic::{ClientLimits, NodeClient};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections opened against each listener.
pub const CONNECTIONS: usize = 1000;
/// The daemon's open-file limit (soft and hard).
pub const NOFILE: u64 = 256;

/// A daemon process, killed when dropped.
pub(crate) struct Daemon(pub(crate) Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system) the process `pid` used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state field.
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

fn raise_own_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Starts `binary` on `state` with loopback ports, its log in `log`, under [`NOFILE`].
pub(crate) fn start(
    binary: &Path,
    state: &Path,
    log: &Path,
    config: Option<&Path>,
) -> (Daemon, serde_json::Value) {
    use std::os::unix::process::CommandExt;
    let endpoints = state.join("endpoints.json");
    let log_file = std::fs::File::create(log).expect("log file");
    let mut command = Command::new(binary);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command
        .arg("--state-dir")
        .arg(state)
        .args([
            "--node-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(log_file);
    // SAFETY: setrlimit is async-signal-safe; the closure runs in the child before exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE as libc::rlim_t,
                rlim_max: NOFILE as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let daemon = Daemon(command.spawn().expect("spawn the daemon"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            if let Ok(value) = serde_json::from_str(&text) {
                return (daemon, value);
            }
        }
        assert!(Instant::now() < deadline, "the daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The address `endpoints.json` names for `name`.
pub(crate) fn addr(endpoints: &serde_json::Value, name: &str) -> SocketAddr {
    endpoints[name]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("endpoints.json has no {name}: {endpoints}"))
}

/// `GET /healthz` on a fresh connection; the status code if answered within `limit`.
fn healthz(http: SocketAddr, limit: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&http, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = String::new();
    std::io::BufReader::new(&mut stream)
        .read_line(&mut head)
        .ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// Sends `count` QUIC Initials from one socket, each a new connection that never completes.
fn quic_initials(target: SocketAddr, ca_der: &[u8], count: usize) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp");
    let tls = Arc::new(
        palyra_proto::quic::tls::client_config(ca_der, None, palyra_proto::quic::tls::ALPN)
            .expect("client TLS"),
    );
    let now = Instant::now();
    let mut buf = Vec::new();
    for _ in 0..count {
        let Ok(mut client) = NodeClient::connect(
            Arc::clone(&tls),
            ClientLimits::default(),
            target,
            "localhost",
            now,
            &mut rand_core::OsRng,
        ) else {
            continue;
        };
        while let Some(t) = client.poll_transmit(now, 1, &mut buf) {
            let _ = socket.send_to(&buf[..t.size], t.destination);
        }
    }
}

/// Runs the flood against `binary` (a `palyrad` of either runtime) with its default limits and
/// checks the daemon came through it healthy. `name` labels the messages.
pub fn flood(name: &str, binary: &Path) {
    flood_with(name, binary, None);
}

/// The flood against a daemon whose listeners would take more connections than it has
/// descriptors for (`[listeners] max_connections = 1000` under a limit of 256): accepting hits
/// `EMFILE`, and the accept loop must back off (no spinning, no log flood) and recover.
pub fn flood_past_the_descriptor_limit(name: &str, binary: &Path) {
    flood_with(name, binary, Some("[listeners]\nmax_connections = 1000\n"));
}

fn flood_with(name: &str, binary: &Path, config: Option<&str>) {
    raise_own_nofile();
    let dir = tempfile::tempdir().expect("state dir");
    let log = dir.path().join("daemon.log");
    let state = dir.path().join("state");
    let config_path = dir.path().join("palyrad.toml");
    if let Some(text) = config {
        std::fs::write(&config_path, text).expect("config");
    }
    let (daemon, endpoints) = start(binary, &state, &log, config.map(|_| config_path.as_path()));
    let pid = daemon.0.id();
    let http = addr(&endpoints, "http");
    assert_eq!(
        healthz(http, Duration::from_secs(5)),
        Some(200),
        "[{name}] healthy at start"
    );
    let lines_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .count();
    let ca_der = palyra_proto::identity::cert::cert_pem_to_der(
        &std::fs::read_to_string(state.join("identity/ca.crt.pem")).expect("CA"),
    )
    .expect("CA PEM");
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    // 1,000 connections against each TCP listener, all held at once, then QUIC Initials.
    let mut held: Vec<TcpStream> = Vec::new();
    for listener in ["http", "grpc", "node_tcp"] {
        let target = addr(&endpoints, listener);
        for _ in 0..CONNECTIONS {
            if let Ok(stream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                held.push(stream);
            }
        }
    }
    quic_initials(addr(&endpoints, "node_quic"), &ca_der, CONNECTIONS);
    // Drain what the daemon answered (refusals) without blocking.
    let mut sink = [0u8; 4096];
    for stream in &mut held {
        let _ = stream.set_nonblocking(true);
        let _ = stream.read(&mut sink);
    }
    std::thread::sleep(Duration::from_secs(1));
    let opened = held.len();
    drop(held);
    let closed = Instant::now();
    // Within a second of the flood ending, a fresh client is served.
    let mut served = None;
    while closed.elapsed() < Duration::from_secs(1) {
        if healthz(http, Duration::from_millis(500)) == Some(200) {
            served = Some(closed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall = started.elapsed();
    let cpu = cpu_time(pid).saturating_sub(cpu_before);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().skip(lines_before).collect();
    assert!(
        opened >= 3 * CONNECTIONS * 9 / 10,
        "[{name}] the flood opened only {opened} connections"
    );
    assert!(
        served.is_some(),
        "[{name}] no fresh GET /healthz answered within a second after the flood; log:\n{}",
        lines.join("\n")
    );
    assert!(
        lines.len() < 100,
        "[{name}] {} log lines about the flood:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let share = cpu.as_secs_f64() / wall.as_secs_f64();
    assert!(
        share < 1.0 / 3.0,
        "[{name}] the daemon used {:.0}% of a core during the flood ({cpu:?} in {wall:?})",
        share * 100.0
    );
    for line in &lines {
        eprintln!("[{name}]   log: {line}");
    }
    eprintln!(
        "[{name}] flood: {opened} TCP connections + {CONNECTIONS} QUIC Initials; fresh client served {:?} after; {} log lines; CPU {:.1}% of a core",
        served.unwrap_or_default(),
        lines.len(),
        share * 100.0
    );
}
