//! Pairing codes: minted by the operator, stored hashed, used once, and guarded against guessing.
//!
//! A PIN is 6 digits, a QR token 26 Crockford base32 characters (128 random bits). Codes are
//! kept as salted SHA-256 hashes only; a code is shown once, when minted. Minting never
//! replaces an active code (a fresh code colliding with an active one is drawn again).
//!
//! Guessing is throttled three ways, so sweeping the PIN space (10^6) within a code's lifetime
//! is infeasible:
//! - per source address: [`MAX_FAILURES_PER_SOURCE`] failed guesses per [`FAILURE_WINDOW_MS`],
//!   then that address is refused until its window passes;
//! - globally: [`MAX_FAILURES_GLOBAL`] failed guesses per window, then every guess is refused
//!   until the window passes (a distributed sweep gains nothing from more addresses);
//! - per code: each failed guess counts against every active code of that method; a code that
//!   has seen [`MAX_FAILURES_PER_CODE`] is burned, bounding the chance a sweep ever hits a PIN
//!   at 50 in 10^6.

use super::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// Default code lifetime: 10 minutes.
pub const DEFAULT_TTL_MS: u64 = 10 * 60 * 1000;
/// Shortest code lifetime.
pub const MIN_TTL_MS: u64 = 30 * 1000;
/// Longest code lifetime.
pub const MAX_TTL_MS: u64 = 24 * 3600 * 1000;
/// Active codes at once.
pub const MAX_ACTIVE: usize = 64;
/// Window of the failure counters.
pub const FAILURE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Failed guesses per source address per window.
pub const MAX_FAILURES_PER_SOURCE: usize = 5;
/// Failed guesses from all sources per window.
pub const MAX_FAILURES_GLOBAL: usize = 30;
/// Failed guesses during its lifetime after which a code is burned.
pub const MAX_FAILURES_PER_CODE: u32 = 50;
/// Source addresses tracked at once (the oldest are forgotten first).
const MAX_SOURCES: usize = 4096;

/// A code as stored: its hash, never the code itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Public handle for listings (a ULID).
    pub id: String,
    /// PIN or QR.
    pub method: Method,
    /// Hex salt.
    pub salt: String,
    /// Hex SHA-256(salt ‖ code).
    pub hash: String,
    /// Who minted it.
    pub issued_by: String,
    /// Mint time.
    pub created_at_unix_ms: u64,
    /// End of validity.
    pub expires_at_unix_ms: u64,
    /// Failed guesses made while it was active.
    #[serde(default)]
    pub failed_guesses: u32,
}

impl CodeRecord {
    fn matches(&self, code: &str) -> bool {
        code_matches(&self.salt, &self.hash, code)
    }
}

/// Whether `code` hashes (with `salt_hex`) to `hash_hex`, compared in constant time.
pub fn code_matches(salt_hex: &str, hash_hex: &str, code: &str) -> bool {
    let Ok(salt) = hex::decode(salt_hex) else {
        return false;
    };
    let hash = hex::encode(
        Sha256::new()
            .chain_update(salt)
            .chain_update(code)
            .finalize(),
    );
    bool::from(hash.as_bytes().ct_eq(hash_hex.as_bytes()))
}

/// Why a guess was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// No active code of that method matches (the guess was counted).
    #[error("pairing code is unknown, used or expired")]
    NoMatch,
    /// Too many failed guesses: retry after the window.
    #[error("too many failed pairing attempts {scope}; retry in {retry_after_secs} s")]
    Throttled {
        /// `from this address` or `on this gateway`.
        scope: &'static str,
        /// Seconds until a guess is considered again.
        retry_after_secs: u64,
    },
    /// The code is not of the method's form.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Why a code could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// Too many codes active.
    #[error("{MAX_ACTIVE} pairing codes are active; let some expire or revoke them first")]
    TooMany,
}

/// Failed guesses in the current window.
#[derive(Debug, Default, Clone)]
struct Failures {
    times: VecDeque<u64>,
}

impl Failures {
    fn prune(&mut self, now_ms: u64) {
        while self
            .times
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= FAILURE_WINDOW_MS)
        {
            self.times.pop_front();
        }
    }

    fn retry_after_secs(&self, now_ms: u64) -> u64 {
        self.times.front().map_or(0, |&t| {
            (t + FAILURE_WINDOW_MS)
                .saturating_sub(now_ms)
                .div_ceil(1000)
        })
    }
}

