//! API tokens: minted by the admin for a principal with scopes and an optional expiry, shown once
//! (`palyra_tok_<ID>_<SECRET>`), stored only as the SHA-256 of the whole token in the document
//! `access/tokens.json`, listed without secrets, and revoked at once for every later call.

use super::{valid_principal, Caller, Scopes};
use crate::notify::Notifier;
use crate::store::{DocStore, Document, Pending, StoreError};
use crate::util::constant_time_eq;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The document holding the tokens.
pub const TOKENS_KEY: &str = "access/tokens.json";
/// Prefix of API tokens.
pub const TOKEN_PREFIX: &str = "palyra_tok_";
/// Tokens kept at once (revoked ones count until removed).
pub const MAX_TOKENS: usize = 1000;
/// Longest label.
pub const MAX_LABEL: usize = 128;

/// One token as stored (no secret: only its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's ID (a ULID, also inside the token).
    pub token_id: String,
    /// Whom it proves.
    pub principal: String,
    /// What it may do.
    pub scopes: Vec<String>,
    /// A label for people.
    #[serde(default)]
    pub label: String,
    /// Hex SHA-256 of the whole token.
    pub sha256: String,
    /// When it was minted.
    pub created_at_unix_ms: u64,
    /// When it stops working, if ever.
    pub expires_at_unix_ms: Option<u64>,
    /// When it was revoked.
    pub revoked_at_unix_ms: Option<u64>,
}

impl TokenRecord {
    /// `active`, `expired` or `revoked` at `now_ms`.
    pub fn state(&self, now_ms: u64) -> &'static str {
        if self.revoked_at_unix_ms.is_some() {
            "revoked"
        } else if self.expires_at_unix_ms.is_some_and(|t| now_ms >= t) {
            "expired"
        } else {
            "active"
        }
    }
}

/// Why a token does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token this gateway minted.
    #[error("unknown API token")]
    Unknown,
    /// Revoked.
    #[error("API token {0} was revoked")]
    Revoked(String),
    /// Past its expiry.
    #[error("API token {0} expired")]
    Expired(String),
}

/// What to mint.
#[derive(Debug, Clone)]
pub struct Mint {
    /// Whom it proves.
    pub principal: String,
    /// Scope names.
    pub scopes: Vec<String>,
    /// A label.
    pub label: String,
    /// Lifetime in seconds, if it expires.
    pub ttl_seconds: Option<u64>,
}

/// A mint's outcome once durable: the token and its record, or why it was refused.
pub type Minting = Pending<Result<Result<(String, TokenRecord), String>, StoreError>>;

/// The API tokens of the gateway.
pub struct TokenStore {
    doc: Arc<Document<BTreeMap<String, TokenRecord>>>,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl TokenStore {
    /// Opens the tokens of `docs`; completed changes wake `wake`.
    pub fn open(docs: Arc<dyn DocStore>, wake: Option<Arc<Notifier>>) -> Result<Self, StoreError> {
        let doc = Document::open(
            docs,
            TOKENS_KEY,
            |bytes| match bytes {
                None => Ok(BTreeMap::new()),
                Some(bytes) => serde_json::from_slice::<Vec<TokenRecord>>(bytes)
                    .map(|list| list.into_iter().map(|t| (t.token_id.clone(), t)).collect())
                    .map_err(|e| StoreError::Corrupt(format!("{TOKENS_KEY}: {e}"))),
            },
            |map: &BTreeMap<String, TokenRecord>| {
                serde_json::to_vec_pretty(&map.values().collect::<Vec<_>>()).unwrap_or_default()
            },
            wake,
        )?;
        Ok(Self { doc })
    }

    /// Mints a token from 32 random `secret` bytes and the ULID `token_id`: answered with the
    /// token (show it once) and its record once durable, or why it cannot be minted.
    pub fn mint(&self, request: Mint, token_id: String, secret: [u8; 32], now_ms: u64) -> Minting {
        use base64::Engine as _;
        let token = format!(
            "{TOKEN_PREFIX}{token_id}_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        self.doc.update(move |map| {
            valid_principal(&request.principal)?;
            if request.scopes.is_empty() {
                return Err("a token needs at least one scope".to_owned());
            }
            let scopes = Scopes::parse(&request.scopes)?;
            if request.label.len() > MAX_LABEL {
                return Err(format!("label is longer than {MAX_LABEL} bytes"));
            }
            if request.ttl_seconds == Some(0) {
                return Err("ttl_seconds must be at least 1 (omit it for no expiry)".into());
            }
            if map.len() >= MAX_TOKENS {
                return Err(format!(
                    "at most {MAX_TOKENS} tokens are kept; delete revoked ones first"
                ));
            }
            let record = TokenRecord {
                token_id: token_id.clone(),
                principal: request.principal,
                scopes: scopes.names(),
                label: request.label,
                sha256: digest(&token),
                created_at_unix_ms: now_ms,
                expires_at_unix_ms: request
                    .ttl_seconds
                    .map(|s| now_ms.saturating_add(s.saturating_mul(1000))),
                revoked_at_unix_ms: None,
            };
            map.insert(token_id, record.clone());
            Ok((token, record))
        })
    }

