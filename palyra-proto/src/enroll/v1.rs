//! The v1 pairing transcript: byte for byte the original contract (reference §4.4), with
//! stricter checks on the gateway side.
//!
//! ```text
//! info        = "palyra-mtls-transcript-v1" ‖ session_id ‖ u32_le(v) ‖ device_id ‖ client_kind
//! mac         = HKDF-SHA256(salt = challenge, ikm = X25519(device, gateway_ephemeral)).expand(info, 32)
//! sig_payload = "palyra-pairing-v1" ‖ u32_le(v) ‖ session_id ‖ challenge ‖ gateway_ephemeral_public
//!               ‖ device_id ‖ client_kind ‖ proof
//! signature   = Ed25519(device_signing_key, sig_payload)
//! ```
//!
//! Hardening without changing the wire: strict Ed25519 verification (no small-order keys, no
//! non-canonical encodings), a non-contributory (all-zero) X25519 result is refused, the client's
//! `proof` must equal the session's code (constant time), the version must be exactly the
//! session's (no silent `0 -> 1`).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};

/// The pairing protocol version.
pub const VERSION: u32 = 1;
/// Domain string of the signed payload.
pub const SIGNATURE_DOMAIN: &[u8] = b"palyra-pairing-v1";
/// Domain string of the HKDF info.
pub const TRANSCRIPT_DOMAIN: &[u8] = b"palyra-mtls-transcript-v1";

/// Why a device's Complete does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V1Error {
    /// The message version is not the session's.
    #[error("pairing protocol version mismatch (expected {expected}, got {got})")]
    VersionMismatch {
        /// The session's version.
        expected: u32,
        /// What the device sent.
        got: u32,
    },
    /// `client_kind` differs from Begin's.
    #[error("client_kind differs from the one the session was begun with")]
    ClientKindMismatch,
    /// The proof is not the session's code.
    #[error("invalid pairing proof")]
    WrongProof,
    /// The Ed25519 public key is malformed or of small order.
    #[error("device_signing_public is not a usable Ed25519 public key")]
    BadSigningKey,
    /// The signature does not verify (strictly) over the v1 payload.
    #[error("device signature verification failed")]
    BadSignature,
    /// The X25519 public key is not a canonical encoding (top bit set, or a value >= 2^255 - 19).
    #[error("device_x25519_public is not a canonical X25519 public key")]
    BadX25519Key,
    /// The X25519 exchange gave the all-zero result (a low-order public key).
    #[error("device_x25519_public is a low-order point (non-contributory key exchange)")]
    NonContributory,
    /// The transcript value differs.
    #[error("pairing transcript verification failed")]
    TranscriptMismatch,
}

/// The identifying fields both sides put into the transcript.
#[derive(Debug, Clone, Copy)]
pub struct Transcript<'a> {
    /// Protocol version (`v`).
    pub version: u32,
    /// The gateway's session ID.
    pub session_id: &'a str,
    /// The device's canonical ID.
    pub device_id: &'a str,
    /// `node`, `cli` or `desktop`.
    pub client_kind: &'a str,
}

impl Transcript<'_> {
    /// The HKDF info bytes.
    pub fn hkdf_info(&self) -> Vec<u8> {
        [
            TRANSCRIPT_DOMAIN,
            self.session_id.as_bytes(),
            &self.version.to_le_bytes(),
            self.device_id.as_bytes(),
            self.client_kind.as_bytes(),
        ]
        .concat()
    }

    /// The transcript value (`transcript_mac`) from the X25519 shared secret.
    pub fn mac(&self, shared: &[u8; 32], challenge: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        Hkdf::<Sha256>::new(Some(challenge), shared)
            .expand(&self.hkdf_info(), &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    /// The bytes the device signs.
    pub fn signature_payload(
        &self,
        challenge: &[u8; 32],
        gateway_ephemeral_public: &[u8; 32],
        proof: &str,
    ) -> Vec<u8> {
        [
            SIGNATURE_DOMAIN,
            &self.version.to_le_bytes(),
            self.session_id.as_bytes(),
            challenge,
            gateway_ephemeral_public,
            self.device_id.as_bytes(),
            self.client_kind.as_bytes(),
            proof.as_bytes(),
        ]
        .concat()
    }
}

/// What Begin gave the device.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Session ID.
    pub session_id: String,
    /// The gateway's X25519 ephemeral public key.
    pub gateway_ephemeral_public: [u8; 32],
    /// The challenge.
    pub challenge: [u8; 32],
}

