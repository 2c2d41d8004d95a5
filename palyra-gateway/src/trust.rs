//! The gateway's trust records as a service: certificates recorded at pairing, superseded ones,
//! revocations. Each change is written to the identity directory's trust file on the service's
//! own thread (the file is shared with the offline `palyrad cert` commands, under the directory's
//! lock); then the live index is reloaded and the listeners are told, and only then is the caller
//! answered, so a new certificate works on the very next handshake and a revoked device is cut
//! off at once.

use crate::store::worker::Worker;
use crate::store::{Done, IdentityError, StoreError, TrustRecords};
use palyra_proto::identity::cert;
use palyra_proto::identity::trust::{TrustIndex, TrustSnapshot};
use std::sync::Arc;
use std::time::SystemTime;

/// A change of the trust records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustChange {
    /// Record an issued certificate as the device's (`pending`: a rotation, confirmed by use).
    Record {
        /// The device.
        device_id: String,
        /// The certificate (DER).
        cert_der: Vec<u8>,
        /// Issued by a rotation with a new key.
        pending: bool,
    },
    /// Revoke every other certificate of the device.
    Supersede {
        /// The device.
        device_id: String,
        /// SPKI fingerprint of the certificate to keep.
        keep: [u8; 32],
    },
    /// Revoke the device (every certificate it holds).
    Revoke {
        /// The device.
        device_id: String,
        /// Why.
        reason: String,
    },
}

/// What applying a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Done (for a revocation: newly revoked).
    Changed,
    /// Nothing to do (already recorded or revoked).
    Unchanged,
}

/// Why a change was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustError {
    /// The device ID is not a canonical ULID.
    #[error("device ID {0:?} is not a canonical ULID")]
    BadDeviceId(String),
    /// The gateway never issued a certificate to the device.
    #[error("device {0} has no certificate issued by this gateway")]
    UnknownDevice(String),
    /// The device is revoked.
    #[error("device {0} is revoked")]
    Revoked(String),
    /// The identity directory refused it otherwise (a bad certificate).
    #[error("{0}")]
    Refused(String),
    /// The trust file could not be written.
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Job = (Vec<TrustChange>, Done<Vec<Result<Applied, TrustError>>>);

/// The trust records of one gateway.
pub struct TrustService {
    worker: Worker<Job>,
    live: Arc<TrustIndex>,
}

impl TrustService {
    /// Starts the service over the records `ids`; after every change the index `live` is
    /// reloaded and `changed` is called (it wakes the listeners that re-check their peers).
    pub fn start(
        ids: Arc<dyn TrustRecords>,
        live: Arc<TrustIndex>,
        changed: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, StoreError> {
        let index = Arc::clone(&live);
        let worker = Worker::spawn("palyra-trust", move |jobs: Vec<Job>| {
            let mut answers = Vec::with_capacity(jobs.len());
            let mut any = false;
            for (changes, done) in jobs {
                let results: Vec<Result<Applied, TrustError>> =
                    changes.iter().map(|c| apply(ids.as_ref(), c)).collect();
                any |= results.iter().any(|r| matches!(r, Ok(Applied::Changed)));
                answers.push((done, results));
            }
            if any {
                match ids.load_trust() {
                    Ok(snapshot) => index.replace(&snapshot),
                    Err(e) => tracing::error!(error = %e, "cannot reload the trust file"),
                }
                changed();
            }
            for (done, results) in answers {
                done(Ok(results));
            }
        })
        .map_err(StoreError::io("starting the trust thread"))?;
        Ok(Self { worker, live })
    }

    /// The live index.
    pub fn index(&self) -> &Arc<TrustIndex> {
        &self.live
    }

    /// The trust records as the live index holds them.
    pub fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.live.snapshot()
    }

    /// Applies `changes` in order; `done` gets one result per change once they are durable and
    /// live.
    pub fn apply(&self, changes: Vec<TrustChange>, done: Done<Vec<Result<Applied, TrustError>>>) {
        if let Err((_, done)) = self.worker.submit((changes, done)) {
            done(Err(StoreError::Closed));
        }
    }

    /// Stops taking changes and waits until every change handed over is applied.
    pub fn close(&self) {
        self.worker.close();
    }
}

/// One change against the trust records.
fn apply(ids: &dyn TrustRecords, change: &TrustChange) -> Result<Applied, TrustError> {
    let now = SystemTime::now();
    let refused = |e: IdentityError| match e {
        IdentityError::Store(e) => TrustError::Store(e),
        IdentityError::BadDeviceId(id) => TrustError::BadDeviceId(id),
        IdentityError::UnknownDevice(id) => TrustError::UnknownDevice(id),
        IdentityError::Revoked(id) => TrustError::Revoked(id),
        other => TrustError::Refused(other.to_string()),
    };
    match change {
        TrustChange::Record {
            device_id,
            cert_der,
            pending,
        } => ids
            .record_device_cert(now, device_id, cert_der, *pending)
            .map(|()| Applied::Changed)
            .map_err(refused),
        TrustChange::Supersede { device_id, keep } => ids
            .supersede_device_certs(now, device_id, keep)
            .map(|()| Applied::Changed)
            .map_err(refused),
        TrustChange::Revoke { device_id, reason } => ids
            .revoke_device(now, device_id, reason)
            .map(|newly| {
                if newly {
                    Applied::Changed
                } else {
                    Applied::Unchanged
                }
            })
            .map_err(refused),
    }
}

/// The trust changes a pairing effect stands for.
pub fn change_of(effect: &palyra_proto::enroll::gateway::Effect) -> Result<TrustChange, String> {
    use palyra_proto::enroll::gateway::Effect;
    match effect {
        Effect::RecordCert {
            device_id,
            cert_pem,
            pending,
        } => Ok(TrustChange::Record {
            device_id: device_id.clone(),
            cert_der: cert::cert_pem_to_der(cert_pem).map_err(|e| e.to_string())?,
            pending: *pending,
        }),
        Effect::Supersede {
            device_id,
            keep_cert_pem,
        } => {
            let der = cert::cert_pem_to_der(keep_cert_pem).map_err(|e| e.to_string())?;
            Ok(TrustChange::Supersede {
                device_id: device_id.clone(),
                keep: cert::cert_spki_fingerprint(&der).map_err(|e| e.to_string())?,
            })
        }
    }
}
