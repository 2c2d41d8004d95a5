//! Webhook verification with arbitrary signature, timestamp, nonce and body: never panics, and
//! never accepts a delivery whose signature was not made with the integration's secret (its hex
//! in either case).
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_gateway::operator::webhook::{sign, WebhookStore};
use palyra_gateway::store::MemoryDocs;
use std::sync::{Arc, OnceLock};

fn store() -> &'static WebhookStore {
    static STORE: OnceLock<WebhookStore> = OnceLock::new();
    STORE.get_or_init(|| {
        // In memory: every change is answered at once.
        let store = WebhookStore::open(Arc::new(MemoryDocs::default()), None).expect("store");
        let created = store.create("fuzz", None, 0, [3; 32]).take();
        assert!(matches!(created, Some(Ok(Ok(_)))), "integration");
        store
    })
}

fuzz_target!(|data: &[u8]| {
    let store = store();
    let hook = store.get("fuzz").expect("integration");
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let signature = parts.next();
    let timestamp = parts.next();
    let nonce = parts.next();
    let body = parts.next().unwrap_or_default();
    let now = 1_800_000_000;
    if store
        .verify(&hook, signature, timestamp, nonce, body, now)
        .is_ok()
    {
        // Only a genuine signature can pass.
        let (ts, n) = (timestamp.unwrap_or_default(), nonce.unwrap_or_default());
        let genuine = sign(
            &[3; 32],
            std::str::from_utf8(ts).unwrap_or(""),
            std::str::from_utf8(n).unwrap_or(""),
            body,
        );
        // Hex digits may come in either case: the same MAC either way.
        let sent = signature.unwrap_or_default();
        assert!(
            sent.eq_ignore_ascii_case(genuine.as_bytes()),
            "accepted {sent:?}, the genuine signature is {genuine:?}"
        );
    }
});
