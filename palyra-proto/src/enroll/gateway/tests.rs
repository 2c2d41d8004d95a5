//! The gateway machine end to end with a real CA behind the authority.

use super::*;
use crate::enroll::codes::MAX_FAILURES_PER_SOURCE;
use crate::enroll::device::DeviceKeys;
use crate::enroll::v1::build_hello;
use crate::identity::cert::{self, CertAuthority, Profile};
use rand_chacha::rand_core::SeedableRng;
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

const DEV: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
const T0: u64 = 1_800_000_000_000;

/// A CA and a trust table in memory.
struct TestAuthority {
    ca: CertAuthority,
    standing: RefCell<HashMap<String, Standing>>,
    signed: RefCell<u32>,
}

impl TestAuthority {
    fn new() -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let ca = CertAuthority::generate(
            &mut rng,
            UNIX_EPOCH + Duration::from_millis(T0),
            Duration::from_secs(3650 * 86_400),
            "Test CA",
        )
        .unwrap();
        Self {
            ca,
            standing: RefCell::default(),
            signed: RefCell::new(0),
        }
    }

    fn set(&self, device: &str, standing: Standing) {
        self.standing.borrow_mut().insert(device.into(), standing);
    }
}

impl Authority for TestAuthority {
    fn standing(&self, device_id: &str) -> Standing {
        self.standing
            .borrow()
            .get(device_id)
            .copied()
            .unwrap_or(Standing::Unknown)
    }

    fn sign(
        &self,
        device_id: &str,
        public_key: &[u8; 32],
        now_ms: u64,
        validity_ms: u64,
    ) -> Result<SignedCert, SignError> {
        *self.signed.borrow_mut() += 1;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(now_ms);
        let issued = self.ca.issue(
            &mut rng,
            &Profile::Device { device_id },
            cert::spki_of_public(public_key)?,
            UNIX_EPOCH + Duration::from_millis(now_ms),
            Duration::from_millis(validity_ms),
        )?;
        Ok(SignedCert {
            pem: issued.pem,
            ca_pem: self.ca.cert_pem()?,
            expires_at_unix_ms: crate::time::unix_ms(issued.not_after),
        })
    }
}

type Random = rand_chacha::ChaCha20Rng;

/// Every trust-file change the machine has queued, in order.
fn effects(machine: &mut Enrollment) -> Vec<Effect> {
    std::iter::from_fn(|| machine.poll_event()).collect()
}

struct Fixture {
    machine: Enrollment,
    authority: TestAuthority,
    random: Random,
    keys: DeviceKeys,
}

impl Fixture {
    fn new(config: GatewayConfig) -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        Self {
            machine: Enrollment::new(config, EnrollState::default()),
            authority: TestAuthority::new(),
            random: rand_chacha::ChaCha20Rng::seed_from_u64(9),
            keys: DeviceKeys::generate(&mut rng),
        }
    }

    fn mint(&mut self, method: Method) -> String {
        self.machine
            .mint(T0, method, 600_000, "op", &mut self.random)
            .unwrap()
            .1
    }

    fn begin(&mut self, code: &str, method: Method) -> Result<Begun, EnrollError> {
        self.machine.begin(
            T0 + 1,
            Some("192.0.2.1".parse().unwrap()),
            &Begin {
                version: 1,
                client_kind: "node",
                method,
                code,
                replay: None,
            },
            &mut self.random,
        )
    }

    fn hello(&self, begun: &Begun, proof: &str) -> Hello {
        build_hello(
            &self.keys.signing,
            &self.keys.x25519,
            &begun.offer,
            DEV,
            "node",
            proof,
        )
        .unwrap()
    }

    /// Mint a PIN and Begin with it.
    fn begin_pin(&mut self) -> (String, Begun) {
        let pin = self.mint(Method::Pin);
        let begun = self.begin(&pin, Method::Pin).unwrap();
        (pin, begun)
    }

    /// Mint → Begin → Complete with the right code.
    fn pending(&mut self) -> RequestRecord {
        let (pin, begun) = self.begin_pin();
        let hello = self.hello(&begun, &pin);
        self.machine
            .complete(&self.authority, T0 + 2, &hello)
            .unwrap()
    }
}

