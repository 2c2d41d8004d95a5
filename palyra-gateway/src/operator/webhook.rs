//! Webhook ingress: `POST /webhooks/v1/{integration}` signed with the integration's secret.
//!
//! The signature is `X-Palyra-Signature: v1=<hex HMAC-SHA256(secret, timestamp "." nonce "." body)>`
//! with `X-Palyra-Timestamp` (Unix seconds) and `X-Palyra-Nonce` (16..=128 printable ASCII).
//! The timestamp must be within ±5 minutes; each nonce is accepted once, and remembered on disk
//! for the window, so a replay after a restart is refused too. Integrations (name, secret, body
//! limit) are managed through the admin API and stored in `STATE/operator/integrations.json`
//! (mode 0600: the secret is needed to verify, so it is kept, unlike the admin token).

use crate::store::{write_atomic, StoreError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Accepted clock difference between sender and gateway.
pub const WINDOW_SECS: u64 = 300;
/// Nonces remembered at once (more in one window is refused: 429).
pub const MAX_NONCES: usize = 10_000;
/// Default and largest body limit of an integration.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;
/// Largest configurable body limit.
pub const MAX_BODY: u64 = 1024 * 1024;
/// Most integrations.
pub const MAX_INTEGRATIONS: usize = 256;

/// One integration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Integration {
    /// Name (`[a-z0-9_-]{1,64}`), the last path segment.
    pub name: String,
    /// HMAC key, hex.
    pub secret_hex: String,
    /// Largest body accepted.
    pub max_body_bytes: u64,
    /// Creation time.
    pub created_at_unix_ms: u64,
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// Headers missing or malformed (400).
    #[error("{0}")]
    Malformed(String),
    /// Timestamp outside the window (401).
    #[error("timestamp outside the accepted window of {WINDOW_SECS} s")]
    Stale,
    /// Signature does not verify (401).
    #[error("signature does not verify")]
    BadSignature,
    /// Nonce already used (409).
    #[error("nonce already used")]
    Replayed,
    /// Too many nonces in the window (429).
    #[error("too many webhook deliveries; retry later")]
    Overloaded,
    /// The nonce could not be made durable (503).
    #[error("cannot record the nonce: {0}")]
    Store(String),
}

