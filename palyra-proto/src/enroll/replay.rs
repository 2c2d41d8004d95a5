//! `ReplayProtection` on node RPCs: when a request carries it, its nonce (16..=128 printable
//! ASCII) is accepted once and its timestamp must be within ±5 minutes of the gateway's clock.
//! Nonces are remembered for the window (bounded), so a replay inside it is refused and one
//! outside it fails the timestamp check.

use std::collections::{HashMap, VecDeque};

/// Accepted clock difference.
pub const WINDOW_MS: u64 = 5 * 60 * 1000;
/// Nonces remembered at once; more within one window are refused.
pub const MAX_NONCES: usize = 65_536;

/// Why a request's replay protection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The nonce is too short, too long or not printable ASCII.
    #[error("replay.nonce must be 16..=128 printable ASCII characters")]
    BadNonce,
    /// The timestamp is outside ±5 minutes.
    #[error("replay.timestamp_unix_ms is more than 5 minutes from the gateway's clock")]
    Stale,
    /// The nonce was used before.
    #[error("replay.nonce was already used")]
    Replayed,
    /// Too many nonces in the window.
    #[error("too many requests with replay protection; retry shortly")]
    Full,
}

/// Nonces seen within the window.
#[derive(Debug, Default, Clone)]
pub struct NonceStore {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

impl NonceStore {
    /// Checks and consumes `nonce` sent with `timestamp_unix_ms` at `now_ms`.
    pub fn check(
        &mut self,
        now_ms: u64,
        nonce: &str,
        timestamp_unix_ms: i64,
    ) -> Result<(), ReplayError> {
        if !(16..=128).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ReplayError::BadNonce);
        }
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now_ms {
                break;
            }
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        let Ok(ts) = u64::try_from(timestamp_unix_ms) else {
            return Err(ReplayError::Stale);
        };
        if ts.abs_diff(now_ms) > WINDOW_MS {
            return Err(ReplayError::Stale);
        }
        if self.seen.contains_key(nonce) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(ReplayError::Full);
        }
        // Remembered until a replay would fail the timestamp check anyway.
        let expiry = ts + WINDOW_MS + 1;
        self.seen.insert(nonce.to_owned(), expiry);
        let at = self.order.partition_point(|(e, _)| *e <= expiry);
        self.order.insert(at, (expiry, nonce.to_owned()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_single_use_within_the_window_and_timestamps_bounded() {
        let mut store = NonceStore::default();
        let now = 10 * WINDOW_MS;
        let nonce = "nonce-0123456789abcdef";
        assert_eq!(
            store.check(now, "short", now as i64),
            Err(ReplayError::BadNonce)
        );
        assert_eq!(
            store.check(now, &"x".repeat(129), now as i64),
            Err(ReplayError::BadNonce)
        );
        assert_eq!(
            store.check(now, nonce, (now - WINDOW_MS - 1) as i64),
            Err(ReplayError::Stale)
        );
        assert_eq!(
            store.check(now, nonce, (now + WINDOW_MS + 1) as i64),
            Err(ReplayError::Stale)
        );
        assert_eq!(store.check(now, nonce, -1), Err(ReplayError::Stale));
        assert_eq!(store.check(now, nonce, now as i64), Ok(()));
        assert_eq!(
            store.check(now + 1000, nonce, now as i64),
            Err(ReplayError::Replayed)
        );
        // After the window the nonce is forgotten, and its timestamp is stale anyway.
        let later = now + WINDOW_MS + 2;
        assert_eq!(
            store.check(later, nonce, now as i64),
            Err(ReplayError::Stale)
        );
        assert!(store.seen.is_empty());
    }
}