#[test]
fn pin_pairing_approval_and_one_time_delivery_for_the_devices_own_key() {
    let mut f = Fixture::new(GatewayConfig::default());
    let request = f.pending();
    assert_eq!(request.state, RequestState::PendingApproval);
    let id = request.request_id.clone();
    let poll = |f: &mut Fixture, at: u64| f.machine.status(&f.authority, at, &id, DEV).unwrap();
    assert!(poll(&mut f, T0 + 3).delivered.is_none());
    assert_eq!(
        f.machine
            .status(&f.authority, T0 + 3, &id, "01BX5ZZKBKACTAV9WEVGEMMVRZ")
            .unwrap_err(),
        EnrollError::WrongDevice("01BX5ZZKBKACTAV9WEVGEMMVRZ".into())
    );
    let approved = f
        .machine
        .approve(&f.authority, T0 + 4, &id, false, None)
        .unwrap();
    assert_eq!(approved.state, RequestState::Approved);
    let status = poll(&mut f, T0 + 5);
    assert_eq!(status.request.state, RequestState::Completed);
    let cert = status.delivered.expect("delivered once");
    // The certificate carries the key the device proved, and names the device.
    let der = cert::cert_pem_to_der(&cert.pem).unwrap();
    assert_eq!(
        cert::cert_ed25519_public(&der).unwrap(),
        Some(f.keys.signing.verifying_key().to_bytes())
    );
    assert_eq!(
        cert::device_id_from_cert(&der).unwrap().as_deref(),
        Some(DEV)
    );
    assert_eq!(
        effects(&mut f.machine),
        vec![Effect::RecordCert {
            device_id: DEV.into(),
            cert_pem: cert.pem.clone(),
            pending: false
        }]
    );
    // A second poll (the first answer was lost): the same public certificate again, nothing
    // signed or recorded again.
    let again = poll(&mut f, T0 + 6);
    assert_eq!(again.request.state, RequestState::Completed);
    assert_eq!(again.delivered.as_ref().map(|d| &d.pem), Some(&cert.pem));
    assert_eq!(*f.authority.signed.borrow(), 1);
    assert!(effects(&mut f.machine).is_empty());
    // ... but not once the device is revoked, nor once the certificate expired.
    f.authority.set(DEV, Standing::Revoked);
    assert!(poll(&mut f, T0 + 7).delivered.is_none());
    f.authority.set(DEV, Standing::Paired);
    let expired = poll(&mut f, again.request.cert_expires_at_unix_ms + 1);
    assert!(expired.delivered.is_none());
}

#[test]
fn transitions_are_guarded() {
    let mut f = Fixture::new(GatewayConfig::default());
    let id = f.pending().request_id;
    f.machine.reject(T0 + 3, &id, Some("not ours")).unwrap();
    let err = f
        .machine
        .approve(&f.authority, T0 + 4, &id, false, None)
        .unwrap_err();
    assert_eq!(
        err,
        EnrollError::Transition {
            state: "rejected",
            action: "approved"
        }
    );
    assert_eq!(
        f.machine.reject(T0 + 4, &id, None).unwrap_err(),
        EnrollError::Transition {
            state: "rejected",
            action: "rejected"
        }
    );
    assert_eq!(*f.authority.signed.borrow(), 0);
    // Completed requests cannot be rejected or approved again.
    let mut f = Fixture::new(GatewayConfig::default());
    let id = f.pending().request_id;
    f.machine
        .approve(&f.authority, T0 + 3, &id, false, None)
        .unwrap();
    f.machine.status(&f.authority, T0 + 4, &id, DEV).unwrap();
    assert!(matches!(
        f.machine.approve(&f.authority, T0 + 5, &id, false, None),
        Err(EnrollError::Transition {
            state: "completed",
            ..
        })
    ));
    assert!(matches!(
        f.machine.reject(T0 + 5, &id, None),
        Err(EnrollError::Transition {
            state: "completed",
            ..
        })
    ));
    // Undecided requests expire and cannot be approved afterwards.
    let mut f = Fixture::new(GatewayConfig::default());
    let id = f.pending().request_id;
    let late = T0 + 2 + APPROVAL_TTL_MS;
    assert!(matches!(
        f.machine.approve(&f.authority, late, &id, false, None),
        Err(EnrollError::Transition {
            state: "expired",
            ..
        })
    ));
}