/// Whether `name` is a valid integration name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The signature header value for a delivery (what senders compute).
pub fn sign(secret: &[u8], timestamp: &str, nonce: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(nonce.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Integrations and the nonces seen within the window, persisted.
pub struct WebhookStore {
    dir: PathBuf,
    integrations: Mutex<BTreeMap<String, Integration>>,
    /// nonce key (`integration/nonce`) → expiry (Unix seconds).
    nonces: Mutex<HashMap<String, u64>>,
}

fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Io {
            context: format!("parsing {}", path.display()),
            source: std::sync::Arc::new(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(StoreError::io(format!("reading {}", path.display()))(e)),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomic(path, bytes)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(StoreError::io(format!("securing {}", path.display())))?;
    }
    Ok(())
}

impl WebhookStore {
    /// Opens (or starts) the store under `STATE/operator`.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let dir = state_dir.join("operator");
        std::fs::create_dir_all(&dir)
            .map_err(StoreError::io(format!("creating {}", dir.display())))?;
        let list: Vec<Integration> = read_json(&dir.join("integrations.json"))?;
        let nonces: HashMap<String, u64> = read_json(&dir.join("webhook-nonces.json"))?;
        Ok(Self {
            integrations: Mutex::new(list.into_iter().map(|i| (i.name.clone(), i)).collect()),
            nonces: Mutex::new(nonces),
            dir,
        })
    }

    fn save_integrations(&self, map: &BTreeMap<String, Integration>) -> Result<(), StoreError> {
        let list: Vec<&Integration> = map.values().collect();
        write_private(
            &self.dir.join("integrations.json"),
            &serde_json::to_vec_pretty(&list).unwrap_or_default(),
        )
    }

    /// Creates an integration; returns it with its secret (shown once to the operator).
    pub fn create(
        &self,
        name: &str,
        max_body_bytes: Option<u64>,
        now_ms: u64,
        secret: [u8; 32],
    ) -> Result<Integration, String> {
        if !valid_name(name) {
            return Err("name must be 1..=64 of a-z, 0-9, '-', '_'".into());
        }
        let limit = max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
        if limit == 0 || limit > MAX_BODY {
            return Err(format!("max_body_bytes must be 1..={MAX_BODY}"));
        }
        let mut map = self.integrations.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(name) {
            return Err(format!("integration {name:?} exists; delete it first"));
        }
        if map.len() >= MAX_INTEGRATIONS {
            return Err(format!("at most {MAX_INTEGRATIONS} integrations"));
        }
        let integration = Integration {
            name: name.to_owned(),
            secret_hex: hex::encode(secret),
            max_body_bytes: limit,
            created_at_unix_ms: now_ms,
        };
        map.insert(name.to_owned(), integration.clone());
        if let Err(e) = self.save_integrations(&map) {
            map.remove(name);
            return Err(e.to_string());
        }
        Ok(integration)
    }

    /// Deletes an integration; false if it did not exist.
    pub fn delete(&self, name: &str) -> Result<bool, String> {
        let mut map = self.integrations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(old) = map.remove(name) else {
            return Ok(false);
        };
        if let Err(e) = self.save_integrations(&map) {
            map.insert(name.to_owned(), old);
            return Err(e.to_string());
        }
        Ok(true)
    }

    /// Every integration (secrets included: callers redact).
    pub fn list(&self) -> Vec<Integration> {
        self.integrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The integration named `name`.
    pub fn get(&self, name: &str) -> Option<Integration> {
        self.integrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Verifies a delivery and consumes its nonce durably.
    pub fn verify(
        &self,
        integration: &Integration,
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        nonce: Option<&[u8]>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<(), WebhookError> {
        let text = |v: Option<&[u8]>, name: &str| -> Result<String, WebhookError> {
            v.and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned)
                .ok_or_else(|| WebhookError::Malformed(format!("{name} header missing")))
        };
        let signature = text(signature, "X-Palyra-Signature")?;
        let timestamp = text(timestamp, "X-Palyra-Timestamp")?;
        let nonce = text(nonce, "X-Palyra-Nonce")?;
        if nonce.len() < 16 || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(WebhookError::Malformed(
                "X-Palyra-Nonce must be 16..=128 printable ASCII characters".into(),
            ));
        }
        let ts: u64 = timestamp.parse().map_err(|_| {
            WebhookError::Malformed("X-Palyra-Timestamp must be Unix seconds".into())
        })?;
        if ts.abs_diff(now_secs) > WINDOW_SECS {
            return Err(WebhookError::Stale);
        }
        let expected = hex::decode(&integration.secret_hex).unwrap_or_default();
        let mac_hex = signature
            .strip_prefix("v1=")
            .ok_or_else(|| WebhookError::Malformed("signature must be v1=<hex>".into()))?;
        let given = hex::decode(mac_hex).map_err(|_| WebhookError::BadSignature)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&expected).expect("any key length");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(nonce.as_bytes());
        mac.update(b".");
        mac.update(body);
        // verify_slice compares in constant time.
        mac.verify_slice(&given)
            .map_err(|_| WebhookError::BadSignature)?;
        let key = format!("{}/{nonce}", integration.name);
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        nonces.retain(|_, expiry| *expiry > now_secs);
        if nonces.contains_key(&key) {
            return Err(WebhookError::Replayed);
        }
        if nonces.len() >= MAX_NONCES {
            return Err(WebhookError::Overloaded);
        }
        nonces.insert(key.clone(), now_secs.max(ts) + WINDOW_SECS + 1);
        let saved = write_atomic(
            &self.dir.join("webhook-nonces.json"),
            &serde_json::to_vec(&*nonces).unwrap_or_default(),
        );
        if let Err(e) = saved {
            nonces.remove(&key);
            return Err(WebhookError::Store(e.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_windows_and_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let store = WebhookStore::open(dir.path()).unwrap();
        let hook = store.create("ci", None, 1, [7; 32]).unwrap();
        assert!(store.create("ci", None, 1, [8; 32]).is_err());
        assert!(store.create("Bad Name", None, 1, [8; 32]).is_err());
        assert!(store.create("big", Some(MAX_BODY + 1), 1, [8; 32]).is_err());
        let secret = hex::decode(&hook.secret_hex).unwrap();
        let now = 1_800_000_000u64;
        let ts = now.to_string();
        let nonce = "nonce-0123456789abcdef";
        let body = br#"{"ok":true}"#;
        let sig = sign(&secret, &ts, nonce, body);
        let verify = |sig: &str, ts: &str, nonce: &str, body: &[u8], at: u64| {
            store.verify(
                &hook,
                Some(sig.as_bytes()),
                Some(ts.as_bytes()),
                Some(nonce.as_bytes()),
                body,
                at,
            )
        };
        assert_eq!(verify(&sig, &ts, nonce, body, now), Ok(()));
        assert_eq!(
            verify(&sig, &ts, nonce, body, now),
            Err(WebhookError::Replayed)
        );
        // Replays are refused after a restart too.
        let reopened = WebhookStore::open(dir.path()).unwrap();
        let hook2 = reopened.get("ci").unwrap();
        assert_eq!(hook2, hook);
        assert_eq!(
            reopened.verify(
                &hook2,
                Some(sig.as_bytes()),
                Some(ts.as_bytes()),
                Some(nonce.as_bytes()),
                body,
                now + 10
            ),
            Err(WebhookError::Replayed)
        );
        // Window: just inside and just outside 5 minutes.
        let n2 = "nonce-second-delivery";
        let old = (now - WINDOW_SECS).to_string();
        assert_eq!(
            verify(&sign(&secret, &old, n2, body), &old, n2, body, now),
            Ok(())
        );
        let n3 = "nonce-third-delivery!";
        let older = (now - WINDOW_SECS - 1).to_string();
        assert_eq!(
            verify(&sign(&secret, &older, n3, body), &older, n3, body, now),
            Err(WebhookError::Stale)
        );
        // A changed body or a wrong secret does not verify.
        let n4 = "nonce-fourth-delivery";
        let good = sign(&secret, &ts, n4, body);
        assert_eq!(
            verify(&good, &ts, n4, b"{\"ok\":false}", now),
            Err(WebhookError::BadSignature)
        );
        assert_eq!(
            verify(&sign(b"other", &ts, n4, body), &ts, n4, body, now),
            Err(WebhookError::BadSignature)
        );
        assert!(matches!(
            verify(&good, &ts, "short", body, now),
            Err(WebhookError::Malformed(_))
        ));
        assert!(store.delete("ci").unwrap());
        assert!(!store.delete("ci").unwrap());
        assert!(WebhookStore::open(dir.path()).unwrap().get("ci").is_none());
    }
}
