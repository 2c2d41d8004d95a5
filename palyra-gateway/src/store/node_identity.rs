//! A node's identity directory, written by `palyra node enroll` and read by every `palyra node`
//! command (mode 0700, every file 0600):
//!
//! | file | content |
//! |---|---|
//! | `device.key.pem` | the node's Ed25519 key (PKCS#8); made here, never sent anywhere |
//! | `device.crt.pem` | its certificate from the gateway CA |
//! | `ca.crt.pem` | the gateway CA |
//! | `gateway.json` | `{"addr","server_name"}`: where the node pairs and connects |
//! | `pending.json` | a pairing awaiting approval (session, device ID, CA trust); gone once issued |
//! | `cursor.json` | `{"event_seq"}`: the last node-plane event `palyra node run` acted on |
//!
//! A rotation writes `device.key.pem.next` and `device.crt.pem.next`, then renames key and
//! certificate in that order; opening the directory finishes a rotation a crash interrupted.

use super::identity_dir::{DeviceIdentityFiles, IdentityError};
use super::{write_atomic, StoreError};
use ed25519_dalek::SigningKey;
use palyra_proto::identity::cert;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Where a node reaches its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayRecord {
    /// Node TLS / QUIC address (`HOST:PORT`; the same port serves TCP and UDP).
    pub addr: String,
    /// TLS server name verified on the gateway certificate.
    pub server_name: String,
}

/// A pairing awaiting approval, so a restarted `palyra node enroll` resumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPairing {
    /// The gateway.
    pub gateway: GatewayRecord,
    /// The device ID being paired.
    pub device_id: String,
    /// The session (= request ID the operator approves).
    pub session_id: String,
    /// Hex SHA-256 of the CA's SubjectPublicKeyInfo, when pinned by fingerprint.
    #[serde(default)]
    pub ca_spki_sha256: Option<String>,
    /// The CA certificate (PEM), when given as a file.
    #[serde(default)]
    pub ca_pem: Option<String>,
}

/// A node identity directory.
#[derive(Debug, Clone)]
pub struct NodeIdentityDir {
    dir: PathBuf,
}

const KEY: &str = "device.key.pem";
const CERT: &str = "device.crt.pem";
const CA: &str = "ca.crt.pem";
const GATEWAY: &str = "gateway.json";
const PENDING: &str = "pending.json";
const CURSOR: &str = "cursor.json";
const NEXT_KEY: &str = "device.key.pem.next";
const NEXT_CERT: &str = "device.crt.pem.next";

impl NodeIdentityDir {
    /// Opens (creating with mode 0700) `dir`, finishing an interrupted rotation.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, IdentityError> {
        let dir = dir.into();
        super::identity_dir::create_private_dir(&dir)?;
        let this = Self { dir };
        this.finish_rotation()?;
        Ok(this)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read(&self, name: &str) -> Result<Option<String>, IdentityError> {
        Ok(super::read_optional(&self.file(name))?)
    }

