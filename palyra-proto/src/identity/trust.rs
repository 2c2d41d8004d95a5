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
    /// Issued by a rotation and not yet seen in use: the device's older certificates stay valid
    /// until it is (then they are revoked).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
    /// This certificate alone was revoked (superseded by a rotation or a replacing pairing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_unix_ms: Option<u64>,
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

/// A device's standing as a whole (for pairing decisions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStanding {
    /// At least one certificate in good standing.
    Paired,
    /// The device is revoked.
    Revoked,
    /// No certificate in good standing and not revoked.
    Unknown,
}

#[derive(Default)]
struct Index {
    by_fingerprint: HashMap<[u8; 32], Arc<str>>,
    revoked: HashSet<Arc<str>>,
    revoked_certs: HashSet<[u8; 32]>,
    pending: HashSet<[u8; 32]>,
    /// Devices with a certificate that is not revoked.
    paired: HashSet<Arc<str>>,
    snapshot: Arc<TrustSnapshot>,
}

/// Live, thread-safe view of [`TrustSnapshot`] with O(1) lookups.
#[derive(Default)]
pub struct TrustIndex {
    index: RwLock<Arc<Index>>,
    generation: AtomicU64,
    /// Pending (rotated) certificates seen in use since the last [`TrustIndex::take_confirmed`].
    confirmed: std::sync::Mutex<HashSet<[u8; 32]>>,
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
        let mut revoked_certs = HashSet::new();
        let mut pending = HashSet::new();
        let mut paired = HashSet::new();
        for record in &snapshot.devices {
            if record.revoked_at_unix_ms.is_none() {
                paired.insert(Arc::<str>::from(record.device_id.as_str()));
            }
            let mut fp = [0u8; 32];
            if hex::decode_to_slice(&record.spki_sha256, &mut fp).is_ok() {
                by_fingerprint.insert(fp, Arc::<str>::from(record.device_id.as_str()));
                if record.revoked_at_unix_ms.is_some() {
                    revoked_certs.insert(fp);
                } else if record.pending {
                    pending.insert(fp);
                }
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
            revoked_certs,
            pending,
            paired,
            snapshot: Arc::new(snapshot.clone()),
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

    fn current(&self) -> Arc<Index> {
        match self.index.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The snapshot the index holds.
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        Arc::clone(&self.current().snapshot)
    }

    /// A device's standing: revoked, paired (a certificate in good standing) or unknown.
    pub fn device_standing(&self, device_id: &str) -> DeviceStanding {
        let index = self.current();
        if index.revoked.contains(device_id) {
            DeviceStanding::Revoked
        } else if index.paired.contains(device_id) {
            DeviceStanding::Paired
        } else {
            DeviceStanding::Unknown
        }
    }

    /// Looks up a certificate by its SPKI fingerprint.
    pub fn check(&self, spki_sha256: &[u8; 32]) -> TrustDecision {
        let index = self.current();
        match index.by_fingerprint.get(spki_sha256) {
            None => TrustDecision::Unknown,
            Some(device)
                if index.revoked.contains(device) || index.revoked_certs.contains(spki_sha256) =>
            {
                TrustDecision::Revoked(Arc::clone(device))
            }
            Some(device) => {
                if index.pending.contains(spki_sha256) {
                    // A rotated certificate in use: its predecessors can go (see take_confirmed).
                    match self.confirmed.lock() {
                        Ok(mut set) => set.insert(*spki_sha256),
                        Err(poisoned) => poisoned.into_inner().insert(*spki_sha256),
                    };
                }
                TrustDecision::Trusted(Arc::clone(device))
            }
        }
    }

    /// Pending certificates presented since the last call: the daemon confirms them (and
    /// revokes what they superseded) in the trust file.
    pub fn take_confirmed(&self) -> Vec<[u8; 32]> {
        let mut set = match self.confirmed.lock() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        set.drain().collect()
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
            pending: false,
            revoked_at_unix_ms: None,
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
        assert_eq!(index.device_standing("A"), DeviceStanding::Paired);
        assert_eq!(index.device_standing("C"), DeviceStanding::Unknown);
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
        assert_eq!(index.device_standing("A"), DeviceStanding::Revoked);
        assert_eq!(*index.snapshot(), snapshot);
    }

    #[test]
    fn single_certificates_are_revoked_and_pending_ones_confirmed_by_use() {
        let mut rotated = record("A", 2);
        rotated.pending = true;
        let mut superseded = record("B", 3);
        superseded.revoked_at_unix_ms = Some(9);
        let index = TrustIndex::new(&TrustSnapshot {
            devices: vec![record("A", 1), rotated, superseded, record("B", 4)],
            revoked: vec![],
        });
        assert_eq!(index.check(&[3; 32]), TrustDecision::Revoked("B".into()));
        assert_eq!(index.check(&[4; 32]), TrustDecision::Trusted("B".into()));
        assert!(index.take_confirmed().is_empty());
        assert_eq!(index.check(&[1; 32]), TrustDecision::Trusted("A".into()));
        assert!(index.take_confirmed().is_empty(), "not pending");
        assert_eq!(index.check(&[2; 32]), TrustDecision::Trusted("A".into()));
        assert_eq!(index.take_confirmed(), vec![[2; 32]]);
        assert!(index.take_confirmed().is_empty());
    }
}