#[test]
fn a_device_revoked_meanwhile_gets_no_certificate() {
    // Revoked before approval: the approval is refused and the request rejected.
    let mut f = Fixture::new(GatewayConfig::default());
    let id = f.pending().request_id;
    f.authority.set(DEV, Standing::Revoked);
    assert_eq!(
        f.machine
            .approve(&f.authority, T0 + 3, &id, false, None)
            .unwrap_err(),
        EnrollError::Revoked(DEV.into())
    );
    assert_eq!(*f.authority.signed.borrow(), 0);
    // Revoked between approval and delivery: nothing delivered, nothing recorded.
    let mut f = Fixture::new(GatewayConfig::default());
    let id = f.pending().request_id;
    f.machine
        .approve(&f.authority, T0 + 3, &id, false, None)
        .unwrap();
    f.authority.set(DEV, Standing::Revoked);
    let status = f.machine.status(&f.authority, T0 + 4, &id, DEV).unwrap();
    assert_eq!(status.request.state, RequestState::Rejected);
    assert!(status.delivered.is_none());
    assert!(effects(&mut f.machine).is_empty());
    // And a revoked device cannot even complete.
    let mut f = Fixture::new(GatewayConfig::default());
    f.authority.set(DEV, Standing::Revoked);
    let (pin, begun) = f.begin_pin();
    let hello = f.hello(&begun, &pin);
    assert_eq!(
        f.machine
            .complete(&f.authority, T0 + 2, &hello)
            .unwrap_err(),
        EnrollError::Revoked(DEV.into())
    );
}

#[test]
fn re_pairing_a_known_device_needs_an_explicit_replace() {
    let mut f = Fixture::new(GatewayConfig {
        auto_approve: true,
        ..GatewayConfig::default()
    });
    f.authority.set(DEV, Standing::Paired);
    let request = f.pending();
    assert!(request.replaces_device);
    assert_eq!(
        request.state,
        RequestState::PendingApproval,
        "auto-approve never replaces"
    );
    let id = request.request_id;
    assert_eq!(
        f.machine
            .approve(&f.authority, T0 + 3, &id, false, None)
            .unwrap_err(),
        EnrollError::NeedsReplace(DEV.into())
    );
    f.machine
        .approve(&f.authority, T0 + 3, &id, true, None)
        .unwrap();
    let status = f.machine.status(&f.authority, T0 + 4, &id, DEV).unwrap();
    let pem = status.delivered.unwrap().pem;
    assert_eq!(
        effects(&mut f.machine),
        vec![
            Effect::RecordCert {
                device_id: DEV.into(),
                cert_pem: pem.clone(),
                pending: false
            },
            Effect::Supersede {
                device_id: DEV.into(),
                keep_cert_pem: pem
            },
        ]
    );
}

#[test]
fn auto_approve_pairs_new_devices_without_an_operator() {
    let mut f = Fixture::new(GatewayConfig {
        auto_approve: true,
        ..GatewayConfig::default()
    });
    let request = f.pending();
    assert_eq!(request.state, RequestState::Approved);
    assert_eq!(request.reason, "auto_approved");
    let status = f
        .machine
        .status(&f.authority, T0 + 3, &request.request_id, DEV)
        .unwrap();
    assert!(status.delivered.is_some());
}

#[test]
fn sessions_are_single_use_and_expire() {
    // A replayed Complete finds no session.
    let mut f = Fixture::new(GatewayConfig::default());
    let (pin, begun) = f.begin_pin();
    let hello = f.hello(&begun, &pin);
    f.machine.complete(&f.authority, T0 + 2, &hello).unwrap();
    assert_eq!(
        f.machine
            .complete(&f.authority, T0 + 3, &hello)
            .unwrap_err(),
        EnrollError::SessionNotFound
    );
    // A wrong proof burns the session: the right one afterwards finds nothing.
    let mut f = Fixture::new(GatewayConfig::default());
    let (pin, begun) = f.begin_pin();
    let wrong = f.hello(&begun, "000000");
    assert_eq!(
        f.machine
            .complete(&f.authority, T0 + 2, &wrong)
            .unwrap_err(),
        EnrollError::Verification(V1Error::WrongProof)
    );
    let right = f.hello(&begun, &pin);
    assert_eq!(
        f.machine
            .complete(&f.authority, T0 + 3, &right)
            .unwrap_err(),
        EnrollError::SessionNotFound
    );
    // An expired session.
    let mut f = Fixture::new(GatewayConfig::default());
    let (pin, begun) = f.begin_pin();
    let hello = f.hello(&begun, &pin);
    let late = begun.expires_at_unix_ms;
    assert_eq!(
        f.machine.complete(&f.authority, late, &hello).unwrap_err(),
        EnrollError::SessionExpired
    );
    // The code itself was single use: Begin again with it fails.
    assert_eq!(
        f.begin(&pin, Method::Pin).unwrap_err(),
        EnrollError::Code(CodeError::NoMatch)
    );
}

