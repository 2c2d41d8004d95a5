//! The gateway's identity state on disk: the CA, the server certificate and the trust file
//! (issued device certificates and revocations).
//!
//! ```text
//! DIR/ca.crt.pem  DIR/ca.key.pem (0600)  DIR/server.crt.pem  DIR/server.key.pem (0600)
//! DIR/trust.json  DIR/.lock
//! ```
//! Writers (the daemon, `palyrad cert ...`) take an exclusive lock on `.lock`; documents are
//! replaced atomically, so readers never see a partial file.

use super::{write_atomic, StoreError};
use palyra_proto::identity::cert::{
    self, CertAuthority, CertError, IssuedCert, Profile, ServerKey, ServerKeyKind,
};
use palyra_proto::identity::is_canonical_device_id;
use palyra_proto::identity::trust::{DeviceCertRecord, RevokedDevice, TrustSnapshot};
use rand_core::CryptoRngCore;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Default CA lifetime: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors of the identity state.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading or writing state failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate or key is invalid.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The trust file is not valid JSON of the expected shape.
    #[error("trust file {path} is invalid: {reason}")]
    BadTrustFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The device ID is not a canonical ULID.
    #[error(
        "device ID {0:?} is not a canonical ULID (26 characters of Crockford base32, uppercase)"
    )]
    BadDeviceId(String),
    /// The device was revoked and cannot receive a certificate.
    #[error("device {0} is revoked")]
    Revoked(String),
    /// The device is unknown.
    #[error("device {0} has no certificate issued by this gateway")]
    UnknownDevice(String),
}

/// A device certificate bundle as written for an operator.
pub struct DeviceBundle {
    /// The device certificate (PEM).
    pub cert_pem: String,
    /// The device's PKCS#8 private key (PEM).
    pub key_pem: String,
    /// The gateway CA certificate (PEM).
    pub ca_pem: String,
    /// The issued certificate.
    pub issued: IssuedCert,
}

/// Revokes every live certificate of `device_id` except `keep`. Returns whether any changed.
fn supersede(trust: &mut TrustSnapshot, now: SystemTime, device_id: &str, keep: &str) -> bool {
    let mut changed = false;
    for record in trust.devices.iter_mut().filter(|d| {
        d.device_id == device_id && d.spki_sha256 != keep && d.revoked_at_unix_ms.is_none()
    }) {
        record.revoked_at_unix_ms = Some(unix_ms(now));
        record.pending = false;
        changed = true;
    }
    changed
}

/// Makes each pending (rotated) certificate in `spki_sha256` that is still live its device's
/// current one, revoking the device's others. Returns whether anything changed.
fn confirm(trust: &mut TrustSnapshot, now: SystemTime, spki_sha256: &[[u8; 32]]) -> bool {
    let mut changed = false;
    for fp in spki_sha256 {
        let fp = hex::encode(fp);
        let Some(device) = trust
            .devices
            .iter_mut()
            .find(|d| d.spki_sha256 == fp && d.pending && d.revoked_at_unix_ms.is_none())
            .map(|d| {
                d.pending = false;
                d.device_id.clone()
            })
        else {
            continue;
        };
        supersede(trust, now, &device, &fp);
        changed = true;
    }
    changed
}

/// Revokes `device_id` (which must have a certificate). Returns false if it was already revoked.
fn revoke(
    trust: &mut TrustSnapshot,
    now: SystemTime,
    device_id: &str,
    reason: &str,
) -> Result<bool, IdentityError> {
    if !trust.devices.iter().any(|d| d.device_id == device_id) {
        return Err(IdentityError::UnknownDevice(device_id.to_owned()));
    }
    if trust.revoked.iter().any(|r| r.device_id == device_id) {
        return Ok(false);
    }
    trust.revoked.push(RevokedDevice {
        device_id: device_id.to_owned(),
        revoked_at_unix_ms: unix_ms(now),
        reason: reason.to_owned(),
    });
    Ok(true)
}

/// Where a gateway's trust records live (issued device certificates, superseded ones,
/// revocations): the identity directory's trust file ([`IdentityDir`], shared with the offline
/// `palyrad cert` commands), or a document of a store several gateways share.
pub trait TrustRecords: Send + Sync {
    /// The records as they are now.
    fn load_trust(&self) -> Result<TrustSnapshot, IdentityError>;
    /// Applies `change` to the current records and saves them if it says they changed (it may
    /// run again on newer records if another writer got there first). Returns what it said.
    /// Blocks until saved: call it on a store or maintenance thread.
    fn modify(
        &self,
        change: &mut dyn FnMut(&mut TrustSnapshot) -> Result<bool, IdentityError>,
    ) -> Result<bool, IdentityError>;
    /// A stamp that differs once the records changed, cheap enough to poll.
    fn trust_stamp(&self) -> Option<(SystemTime, u64)>;
    /// Calls `changed` as soon as another writer changed the records (where the backend can
    /// tell; the trust file is polled instead).
    fn watch(&self, _changed: std::sync::Arc<dyn Fn() + Send + Sync>) {}

