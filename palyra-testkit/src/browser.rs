//! Real Chromium under the DevTools client: launched on its pipe, driven through a browser
//! context and a flattened target session.

use crate::Driver;
use palyra_gateway::browser::cdp::Cdp;
use palyra_gateway::browser::chromium::{self, LaunchOptions};
use palyra_gateway::browser::tab::{LogLimits, Tab, TabPolicy};
use palyra_proto::cdp::types::{
    self, AttachToTarget, CreateBrowserContext, CreateTarget, Evaluate,
};
use palyra_proto::cdp::{CdpConfig, CdpError};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Launch options for a test's Chromium in `dir`; panics with the install hint when none is on PATH.
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

/// A page with a button that appears after 500 ms, a button under a veil, and nothing else.
const WAITING_PAGE: &str = r#"<!doctype html><title>waits</title>
<p id="out">nothing clicked</p>
<div style="position:relative;width:120px"><button id="under" onclick="out.textContent='under clicked'">under</button>
<div id="veil" style="position:absolute;inset:0;background:rgba(0,0,0,.2)"></div></div>
<script>setTimeout(() => { const b = document.createElement('button'); b.id = 'late'; b.textContent = 'late';
b.onclick = () => { out.textContent = 'late clicked'; }; document.body.appendChild(b); }, 500);</script>"#;

/// Actions wait like Playwright's: an element that appears after 500 ms is clicked (with real
/// mouse events), a covered element is reported with what covers it and not clicked, a missing
/// or ambiguous selector is named; the SSRF guard refuses loopback for navigations and for the
/// page's own requests.
pub fn tabs_wait_for_actionable_elements<D: Driver>() {
    use base64::Engine as _;
    use palyra_gateway::browser::actions::{self, Need};

    let dir = tempfile::tempdir().unwrap();
    let rt = D::runtime();
    let mut launched = chromium::launch(&*rt, &chromium_options(dir.path())).expect("launch");
    let (cdp, _closed) = Cdp::spawn(&rt, launched.pipe, CdpConfig::default());
    D::block_on(async {
        let tab = blank_tab(&rt, &cdp).await.expect("attach");
        let page = format!(
            "data:text/html;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(WAITING_PAGE)
        );
        tab.navigate(&rt, &page, Instant::now() + T)
            .await
            .expect("navigate");

        let started = Instant::now();
        let point = actions::wait_actionable(&rt, &tab, "#late", Need::Click, started + T, 0)
            .await
            .expect("the late button becomes actionable");
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "it waited for the button"
        );
        actions::click_at(&tab, point).await.unwrap();
        let out = || tab.evaluate("document.getElementById('out').textContent");
        assert_eq!(out().await.unwrap(), json!("late clicked"));

        let covered = actions::wait_actionable(
            &rt,
            &tab,
            "#under",
            Need::Click,
            Instant::now() + Duration::from_millis(700),
            0,
        )
        .await
        .expect_err("a covered button is not actionable");
        assert_eq!(covered.outcome, "element_covered");
        assert!(covered.error.contains(r#"id="veil""#), "{}", covered.error);
        assert!(covered.attempts > 1, "it retried until the deadline");
        assert_eq!(
            out().await.unwrap(),
            json!("late clicked"),
            "nothing else was clicked"
        );

        let soon = || Instant::now() + Duration::from_millis(300);
        let missing = actions::wait_actionable(&rt, &tab, "#nope", Need::Click, soon(), 0)
            .await
            .unwrap_err();
        assert_eq!(missing.outcome, "selector_not_found");
        let ambiguous = actions::wait_actionable(&rt, &tab, "button", Need::Click, soon(), 0)
            .await
            .unwrap_err();
        assert_eq!(ambiguous.outcome, "selector_ambiguous");
        assert!(
            ambiguous.error.contains("2 elements"),
            "{}",
            ambiguous.error
        );
        let invalid = actions::wait_actionable(&rt, &tab, "#[", Need::Click, soon(), 0)
            .await
            .unwrap_err();
        assert_eq!(
            (invalid.outcome.as_str(), invalid.attempts),
            ("invalid_selector", 1)
        );

        let blocked = tab
            .navigate(&rt, "http://127.0.0.1:9/secret", Instant::now() + T)
            .await
            .expect_err("loopback is refused");
        assert!(blocked.contains("loopback"), "{blocked}");
        let fetched = tab
            .evaluate("fetch('http://169.254.169.254/latest/meta-data/').then(() => 'loaded', () => 'refused')")
            .await
            .unwrap();
        assert_eq!(fetched, json!("refused"));
        let reasons = tab.state.read(|v| v.blocked.clone());
        assert!(
            reasons
                .iter()
                .any(|(url, why)| url.starts_with("http://169.254.169.254/")
                    && why.contains("link-local")),
            "{reasons:?}"
        );
        chromium::kill_group(&launched.child);
    });
    let _ = launched.child.wait();
}

/// A pipe that adds invented fields to every object of every message Chromium sends and an
/// invented event after each message (in the same session): what a future Chromium might send.
#[derive(Debug)]
struct Embellished {
    inner: Box<dyn palyra_gateway::runtime::TcpIo>,
    state: std::sync::Mutex<(Vec<u8>, std::collections::VecDeque<u8>)>,
}

fn embellish(value: &mut Value, depth: usize) {
    match value {
        Value::Object(map) => {
            for v in map.values_mut() {
                embellish(v, depth + 1);
            }
            map.insert(
                format!("inventedAtDepth{depth}"),
                json!({"nested": [1, "two", {"three": null}], "flag": true}),
            );
        }
        Value::Array(items) => items.iter_mut().for_each(|v| embellish(v, depth + 1)),
        _ => {}
    }
}

impl palyra_gateway::runtime::TcpIo for Embellished {
    fn poll_read(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        loop {
            let mut state = self.state.lock().unwrap();
            if !state.1.is_empty() {
                let n = buf.len().min(state.1.len());
                for (slot, byte) in buf.iter_mut().zip(state.1.drain(..n)) {
                    *slot = byte;
                }
                return Poll::Ready(Ok(n));
            }
            let mut raw = vec![0u8; 64 * 1024];
            let n = match self.inner.poll_read(cx, &mut raw) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(0)),
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            let (partial, out) = &mut *state;
            for byte in &raw[..n] {
                if *byte != 0 {
                    partial.push(*byte);
                    continue;
                }
                let mut message: Value =
                    serde_json::from_slice(partial).expect("Chromium sends JSON");
                partial.clear();
                let session = message.get("sessionId").cloned();
                embellish(&mut message, 0);
                out.extend(serde_json::to_vec(&message).unwrap());
                out.push_back(0);
                let mut invented =
                    json!({"method": "Palyra.inventedEvent", "params": {"at": 2031}});
                if let Some(session) = session {
                    invented["sessionId"] = session;
                }
                out.extend(serde_json::to_vec(&invented).unwrap());
                out.push_back(0);
            }
        }
    }

    fn poll_write(
        &self,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn socket(&self) -> socket2::SockRef<'_> {
        self.inner.socket()
    }
}