#[test]
fn begin_checks_version_kind_replay_and_guesses() {
    let mut f = Fixture::new(GatewayConfig::default());
    let pin = f.mint(Method::Pin);
    let begin = |f: &mut Fixture, version, kind, code: &str, replay| {
        f.machine.begin(
            T0 + 1,
            Some("192.0.2.7".parse().unwrap()),
            &Begin {
                version,
                client_kind: kind,
                method: Method::Pin,
                code,
                replay,
            },
            &mut f.random,
        )
    };
    assert!(matches!(
        begin(&mut f, 0, "node", &pin, None),
        Err(EnrollError::Invalid(_))
    ));
    assert!(matches!(
        begin(&mut f, 1, "robot", &pin, None),
        Err(EnrollError::Invalid(_))
    ));
    let stale = Some(("nonce-0123456789abcdef", 0));
    assert!(matches!(
        begin(&mut f, 1, "node", &pin, stale),
        Err(EnrollError::Replay(ReplayError::Stale))
    ));
    let fresh = Some(("nonce-0123456789abcdef", (T0 + 1) as i64));
    begin(&mut f, 1, "NODE ", &pin, fresh).unwrap();
    let pin2 = f.mint(Method::Pin);
    assert_eq!(
        begin(&mut f, 1, "node", &pin2, fresh).unwrap_err(),
        EnrollError::Replay(ReplayError::Replayed)
    );
    // Guessed codes: counted, then the address is refused even with the right code.
    for i in 0..MAX_FAILURES_PER_SOURCE {
        let guess = format!("{i:06}");
        if guess != pin2 {
            let _ = begin(&mut f, 1, "node", &guess, None);
        }
    }
    assert!(matches!(
        begin(&mut f, 1, "node", &pin2, None),
        Err(EnrollError::Code(CodeError::Throttled { .. }))
    ));
}

#[test]
fn state_survives_a_restart_at_every_step() {
    let config = GatewayConfig::default();
    let mut f = Fixture::new(config);
    let pin = f.mint(Method::Pin);
    // Restart after minting: the code still works.
    f.machine = Enrollment::new(config, f.machine.state());
    let begun = f.begin(&pin, Method::Pin).unwrap();
    // Restart between Begin and Complete: the session (and its secret) survive.
    f.machine = Enrollment::new(config, f.machine.state());
    let hello = f.hello(&begun, &pin);
    let id = f
        .machine
        .complete(&f.authority, T0 + 2, &hello)
        .unwrap()
        .request_id;
    f.machine = Enrollment::new(config, f.machine.state());
    f.machine
        .approve(&f.authority, T0 + 3, &id, false, None)
        .unwrap();
    // Restart after approval: the signed certificate is kept, not signed again.
    f.machine = Enrollment::new(config, f.machine.state());
    let status = f.machine.status(&f.authority, T0 + 4, &id, DEV).unwrap();
    assert!(status.delivered.is_some());
    assert_eq!(*f.authority.signed.borrow(), 1);
    // Restart after delivery: completed, the trust record re-derivable; a lost answer can be
    // fetched again, nothing is signed or recorded again.
    let restored = Enrollment::new(config, f.machine.state());
    assert_eq!(restored.recovery_effects().len(), 1);
    f.machine = restored;
    let again = f.machine.status(&f.authority, T0 + 5, &id, DEV).unwrap();
    assert_eq!(
        again.delivered.map(|d| d.pem),
        status.delivered.map(|d| d.pem)
    );
    assert_eq!(*f.authority.signed.borrow(), 1);
    assert!(effects(&mut f.machine).is_empty());
}