    /// Records an issued device certificate in the trust file (idempotent: a certificate for
    /// the same key is recorded once, its validity extended). `pending`: issued by a rotation,
    /// confirmed once presented. A revoked device is refused.
    fn record_device_cert(
        &self,
        now: SystemTime,
        device_id: &str,
        cert_der: &[u8],
        pending: bool,
    ) -> Result<(), IdentityError> {
        if cert::device_id_from_cert(cert_der)?.as_deref() != Some(device_id) {
            return Err(IdentityError::BadDeviceId(device_id.to_owned()));
        }
        let spki_sha256 = hex::encode(cert::cert_spki_fingerprint(cert_der)?);
        let expires_at_unix_ms = unix_ms(cert::cert_not_after(cert_der)?);
        self.modify(&mut |trust| {
            if trust.revoked.iter().any(|r| r.device_id == device_id) {
                return Err(IdentityError::Revoked(device_id.to_owned()));
            }
            match trust
                .devices
                .iter_mut()
                .find(|d| d.spki_sha256 == spki_sha256 && d.device_id == device_id)
            {
                Some(existing) if existing.expires_at_unix_ms >= expires_at_unix_ms => {
                    return Ok(false)
                }
                Some(existing) => existing.expires_at_unix_ms = expires_at_unix_ms,
                None => trust.devices.push(DeviceCertRecord {
                    device_id: device_id.to_owned(),
                    spki_sha256: spki_sha256.clone(),
                    issued_at_unix_ms: unix_ms(now),
                    expires_at_unix_ms,
                    pending,
                    revoked_at_unix_ms: None,
                }),
            }
            Ok(true)
        })
        .map(drop)
    }

    /// Confirms pending (rotated) certificates seen in use: each becomes the device's current
    /// certificate and the device's other certificates are revoked. Returns whether anything
    /// changed.
    fn confirm_certs(
        &self,
        now: SystemTime,
        spki_sha256: &[[u8; 32]],
    ) -> Result<bool, IdentityError> {
        self.modify(&mut |trust| Ok(confirm(trust, now, spki_sha256)))
    }

    /// Revokes every certificate of `device_id` but the one for `keep_spki_sha256` (a pairing
    /// that replaces the device).
    fn supersede_device_certs(
        &self,
        now: SystemTime,
        device_id: &str,
        keep_spki_sha256: &[u8; 32],
    ) -> Result<(), IdentityError> {
        let keep = hex::encode(keep_spki_sha256);
        self.modify(&mut |trust| Ok(supersede(trust, now, device_id, &keep)))
            .map(drop)
    }

    /// Revokes every certificate of `device_id`. Returns false if it was already revoked.
    fn revoke_device(
        &self,
        now: SystemTime,
        device_id: &str,
        reason: &str,
    ) -> Result<bool, IdentityError> {
        if !is_canonical_device_id(device_id) {
            return Err(IdentityError::BadDeviceId(device_id.to_owned()));
        }
        self.modify(&mut |trust| revoke(trust, now, device_id, reason))
    }
}

impl TrustRecords for IdentityDir {
    fn load_trust(&self) -> Result<TrustSnapshot, IdentityError> {
        IdentityDir::load_trust(self)
    }

    /// Under the directory's lock (the offline commands take it too).
    fn modify(
        &self,
        change: &mut dyn FnMut(&mut TrustSnapshot) -> Result<bool, IdentityError>,
    ) -> Result<bool, IdentityError> {
        let _lock = self.lock()?;
        let mut trust = IdentityDir::load_trust(self)?;
        let changed = change(&mut trust)?;
        if changed {
            self.save_trust(&trust)?;
        }
        Ok(changed)
    }

    fn trust_stamp(&self) -> Option<(SystemTime, u64)> {
        IdentityDir::trust_stamp(self)
    }
}

/// The server certificate and its key.
pub struct ServerIdentity {
    /// The certificate.
    pub cert: IssuedCert,
    /// Its key.
    pub key: ServerKey,
}

pub use palyra_proto::time::unix_ms;

/// Handle on an identity directory.
#[derive(Debug, Clone)]
pub struct IdentityDir {
    dir: PathBuf,
}

struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl IdentityDir {
    /// Opens (creating with mode 0700) the directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, IdentityError> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Path of the trust file (watched by the daemon for changes).
    pub fn trust_path(&self) -> PathBuf {
        self.dir.join("trust.json")
    }

    fn lock(&self) -> Result<DirLock, IdentityError> {
        let path = self.dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(StoreError::io(format!("locking {}", path.display())))?;
        Ok(DirLock(file))
    }

    fn read_string(&self, name: &str) -> Result<Option<String>, IdentityError> {
        Ok(super::read_optional(&self.dir.join(name))?)
    }

    /// Loads the CA, creating it on first use.
    pub fn load_or_create_ca(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
    ) -> Result<CertAuthority, IdentityError> {
        let _lock = self.lock()?;
        self.load_or_create_ca_locked(rng, now)
    }

    fn load_or_create_ca_locked(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
    ) -> Result<CertAuthority, IdentityError> {
        if let (Some(cert), Some(key)) = (
            self.read_string("ca.crt.pem")?,
            self.read_string("ca.key.pem")?,
        ) {
            return Ok(CertAuthority::from_pem(&cert, &key)?);
        }
        // A unique name per gateway: a certificate from another gateway then fails as
        // "unknown CA" instead of matching our CA by name and failing its signature check.
        let mut id = [0u8; 8];
        rng.fill_bytes(&mut id);
        let name = format!("Palyra Gateway CA {}", hex::encode(id));
        let ca = CertAuthority::generate(rng, now, CA_VALIDITY, &name)?;
        // Key first: a CA certificate without its key would be unusable.
        write_atomic(&self.dir.join("ca.key.pem"), ca.key_pem()?.as_bytes())?;
        write_atomic(&self.dir.join("ca.crt.pem"), ca.cert_pem()?.as_bytes())?;
        Ok(ca)
    }

    /// Loads the CA without creating it.
    pub fn load_ca(&self) -> Result<Option<CertAuthority>, IdentityError> {
        match (
            self.read_string("ca.crt.pem")?,
            self.read_string("ca.key.pem")?,
        ) {
            (Some(cert), Some(key)) => Ok(Some(CertAuthority::from_pem(&cert, &key)?)),
            _ => Ok(None),
        }
    }

    /// Reads the trust file (empty when it does not exist yet).
    pub fn load_trust(&self) -> Result<TrustSnapshot, IdentityError> {
        let path = self.trust_path();
        match self.read_string("trust.json")? {
            None => Ok(TrustSnapshot::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| IdentityError::BadTrustFile {
                path,
                reason: e.to_string(),
            }),
        }
    }

    fn save_trust(&self, trust: &TrustSnapshot) -> Result<(), IdentityError> {
        let json = serde_json::to_vec_pretty(trust).map_err(|e| IdentityError::BadTrustFile {
            path: self.trust_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.trust_path(), &json)?;
        Ok(())
    }

    /// A change stamp of the trust file (modification time and length), for cheap polling.
    pub fn trust_stamp(&self) -> Option<(SystemTime, u64)> {
        let meta = fs::metadata(self.trust_path()).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    }

    /// Issues a device certificate for a fresh key, records it in the trust file and returns the
    /// bundle (offline issuance: `palyrad cert issue-device`). A revoked device ID is refused.
    pub fn issue_device(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
        device_id: &str,
        validity: Duration,
    ) -> Result<DeviceBundle, IdentityError> {
        let key = cert::generate_key(rng);
        let (issued, ca_pem) = self.sign_device_key(
            rng,
            now,
            device_id,
            key.verifying_key().as_bytes(),
            validity,
        )?;
        TrustRecords::record_device_cert(self, now, device_id, &issued.der, false)?;
        Ok(DeviceBundle {
            cert_pem: issued.pem.clone(),
            key_pem: cert::key_to_pem(&key)?,
            ca_pem,
            issued,
        })
    }

    /// Signs a device certificate for the device's own Ed25519 public key (nothing recorded
    /// yet: see [`IdentityDir::record_device_cert`]). Returns it with the CA certificate (PEM).
    /// A revoked device ID is refused.
    pub fn sign_device_key(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
        device_id: &str,
        public_key: &[u8; 32],
        validity: Duration,
    ) -> Result<(IssuedCert, String), IdentityError> {
        if !is_canonical_device_id(device_id) {
            return Err(IdentityError::BadDeviceId(device_id.to_owned()));
        }
        let _lock = self.lock()?;
        let ca = self.load_or_create_ca_locked(rng, now)?;
        if self
            .load_trust()?
            .revoked
            .iter()
            .any(|r| r.device_id == device_id)
        {
            return Err(IdentityError::Revoked(device_id.to_owned()));
        }
        let issued = ca.issue(
            rng,
            &Profile::Device { device_id },
            cert::spki_of_public(public_key)?,
            now,
            validity,
        )?;
        Ok((issued, ca.cert_pem()?))
    }

    /// Returns the stored server certificate of `kind` if it is still valid for more than
    /// `renew_before` and names exactly `hosts`; otherwise issues, stores and returns a new one.
    /// Ed25519 lives in `server.*`, ECDSA P-256 in `server-ecdsa.*`.
    pub fn load_or_issue_server_cert(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
        kind: ServerKeyKind,
        hosts: &[String],
        validity: Duration,
        renew_before: Duration,
    ) -> Result<ServerIdentity, IdentityError> {
        let _lock = self.lock()?;
        let ca = self.load_or_create_ca_locked(rng, now)?;
        let stem = match kind {
            ServerKeyKind::Ed25519 => "server",
            ServerKeyKind::EcdsaP256 => "server-ecdsa",
        };
        let (cert_file, key_file, hosts_file) = (
            format!("{stem}.crt.pem"),
            format!("{stem}.key.pem"),
            format!("{stem}.hosts.json"),
        );
        if let (Some(cert_pem), Some(key_pem), Some(hosts_json)) = (
            self.read_string(&cert_file)?,
            self.read_string(&key_file)?,
            self.read_string(&hosts_file)?,
        ) {
            let same_hosts = serde_json::from_str::<Vec<String>>(&hosts_json)
                .is_ok_and(|stored| stored == hosts);
            let der = cert::cert_pem_to_der(&cert_pem)?;
            let not_after = cert::cert_not_after(&der)?;
            let key = ServerKey::from_pem(kind, &key_pem)?;
            let issued_by_ca = self.verify_issued_by(&ca, &der);
            if same_hosts && issued_by_ca && not_after > now + renew_before {
                let spki_sha256 = cert::cert_spki_fingerprint(&der)?;
                return Ok(ServerIdentity {
                    cert: IssuedCert {
                        der,
                        pem: cert_pem,
                        not_after,
                        not_before: now,
                        spki_sha256,
                    },
                    key,
                });
            }
        }
        let key = ServerKey::generate(kind, rng);
        let issued = ca.issue(rng, &Profile::Server { hosts }, key.spki()?, now, validity)?;
        write_atomic(&self.dir.join(&key_file), key.to_pem()?.as_bytes())?;
        write_atomic(&self.dir.join(&cert_file), issued.pem.as_bytes())?;
        let hosts_json = serde_json::to_vec(hosts).unwrap_or_default();
        write_atomic(&self.dir.join(&hosts_file), &hosts_json)?;
        Ok(ServerIdentity { cert: issued, key })
    }

    /// Issues an ECDSA P-256 server certificate for another service of the deployment
    /// (`palyra-browserd`) naming `hosts`, signed by the gateway CA. Nothing is stored here.
    pub fn issue_service_cert(
        &self,
        rng: &mut impl CryptoRngCore,
        now: SystemTime,
        hosts: &[String],
        validity: Duration,
    ) -> Result<ServerIdentity, IdentityError> {
        let _lock = self.lock()?;
        let ca = self.load_or_create_ca_locked(rng, now)?;
        let key = ServerKey::generate(ServerKeyKind::EcdsaP256, rng);
        let cert = ca.issue(rng, &Profile::Server { hosts }, key.spki()?, now, validity)?;
        Ok(ServerIdentity { cert, key })
    }

    fn verify_issued_by(&self, ca: &CertAuthority, cert_der: &[u8]) -> bool {
        cert::verify_signed_by(cert_der, ca.cert_der()).unwrap_or(false)
    }
}

/// Creates `dir` (and its parents) and restricts it to its owner (mode 0700): key material.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(StoreError::io(format!("creating {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(StoreError::io(format!("restricting {}", dir.display())))?;
    }
    Ok(())
}

