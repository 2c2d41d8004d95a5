//! A gateway's certificate chain as a pairing device checks it before it trusts anything: the
//! CA-pinning verifier with arbitrary chains (length-prefixed DER certificates; the pin is the
//! key hash of the last certificate, so well-formed chains reach the path validation), plus
//! every inspection a device or the gateway makes of a peer certificate. Never a panic, and
//! nothing verifies unless the pinned CA is in the chain.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::identity::cert;
use palyra_proto::quic::tls::PinnedCaVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

fuzz_target!(|data: &[u8]| {
    let mut chain = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 && chain.len() < 4 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        chain.push(CertificateDer::from(rest[2..2 + len].to_vec()));
        rest = &rest[2 + len..];
    }
    for der in &chain {
        let _ = cert::cert_validity(der);
        let _ = cert::cert_ed25519_public(der);
        let _ = cert::device_id_from_cert(der);
    }
    let Some((leaf, intermediates)) = chain.split_first() else {
        return;
    };
    let pin = intermediates
        .last()
        .and_then(|c| cert::cert_spki_fingerprint(c).ok())
        .unwrap_or([0; 32]);
    let verifier = PinnedCaVerifier::new(pin);
    let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_795_500_000));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let verified = verifier.verify_server_cert(leaf, intermediates, &name, &[], now);
    if verified.is_ok() {
        assert!(verifier.find_ca(intermediates).is_some());
    }
});