#[test]
fn rotation_proves_the_new_key_and_is_rate_limited() {
    use ed25519_dalek::Signer;
    let mut f = Fixture::new(GatewayConfig::default());
    let current = f.keys.signing.verifying_key().to_bytes();
    let spki = [7u8; 32];
    assert_eq!(
        f.machine
            .rotate(&f.authority, T0, DEV, (&current, &spki), None)
            .unwrap_err(),
        EnrollError::NotPaired(DEV.into())
    );
    f.authority.set(DEV, Standing::Paired);
    let new = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let new_public = new.verifying_key().to_bytes();
    let good = new
        .sign(&rotation_payload(DEV, &spki, &new_public))
        .to_bytes();
    let mut bad = good;
    bad[0] ^= 1;
    assert_eq!(
        f.machine
            .rotate(
                &f.authority,
                T0,
                DEV,
                (&current, &spki),
                Some((&new_public, &bad))
            )
            .unwrap_err(),
        EnrollError::Verification(V1Error::BadSignature)
    );
    let signed = f
        .machine
        .rotate(
            &f.authority,
            T0,
            DEV,
            (&current, &spki),
            Some((&new_public, &good)),
        )
        .unwrap();
    let der = cert::cert_pem_to_der(&signed.pem).unwrap();
    assert_eq!(cert::cert_ed25519_public(&der).unwrap(), Some(new_public));
    assert!(matches!(
        effects(&mut f.machine).as_slice(),
        [Effect::RecordCert { pending: true, .. }]
    ));
    for _ in 1..MAX_ROTATIONS_PER_HOUR {
        f.machine
            .rotate(&f.authority, T0, DEV, (&current, &spki), None)
            .unwrap();
    }
    assert!(matches!(
        f.machine
            .rotate(&f.authority, T0, DEV, (&current, &spki), None),
        Err(EnrollError::Busy(_))
    ));
}