/// Unknown CDP fields and events never break a session: every message of a real Chromium gets
/// invented fields in every object plus an invented event after it, and a whole session (attach,
/// navigate, wait for an element, click, read the page, console and network logs) still works.
pub fn invented_cdp_fields_and_events_never_break_a_session<D: Driver>() {
    use base64::Engine as _;
    use palyra_gateway::browser::actions::{self, Need};

    let dir = tempfile::tempdir().unwrap();
    let rt = D::runtime();
    let mut launched = chromium::launch(&*rt, &chromium_options(dir.path())).expect("launch");
    let pipe = Box::new(Embellished {
        inner: launched.pipe,
        state: Default::default(),
    });
    let (cdp, _closed) = Cdp::spawn(&rt, pipe, CdpConfig::default());
    D::block_on(async {
        let tab = blank_tab(&rt, &cdp)
            .await
            .expect("attach through an embellished pipe");
        let page = format!(
            "data:text/html;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(
                "<title>future</title><button id=b onclick=\"console.warn('pressed', 42)\">b</button>"
            )
        );
        tab.navigate(&rt, &page, Instant::now() + T)
            .await
            .expect("navigate");
        let point = actions::wait_actionable(&rt, &tab, "#b", Need::Click, Instant::now() + T, 0)
            .await
            .expect("actionable");
        actions::click_at(&tab, point).await.unwrap();
        assert_eq!(
            tab.evaluate("document.title").await.unwrap(),
            json!("future")
        );
        tab.state
            .wait_for(|v| v.console.iter().any(|c| c.message == "pressed 42"))
            .await;
        let warns = tab.state.read(|v| v.console_counts.1);
        assert_eq!(warns, 1);
        chromium::kill_group(&launched.child);
    });
    let _ = launched.child.wait();
}

