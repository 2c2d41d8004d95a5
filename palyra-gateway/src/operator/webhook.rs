//! Webhook ingress: `POST /webhooks/v1/{integration}` signed with the integration's secret.
//!
//! The signature is `X-Palyra-Signature: v1=<hex HMAC-SHA256(secret, timestamp "." nonce "." body)>`
//! with `X-Palyra-Timestamp` (Unix seconds) and `X-Palyra-Nonce` (16..=128 printable ASCII).
//! The timestamp must be within ±5 minutes; each nonce is accepted once, and remembered on disk
//! for the window, so a replay after a restart is refused too. Integrations (name, secret, body
//! limit) are managed through the admin API and stored in `STATE/operator/integrations.json`
//! (mode 0600: the secret is needed to verify, so it is kept, unlike the admin token).

use crate::notify::Notifier;
use crate::store::{DocStore, Document, Pending, StoreError};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

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

/// Integrations and the nonces seen within the window, each a document of the store.
pub struct WebhookStore {
    integrations: Arc<Document<BTreeMap<String, Integration>>>,
    /// nonce key (`integration/nonce`) → expiry (Unix seconds).
    nonces: Arc<Document<HashMap<String, u64>>>,
}

/// The integrations' document (0600: the secrets are in it).
pub const INTEGRATIONS_KEY: &str = "operator/integrations.json";
/// The nonces' document.
pub const NONCES_KEY: &str = "operator/webhook-nonces.json";

/// A change of the store, answered once durable.
pub type Change<T> = Pending<Result<T, StoreError>>;

fn decode<T: for<'de> Deserialize<'de> + Default>(
    key: &str,
    bytes: Option<&[u8]>,
) -> Result<T, StoreError> {
    match bytes {
        Some(bytes) => {
            serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))
        }
        None => Ok(T::default()),
    }
}

impl WebhookStore {
    /// Opens the integrations and nonces of `docs`; completed changes wake `wake`.
    pub fn open(docs: Arc<dyn DocStore>, wake: Option<Arc<Notifier>>) -> Result<Self, StoreError> {
        let integrations = Document::open(
            Arc::clone(&docs),
            INTEGRATIONS_KEY,
            |bytes| {
                let list: Vec<Integration> = decode(INTEGRATIONS_KEY, bytes)?;
                Ok(list.into_iter().map(|i| (i.name.clone(), i)).collect())
            },
            |map: &BTreeMap<String, Integration>| {
                let list: Vec<&Integration> = map.values().collect();
                serde_json::to_vec_pretty(&list).unwrap_or_default()
            },
            wake.clone(),
        )?;
        let nonces = Document::open(
            docs,
            NONCES_KEY,
            |bytes| decode(NONCES_KEY, bytes),
            |map: &HashMap<String, u64>| serde_json::to_vec(map).unwrap_or_default(),
            wake,
        )?;
        Ok(Self {
            integrations,
            nonces,
        })
    }

    /// Creates an integration; answers it with its secret (shown once to the operator) once it
    /// is durable, or why it cannot be created.
    pub fn create(
        &self,
        name: &str,
        max_body_bytes: Option<u64>,
        now_ms: u64,
        secret: [u8; 32],
    ) -> Change<Result<Integration, String>> {
        let name = name.to_owned();
        self.integrations.update(move |map| {
            if !valid_name(&name) {
                return Err("name must be 1..=64 of a-z, 0-9, '-', '_'".into());
            }
            let limit = max_body_bytes.unwrap_or(DEFAULT_MAX_BODY);
            if limit == 0 || limit > MAX_BODY {
                return Err(format!("max_body_bytes must be 1..={MAX_BODY}"));
            }
            if map.contains_key(&name) {
                return Err(format!("integration {name:?} exists; delete it first"));
            }
            if map.len() >= MAX_INTEGRATIONS {
                return Err(format!("at most {MAX_INTEGRATIONS} integrations"));
            }
            let integration = Integration {
                name: name.clone(),
                secret_hex: hex::encode(secret),
                max_body_bytes: limit,
                created_at_unix_ms: now_ms,
            };
            map.insert(name, integration.clone());
            Ok(integration)
        })
    }

