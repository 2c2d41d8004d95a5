//! Every enrollment decoder with arbitrary input, never a panic: invites and CA fingerprints;
//! the pairing request messages as the gateway decodes them; the gateway's offer and status
//! answers as the device side reads them (certificates included); a Complete whose fields come
//! from the input against a real begun session of the gateway machine (it must not verify);
//! operator actions on arbitrary request IDs; replay protection.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::enroll::device::{parse_fingerprint, CaTrust, DeviceKeys, DevicePairing, Invite};
use palyra_proto::enroll::gateway::{
    Authority, Begin, EnrollState, Enrollment, GatewayConfig, SignedCert, Standing,
};
use palyra_proto::enroll::replay::NonceStore;
use palyra_proto::enroll::v1::Hello;
use palyra_proto::enroll::Method;
use palyra_proto::pb::palyra::node::v1::{
    BeginPairingSessionRequest, BeginPairingSessionResponse, CompletePairingSessionRequest,
    GetPairingRequestStatusRequest, GetPairingRequestStatusResponse, RevokeDevicePairingRequest,
    RotateDeviceCertificateRequest,
};
use prost::Message;

const DEVICE: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const NOW: u64 = 1_700_000_000_000;

/// Signs nothing: a fixed certificate text, enough to drive the machine's states.
struct Fake;

impl Authority for Fake {
    fn standing(&self, _device_id: &str) -> Standing {
        Standing::Unknown
    }

    fn sign(
        &self,
        _: &str,
        _: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, palyra_proto::enroll::gateway::SignError> {
        Ok(SignedCert {
            pem: "cert".into(),
            ca_pem: "ca".into(),
            expires_at_unix_ms: now_ms + validity_ms,
        })
    }
}

/// Deterministic "randomness" (runs must reproduce).
fn counter() -> rand_chacha::ChaCha20Rng {
    rand_core::SeedableRng::seed_from_u64(37)
}

fn take<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = data.get(at + i).copied().unwrap_or(0);
    }
    out
}

fn device(ca: CaTrust) -> DevicePairing {
    let keys = DeviceKeys {
        signing: ed25519_dalek::SigningKey::from_bytes(&[0x11; 32]),
        x25519: x25519_dalek::StaticSecret::from([0x22; 32]),
    };
    DevicePairing::new(keys, DEVICE, Method::Qr, "0TGG0CEQ9YG72ZJG3Y1PXBNXCQ", ca).expect("device")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(invite) = Invite::parse(&text) {
                // What parses prints back to itself.
                assert_eq!(Invite::parse(&invite.to_string()).as_ref(), Ok(&invite));
            }
            let _ = parse_fingerprint(&text);
        }
        1 => {
            let _ = BeginPairingSessionRequest::decode(rest);
            let _ = CompletePairingSessionRequest::decode(rest);
            let _ = GetPairingRequestStatusRequest::decode(rest);
            let _ = RotateDeviceCertificateRequest::decode(rest);
            let _ = RevokeDevicePairingRequest::decode(rest);
        }
        2 => {
            if let Ok(offer) = BeginPairingSessionResponse::decode(rest) {
                let _ = device(CaTrust::Pinned([0; 32])).complete_request(&offer);
            }
        }
        3 => {
            if let Ok(answer) = GetPairingRequestStatusResponse::decode(rest) {
                let ca =
                    CaTrust::Certificate(answer.gateway_ca_certificate_pem.as_bytes().to_vec());
                let _ = device(ca).on_status(&answer);
                let _ = device(CaTrust::Pinned([0; 32])).on_status(&answer);
            }
        }
        4 => {
            let mut random = counter();
            let mut machine = Enrollment::new(GatewayConfig::default(), EnrollState::default());
            let (_, code) = machine
                .mint(NOW, Method::Qr, 600_000, "fuzz", &mut random)
                .expect("mint");
            let begin = Begin {
                version: 1,
                client_kind: "node",
                method: Method::Qr,
                code: &code,
                replay: None,
            };
            let begun = machine
                .begin(NOW, None, &begin, &mut random)
                .expect("begin");
            let hello = Hello {
                version: u32::from(take::<1>(rest, 0)[0] % 3),
                session_id: begun.offer.session_id.clone(),
                device_id: DEVICE.into(),
                client_kind: "node".into(),
                proof: code.clone(),
                device_signing_public: take(rest, 1),
                device_x25519_public: take(rest, 33),
                challenge_signature: take(rest, 65),
                transcript_mac: take(rest, 129),
            };
            assert!(
                machine.complete(&Fake, NOW + 1, &hello).is_err(),
                "a hello not made with the session's secrets verified"
            );
            let id = String::from_utf8_lossy(rest.get(161..).unwrap_or_default()).into_owned();
            let _ = machine.approve(&Fake, NOW + 2, &id, true, Some(&id));
            let _ = machine.reject(NOW + 3, &id, None);
            let _ = machine.status(&Fake, NOW + 4, &id, DEVICE);
            let _ = machine.revoke_code(&id);
        }
        _ => {
            let mut store = NonceStore::default();
            let ts = i64::from_le_bytes(take(rest, 0));
            let nonce = String::from_utf8_lossy(rest.get(8..).unwrap_or_default()).into_owned();
            let first = store.check(NOW, &nonce, ts);
            if first.is_ok() {
                assert!(
                    store.check(NOW, &nonce, ts).is_err(),
                    "a nonce was accepted twice"
                );
            }
        }
    }
});