/// A device's identity directory as used by `palyra node ...`: `device.crt.pem`,
/// `device.key.pem` (PKCS#8) and `ca.crt.pem`.
pub struct DeviceIdentityFiles {
    /// Device certificate (DER).
    pub cert_der: Vec<u8>,
    /// Device key (PKCS#8 DER).
    pub key_der: Vec<u8>,
    /// Gateway CA certificate (DER).
    pub ca_der: Vec<u8>,
    /// Device ID named by the certificate.
    pub device_id: Option<String>,
}

impl DeviceIdentityFiles {
    /// Loads the three PEM files from `dir`, with a clear error naming the file at fault.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let read = |name: &str| -> Result<String, IdentityError> {
            let path = dir.join(name);
            fs::read_to_string(&path).map_err(|e| {
                StoreError::Io {
                    context: format!("reading {}", path.display()),
                    cause: std::sync::Arc::new(e),
                }
                .into()
            })
        };
        let cert_der = cert::cert_pem_to_der(&read("device.crt.pem")?)?;
        let key = cert::key_from_pem(&read("device.key.pem")?)?;
        let ca_der = cert::cert_pem_to_der(&read("ca.crt.pem")?)?;
        Ok(Self {
            device_id: cert::device_id_from_cert(&cert_der)?,
            cert_der,
            key_der: cert::key_to_der(&key)?,
            ca_der,
        })
    }

    /// Writes a bundle into `dir` (created if needed; the key file is 0600).
    pub fn write(dir: &Path, bundle: &DeviceBundle) -> Result<(), IdentityError> {
        create_private_dir(dir)?;
        write_atomic(&dir.join("device.key.pem"), bundle.key_pem.as_bytes())?;
        write_atomic(&dir.join("device.crt.pem"), bundle.cert_pem.as_bytes())?;
        write_atomic(&dir.join("ca.crt.pem"), bundle.ca_pem.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";

    #[test]
    fn ca_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityDir::open(dir.path()).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let now = SystemTime::now();
        let a = ids.load_or_create_ca(&mut rng, now).unwrap();
        let b = ids.load_or_create_ca(&mut rng, now).unwrap();
        assert_eq!(a.cert_der(), b.cert_der());
    }

    #[test]
    fn issue_and_revoke_update_the_trust_file() {
        let dir = tempfile::tempdir().unwrap();
        let ids = IdentityDir::open(dir.path()).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let now = SystemTime::now();
        let bundle = ids
            .issue_device(&mut rng, now, DEVICE, Duration::from_secs(3600))
            .unwrap();
        let trust = ids.load_trust().unwrap();
        assert_eq!(trust.devices.len(), 1);
        assert_eq!(
            trust.devices[0].spki_sha256,
            hex::encode(bundle.issued.spki_sha256)
        );
        assert!(ids.revoke_device(now, DEVICE, "lost").unwrap());
        assert!(!ids.revoke_device(now, DEVICE, "again").unwrap());
        assert!(matches!(
            ids.issue_device(&mut rng, now, DEVICE, Duration::from_secs(3600)),
            Err(IdentityError::Revoked(_))
        ));
        assert!(matches!(
            ids.revoke_device(now, "01BX5ZZKBKACTAV9WEVGEMMVRZ", "x"),
            Err(IdentityError::UnknownDevice(_))
        ));
        assert!(matches!(
            ids.issue_device(&mut rng, now, "not-a-ulid", Duration::from_secs(1)),
            Err(IdentityError::BadDeviceId(_))
        ));
    }

    #[test]
    fn server_certificate_is_reused_until_renewal_is_due() {
        for kind in [ServerKeyKind::Ed25519, ServerKeyKind::EcdsaP256] {
            let dir = tempfile::tempdir().unwrap();
            let ids = IdentityDir::open(dir.path()).unwrap();
            let mut rng = ChaCha20Rng::seed_from_u64(3);
            let now = SystemTime::now();
            let day = Duration::from_secs(86_400);
            let hosts = vec![];
            let first = ids
                .load_or_issue_server_cert(&mut rng, now, kind, &hosts, 3 * day, day)
                .unwrap();
            let again = ids
                .load_or_issue_server_cert(&mut rng, now + day, kind, &hosts, 3 * day, day)
                .unwrap();
            assert_eq!(first.cert.der, again.cert.der);
            assert_eq!(
                first.key.pkcs8_der().unwrap(),
                again.key.pkcs8_der().unwrap()
            );
            let renewed = ids
                .load_or_issue_server_cert(
                    &mut rng,
                    now + 2 * day + Duration::from_secs(1),
                    kind,
                    &hosts,
                    3 * day,
                    day,
                )
                .unwrap();
            assert_ne!(first.cert.der, renewed.cert.der);
            let other_hosts = vec!["gw.example".to_owned()];
            let rehosted = ids
                .load_or_issue_server_cert(&mut rng, now, kind, &other_hosts, 3 * day, day)
                .unwrap();
            assert_ne!(rehosted.cert.der, renewed.cert.der);
            // rustls accepts the key and certificate together.
            palyra_proto::quic::tls::certified_key(
                vec![rehosted.cert.der],
                rehosted.key.pkcs8_der().unwrap(),
            )
            .unwrap();
        }
    }
}
