//! Trust records as one document of a store several gateways share ([`DocTrust`]): every change
//! is a compare-and-set on the document's revision, made again on the newer records when
//! another gateway changed them first, and the store's watch tells each gateway (its
//! maintenance thread polls the revision) so a revocation anywhere cuts the device off
//! everywhere.

use super::{pending, DocStore, IdentityError, StoreError, TrustRecords};
use bytes::Bytes;
use palyra_proto::identity::trust::TrustSnapshot;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The trust records' document.
pub const TRUST_KEY: &str = "identity/trust.json";

/// How often a change is made again after losing a race before it gives up.
const MAX_ATTEMPTS: u32 = 32;

/// How long a write may take before the change is reported as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`TrustRecords`] in the document [`TRUST_KEY`] of `docs`.
pub struct DocTrust {
    docs: Arc<dyn DocStore>,
}

impl DocTrust {
    /// The trust records of `docs`.
    pub fn new(docs: Arc<dyn DocStore>) -> Self {
        Self { docs }
    }

    fn current(&self) -> Result<(TrustSnapshot, u64), IdentityError> {
        let Some(doc) = self.docs.get(TRUST_KEY)? else {
            return Ok((TrustSnapshot::default(), 0));
        };
        let trust = serde_json::from_slice(&doc.value).map_err(|e| {
            StoreError::Corrupt(format!("{TRUST_KEY} (revision {}): {e}", doc.revision))
        })?;
        Ok((trust, doc.revision))
    }
}

impl TrustRecords for DocTrust {
    fn load_trust(&self) -> Result<TrustSnapshot, IdentityError> {
        self.current().map(|(trust, _)| trust)
    }

    fn modify(
        &self,
        change: &mut dyn FnMut(&mut TrustSnapshot) -> Result<bool, IdentityError>,
    ) -> Result<bool, IdentityError> {
        let mut last = None;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                // Give the watch a moment to bring the winner's records.
                std::thread::sleep(Duration::from_millis(u64::from(attempt.min(10)) * 5));
            }
            let (mut trust, revision) = self.current()?;
            if !change(&mut trust)? {
                return Ok(false);
            }
            let json = serde_json::to_vec(&trust)
                .map_err(|e| StoreError::Corrupt(format!("{TRUST_KEY}: {e}")))?;
            let (written, done) = pending(None);
            self.docs.put(
                TRUST_KEY,
                Bytes::from(json),
                Some(revision),
                Box::new(move |r| done.complete(r)),
            );
            match written.wait_blocking(WRITE_TIMEOUT) {
                Some(Ok(_)) => return Ok(true),
                Some(Err(e @ StoreError::Conflict { .. })) => last = Some(e),
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(StoreError::Unavailable(format!(
                        "writing {TRUST_KEY} took longer than {WRITE_TIMEOUT:?}"
                    ))
                    .into())
                }
            }
        }
        Err(last.unwrap_or(StoreError::Closed).into())
    }

    fn watch(&self, changed: Arc<dyn Fn() + Send + Sync>) {
        self.docs.watch(TRUST_KEY, changed);
    }

    fn trust_stamp(&self) -> Option<(SystemTime, u64)> {
        let revision = match self.docs.revision(TRUST_KEY) {
            Some(revision) => revision,
            None => self.docs.get(TRUST_KEY).ok()??.revision,
        };
        Some((SystemTime::UNIX_EPOCH, revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryDocs;

    const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn two_writers_racing_both_land_and_revocation_is_seen() {
        let docs: Arc<dyn DocStore> = Arc::new(MemoryDocs::default());
        let (a, b) = (DocTrust::new(docs.clone()), DocTrust::new(docs));
        let now = SystemTime::now();
        // B's change is made first against records A then changes: it runs again on A's.
        let mut first = true;
        let changed = b
            .modify(&mut |trust| {
                if std::mem::take(&mut first) {
                    a.modify(&mut |t| {
                        t.revoked
                            .push(palyra_proto::identity::trust::RevokedDevice {
                                device_id: DEVICE.into(),
                                revoked_at_unix_ms: 1,
                                reason: "a".into(),
                            });
                        Ok(true)
                    })
                    .unwrap();
                }
                trust
                    .devices
                    .push(palyra_proto::identity::trust::DeviceCertRecord {
                        device_id: DEVICE.into(),
                        spki_sha256: "00".repeat(32),
                        issued_at_unix_ms: 1,
                        expires_at_unix_ms: 2,
                        pending: false,
                        revoked_at_unix_ms: None,
                    });
                Ok(true)
            })
            .unwrap();
        assert!(changed);
        let trust = a.load_trust().unwrap();
        assert_eq!(trust.revoked.len(), 1, "A's revocation kept");
        assert_eq!(trust.devices.len(), 1, "B's record added on top");
        assert_eq!(a.trust_stamp(), b.trust_stamp());
        assert!(
            !b.revoke_device(now, DEVICE, "again").unwrap(),
            "already revoked"
        );
    }
}
