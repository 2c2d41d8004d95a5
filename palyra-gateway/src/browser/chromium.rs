//! Launching Chromium with its DevTools protocol on a pipe (`--remote-debugging-pipe`): no TCP
//! port another local user could reach, and the browser's end of the pipe closes when it exits.
//!
//! The child runs headless in its own process group (so a restart kills renderers too) with a
//! parent-death signal (so it never outlives browserd), its own user-data directory, and
//! `--no-sandbox` only when browserd runs as root (Chromium's sandbox refuses root).

use crate::runtime::{Runtime, TcpIo};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Executables tried, in order, when none is configured.
pub const CANDIDATES: &[&str] = &[
    "chromium",
    "chromium-browser",
    "google-chrome-stable",
    "google-chrome",
];

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The executable.
    pub executable: PathBuf,
    /// Chromium's profile directory (created if missing).
    pub user_data_dir: PathBuf,
    /// Where Chromium's own stderr goes (appended).
    pub log_file: Option<PathBuf>,
    /// Extra command-line switches.
    pub extra_args: Vec<String>,
}

/// The first of [`CANDIDATES`] on `PATH`.
pub fn find_executable() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    CANDIDATES.iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root (then Chromium needs `--no-sandbox`).
pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The switches browserd always passes.
pub fn base_args(options: &LaunchOptions) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--remote-debugging-pipe",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-breakpad",
        "--disable-crash-reporter",
        "--metrics-recording-only",
        "--password-store=basic",
        "--use-mock-keychain",
        "--mute-audio",
        "--hide-scrollbars",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--window-size=1280,800",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if running_as_root() {
        args.push("--no-sandbox".into());
    }
    args.push(format!(
        "--user-data-dir={}",
        options.user_data_dir.display()
    ));
    args.extend(options.extra_args.iter().cloned());
    args.push("about:blank".into());
    args
}

/// A running Chromium and our end of its DevTools pipe.
#[derive(Debug)]
pub struct Launched {
    /// The process (reap it with `wait` after the pipe closed).
    pub child: Child,
    /// The pipe, wrapped by the runtime.
    pub pipe: Box<dyn TcpIo>,
}

/// Starts Chromium with its DevTools protocol on a Unix socket pair given as fds 3 (commands in)
/// and 4 (answers out).
pub fn launch(rt: &dyn Runtime, options: &LaunchOptions) -> io::Result<Launched> {
    std::fs::create_dir_all(&options.user_data_dir)?;
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    // Their end must not be 3 or 4 itself (dup2 onto itself would keep close-on-exec).
    // SAFETY: fcntl with F_DUPFD_CLOEXEC on a valid fd; the result is owned below.
    let high = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if high < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `high` is a fresh fd nobody else owns.
    let theirs_high = unsafe { OwnedFd::from_raw_fd(high) };
    drop(theirs);
    let stderr = match &options.log_file {
        Some(path) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Stdio::null(),
    };
    let mut command = Command::new(&options.executable);
    command
        .args(base_args(options))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
    let fd = theirs_high.as_raw_fd();
    // SAFETY: only async-signal-safe calls (dup2, setpgid, prctl) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 || libc::dup2(fd, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {}: {e}", options.executable.display()),
        )
    })?;
    drop(theirs_high);
    ours.set_nonblocking(true)?;
    let pipe = rt.wrap_unix_stream(ours)?;
    Ok(Launched { child, pipe })
}

/// Kills the browser's whole process group.
pub fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; a stale group id fails harmlessly.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}
