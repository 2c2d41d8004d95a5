//! SIGINT and SIGTERM for any runtime: a thread waits for them (signal-hook) and tells an async
//! channel.

/// A channel that yields the number of each SIGINT or SIGTERM the process receives.
pub fn termination() -> std::io::Result<async_channel::Receiver<i32>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (tx, rx) = async_channel::bounded(4);
    std::thread::Builder::new()
        .name("palyra-signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if tx.send_blocking(signal).is_err() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

/// Restores the default action of SIGPIPE, so a command whose output is piped into a reader that
/// goes away (`palyra runs list | head -1`) ends quietly, as other Unix tools do, instead of
/// failing its next write. Call it first thing in `main`.
pub fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: sets a signal's disposition to its default; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