/// Active codes and the guessing throttles.
#[derive(Debug, Default, Clone)]
pub struct Codes {
    active: Vec<CodeRecord>,
    global: Failures,
    sources: BTreeMap<IpAddr, Failures>,
    order: VecDeque<IpAddr>,
}

/// Checks a presented code's form before any lookup.
pub fn validate_form(method: Method, code: &str) -> Result<(), CodeError> {
    match method {
        Method::Pin if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        Method::Pin => Err(CodeError::Malformed("a PIN is exactly 6 digits")),
        Method::Qr
            if (16..=128).contains(&code.len())
                && code.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            Ok(())
        }
        Method::Qr => Err(CodeError::Malformed(
            "a QR token is 16..=128 ASCII letters and digits",
        )),
    }
}

impl Codes {
    /// Codes restored from the durable record.
    pub fn from_records(active: Vec<CodeRecord>) -> Self {
        Self {
            active,
            ..Self::default()
        }
    }

    /// The active codes (hashes only).
    pub fn records(&self) -> &[CodeRecord] {
        &self.active
    }

    /// Drops expired codes.
    pub fn expire(&mut self, now_ms: u64) {
        self.active.retain(|c| c.expires_at_unix_ms > now_ms);
    }

    /// Mints a code: returns the record and the code, shown this once. `rng` draws it.
    pub fn mint(
        &mut self,
        now_ms: u64,
        method: Method,
        ttl_ms: u64,
        issued_by: &str,
        rng: &mut dyn rand_core::CryptoRngCore,
    ) -> Result<(CodeRecord, String), MintError> {
        self.expire(now_ms);
        if self.active.len() >= MAX_ACTIVE {
            return Err(MintError::TooMany);
        }
        let ttl_ms = ttl_ms.clamp(MIN_TTL_MS, MAX_TTL_MS);
        let code = loop {
            let candidate = draw(method, rng);
            // Never replace or shadow an active code.
            if !self.active.iter().any(|c| c.matches(&candidate)) {
                break candidate;
            }
        };
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut id = [0u8; 10];
        rng.fill_bytes(&mut id);
        let record = CodeRecord {
            id: ulid::Ulid::from_parts(now_ms, u128::from_be_bytes(pad16(&id))).to_string(),
            method,
            hash: hex::encode(
                Sha256::new()
                    .chain_update(salt)
                    .chain_update(&code)
                    .finalize(),
            ),
            salt: hex::encode(salt),
            issued_by: issued_by.to_owned(),
            created_at_unix_ms: now_ms,
            expires_at_unix_ms: now_ms.saturating_add(ttl_ms),
            failed_guesses: 0,
        };
        self.active.push(record.clone());
        Ok((record, code))
    }

    /// Revokes an active code by its ID. Returns whether it existed.
    pub fn revoke(&mut self, id: &str) -> bool {
        let before = self.active.len();
        self.active.retain(|c| c.id != id);
        self.active.len() != before
    }

    /// Whether `source` may guess now.
    pub fn check_throttle(&mut self, now_ms: u64, source: Option<IpAddr>) -> Result<(), CodeError> {
        self.global.prune(now_ms);
        if self.global.times.len() >= MAX_FAILURES_GLOBAL {
            return Err(CodeError::Throttled {
                scope: "on this gateway",
                retry_after_secs: self.global.retry_after_secs(now_ms),
            });
        }
        if let Some(failures) = source.and_then(|s| self.sources.get_mut(&s)) {
            failures.prune(now_ms);
            if failures.times.len() >= MAX_FAILURES_PER_SOURCE {
                return Err(CodeError::Throttled {
                    scope: "from this address",
                    retry_after_secs: failures.retry_after_secs(now_ms),
                });
            }
        }
        Ok(())
    }

    /// Takes (consumes) the active code of `method` equal to `code`. A miss counts as a failed
    /// guess against the source, the gateway and every active code of that method.
    pub fn take(
        &mut self,
        now_ms: u64,
        source: Option<IpAddr>,
        method: Method,
        code: &str,
    ) -> Result<CodeRecord, CodeError> {
        self.expire(now_ms);
        self.check_throttle(now_ms, source)?;
        validate_form(method, code)?;
        if let Some(i) = self
            .active
            .iter()
            .position(|c| c.method == method && c.matches(code))
        {
            return Ok(self.active.remove(i));
        }
        self.record_failure(now_ms, source, method);
        Err(CodeError::NoMatch)
    }