    /// Deletes an integration; answers false if it did not exist.
    pub fn delete(&self, name: &str) -> Change<bool> {
        let name = name.to_owned();
        self.integrations
            .update(move |map| map.remove(&name).is_some())
    }

    /// Every integration (secrets included: callers redact).
    pub fn list(&self) -> Vec<Integration> {
        self.integrations
            .read(|map| map.values().cloned().collect())
    }

    /// The integration named `name`.
    pub fn get(&self, name: &str) -> Option<Integration> {
        self.integrations.read(|map| map.get(name).cloned())
    }

    /// Verifies a delivery's signature and timestamp now, and consumes its nonce: answered once
    /// the nonce is durable (a replay after a restart is refused too).
    pub fn verify(
        &self,
        integration: &Integration,
        signature: Option<&[u8]>,
        timestamp: Option<&[u8]>,
        nonce: Option<&[u8]>,
        body: &[u8],
        now_secs: u64,
    ) -> Result<Change<Result<(), WebhookError>>, WebhookError> {
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
        Ok(self.nonces.update(move |nonces| {
            nonces.retain(|_, expiry| *expiry > now_secs);
            if nonces.contains_key(&key) {
                return Err(WebhookError::Replayed);
            }
            if nonces.len() >= MAX_NONCES {
                return Err(WebhookError::Overloaded);
            }
            nonces.insert(key, now_secs.max(ts) + WINDOW_SECS + 1);
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FileDocStore;
    use std::time::Duration;

    fn done<T>(change: Change<T>) -> T {
        change
            .wait_blocking(Duration::from_secs(5))
            .expect("answered")
            .expect("durable")
    }

    fn open(dir: &std::path::Path) -> WebhookStore {
        WebhookStore::open(Arc::new(FileDocStore::open(dir).unwrap()), None).unwrap()
    }

    #[test]
    fn signatures_windows_and_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let hook = done(store.create("ci", None, 1, [7; 32])).unwrap();
        assert!(done(store.create("ci", None, 1, [8; 32])).is_err());
        assert!(done(store.create("Bad Name", None, 1, [8; 32])).is_err());
        assert!(done(store.create("big", Some(MAX_BODY + 1), 1, [8; 32])).is_err());
        let secret = hex::decode(&hook.secret_hex).unwrap();
        let now = 1_800_000_000u64;
        let ts = now.to_string();
        let nonce = "nonce-0123456789abcdef";
        let body = br#"{"ok":true}"#;
        let sig = sign(&secret, &ts, nonce, body);
        let verify = |sig: &str, ts: &str, nonce: &str, body: &[u8], at: u64| {
            store
                .verify(
                    &hook,
                    Some(sig.as_bytes()),
                    Some(ts.as_bytes()),
                    Some(nonce.as_bytes()),
                    body,
                    at,
                )
                .and_then(done)
        };
        assert_eq!(verify(&sig, &ts, nonce, body, now), Ok(()));
        assert_eq!(
            verify(&sig, &ts, nonce, body, now),
            Err(WebhookError::Replayed)
        );
        // Replays are refused after a restart too.
        let reopened = open(dir.path());
        let hook2 = reopened.get("ci").unwrap();
        assert_eq!(hook2, hook);
        assert_eq!(
            reopened
                .verify(
                    &hook2,
                    Some(sig.as_bytes()),
                    Some(ts.as_bytes()),
                    Some(nonce.as_bytes()),
                    body,
                    now + 10
                )
                .and_then(done),
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
        assert!(done(store.delete("ci")));
        assert!(!done(store.delete("ci")));
        assert!(open(dir.path()).get("ci").is_none());
    }
}
