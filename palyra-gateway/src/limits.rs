//! Process limits: the open-file limit `palyrad` raises at start, and the connection cap each
//! listener derives from it so a flood of connections meets a refusal, never `EMFILE`.

/// Descriptors kept free of connections: log segments, documents, sockets of the listeners and
/// clients, threads' files.
pub const RESERVED_DESCRIPTORS: u64 = 96;
/// TCP listeners a daemon serves (operator, gateway gRPC, node TLS).
pub const TCP_LISTENERS: u64 = 3;
/// The largest default cap of one listener.
pub const MAX_DEFAULT_CAP: u64 = 16_384;
/// Refused connections that may linger at once per listener (each holds a descriptor for a
/// moment); beyond that a connection over the cap is closed without an answer.
pub const MAX_REFUSING: usize = 16;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit in force after.
pub fn raise_nofile_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit = raised;
                }
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere.
        Some(limit.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// The default connection cap of each TCP listener under an open-file limit of `nofile`: the
/// descriptors left after [`RESERVED_DESCRIPTORS`] and the refusals in flight, shared by the
/// listeners.
pub fn default_connection_cap(nofile: Option<u64>) -> usize {
    let nofile = nofile.unwrap_or(1024);
    let refusing = TCP_LISTENERS * MAX_REFUSING as u64;
    let per_listener = nofile.saturating_sub(RESERVED_DESCRIPTORS + refusing) / TCP_LISTENERS;
    per_listener.clamp(8, MAX_DEFAULT_CAP) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_leave_headroom_below_the_descriptor_limit() {
        let cap = default_connection_cap(Some(256));
        assert!(cap >= 8);
        let used = cap as u64 * TCP_LISTENERS + TCP_LISTENERS * MAX_REFUSING as u64;
        assert!(used + RESERVED_DESCRIPTORS <= 256, "{used}");
        assert_eq!(
            default_connection_cap(Some(1 << 20)),
            MAX_DEFAULT_CAP as usize
        );
        assert!(raise_nofile_limit().is_some_and(|n| n > 0));
    }
}
