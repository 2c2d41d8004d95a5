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
pub fn spawn_daemon_with(
    state: &Path,
    node_addr: &str,
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
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn palyrad"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(&endpoints) {
            let value: serde_json::Value = serde_json::from_str(&text).expect("endpoints json");
            return (daemon, value);
        }
        assert!(
            Instant::now() < deadline,
            "palyrad did not write endpoints.json"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
