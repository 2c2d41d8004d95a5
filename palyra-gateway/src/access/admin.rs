//! The admin token: generated once at first start (printed once, stored only as its SHA-256 in
//! `STATE/operator/admin-token.sha256`) or set with `PALYRA_ADMIN_TOKEN`; checked in constant
//! time; failed attempts rate-limited per client address.

use crate::store::{write_atomic, StoreError};
use crate::util::constant_time_eq;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed attempts allowed per address per window.
pub const MAX_FAILURES: u32 = 10;
/// The rate-limit window.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once (beyond it, unknown addresses are refused until entries expire).
pub const MAX_TRACKED: usize = 4096;
/// Prefix of generated tokens.
pub const TOKEN_PREFIX: &str = "palyra_adm_";

/// Why a request is not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// Missing or wrong token (401).
    Unauthorized,
    /// Too many failures from this address (429), retry after this long.
    RateLimited(Duration),
}

/// The admin credential and its failure counters.
pub struct AdminAuth {
    hash: [u8; 32],
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl AdminAuth {
    /// An authenticator for exactly `token`.
    pub fn from_token(token: &str) -> Self {
        Self {
            hash: digest(token),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Uses `explicit` (from `PALYRA_ADMIN_TOKEN`) when given; otherwise the stored hash, or a
    /// new token whose hash is stored. Returns the new token when one was generated (print it
    /// once: it is not stored anywhere).
    pub fn load_or_create(
        state_dir: &Path,
        explicit: Option<&str>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Option<String>), StoreError> {
        if let Some(token) = explicit.filter(|t| !t.is_empty()) {
            return Ok((Self::from_token(token), None));
        }
        let path = state_dir.join("operator").join("admin-token.sha256");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(text.trim(), &mut hash).map_err(|_| {
                    StoreError::Corrupt(format!("{}: expected 64 hex digits", path.display()))
                })?;
                Ok((
                    Self {
                        hash,
                        failures: Mutex::new(HashMap::new()),
                    },
                    None,
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rng.fill_bytes(&mut secret);
                use base64::Engine as _;
                let token = format!(
                    "{TOKEN_PREFIX}{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
                );
                let auth = Self::from_token(&token);
                std::fs::create_dir_all(path.parent().unwrap_or(state_dir))
                    .map_err(StoreError::io(format!("creating {}", path.display())))?;
                write_atomic(&path, format!("{}\n", hex::encode(auth.hash)).as_bytes())?;
                Ok((auth, Some(token)))
            }
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Checks an `Authorization` header value (`Bearer TOKEN`) from `ip` at `now`.
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        ip: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Denied> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = ip {
            if let Some((start, count)) = failures.get(&ip) {
                let until = *start + FAILURE_WINDOW;
                if now < until && *count >= MAX_FAILURES {
                    return Err(Denied::RateLimited(until - now));
                }
            }
        }
        let token = authorization
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        let ok = token.is_some_and(|t| constant_time_eq(&digest(t), &self.hash));
        if ok {
            return Ok(());
        }
        if let Some(ip) = ip {
            if !failures.contains_key(&ip) && failures.len() >= MAX_TRACKED {
                failures.retain(|_, (start, _)| now < *start + FAILURE_WINDOW);
                if failures.len() >= MAX_TRACKED {
                    return Err(Denied::RateLimited(FAILURE_WINDOW));
                }
            }
            let entry = failures.entry(ip).or_insert((now, 0));
            if now >= entry.0 + FAILURE_WINDOW {
                *entry = (now, 0);
            }
            entry.1 += 1;
        }
        Err(Denied::Unauthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn generated_once_stored_hashed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (auth, token) = AdminAuth::load_or_create(dir.path(), None, &mut rng).unwrap();
        let token = token.expect("a new token at first start");
        assert!(token.starts_with(TOKEN_PREFIX));
        let stored =
            std::fs::read_to_string(dir.path().join("operator/admin-token.sha256")).unwrap();
        assert!(
            !stored.contains(&token[TOKEN_PREFIX.len()..]),
            "only the hash is stored"
        );
        let now = Instant::now();
        let header = format!("Bearer {token}");
        assert_eq!(auth.check(Some(header.as_bytes()), None, now), Ok(()));
        // A restart reads the hash and prints nothing.
        let (again, none) = AdminAuth::load_or_create(dir.path(), None, &mut rng).unwrap();
        assert!(none.is_none());
        assert_eq!(again.check(Some(header.as_bytes()), None, now), Ok(()));
        // The environment wins.
        let (env, _) = AdminAuth::load_or_create(dir.path(), Some("from-env"), &mut rng).unwrap();
        assert_eq!(env.check(Some(b"Bearer from-env"), None, now), Ok(()));
        assert_eq!(
            env.check(Some(header.as_bytes()), None, now),
            Err(Denied::Unauthorized)
        );
    }

    #[test]
    fn failures_are_rate_limited_per_address() {
        let auth = AdminAuth::from_token("secret");
        let now = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                auth.check(Some(b"Bearer nope"), Some(a), now),
                Err(Denied::Unauthorized)
            );
        }
        // The next attempt, even with the right token, waits for the window.
        assert!(matches!(
            auth.check(Some(b"Bearer secret"), Some(a), now),
            Err(Denied::RateLimited(_))
        ));
        assert_eq!(auth.check(Some(b"Bearer secret"), Some(b), now), Ok(()));
        assert_eq!(auth.check(None, Some(b), now), Err(Denied::Unauthorized));
        assert_eq!(
            auth.check(Some(b"Bearer secret"), Some(a), now + FAILURE_WINDOW),
            Ok(())
        );
    }
}