/// The proof fields of CompletePairingSession.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version.
    pub version: u32,
    /// Session ID from Begin.
    pub session_id: String,
    /// The device's canonical ID.
    pub device_id: String,
    /// `node`, `cli` or `desktop`.
    pub client_kind: String,
    /// The pairing code.
    pub proof: String,
    /// The device's Ed25519 public key (its certificate will carry it).
    pub device_signing_public: [u8; 32],
    /// The device's X25519 public key.
    pub device_x25519_public: [u8; 32],
    /// Ed25519 signature over the v1 payload.
    pub challenge_signature: [u8; 64],
    /// The HKDF transcript value.
    pub transcript_mac: [u8; 32],
}

/// Device side: builds the hello for `offer` with the device's keys. Refuses a gateway key
/// that makes the exchange non-contributory.
pub fn build_hello(
    signing: &SigningKey,
    x25519: &StaticSecret,
    offer: &Offer,
    device_id: &str,
    client_kind: &str,
    proof: &str,
) -> Result<Hello, V1Error> {
    let transcript = Transcript {
        version: VERSION,
        session_id: &offer.session_id,
        device_id,
        client_kind,
    };
    let shared = x25519.diffie_hellman(&PublicKey::from(offer.gateway_ephemeral_public));
    if !shared.was_contributory() {
        return Err(V1Error::NonContributory);
    }
    let payload =
        transcript.signature_payload(&offer.challenge, &offer.gateway_ephemeral_public, proof);
    Ok(Hello {
        version: VERSION,
        session_id: offer.session_id.clone(),
        device_id: device_id.to_owned(),
        client_kind: client_kind.to_owned(),
        proof: proof.to_owned(),
        device_signing_public: signing.verifying_key().to_bytes(),
        device_x25519_public: PublicKey::from(x25519).to_bytes(),
        challenge_signature: signing.sign(&payload).to_bytes(),
        transcript_mac: transcript.mac(shared.as_bytes(), &offer.challenge),
    })
}

/// What the gateway keeps of a begun session to verify the hello.
#[derive(Clone)]
pub struct SessionSecrets<'a> {
    /// The session's version.
    pub version: u32,
    /// Session ID.
    pub session_id: &'a str,
    /// Client kind given at Begin.
    pub client_kind: &'a str,
    /// Whether a proof equals the code the session was begun with (constant time).
    pub proof_matches: &'a dyn Fn(&str) -> bool,
    /// The challenge sent.
    pub challenge: &'a [u8; 32],
    /// The gateway's X25519 ephemeral secret.
    pub ephemeral_secret: &'a [u8; 32],
}

/// A verified hello: the identity the certificate will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The device's Ed25519 public key.
    pub signing_public: [u8; 32],
    /// Lowercase hex SHA-256 of that key.
    pub identity_fingerprint: String,
    /// Lowercase hex SHA-256 of the transcript value.
    pub transcript_hash: String,
}

/// Gateway side: checks a hello against the session, strictly.
pub fn verify_hello(session: &SessionSecrets<'_>, hello: &Hello) -> Result<Verified, V1Error> {
    if hello.version != session.version {
        return Err(V1Error::VersionMismatch {
            expected: session.version,
            got: hello.version,
        });
    }
    if hello.client_kind != session.client_kind {
        return Err(V1Error::ClientKindMismatch);
    }
    if !(session.proof_matches)(&hello.proof) {
        return Err(V1Error::WrongProof);
    }
    let key = VerifyingKey::from_bytes(&hello.device_signing_public)
        .map_err(|_| V1Error::BadSigningKey)?;
    if key.is_weak() {
        return Err(V1Error::BadSigningKey);
    }
    let transcript = Transcript {
        version: hello.version,
        session_id: session.session_id,
        device_id: &hello.device_id,
        client_kind: &hello.client_kind,
    };
    let gateway_public = PublicKey::from(&StaticSecret::from(*session.ephemeral_secret));
    let payload =
        transcript.signature_payload(session.challenge, gateway_public.as_bytes(), &hello.proof);
    key.verify_strict(&payload, &Signature::from_bytes(&hello.challenge_signature))
        .map_err(|_| V1Error::BadSignature)?;
    if !is_canonical_x25519(&hello.device_x25519_public) {
        return Err(V1Error::BadX25519Key);
    }
    let shared = StaticSecret::from(*session.ephemeral_secret)
        .diffie_hellman(&PublicKey::from(hello.device_x25519_public));
    if !shared.was_contributory() {
        return Err(V1Error::NonContributory);
    }
    let mac = transcript.mac(shared.as_bytes(), session.challenge);
    if !bool::from(mac.ct_eq(&hello.transcript_mac)) {
        return Err(V1Error::TranscriptMismatch);
    }
    Ok(Verified {
        signing_public: hello.device_signing_public,
        identity_fingerprint: hex::encode(Sha256::digest(hello.device_signing_public)),
        transcript_hash: hex::encode(Sha256::digest(hello.transcript_mac)),
    })
}