/// A new tab on `about:blank` with private targets refused and small logs.
async fn blank_tab(rt: &palyra_gateway::runtime::Rt, cdp: &Cdp) -> Result<Tab, CdpError> {
    let target: CreateTarget = types::decode(
        &cdp.call(
            None,
            "Target.createTarget",
            json!({"url": "about:blank"}),
            T,
        )
        .await?,
    )?;
    let policy = TabPolicy {
        allow_private: Default::default(),
        limits: LogLimits {
            network_entries: 16,
            console_entries: 16,
        },
    };
    Tab::attach(rt, cdp, &target.target_id, policy, || 0).await
}

/// The browserd engine on this driver: a session belongs to its principal (another principal's
/// id is not found), an action on a page works, and when Chromium is killed the session fails at
/// once with `browser_unavailable` while the next session starts a new Chromium.
pub fn browserd_sessions_survive_a_chromium_kill<D: Driver>() {
    use base64::Engine as _;
    use palyra_gateway::browser::engine::{BrowserEngine, DownloadPolicy, EngineConfig};
    use palyra_gateway::browser::{budget::Budget, ops, sessions};
    use palyra_proto::pb::palyra::browser::v1 as pb;

    let dir = tempfile::tempdir().unwrap();
    let rt = D::runtime();
    let engine = BrowserEngine::open(
        &rt,
        EngineConfig {
            executable: chromium_options(dir.path()).executable,
            state_dir: dir.path().join("browserd"),
            limits: Budget::default(),
            max_sessions: 4,
            max_profiles: 4,
            downloads: DownloadPolicy::default(),
            extra_args: Vec::new(),
        },
    )
    .unwrap();
    let page = format!(
        "data:text/html;base64,{}",
        base64::engine::general_purpose::STANDARD
            .encode("<title>t</title><button id=b onclick=\"document.title='done'\">b</button>")
    );
    let alice = || "user:alice".to_owned();
    D::block_on(async {
        let created = sessions::create_session(
            engine.clone(),
            alice(),
            pb::CreateSessionRequest {
                v: 1,
                ..Default::default()
            },
        )
        .await
        .expect("create");
        let sid = created.session_id.clone();
        let nav = ops::navigate(
            engine.clone(),
            alice(),
            pb::NavigateRequest {
                v: 1,
                session_id: sid.clone(),
                url: page.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(nav.success, "{nav:?}");
        let click = ops::click(
            engine.clone(),
            alice(),
            pb::ClickRequest {
                v: 1,
                session_id: sid.clone(),
                selector: "#b".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(click.success, "{click:?}");
        let title = ops::get_title(
            engine.clone(),
            alice(),
            pb::GetTitleRequest {
                v: 1,
                session_id: sid.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(title.title, "done");

        let theirs = ops::get_title(
            engine.clone(),
            "user:mallory".into(),
            pb::GetTitleRequest {
                v: 1,
                session_id: sid.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(theirs.error, ops::SESSION_NOT_FOUND);

        let browser = engine.browsers().pop().expect("a running Chromium");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(browser.pid() as i32, libc::SIGKILL) };
        let started = Instant::now();
        let failed = loop {
            let r = ops::get_title(
                engine.clone(),
                alice(),
                pb::GetTitleRequest {
                    v: 1,
                    session_id: sid.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            if !r.success {
                break r;
            }
            assert!(
                started.elapsed() < T,
                "the session kept working after Chromium was killed"
            );
            palyra_gateway::runtime::sleep(&*rt, Duration::from_millis(50)).await;
        };
        assert!(
            failed.error.starts_with("browser_unavailable"),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );

        let again = sessions::create_session(
            engine.clone(),
            alice(),
            pb::CreateSessionRequest {
                v: 1,
                ..Default::default()
            },
        )
        .await
        .expect("a new session after the kill");
        let nav = ops::navigate(
            engine.clone(),
            alice(),
            pb::NavigateRequest {
                v: 1,
                session_id: again.session_id,
                url: page,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert!(nav.success, "{nav:?}");
        engine.shutdown().await;
    });
}
