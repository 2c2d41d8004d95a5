//! Enrollment (pairing) of devices, IO-free: time and randomness are injected, the durable
//! record is a serializable state the caller persists before answering.
//!
//! - [`v1`]: the v1 pairing transcript (X25519, HKDF-SHA256, Ed25519), both sides.
//! - [`codes`]: PIN and QR codes, hashed, single use, guessing throttled.
//! - [`gateway`]: sessions, pairing requests and their states, issuance for the device's own
//!   key, rotation.
//! - [`device`]: the device side: keys, invites, the Begin → Complete → status exchange.
//! - [`replay`]: `ReplayProtection` (nonce single use, timestamp ±5 min).
//! - [`wire`]: conversions between the pairing messages and the machine's types.

pub mod codes;
pub mod device;
pub mod gateway;
pub mod replay;
pub mod v1;
pub mod wire;

use serde::{Deserialize, Serialize};

/// How a code is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// 6 digits typed by a person.
    Pin,
    /// A 26-character token, carried by an invite (`palyra://pair?...`).
    Qr,
}

impl Method {
    /// `pin` or `qr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Pin => "pin",
            Method::Qr => "qr",
        }
    }
}

/// A pairing method other than `pin` or `qr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pairing method {0:?} is not pin or qr")]
pub struct UnknownMethod(pub String);

impl std::str::FromStr for Method {
    type Err = UnknownMethod;

    fn from_str(s: &str) -> Result<Self, UnknownMethod> {
        match s {
            "pin" => Ok(Method::Pin),
            "qr" => Ok(Method::Qr),
            other => Err(UnknownMethod(other.to_owned())),
        }
    }
}

/// What kind of client pairs (the wire strings of the v1 contract).
pub const CLIENT_KINDS: [&str; 3] = ["node", "cli", "desktop"];

/// Normalizes a `client_kind` (trimmed, lowercase) and checks it is one of [`CLIENT_KINDS`].
pub fn client_kind(raw: &str) -> Option<&'static str> {
    let kind = raw.trim().to_ascii_lowercase();
    CLIENT_KINDS.into_iter().find(|k| *k == kind)
}
