//! Certificate inspection (SPKI fingerprint, device ID, validity, signature check) never panics
//! on arbitrary DER.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::identity::cert;

fuzz_target!(|data: &[u8]| {
    let _ = cert::cert_spki_fingerprint(data);
    let _ = cert::device_id_from_cert(data);
    let _ = cert::cert_not_after(data);
    let _ = cert::verify_signed_by(data, data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cert::cert_pem_to_der(text);
        let _ = cert::key_from_pem(text);
    }
});
