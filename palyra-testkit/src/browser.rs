//! Real Chromium under the DevTools client: launched on its pipe, driven through a browser
//! context and a flattened target session.

use crate::Driver;
use palyra_gateway::browser::cdp::Cdp;
use palyra_gateway::browser::chromium::{self, LaunchOptions};
use palyra_proto::cdp::types::{
    self, AttachToTarget, CreateBrowserContext, CreateTarget, Evaluate,
};
use palyra_proto::cdp::{CdpConfig, CdpError};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Chromium for a test, or `None` (with a note) when the machine has none.
pub fn chromium_options(dir: &std::path::Path) -> LaunchOptions {
    let executable = chromium::find_executable()
        .expect("Chromium is needed for browser tests (Debian: apt-get install chromium)");
    LaunchOptions {
        executable,
        user_data_dir: dir.join("chromium-profile"),
        log_file: Some(dir.join("chromium.log")),
        extra_args: Vec::new(),
    }
}

/// Chromium answers over the pipe: a browser context, a page target, a flattened session, a
/// navigation that fires its load event, the page's title read back, an unknown method refused
/// in-band; killing the browser fails what is waiting with `Closed`.
pub fn chromium_over_the_devtools_pipe<D: Driver>() {
    let dir = tempfile::tempdir().unwrap();
    let rt = D::runtime();
    let mut launched = chromium::launch(&*rt, &chromium_options(dir.path())).expect("launch");
    let (cdp, closed) = Cdp::spawn(&rt, launched.pipe, CdpConfig::default());
    D::block_on(async {
        let version = cdp
            .call(None, "Browser.getVersion", Value::Null, T)
            .await
            .expect("Browser.getVersion");
        let version: types::BrowserVersion = types::decode(&version).unwrap();
        assert!(version.product.contains("Chrome"), "{version:?}");

        let context: CreateBrowserContext = types::decode(
            &cdp.call(
                None,
                "Target.createBrowserContext",
                json!({"disposeOnDetach": true}),
                T,
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let target: CreateTarget = types::decode(
            &cdp.call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "browserContextId": context.browser_context_id}),
                T,
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let attached: AttachToTarget = types::decode(
            &cdp.call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target.target_id, "flatten": true}),
                T,
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let session = attached.session_id.as_str();
        let events = cdp.subscribe(Some(session)).await;
        cdp.call(Some(session), "Page.enable", Value::Null, T)
            .await
            .unwrap();
        let page = "data:text/html,<title>Palyra%20pipe</title><p>hello</p>";
        cdp.call(Some(session), "Page.navigate", json!({"url": page}), T)
            .await
            .unwrap();
        loop {
            let event = events.recv().await.expect("events until load");
            if event.method == "Page.loadEventFired" {
                break;
            }
        }
        let title: Evaluate = types::decode(
            &cdp.call(
                Some(session),
                "Runtime.evaluate",
                json!({"expression": "document.title", "returnByValue": true}),
                T,
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(title.result.value, json!("Palyra pipe"));

        let refused = cdp
            .call(Some(session), "Page.noSuchMethod", Value::Null, T)
            .await;
        assert!(
            matches!(&refused, Err(CdpError::Protocol { code: -32601, .. })),
            "{refused:?}"
        );

        chromium::kill_group(&launched.child);
        let after = cdp.call(None, "Browser.getVersion", Value::Null, T).await;
        assert!(
            matches!(after, Err(CdpError::Closed)),
            "a dead browser answers Closed, not a hang: {after:?}"
        );
        closed.recv().await.expect("the connection reports its end");
    });
    let _ = launched.child.wait();
}
