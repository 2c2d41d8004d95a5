//! The daemon's local control socket, `STATE/control.sock` (mode 0600): the offline
//! `palyrad cert` commands write the trust file and then tell a running daemon, which reloads
//! its trust index before it answers. A certificate issued offline is thereby accepted on the
//! very next handshake, and an offline revocation cuts the device off at once (the periodic
//! reload remains for hand edits).
//!
//! Protocol: one line `trust` in, one line `ok <generation>` (or `error <reason>`) out.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The socket's file name in the state directory.
pub const SOCKET: &str = "control.sock";

/// How long a command waits for the daemon's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Most requests served per connection (a client sends one).
const MAX_REQUESTS: usize = 16;
/// Longest request line.
const MAX_LINE: usize = 256;

/// What the daemon does when told the trust file changed: reload it, returning the new
/// generation of the live index.
pub type ReloadTrust = Arc<dyn Fn() -> Result<u64, String> + Send + Sync>;

/// Serves the control socket of `state_dir` on its own thread until the process ends.
pub fn serve(state_dir: &Path, reload: ReloadTrust) -> std::io::Result<PathBuf> {
    let path = state_dir.join(SOCKET);
    // A socket file left by a daemon that is gone: nobody answers it.
    if path.exists() && UnixStream::connect(&path).is_err() {
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    std::thread::Builder::new()
        .name("palyra-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &reload) {
                            tracing::debug!(error = %e, "control connection failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })?;
    Ok(path)
}

fn answer(stream: UnixStream, reload: &ReloadTrust) -> std::io::Result<()> {
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_LINE as u64 * MAX_REQUESTS as u64);
    for _ in 0..MAX_REQUESTS {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let reply = match line.trim() {
            "trust" => match reload() {
                Ok(generation) => format!("ok {generation}\n"),
                Err(e) => format!("error {}\n", e.replace('\n', " ")),
            },
            other => format!("error unknown request {:?}\n", truncate(other)),
        };
        writer.write_all(reply.as_bytes())?;
    }
    Ok(())
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// What telling the daemon achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notified {
    /// A running daemon reloaded its trust index.
    Reloaded,
    /// No daemon runs on this state directory (it reads the file when it starts).
    NoDaemon,
}

/// Tells the daemon running on `state_dir` (if any) that the trust file changed, and waits until
/// it reloaded it.
pub fn notify_trust_changed(state_dir: &Path) -> Result<Notified, String> {
    let path = state_dir.join(SOCKET);
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(_) => return Ok(Notified::NoDaemon),
    };
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writer
        .write_all(b"trust\n")
        .map_err(|e| format!("cannot tell the daemon: {e}"))?;
    let mut line = String::new();
    BufReader::new(stream)
        .take(MAX_LINE as u64)
        .read_line(&mut line)
        .map_err(|e| format!("the daemon did not answer: {e}"))?;
    match line.trim().split_once(' ') {
        Some(("ok", _)) => Ok(Notified::Reloaded),
        Some(("error", reason)) => Err(format!("the daemon could not reload: {reason}")),
        _ => Err(format!(
            "unexpected answer from the daemon: {:?}",
            line.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn a_command_waits_for_the_daemons_reload() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(notify_trust_changed(dir.path()), Ok(Notified::NoDaemon));
        let reloads = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&reloads);
        let path = serve(
            dir.path(),
            Arc::new(move || Ok(counter.fetch_add(1, Ordering::SeqCst) + 1)),
        )
        .unwrap();
        assert_eq!(notify_trust_changed(dir.path()), Ok(Notified::Reloaded));
        assert_eq!(
            reloads.load(Ordering::SeqCst),
            1,
            "reloaded before answering"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
