//! Console login sessions: `POST /console/v1/auth/login` trades the admin token for a session
//! cookie (`palyra_console_session`, HttpOnly, SameSite=Strict) and a CSRF token that every
//! mutating console call repeats in `x-palyra-csrf-token`.
//!
//! Sessions are the document `operator/console-sessions.json` (mode 0600) keyed by the SHA-256
//! of their token, so they survive a restart and the file alone logs nobody in.

use crate::notify::Notifier;
use crate::store::{DocStore, Document, Pending, StoreError};
use crate::util::constant_time_eq;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Name of the session cookie.
pub const COOKIE: &str = "palyra_console_session";
/// Header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-palyra-csrf-token";
/// A session lasts this long after login.
pub const SESSION_TTL_MS: u64 = 12 * 60 * 60 * 1000;
/// Sessions kept at once (the oldest is dropped beyond it).
pub const MAX_SESSIONS: usize = 256;

/// A live session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The CSRF token of this session.
    pub csrf: String,
    /// Login time (Unix ms).
    pub created_unix_ms: u64,
    /// Expiry (Unix ms).
    pub expires_unix_ms: u64,
}

/// The session store: one document of the store, keyed by the SHA-256 of each token.
pub struct ConsoleSessions {
    sessions: Arc<Document<HashMap<String, Session>>>,
}

impl std::fmt::Debug for ConsoleSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConsoleSessions")
    }
}

/// The sessions' document (0600).
pub const SESSIONS_KEY: &str = "operator/console-sessions.json";

fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl ConsoleSessions {
    /// Opens the sessions of `docs`; completed changes wake `wake`.
    pub fn open(docs: Arc<dyn DocStore>, wake: Option<Arc<Notifier>>) -> Result<Self, StoreError> {
        let sessions = Document::open(
            docs,
            SESSIONS_KEY,
            |bytes| match bytes {
                Some(bytes) => serde_json::from_slice(bytes)
                    .map_err(|e| StoreError::Corrupt(format!("{SESSIONS_KEY}: {e}"))),
                None => Ok(HashMap::new()),
            },
            |sessions: &HashMap<String, Session>| serde_json::to_vec(sessions).unwrap_or_default(),
            wake,
        )?;
        Ok(Self { sessions })
    }

    /// Starts a session at `now_ms` from 64 random bytes; answers the cookie token and the
    /// session once the session is durable.
    pub fn create(
        &self,
        now_ms: u64,
        random: [u8; 64],
    ) -> Pending<Result<(String, Session), StoreError>> {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let token = engine.encode(&random[..32]);
        let session = Session {
            csrf: engine.encode(&random[32..]),
            created_unix_ms: now_ms,
            expires_unix_ms: now_ms + SESSION_TTL_MS,
        };
        self.sessions.update(move |sessions| {
            sessions.retain(|_, s| s.expires_unix_ms > now_ms);
            while sessions.len() >= MAX_SESSIONS {
                let oldest = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.created_unix_ms)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => sessions.remove(&k),
                    None => break,
                };
            }
            sessions.insert(token_key(&token), session.clone());
            (token, session)
        })
    }

    /// The live session of `token`.
    pub fn get(&self, token: &str, now_ms: u64) -> Option<Session> {
        self.sessions.read(|sessions| {
            sessions
                .get(&token_key(token))
                .filter(|s| s.expires_unix_ms > now_ms)
                .cloned()
        })
    }

    /// Ends the session of `token`; answered once that is durable.
    pub fn remove(&self, token: &str) -> Pending<Result<(), StoreError>> {
        let key = token_key(token);
        self.sessions.update(move |sessions| {
            sessions.remove(&key);
        })
    }
}

/// The session token in a request's `Cookie` headers.
pub fn cookie_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// Whether `given` (from the CSRF header) matches the session's token, in constant time.
pub fn csrf_matches(session: &Session, given: Option<&[u8]>) -> bool {
    let Some(given) = given.and_then(|g| std::str::from_utf8(g).ok()) else {
        return false;
    };
    let a: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(session.csrf.as_bytes()).into();
    constant_time_eq(&a, &b)
}

/// The `Set-Cookie` value starting a session (`Secure` on a TLS listener).
pub fn set_cookie(token: &str, secure: bool) -> String {
    let max_age = SESSION_TTL_MS / 1000;
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
}

/// The `Set-Cookie` value ending a session.
pub fn clear_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_survive_reopen_expire_and_end() {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let docs = Arc::new(crate::store::FileDocStore::open(dir.path()).unwrap());
            ConsoleSessions::open(docs, None).unwrap()
        };
        let wait = std::time::Duration::from_secs(5);
        let store = open();
        let mut random = [7u8; 64];
        random[32..].fill(9);
        let (token, session) = store
            .create(1_000, random)
            .wait_blocking(wait)
            .unwrap()
            .unwrap();
        assert_eq!(store.get(&token, 2_000), Some(session.clone()));
        let text =
            std::fs::read_to_string(dir.path().join("operator/console-sessions.json")).unwrap();
        assert!(!text.contains(&token), "the token itself is not stored");
        let reopened = open();
        assert_eq!(reopened.get(&token, 2_000), Some(session.clone()));
        assert_eq!(reopened.get(&token, 1_000 + SESSION_TTL_MS), None);
        assert_eq!(reopened.get("other", 2_000), None);
        assert!(csrf_matches(&session, Some(session.csrf.as_bytes())));
        assert!(!csrf_matches(&session, Some(b"nope")));
        assert!(!csrf_matches(&session, None));
        reopened
            .remove(&token)
            .wait_blocking(wait)
            .unwrap()
            .unwrap();
        assert_eq!(open().get(&token, 2_000), None);
    }

    #[test]
    fn cookie_parsing_and_attributes() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; palyra_console_session=tok123; b=2".parse().unwrap(),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok123"));
        let cookie = set_cookie("tok", true);
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
        assert!(!set_cookie("tok", false).contains("Secure"));
    }
}