/// The device machine against the gateway machine, through the wire messages: the issued
/// certificate is accepted; one for another key, another device or from another CA, or an
/// answer carrying a private key, is refused; so are malformed offers.
#[test]
fn device_side_accepts_only_its_own_certificate_under_the_trusted_ca() {
    use crate::enroll::device::{CaTrust, DeviceError, DevicePairing, Progress};
    use crate::pb::palyra::node::v1::{
        pairing_method, BeginPairingSessionResponse, GetPairingRequestStatusResponse,
    };
    let mut f = Fixture::new(GatewayConfig::default());
    let code = f.mint(Method::Qr);
    let pin = cert::cert_spki_fingerprint(f.authority.ca.cert_der()).unwrap();
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let keys = DeviceKeys::generate(&mut rng);
    let own = keys.signing.verifying_key().to_bytes();
    let mut device =
        DevicePairing::new(keys, DEV, Method::Qr, &code, CaTrust::Pinned(pin)).unwrap();

    let begin = device.begin_request(None);
    let Some(pairing_method::Value::QrToken(sent)) = begin.method.and_then(|m| m.value) else {
        panic!("a QR pairing sends its token");
    };
    let begun = f.begin(&sent, Method::Qr).unwrap();
    let offer = crate::enroll::wire::offer_response(1, &begun);
    for bad in [
        BeginPairingSessionResponse {
            v: 2,
            ..offer.clone()
        },
        BeginPairingSessionResponse {
            challenge: vec![1; 31],
            ..offer.clone()
        },
        BeginPairingSessionResponse {
            gateway_ephemeral_public: vec![0; 32],
            ..offer.clone()
        },
    ] {
        assert!(device.complete_request(&bad).is_err(), "{bad:?}");
    }
    let c = device.complete_request(&offer).unwrap();
    let hello = crate::enroll::wire::hello_of(&c).unwrap();
    let id = f
        .machine
        .complete(&f.authority, T0 + 2, &hello)
        .unwrap()
        .request_id;
    assert_eq!(device.status_request().session_id, id);
    let answer = |status: Status| {
        let d = status.delivered.unwrap_or(SignedCert {
            pem: String::new(),
            ca_pem: String::new(),
            expires_at_unix_ms: 0,
        });
        GetPairingRequestStatusResponse {
            v: 1,
            status: status.request.state.as_str().into(),
            reason: status.request.reason,
            mtls_client_certificate_pem: d.pem,
            gateway_ca_certificate_pem: d.ca_pem,
            cert_expires_at_unix_ms: d.expires_at_unix_ms,
            ..Default::default()
        }
    };
    let waiting = answer(f.machine.status(&f.authority, T0 + 3, &id, DEV).unwrap());
    assert!(matches!(
        device.on_status(&waiting),
        Ok(Progress::Waiting { .. })
    ));
    f.machine
        .approve(&f.authority, T0 + 4, &id, false, None)
        .unwrap();
    let good = answer(f.machine.status(&f.authority, T0 + 5, &id, DEV).unwrap());
    assert!(matches!(device.on_status(&good), Ok(Progress::Issued(_))));

    // Rotation from that certificate: the request the device builds is what the gateway
    // verifies, and the answer is checked for the new key.
    {
        use crate::enroll::device::{check_rotated, rotation_request};
        use crate::pb::palyra::node::v1::RotateDeviceCertificateResponse;
        f.authority.set(DEV, Standing::Paired);
        let ca_der = f.authority.ca.cert_der().to_vec();
        let current = cert::cert_pem_to_der(&good.mtls_client_certificate_pem).unwrap();
        let new_key = DeviceKeys::generate(&mut rng).signing;
        let request = rotation_request(DEV, &current, &new_key, None).unwrap();
        let spki = cert::cert_spki_fingerprint(&current).unwrap();
        let signed = f
            .machine
            .rotate(
                &f.authority,
                T0 + 6,
                DEV,
                (&own, &spki),
                Some((
                    request.new_signing_public.as_slice().try_into().unwrap(),
                    request.new_key_signature.as_slice().try_into().unwrap(),
                )),
            )
            .unwrap();
        let rotated = RotateDeviceCertificateResponse {
            mtls_client_certificate_pem: signed.pem,
            ..Default::default()
        };
        assert_eq!(check_rotated(&rotated, &ca_der, DEV, &new_key), Ok(()));
        let old_key = DeviceKeys::generate(&mut rng).signing;
        assert!(check_rotated(&rotated, &ca_der, DEV, &old_key).is_err());
        let with_key = RotateDeviceCertificateResponse {
            mtls_client_private_key_pem: "x".into(),
            ..rotated
        };
        assert_eq!(
            check_rotated(&with_key, &ca_der, DEV, &new_key),
            Err(DeviceError::KeyFromGateway)
        );
    }

    let with_key = GetPairingRequestStatusResponse {
        mtls_client_private_key_pem: "-----BEGIN PRIVATE KEY-----".into(),
        ..good.clone()
    };
    assert_eq!(
        device.on_status(&with_key),
        Err(DeviceError::KeyFromGateway)
    );
    let other_key = DeviceKeys::generate(&mut rng)
        .signing
        .verifying_key()
        .to_bytes();
    let other_ca = CertAuthority::generate(
        &mut rng,
        UNIX_EPOCH + Duration::from_millis(T0),
        Duration::from_secs(86_400),
        "Other CA",
    )
    .unwrap();
    let foreign = other_ca
        .issue(
            &mut rng,
            &Profile::Device { device_id: DEV },
            cert::spki_of_public(&own).unwrap(),
            UNIX_EPOCH + Duration::from_millis(T0),
            Duration::from_secs(3600),
        )
        .unwrap();
    for (what, cert_pem, ca_pem) in [
        (
            "another key",
            f.authority
                .sign(DEV, &other_key, T0, 3_600_000)
                .unwrap()
                .pem,
            good.gateway_ca_certificate_pem.clone(),
        ),
        (
            "another device",
            f.authority
                .sign("01BX5ZZKBKACTAV9WEVGEMMVRZ", &own, T0, 3_600_000)
                .unwrap()
                .pem,
            good.gateway_ca_certificate_pem.clone(),
        ),
        (
            "another CA",
            foreign.pem.clone(),
            other_ca.cert_pem().unwrap(),
        ),
        (
            "signed by another CA than the one sent",
            foreign.pem,
            good.gateway_ca_certificate_pem.clone(),
        ),
    ] {
        let forged = GetPairingRequestStatusResponse {
            mtls_client_certificate_pem: cert_pem,
            gateway_ca_certificate_pem: ca_pem,
            ..good.clone()
        };
        assert!(
            matches!(
                device.on_status(&forged),
                Err(DeviceError::BadCertificate(_))
            ),
            "accepted a certificate for {what}"
        );
    }
    let rejected = GetPairingRequestStatusResponse {
        status: "rejected".into(),
        reason: "no".into(),
        ..Default::default()
    };
    assert!(matches!(
        device.on_status(&rejected),
        Ok(Progress::Refused { .. })
    ));
}