/// Whether `key` is the canonical encoding of a field element: X25519 ignores the top bit and
/// reduces values >= 2^255 - 19, so other spellings of the same key would verify too.
pub fn is_canonical_x25519(key: &[u8; 32]) -> bool {
    if key[31] & 0x80 != 0 {
        return false;
    }
    // 2^255 - 19 .. 2^255 - 1: ed ff .. ff 7f (little endian), i.e. every byte at its maximum.
    let at_top = key[31] == 0x7f && key[1..31].iter().all(|&b| b == 0xff);
    !(at_top && key[0] >= 0xed)
}

/// The gateway's ephemeral public key for a secret.
pub fn ephemeral_public(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const SESSION: &str = "01J9ZZZZZZZZZZZZZZZZZZZZZZ";

    fn unhex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).unwrap();
        out
    }

    fn vector() -> (SigningKey, StaticSecret, Offer) {
        let offer = Offer {
            session_id: SESSION.into(),
            gateway_ephemeral_public: ephemeral_public(&[0x33; 32]),
            challenge: [0x44; 32],
        };
        (
            SigningKey::from_bytes(&[0x11; 32]),
            StaticSecret::from([0x22; 32]),
            offer,
        )
    }

    fn is_123456(proof: &str) -> bool {
        proof == "123456"
    }

    fn session<'a>(challenge: &'a [u8; 32], secret: &'a [u8; 32]) -> SessionSecrets<'a> {
        SessionSecrets {
            version: VERSION,
            session_id: SESSION,
            client_kind: "node",
            proof_matches: &is_123456,
            challenge,
            ephemeral_secret: secret,
        }
    }

    /// Reference §4.4, byte for byte.
    #[test]
    fn the_reference_test_vector_verifies() {
        let (signing, x25519, offer) = vector();
        assert_eq!(
            offer.gateway_ephemeral_public,
            unhex::<32>("7b0d47d93427f8311160781c7c733fd89f88970aef490d8aa0ee19a4cb8a1b14")
        );
        let hello = build_hello(&signing, &x25519, &offer, DEVICE, "node", "123456").unwrap();
        assert_eq!(
            hello.device_signing_public,
            unhex::<32>("d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737")
        );
        assert_eq!(
            hello.device_x25519_public,
            unhex::<32>("0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20")
        );
        let shared = x25519.diffie_hellman(&PublicKey::from(offer.gateway_ephemeral_public));
        assert_eq!(
            shared.as_bytes(),
            &unhex::<32>("1fdc192faa0212a9aae7bb4f41b580227fd5ad3e5d777faae230dfe973f3e805")
        );
        let transcript = Transcript {
            version: 1,
            session_id: SESSION,
            device_id: DEVICE,
            client_kind: "node",
        };
        let info = format!(
            "70616c7972612d6d746c732d7472616e7363726970742d7631{}01000000{}6e6f6465",
            hex::encode(SESSION),
            hex::encode(DEVICE)
        );
        assert_eq!(hex::encode(transcript.hkdf_info()), info);
        assert_eq!(
            hello.transcript_mac,
            unhex::<32>("a7b0a59a376ea7bdae908aaae790f109a21aeac93ac7024dd194c73a4acd38b2")
        );
        let expected_signature = unhex::<64>(concat!(
            "e79f07ed43673df24b1ede9fa7e3c6bd403fd4790865f33d85952bab600fcfeb",
            "966cf233d5ee9eda6add0fd062542ba3556586b2e47f6d93713546d8d14ab80a"
        ));
        assert_eq!(hello.challenge_signature, expected_signature);
        let verified = verify_hello(&session(&[0x44; 32], &[0x33; 32]), &hello).unwrap();
        assert_eq!(
            verified.identity_fingerprint,
            "10ba682c8ad13513971e8b56881aab8bd702bb807796eca81932c735a94d6e6d"
        );
        assert_eq!(
            verified.transcript_hash,
            "a5086fe83bb3f27a96862eb95126646f652945a9d024cf47f93e5a7dd074d16a"
        );
    }

    #[test]
    fn each_hardening_check_refuses() {
        let (signing, x25519, offer) = vector();
        let good = build_hello(&signing, &x25519, &offer, DEVICE, "node", "123456").unwrap();
        let secrets = session(&[0x44; 32], &[0x33; 32]);
        let check = |hello: &Hello| verify_hello(&secrets, hello);
        // Wrong version: 0 is not silently 1.
        let mut h = good.clone();
        h.version = 0;
        assert_eq!(
            check(&h),
            Err(V1Error::VersionMismatch {
                expected: 1,
                got: 0
            })
        );
        // Wrong proof, even with a signature over it.
        let wrong = build_hello(&signing, &x25519, &offer, DEVICE, "node", "654321").unwrap();
        assert_eq!(check(&wrong), Err(V1Error::WrongProof));
        // Tampered signature.
        let mut h = good.clone();
        h.challenge_signature[5] ^= 1;
        assert_eq!(check(&h), Err(V1Error::BadSignature));
        // Another device ID under the same signature.
        let mut h = good.clone();
        h.device_id = "01BX5ZZKBKACTAV9WEVGEMMVRZ".into();
        assert_eq!(check(&h), Err(V1Error::BadSignature));
        // An all-zero X25519 key: the MAC would need no secret.
        let mut h = good.clone();
        h.device_x25519_public = [0; 32];
        h.transcript_mac = Transcript {
            version: 1,
            session_id: SESSION,
            device_id: DEVICE,
            client_kind: "node",
        }
        .mac(&[0; 32], &[0x44; 32]);
        assert_eq!(check(&h), Err(V1Error::NonContributory));
        // A tampered MAC.
        let mut h = good.clone();
        h.transcript_mac[0] ^= 0x80;
        assert_eq!(check(&h), Err(V1Error::TranscriptMismatch));
        // A small-order Ed25519 key (the identity point) is refused before verifying.
        let mut h = good.clone();
        h.device_signing_public = {
            let mut identity = [0u8; 32];
            identity[0] = 1;
            identity
        };
        assert_eq!(check(&h), Err(V1Error::BadSigningKey));
        // The same X25519 key spelled with the top bit set.
        let mut h = good.clone();
        h.device_x25519_public[31] |= 0x80;
        assert_eq!(check(&h), Err(V1Error::BadX25519Key));
        let mut h = good;
        h.client_kind = "cli".into();
        assert_eq!(check(&h), Err(V1Error::ClientKindMismatch));
    }

    proptest! {
        #[test]
        fn both_sides_derive_the_same_transcript(
            device_seed in any::<[u8; 32]>(),
            device_x in any::<[u8; 32]>(),
            gateway_x in any::<[u8; 32]>(),
            challenge in any::<[u8; 32]>(),
            code in "[0-9]{6}",
        ) {
            let offer = Offer {
                session_id: SESSION.into(),
                gateway_ephemeral_public: ephemeral_public(&gateway_x),
                challenge,
            };
            let hello = build_hello(
                &SigningKey::from_bytes(&device_seed),
                &StaticSecret::from(device_x),
                &offer,
                DEVICE,
                "node",
                &code,
            ).unwrap();
            let matches = |proof: &str| proof == code;
            let secrets = SessionSecrets { proof_matches: &matches, ..session(&challenge, &gateway_x) };
            prop_assert!(verify_hello(&secrets, &hello).is_ok());
        }

        #[test]
        fn any_tampered_byte_fails(field in 0usize..4, index in 0usize..64, bit in 0u8..8) {
            let (signing, x25519, offer) = vector();
            let mut hello = build_hello(&signing, &x25519, &offer, DEVICE, "node", "123456").unwrap();
            let flip = 1u8 << bit;
            match field {
                0 => hello.device_signing_public[index % 32] ^= flip,
                1 => hello.device_x25519_public[index % 32] ^= flip,
                2 => hello.challenge_signature[index] ^= flip,
                _ => hello.transcript_mac[index % 32] ^= flip,
            }
            prop_assert!(verify_hello(&session(&[0x44; 32], &[0x33; 32]), &hello).is_err());
        }
    }
}
