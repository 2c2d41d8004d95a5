//! Running the real `palyrad` from integration tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `palyrad` process, killed (SIGKILL) and reaped when dropped.
pub struct Daemon(pub Child);

impl Daemon {
    /// Kills the daemon with SIGKILL (no chance to save anything) and reaps it.
    pub fn sigkill(mut self) {
        self.0.kill().expect("SIGKILL");
        self.0.wait().expect("reap");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `palyrad` on loopback ports chosen by the OS (the node port given, if any) with
/// `state` and `envs`; returns it once `endpoints.json` is written, with that file's content.
#[allow(dead_code)] // not every test crate that includes this module uses every helper
pub fn spawn_daemon_with(
    state: &Path,
    node_addr: &str,
    envs: &[(&str, &str)],
) -> (Daemon, serde_json::Value) {
    spawn_daemon_args(state, node_addr, &[], envs)
}

/// [`spawn_daemon_with`] with more command-line arguments (`--config FILE`, ...).
pub fn spawn_daemon_args(
    state: &Path,
    node_addr: &str,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> (Daemon, serde_json::Value) {
    let endpoints = state.join("endpoints.json");
    let _ = std::fs::remove_file(&endpoints);
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_palyrad"))
            .arg("--state-dir")
            .arg(state)
            .args([
                "--node-addr",
                node_addr,
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--log-level",
                "warn",
            ])
            .args(extra)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn palyrad"),
    );
    let mut daemon = daemon;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            let value: serde_json::Value = serde_json::from_str(&text).expect("endpoints json");
            return (daemon, value);
        }
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("palyrad exited ({status}) before writing endpoints.json; its stderr is above");
        }
        assert!(
            Instant::now() < deadline,
            "palyrad did not write endpoints.json within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A loopback port below the kernel's ephemeral range that UDP and TCP can both bind now. A
/// daemon restarted on it cannot find it taken by another test's client socket, which the
/// kernel numbers from the ephemeral range only.
#[allow(dead_code)] // not every test crate that includes this module restarts a daemon
pub fn fixed_port() -> u16 {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768)
        .max(12_000);
    let mut seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..1000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = 10_000 + (seed >> 33) as u16 % (ephemeral_low - 10_000);
        let free = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free loopback port below {ephemeral_low}");
}
