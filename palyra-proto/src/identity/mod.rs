//! Keys, the gateway CA, certificate profiles, fingerprints and the revocation index.

/// Whether `id` is a canonical device ID: 26 uppercase Crockford base32 characters (a ULID).
pub fn is_canonical_device_id(id: &str) -> bool {
    id.len() == 26
        && id.as_bytes()[0] <= b'7'
        && id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'H' | b'J' | b'K' | b'M' | b'N' | b'P'..=b'T' | b'V'..=b'Z'))
}

pub mod cert;
pub mod trust;
