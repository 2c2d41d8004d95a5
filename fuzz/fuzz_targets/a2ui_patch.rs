//! A2UI patch parsing and application on arbitrary JSON: never panics, a refused patch leaves
//! the surface unchanged, an accepted one bumps the version by one and keeps a valid document.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::a2ui::{validate_document, Surface};

fuzz_target!(|data: &[u8]| {
    let Ok(patch) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let doc = serde_json::json!({"v":1,"surface":"fuzz","components":[
        {"id":"t","type":"text","props":{"value":"x","list":[1,2,3]}},
        {"id":"f","type":"form","props":{"fields":[{"id":"a"}]}}
    ]});
    let mut surface = Surface::new(doc).expect("fixture");
    let before = surface.document().clone();
    match surface.apply_patch(None, &patch) {
        Ok(_) => {
            assert_eq!(surface.version(), 2);
            validate_document(surface.document()).expect("valid after a patch");
        }
        Err(_) => {
            assert_eq!(surface.version(), 1);
            assert_eq!(surface.document(), &before);
        }
    }
});