    fn record_failure(&mut self, now_ms: u64, source: Option<IpAddr>, method: Method) {
        self.global.times.push_back(now_ms);
        if let Some(source) = source {
            if !self.sources.contains_key(&source) {
                if self.order.len() >= MAX_SOURCES {
                    if let Some(oldest) = self.order.pop_front() {
                        self.sources.remove(&oldest);
                    }
                }
                self.order.push_back(source);
            }
            self.sources
                .entry(source)
                .or_default()
                .times
                .push_back(now_ms);
        }
        for code in self.active.iter_mut().filter(|c| c.method == method) {
            code.failed_guesses += 1;
        }
        self.active
            .retain(|c| c.failed_guesses < MAX_FAILURES_PER_CODE);
    }
}

fn pad16(bytes: &[u8; 10]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[6..].copy_from_slice(bytes);
    out
}

/// A fresh code of `method`.
fn draw(method: Method, rng: &mut dyn rand_core::CryptoRngCore) -> String {
    match method {
        Method::Pin => loop {
            // Rejection sampling: no modulo bias.
            let mut b = [0u8; 4];
            rng.fill_bytes(&mut b);
            let n = u32::from_be_bytes(b);
            if n < 4_294_000_000 {
                break format!("{:06}", n % 1_000_000);
            }
        },
        Method::Qr => {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            ulid::Ulid::from(u128::from_be_bytes(b) >> 2).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::{RngCore, SeedableRng};

    fn rng() -> rand_chacha::ChaCha20Rng {
        rand_chacha::ChaCha20Rng::seed_from_u64(7)
    }

    /// Same PIN bytes for the first two PIN draws, different afterwards.
    struct Repeating(u32);

    impl RngCore for Repeating {
        fn next_u32(&mut self) -> u32 {
            self.0
        }
        fn next_u64(&mut self) -> u64 {
            u64::from(self.0)
        }
        fn fill_bytes(&mut self, b: &mut [u8]) {
            self.0 += 1;
            let v = if b.len() == 4 && self.0 <= 6 {
                7
            } else {
                self.0 as u8
            };
            b.fill(v);
        }
        fn try_fill_bytes(&mut self, b: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
            self.fill_bytes(b);
            Ok(())
        }
    }

    impl rand_chacha::rand_core::CryptoRng for Repeating {}

    #[test]
    fn codes_are_hashed_single_use_and_expire() {
        let mut codes = Codes::default();
        let mut random = rng();
        let (record, pin) = codes
            .mint(1_000, Method::Pin, DEFAULT_TTL_MS, "op", &mut random)
            .unwrap();
        assert_eq!(pin.len(), 6);
        let stored = serde_json::to_string(codes.records()).unwrap();
        assert!(!stored.contains(&pin), "the code must not be stored");
        assert_eq!(record.expires_at_unix_ms, 1_000 + DEFAULT_TTL_MS);
        assert_eq!(
            codes.take(2_000, None, Method::Qr, &pin).unwrap_err(),
            CodeError::Malformed("a QR token is 16..=128 ASCII letters and digits")
        );
        assert_eq!(
            codes.take(2_000, None, Method::Pin, &pin).unwrap().id,
            record.id
        );
        assert_eq!(
            codes.take(2_000, None, Method::Pin, &pin),
            Err(CodeError::NoMatch),
            "single use"
        );
        let (_, qr) = codes
            .mint(1_000, Method::Qr, MIN_TTL_MS, "op", &mut random)
            .unwrap();
        assert_eq!(qr.len(), 26);
        assert_eq!(
            codes.take(1_000 + MIN_TTL_MS, None, Method::Qr, &qr),
            Err(CodeError::NoMatch),
            "expired"
        );
    }

    #[test]
    fn ttl_is_clamped_and_active_codes_are_bounded() {
        let mut codes = Codes::default();
        let mut random = rng();
        let (r, _) = codes.mint(0, Method::Pin, 1, "op", &mut random).unwrap();
        assert_eq!(r.expires_at_unix_ms, MIN_TTL_MS);
        let (r, _) = codes
            .mint(0, Method::Qr, u64::MAX, "op", &mut random)
            .unwrap();
        assert_eq!(r.expires_at_unix_ms, MAX_TTL_MS);
        for _ in 2..MAX_ACTIVE {
            codes
                .mint(0, Method::Pin, MAX_TTL_MS, "op", &mut random)
                .unwrap();
        }
        assert_eq!(
            codes.mint(0, Method::Pin, MAX_TTL_MS, "op", &mut random),
            Err(MintError::TooMany)
        );
    }

    #[test]
    fn minting_never_replaces_an_active_code() {
        // A source of randomness that repeats: the second mint must draw again.
        let mut codes = Codes::default();
        let mut repeating = Repeating(0);
        let (_, a) = codes
            .mint(0, Method::Pin, MAX_TTL_MS, "op", &mut repeating)
            .unwrap();
        let (_, b) = codes
            .mint(0, Method::Pin, MAX_TTL_MS, "op", &mut repeating)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(codes.records().len(), 2);
        assert!(codes.take(0, None, Method::Pin, &a).is_ok());
        assert!(codes.take(0, None, Method::Pin, &b).is_ok());
    }

    #[test]
    fn guessing_is_throttled_per_source_and_globally() {
        let mut codes = Codes::default();
        let mut random = rng();
        let (_, pin) = codes
            .mint(0, Method::Pin, MAX_TTL_MS, "op", &mut random)
            .unwrap();
        let wrong = |i: usize| {
            let guess = format!("{i:06}");
            if guess == pin {
                "999999".to_owned()
            } else {
                guess
            }
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        for i in 0..MAX_FAILURES_PER_SOURCE {
            assert_eq!(
                codes.take(0, Some(a), Method::Pin, &wrong(i)),
                Err(CodeError::NoMatch)
            );
        }
        let throttled = CodeError::Throttled {
            scope: "from this address",
            retry_after_secs: 600,
        };
        assert_eq!(
            codes.take(0, Some(a), Method::Pin, &wrong(9)),
            Err(throttled)
        );
        // Even the right code is refused from a throttled address, but not from another one...
        assert!(matches!(
            codes.take(1_000, Some(a), Method::Pin, &pin),
            Err(CodeError::Throttled { .. })
        ));
        assert!(codes
            .check_throttle(1_000, Some("10.0.0.2".parse().unwrap()))
            .is_ok());
        // ...and the address may guess again once its window passed.
        let later = FAILURE_WINDOW_MS;
        assert!(codes.check_throttle(later, Some(a)).is_ok());
        // Many addresses, one guess each: the global limit stops the sweep.
        for i in 0..MAX_FAILURES_GLOBAL {
            let source = IpAddr::from([10, 1, 0, i as u8]);
            assert_eq!(
                codes.take(later, Some(source), Method::Pin, &wrong(i)),
                Err(CodeError::NoMatch)
            );
        }
        let fresh = IpAddr::from([10, 2, 0, 1]);
        assert!(matches!(
            codes.take(later, Some(fresh), Method::Pin, &pin),
            Err(CodeError::Throttled {
                scope: "on this gateway",
                ..
            })
        ));
        assert_eq!(
            codes.records()[0].failed_guesses as usize,
            MAX_FAILURES_PER_SOURCE + MAX_FAILURES_GLOBAL
        );
    }

    #[test]
    fn a_code_that_saw_too_many_failures_is_burned() {
        let mut codes = Codes::default();
        let mut random = rng();
        let (_, pin) = codes
            .mint(0, Method::Pin, MAX_TTL_MS, "op", &mut random)
            .unwrap();
        let (_, qr) = codes
            .mint(0, Method::Qr, MAX_TTL_MS, "op", &mut random)
            .unwrap();
        let mut now = 0;
        let mut failures = 0;
        while failures < MAX_FAILURES_PER_CODE {
            // Spread over windows and addresses so only the per-code limit applies.
            now += FAILURE_WINDOW_MS / 10;
            let wrong = if pin == "000000" { "000001" } else { "000000" };
            let source = IpAddr::from([10, 3, (failures / 200) as u8, failures as u8]);
            if codes.take(now, Some(source), Method::Pin, wrong) == Err(CodeError::NoMatch) {
                failures += 1;
            }
        }
        assert_eq!(
            codes.take(now, None, Method::Pin, &pin),
            Err(CodeError::NoMatch),
            "burned after {MAX_FAILURES_PER_CODE} failed guesses"
        );
        assert!(
            codes.take(now, None, Method::Qr, &qr).is_ok(),
            "QR codes are not burned by PIN guesses"
        );
    }
}