    /// Revokes a token: answered `None` if there is no such token, else whether it was newly
    /// revoked.
    pub fn revoke(&self, token_id: &str, now_ms: u64) -> Pending<Result<Option<bool>, StoreError>> {
        let id = token_id.to_owned();
        self.doc.update(move |map| {
            let record = map.get_mut(&id)?;
            let newly = record.revoked_at_unix_ms.is_none();
            record.revoked_at_unix_ms.get_or_insert(now_ms);
            Some(newly)
        })
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenRecord> {
        let mut list: Vec<TokenRecord> = self.doc.read(|map| map.values().cloned().collect());
        list.sort_by(|a, b| a.token_id.cmp(&b.token_id));
        list
    }

    /// The caller a token proves at `now_ms`.
    pub fn authenticate(&self, token: &str, now_ms: u64) -> Result<Caller, TokenError> {
        let id = token
            .strip_prefix(TOKEN_PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(TokenError::Unknown)?;
        let record = self
            .doc
            .read(|map| map.get(id).cloned())
            .ok_or(TokenError::Unknown)?;
        if !constant_time_eq(digest(token).as_bytes(), record.sha256.as_bytes()) {
            return Err(TokenError::Unknown);
        }
        match record.state(now_ms) {
            "revoked" => Err(TokenError::Revoked(record.token_id)),
            "expired" => Err(TokenError::Expired(record.token_id)),
            _ => Ok(Caller {
                principal: record.principal,
                scopes: Scopes::parse(&record.scopes).unwrap_or_default(),
                sees_all: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Scope;
    use crate::store::FileDocStore;

    fn wait<T>(p: Pending<T>) -> T {
        loop {
            if let Some(v) = p.take() {
                return v;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn mint(store: &TokenStore, principal: &str, scopes: &[&str], ttl: Option<u64>) -> String {
        let request = Mint {
            principal: principal.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            label: "test".into(),
            ttl_seconds: ttl,
        };
        let id = ulid::Ulid::new().to_string();
        wait(store.mint(request, id, [7; 32], 1_000))
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn minted_hashed_authenticated_expired_revoked_and_durable() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        let store = TokenStore::open(Arc::clone(&docs), None).unwrap();
        let token = mint(&store, "user:alice", &["runs:write", "sessions:read"], None);
        let brief = mint(&store, "user:bob", &["runs:read"], Some(60));
        let caller = store.authenticate(&token, 2_000).unwrap();
        assert_eq!(caller.principal, "user:alice");
        assert!(caller.scopes.contains(Scope::RunsWrite));
        assert!(!caller.scopes.contains(Scope::ApprovalsRead));
        assert!(store.authenticate(&brief, 60_000).is_ok());
        assert!(matches!(
            store.authenticate(&brief, 61_000),
            Err(TokenError::Expired(_))
        ));
        let mut forged = token.clone();
        forged.pop();
        forged.push('x');
        assert_eq!(store.authenticate(&forged, 2_000), Err(TokenError::Unknown));
        assert_eq!(
            store.authenticate("palyra_tok_nothing", 2_000),
            Err(TokenError::Unknown)
        );
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_KEY)).unwrap();
        assert!(
            !stored.contains(&token[TOKEN_PREFIX.len() + 27..]),
            "secret stored"
        );
        let id = store.list()[0].token_id.clone();
        assert_eq!(wait(store.revoke(&id, 3_000)).unwrap(), Some(true));
        assert_eq!(wait(store.revoke(&id, 4_000)).unwrap(), Some(false));
        assert_eq!(wait(store.revoke("nope", 4_000)).unwrap(), None);
        assert!(matches!(
            store.authenticate(&token, 5_000),
            Err(TokenError::Revoked(_))
        ));
        drop(store);
        docs.close();
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        let reopened = TokenStore::open(docs, None).unwrap();
        assert_eq!(reopened.list().len(), 2);
        assert!(reopened.authenticate(&token, 5_000).is_err());
        assert!(reopened.authenticate(&brief, 5_000).is_ok());
    }

    #[test]
    fn bad_mints_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Arc<dyn DocStore> = Arc::new(FileDocStore::open(dir.path()).unwrap());
        let store = TokenStore::open(docs, None).unwrap();
        let try_mint = |principal: &str, scopes: Vec<String>, ttl| {
            let request = Mint {
                principal: principal.into(),
                scopes,
                label: String::new(),
                ttl_seconds: ttl,
            };
            wait(store.mint(request, "01ARZ3NDEKTSV4RRFFQ69G5FAV".into(), [1; 32], 0))
                .unwrap()
                .unwrap_err()
        };
        assert!(try_mint("alice", vec!["runs:write".into()], None).contains("kind:name"));
        assert!(try_mint("user:a", vec![], None).contains("at least one scope"));
        assert!(try_mint("user:a", vec!["root".into()], None).contains("unknown scope"));
        assert!(try_mint("user:a", vec!["runs:write".into()], Some(0)).contains("ttl_seconds"));
        assert!(store.list().is_empty());
    }
}
