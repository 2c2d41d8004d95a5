//! The device side of enrollment: its keys, the invite it is given, and the hello it answers
//! Begin with (see [`super::v1::build_hello`]).
//!
//! An invite carries everything a device needs to trust the gateway before it sends a code:
//! `palyra://pair?addr=HOST:PORT&ca=sha256:HEX&code=TOKEN`, where `ca` is the SHA-256 of the
//! gateway CA's SubjectPublicKeyInfo (what `palyrad` logs as `ca_spki_sha256`).

use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use x25519_dalek::StaticSecret;

/// Prefix of an invite.
pub const INVITE_PREFIX: &str = "palyra://pair?";
/// Longest invite accepted.
pub const MAX_INVITE: usize = 1024;

/// A device's pairing keys: the Ed25519 identity (its certificate's key, never sent) and the
/// X25519 key of the transcript.
pub struct DeviceKeys {
    /// Ed25519 signing key.
    pub signing: SigningKey,
    /// X25519 secret.
    pub x25519: StaticSecret,
}

impl DeviceKeys {
    /// Fresh keys from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing: SigningKey::generate(rng),
            x25519: StaticSecret::random_from_rng(rng),
        }
    }
}

/// A parsed invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Gateway node TLS address (`HOST:PORT`).
    pub addr: String,
    /// SHA-256 of the gateway CA's SubjectPublicKeyInfo.
    pub ca_spki_sha256: [u8; 32],
    /// The QR token.
    pub code: String,
}

/// Parses a CA fingerprint given as `sha256:HEX` or bare `HEX` (64 hex digits).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let hex_part = text.strip_prefix("sha256:").unwrap_or(text);
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out)
        .map_err(|_| format!("CA fingerprint must be sha256: and 64 hex digits (got {text:?})"))?;
    Ok(out)
}

impl Invite {
    /// Parses `palyra://pair?addr=...&ca=sha256:...&code=...` (parameters in any order, each
    /// exactly once).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() > MAX_INVITE {
            return Err(format!("an invite is at most {MAX_INVITE} characters"));
        }
        let query = text
            .strip_prefix(INVITE_PREFIX)
            .ok_or_else(|| format!("an invite starts with {INVITE_PREFIX}"))?;
        let (mut addr, mut ca, mut code) = (None, None, None);
        for pair in query.split('&') {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("invite parameter {pair:?} has no value"))?;
            let slot = match key {
                "addr" => &mut addr,
                "ca" => &mut ca,
                "code" => &mut code,
                other => return Err(format!("unknown invite parameter {other:?}")),
            };
            if slot.replace(value).is_some() {
                return Err(format!("invite parameter {key:?} appears twice"));
            }
        }
        let addr = addr.ok_or("the invite has no addr")?;
        if addr.is_empty() || addr.len() > 255 || !addr.contains(':') {
            return Err(format!("invite addr {addr:?} is not HOST:PORT"));
        }
        let code = code.ok_or("the invite has no code")?;
        super::codes::validate_form(super::Method::Qr, code).map_err(|e| e.to_string())?;
        Ok(Self {
            addr: addr.to_owned(),
            ca_spki_sha256: parse_fingerprint(ca.ok_or("the invite has no ca")?)?,
            code: code.to_owned(),
        })
    }
}

impl std::fmt::Display for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{INVITE_PREFIX}addr={}&ca=sha256:{}&code={}",
            self.addr,
            hex::encode(self.ca_spki_sha256),
            self.code
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_round_trip_and_bad_ones_are_refused() {
        let invite = Invite {
            addr: "127.0.0.1:7444".into(),
            ca_spki_sha256: [0xab; 32],
            code: "01JCODE0000000000000000000".into(),
        };
        let text = invite.to_string();
        assert_eq!(Invite::parse(&text).unwrap(), invite);
        let fp = "ab".repeat(32);
        for bad in [
            "http://pair?addr=a:1".to_owned(),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}"),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}&code=short"),
            "palyra://pair?addr=a:1&ca=sha256:abcd&code=01JCODE0000000000000000000".to_owned(),
            format!(
                "palyra://pair?addr=a:1&addr=b:2&ca=sha256:{fp}&code=01JCODE0000000000000000000"
            ),
            format!("palyra://pair?addr=a:1&ca=sha256:{fp}&code=01JCODE0000000000000000000&x=1"),
            format!("palyra://pair?addr=nohost&ca=sha256:{fp}&code=01JCODE0000000000000000000"),
            "x".repeat(MAX_INVITE + 1),
        ] {
            assert!(Invite::parse(&bad).is_err(), "{bad}");
        }
        assert_eq!(parse_fingerprint(&fp).unwrap(), [0xab; 32]);
    }
}