    fn remove(&self, name: &str) -> Result<(), IdentityError> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::Io {
                context: format!("removing {}", path.display()),
                cause: std::sync::Arc::new(e),
            }
            .into()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), IdentityError> {
        fs::rename(self.file(from), self.file(to))
            .map_err(StoreError::io(format!("renaming {from} to {to}")))?;
        super::fsync_dir(&self.dir)?;
        Ok(())
    }

    fn json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, IdentityError> {
        Ok(super::read_json(&self.file(name))?)
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), IdentityError> {
        Ok(super::write_json(&self.file(name), value)?)
    }

    /// Whether the directory holds an issued certificate.
    pub fn is_enrolled(&self) -> bool {
        self.file(CERT).exists()
    }

    /// The node's key, if made.
    pub fn key(&self) -> Result<Option<SigningKey>, IdentityError> {
        self.read(KEY)?
            .map(|pem| cert::key_from_pem(&pem).map_err(IdentityError::from))
            .transpose()
    }

    /// Saves the node's key (before it is used to pair, so a crash loses nothing).
    pub fn save_key(&self, key: &SigningKey) -> Result<(), IdentityError> {
        Ok(write_atomic(
            &self.file(KEY),
            cert::key_to_pem(key)?.as_bytes(),
        )?)
    }

    /// The pairing awaiting approval.
    pub fn pending(&self) -> Result<Option<PendingPairing>, IdentityError> {
        self.json(PENDING)
    }

    /// Records a pairing awaiting approval.
    pub fn save_pending(&self, pending: &PendingPairing) -> Result<(), IdentityError> {
        self.write_json(PENDING, pending)
    }

    /// Forgets a pairing that can no longer complete (rejected or expired).
    pub fn clear_pending(&self) -> Result<(), IdentityError> {
        self.remove(PENDING)
    }

    /// The last node-plane event sequence number acted on (a request is never acted on twice).
    pub fn event_cursor(&self) -> Result<Option<u64>, IdentityError> {
        Ok(self
            .json::<serde_json::Value>(CURSOR)?
            .and_then(|v| v["event_seq"].as_u64()))
    }

    /// Records the last event acted on.
    pub fn save_event_cursor(&self, seq: u64) -> Result<(), IdentityError> {
        self.write_json(CURSOR, &serde_json::json!({ "event_seq": seq }))
    }

    /// The gateway this node belongs to.
    pub fn gateway(&self) -> Result<Option<GatewayRecord>, IdentityError> {
        self.json(GATEWAY)
    }

    /// Stores the issued certificate, the CA and the gateway; the pairing is done.
    pub fn finish(
        &self,
        cert_pem: &str,
        ca_pem: &str,
        gateway: &GatewayRecord,
    ) -> Result<(), IdentityError> {
        write_atomic(&self.file(CA), ca_pem.as_bytes())?;
        self.write_json(GATEWAY, gateway)?;
        write_atomic(&self.file(CERT), cert_pem.as_bytes())?;
        self.remove(PENDING)
    }

    /// Installs a rotated key and certificate (crash-safe: see the module docs).
    pub fn install_rotation(&self, key: &SigningKey, cert_pem: &str) -> Result<(), IdentityError> {
        write_atomic(&self.file(NEXT_KEY), cert::key_to_pem(key)?.as_bytes())?;
        write_atomic(&self.file(NEXT_CERT), cert_pem.as_bytes())?;
        self.finish_rotation()
    }

    fn finish_rotation(&self) -> Result<(), IdentityError> {
        let (key, crt) = (self.file(NEXT_KEY).exists(), self.file(NEXT_CERT).exists());
        match (key, crt) {
            (true, true) => {
                self.rename(NEXT_KEY, KEY)?;
                self.rename(NEXT_CERT, CERT)
            }
            // The key was renamed already.
            (false, true) => self.rename(NEXT_CERT, CERT),
            // The certificate never arrived: the current pair stays.
            (true, false) => self.remove(NEXT_KEY),
            (false, false) => Ok(()),
        }
    }

    /// Loads key, certificate and CA for a connection.
    pub fn load(&self) -> Result<DeviceIdentityFiles, IdentityError> {
        DeviceIdentityFiles::load(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    #[test]
    fn an_interrupted_rotation_is_finished_or_dropped_on_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = NodeIdentityDir::open(tmp.path()).unwrap();
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let old = cert::generate_key(&mut rng);
        let new = cert::generate_key(&mut rng);
        dir.save_key(&old).unwrap();
        std::fs::write(tmp.path().join(CERT), "old cert").unwrap();

        // Crash after the key was renamed, before the certificate: open finishes it.
        std::fs::write(tmp.path().join(KEY), cert::key_to_pem(&new).unwrap()).unwrap();
        std::fs::write(tmp.path().join(NEXT_CERT), "new cert").unwrap();
        let dir = NodeIdentityDir::open(tmp.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(CERT)).unwrap(),
            "new cert"
        );
        assert_eq!(dir.key().unwrap().unwrap().to_bytes(), new.to_bytes());

        // Crash before the certificate was written: the new key is dropped, the pair stays.
        std::fs::write(tmp.path().join(NEXT_KEY), cert::key_to_pem(&old).unwrap()).unwrap();
        let dir = NodeIdentityDir::open(tmp.path()).unwrap();
        assert!(!tmp.path().join(NEXT_KEY).exists());
        assert_eq!(dir.key().unwrap().unwrap().to_bytes(), new.to_bytes());

        // A whole rotation.
        dir.install_rotation(&old, "rotated").unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(CERT)).unwrap(),
            "rotated"
        );
        assert_eq!(dir.key().unwrap().unwrap().to_bytes(), old.to_bytes());
    }
}
