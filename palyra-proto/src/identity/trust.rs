//! The live trust index: SPKI fingerprint -> device, and the set of revoked devices.
//!
//! One index is shared by the TLS verifier (new handshakes) and the QUIC server (open connections),
//! so a revocation takes effect everywhere as soon as the index is replaced.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A device certificate the gateway issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceCertRecord {
    /// Canonical device ID (ULID).
    pub device_id: String,
    /// Lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// Issue time.
    pub issued_at_unix_ms: u64,
    /// End of validity.
    pub expires_at_unix_ms: u64,
}

/// A revoked device: every certificate it ever held is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedDevice {
    /// Canonical device ID.
    pub device_id: String,
    /// When it was revoked.
    pub revoked_at_unix_ms: u64,
    /// Operator's reason.
    #[serde(default)]
    pub reason: String,
}

/// The persisted trust state: issued device certificates and revocations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustSnapshot {
    /// Every device certificate issued (current and superseded).
    #[serde(default)]
    pub devices: Vec<DeviceCertRecord>,
    /// Revoked devices.
    #[serde(default)]
    pub revoked: Vec<RevokedDevice>,
}

/// What the index says about a presented certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// Known certificate of a device in good standing.
    Trusted(Arc<str>),
    /// The certificate belongs to a revoked device.
    Revoked(Arc<str>),
    /// The gateway never issued (or no longer knows) this certificate.
    Unknown,
}

#[derive(Default)]
struct Index {
    by_fingerprint: HashMap<[u8; 32], Arc<str>>,
    revoked: HashSet<Arc<str>>,
}

/// Live, thread-safe view of [`TrustSnapshot`] with O(1) lookups.
#[derive(Default)]
pub struct TrustIndex {
    index: RwLock<Arc<Index>>,
    generation: AtomicU64,
}

impl TrustIndex {
    /// An index holding `snapshot`.
    pub fn new(snapshot: &TrustSnapshot) -> Self {
        let index = Self::default();
        index.replace(snapshot);
        index
    }

    /// Replaces the whole index (after the persisted state changed) and bumps the generation.
    pub fn replace(&self, snapshot: &TrustSnapshot) {
        let mut by_fingerprint = HashMap::with_capacity(snapshot.devices.len());
        for record in &snapshot.devices {
            let mut fp = [0u8; 32];
            if hex::decode_to_slice(&record.spki_sha256, &mut fp).is_ok() {
                by_fingerprint.insert(fp, Arc::<str>::from(record.device_id.as_str()));
            }
        }
        let revoked = snapshot
            .revoked
            .iter()
            .map(|r| Arc::<str>::from(r.device_id.as_str()))
            .collect();
        let fresh = Arc::new(Index {
            by_fingerprint,
            revoked,
        });
        match self.index.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Counter bumped by every [`TrustIndex::replace`], so holders can notice changes cheaply.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Looks up a certificate by its SPKI fingerprint.
    pub fn check(&self, spki_sha256: &[u8; 32]) -> TrustDecision {
        let index = match self.index.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        match index.by_fingerprint.get(spki_sha256) {
            None => TrustDecision::Unknown,
            Some(device) if index.revoked.contains(device) => {
                TrustDecision::Revoked(Arc::clone(device))
            }
            Some(device) => TrustDecision::Trusted(Arc::clone(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, fp: u8) -> DeviceCertRecord {
        DeviceCertRecord {
            device_id: id.into(),
            spki_sha256: hex::encode([fp; 32]),
            issued_at_unix_ms: 1,
            expires_at_unix_ms: 2,
        }
    }

    #[test]
    fn revocation_covers_every_certificate_of_the_device() {
        let mut snapshot = TrustSnapshot {
            devices: vec![record("A", 1), record("A", 2), record("B", 3)],
            revoked: vec![],
        };
        let index = TrustIndex::new(&snapshot);
        assert_eq!(index.check(&[1; 32]), TrustDecision::Trusted("A".into()));
        assert_eq!(index.check(&[9; 32]), TrustDecision::Unknown);
        let generation = index.generation();
        snapshot.revoked.push(RevokedDevice {
            device_id: "A".into(),
            revoked_at_unix_ms: 5,
            reason: "lost".into(),
        });
        index.replace(&snapshot);
        assert!(index.generation() > generation);
        assert_eq!(index.check(&[1; 32]), TrustDecision::Revoked("A".into()));
        assert_eq!(index.check(&[2; 32]), TrustDecision::Revoked("A".into()));
        assert_eq!(index.check(&[3; 32]), TrustDecision::Trusted("B".into()));
    }
}
