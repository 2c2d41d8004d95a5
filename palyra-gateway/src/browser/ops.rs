//! The page actions and reads of BrowserService, one function per RPC: each takes the caller's
//! principal and the request, and answers in-band (`success = false`, `error`) for what goes
//! wrong on the page, as the contract does; statuses are for bad requests.
//!
//! An action is admitted against the session's budget (actions per session, per rate window),
//! runs alone in its session, waits like Playwright's auto-waiting, and is logged.

use super::actions::{self, Need, NotActionable};
use super::budget::per_call;
use super::engine::{wall_ms, BrowserEngine, Session, TabEntry};
use super::page::{self, RESOLVE};
use super::ssrf;
use super::tab::Severity;
use crate::runtime;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::browser::v1 as pb;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The in-band error of an unknown (or another principal's) session.
pub const SESSION_NOT_FOUND: &str = "session_not_found";
/// Longest title returned.
pub const MAX_TITLE: u64 = 4096;

/// A canonical id, or none for an empty string.
pub fn id(s: &str) -> Option<CanonicalId> {
    (!s.is_empty()).then(|| CanonicalId { ulid: s.to_owned() })
}

/// The ULID inside an optional canonical id.
pub fn ulid(id: &Option<CanonicalId>) -> &str {
    id.as_ref().map(|i| i.ulid.as_str()).unwrap_or("")
}

/// What an action did.
struct Done<T> {
    value: Option<T>,
    error: String,
    log: pb::BrowserActionLogEntry,
    shot: Option<(Vec<u8>, String)>,
}

/// Why an action failed: the log's outcome word, the error, the attempts made.
struct Failed {
    outcome: String,
    error: String,
    attempts: u32,
}

impl From<NotActionable> for Failed {
    fn from(n: NotActionable) -> Self {
        Self {
            outcome: n.outcome,
            error: n.error,
            attempts: n.attempts,
        }
    }
}

/// The outcome word of an error text (`rate_limited: ...` -> `rate_limited`).
fn word(error: &str) -> String {
    match error.split_once(':') {
        Some((w, _)) if w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') => w.to_owned(),
        _ => "failed".to_owned(),
    }
}

fn failed(outcome: &str, error: impl Into<String>) -> Failed {
    Failed {
        outcome: outcome.into(),
        error: error.into(),
        attempts: 1,
    }
}

/// Screenshot wanted when an action fails: `(capture, max_bytes)`.
type OnFailure = (bool, u64);

/// Runs `act` as one action of `session` on its active tab.
async fn action<T, F, Fut>(
    session: &Arc<Session>,
    name: &str,
    selector: &str,
    on_failure: OnFailure,
    act: F,
) -> Done<T>
where
    F: FnOnce(TabEntry) -> Fut,
    Fut: std::future::Future<Output = Result<(T, u32), Failed>>,
{
    let started_ms = wall_ms();
    let mut log = pb::BrowserActionLogEntry {
        v: 1,
        action_id: ulid::Ulid::new().to_string(),
        action_name: name.to_owned(),
        selector: selector.to_owned(),
        started_at_unix_ms: started_ms,
        ..Default::default()
    };
    let _busy = session.busy.lock().await;
    let outcome = match session.admit_action(Instant::now()) {
        Err(why) => Err((failed(&word(&why), why), None)),
        Ok(()) => match session.active_tab() {
            Err(why) => Err((failed(&why, why.clone()), None)),
            Ok(tab) => {
                log.page_url = tab.tab.state.read(|v| v.url.clone());
                front(&tab).await;
                match act(tab.clone()).await {
                    Ok(ok) => Ok(ok),
                    Err(f) => Err((f, Some(tab))),
                }
            }
        },
    };
    log.completed_at_unix_ms = wall_ms();
    let done = match outcome {
        Ok((value, attempts)) => {
            log.success = true;
            log.outcome = "ok".into();
            log.attempts = attempts;
            Done {
                value: Some(value),
                error: String::new(),
                log,
                shot: None,
            }
        }
        Err((f, tab)) => {
            log.outcome = f.outcome;
            log.error = f.error.clone();
            log.attempts = f.attempts;
            let (capture, max) = on_failure;
            let max = per_call(max, session.budget.screenshot_bytes);
            let shot = match (capture, tab) {
                (true, Some(tab)) => page::failure_screenshot(&tab.tab, max).await,
                _ => None,
            };
            Done {
                value: None,
                error: f.error,
                log,
                shot,
            }
        }
    };
    session.log_action(done.log.clone());
    done
}

/// Brings a tab to the front of its window: a background tab gets no animation frames, so
/// the stability check (and smooth scrolling) would wait forever after a popup opened.
pub async fn front(tab: &TabEntry) {
    if let Err(e) = tab.tab.call("Page.bringToFront", Value::Null).await {
        tracing::debug!(error = %e, "bringing a tab to the front");
    }
}

fn deadline(session: &Session, timeout_ms: u64) -> Instant {
    Instant::now() + session.budget.action_timeout(timeout_ms)
}

/// Waits until `selector` is actionable for `need` within the call's timeout (0: the budget's).
async fn ready(
    engine: &BrowserEngine,
    s: &Session,
    tab: &TabEntry,
    selector: &str,
    need: Need,
    timeout_ms: u64,
    retries: u32,
) -> Result<actions::Point, Failed> {
    let until = deadline(s, timeout_ms);
    actions::wait_actionable(&engine.rt, &tab.tab, selector, need, until, retries)
        .await
        .map_err(Failed::from)
}

/// The response `pb::$t` of an action: success, error, log entry and failure screenshot from
/// `$done`, and the fields after `|value|` computed from what the action returned.
macro_rules! answer {
    ($t:ident, $done:expr, |$value:ident| { $($field:ident : $e:expr),* $(,)? }) => {{
        let Done { value: $value, error, log, shot } = $done;
        let (failure_screenshot_bytes, failure_screenshot_mime_type) = shot.unwrap_or_default();
        Ok(pb::$t {
            v: 1,
            success: error.is_empty(),
            $($field: $e,)*
            error,
            action_log: Some(log),
            failure_screenshot_bytes,
            failure_screenshot_mime_type,
        })
    }};
}

/// The host of an http(s) URL.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host.split(':').next()?
    };
    Some(host.to_ascii_lowercase())
}

/// Whether actions may run on `url` under the session's domain allowlist.
fn domain_allowed(session: &Session, url: &str) -> Result<(), String> {
    if session.allowed_domains.is_empty() || !url.starts_with("http") {
        return Ok(());
    }
    let host = host_of(url).unwrap_or_default();
    let ok = session.allowed_domains.iter().any(|d| {
        let d = d.trim_start_matches("*.").to_ascii_lowercase();
        host == d || host.ends_with(&format!(".{d}"))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "domain_not_allowed: {host} is not in the session's action_allowed_domains"
        ))
    }
}

/// A navigation's options.
#[derive(Debug, Clone, Copy)]
pub struct Load<'a> {
    /// Where to.
    pub url: &'a str,
    /// Timeout (0: the budget's).
    pub timeout_ms: u64,
    /// Redirects may be followed.
    pub allow_redirects: bool,
    /// How many (0: 3; at most 20).
    pub max_redirects: u32,
    /// The request asks for private targets (only within what the session allows).
    pub allow_private: bool,
}

/// Loads a URL in `tab` with the SSRF guard and redirect rules.
pub async fn load_in(
    engine: &BrowserEngine,
    session: &Session,
    tab: &TabEntry,
    load: Load<'_>,
) -> Result<super::tab::Loaded, String> {
    let Load {
        url,
        timeout_ms,
        allow_redirects,
        max_redirects,
        allow_private,
    } = load;
    if allow_private
        && !session
            .allow_private
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err("private_target_refused: this session was created without \
                    allow_private_targets, so a request cannot allow them"
            .into());
    }
    domain_allowed(session, url)?;
    let private = session
        .allow_private
        .load(std::sync::atomic::Ordering::Relaxed);
    ssrf::check_url(&*engine.rt, url, private)
        .await
        .map_err(|r| format!("navigation blocked: {r}"))?;
    let deadline = Instant::now() + session.budget.navigation_timeout(timeout_ms);
    let loaded = tab.tab.navigate(&engine.rt, url, deadline).await?;
    let max = if max_redirects == 0 {
        3
    } else {
        max_redirects.min(20)
    };
    if !allow_redirects && loaded.redirects > 0 {
        return Err(format!(
            "redirect_refused: {url} redirected and allow_redirects is false"
        ));
    }
    if loaded.redirects > max {
        return Err(format!(
            "too_many_redirects: {url} followed {} redirects, more than {max}",
            loaded.redirects
        ));
    }
    Ok(loaded)
}

async fn title_of(tab: &TabEntry, max: u64) -> String {
    let title = tab.tab.evaluate("document.title").await.unwrap_or_default();
    page::cut(title.as_str().unwrap_or_default().to_owned(), max).0
}

fn session(
    engine: &BrowserEngine,
    principal: &str,
    sid: &Option<CanonicalId>,
) -> Option<Arc<Session>> {
    let s = engine.session(principal, ulid(sid))?;
    s.touch();
    Some(s)
}

/// Navigate: unknown session is NOT_FOUND (the contract's one exception to in-band errors).
pub async fn navigate(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::NavigateRequest,
) -> Result<pb::NavigateResponse, Status> {
    let Some(s) = session(&engine, &principal, &r.session_id) else {
        return Err(Status::new(Code::NotFound, "browser session not found"));
    };
    if r.url.trim().is_empty() {
        return Err(Status::new(Code::InvalidArgument, "url is required"));
    }
    let started = Instant::now();
    let done = action(&s, "navigate", "", (false, 0), |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            let options = Load {
                url: r.url.trim(),
                timeout_ms: r.timeout_ms,
                allow_redirects: r.allow_redirects,
                max_redirects: r.max_redirects,
                allow_private: r.allow_private_targets,
            };
            let loaded = load_in(engine, s, &tab, options)
                .await
                .map_err(|e| failed(&word(&e), e))?;
            let title = title_of(&tab, MAX_TITLE).await;
            let url = tab.tab.state.read(|v| v.url.clone());
            Ok(((loaded, title, url), 1))
        }
    })
    .await;
    let (loaded, title, final_url) = done.value.unwrap_or_default();
    Ok(pb::NavigateResponse {
        v: 1,
        success: done.error.is_empty(),
        final_url,
        status_code: loaded.status,
        title,
        body_bytes: loaded.body_bytes,
        latency_ms: started.elapsed().as_millis() as u64,
        error: done.error,
    })
}

/// The session, or an in-band `session_not_found` answer of response type `$t`.
macro_rules! or_not_found {
    ($s:expr, $t:ident) => {
        match $s {
            Some(s) => s,
            None => {
                return Ok(pb::$t {
                    v: 1,
                    error: SESSION_NOT_FOUND.into(),
                    ..Default::default()
                })
            }
        }
    };
}

/// Click: waits for the element to be actionable, clicks its centre.
pub async fn click(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ClickRequest,
) -> Result<pb::ClickResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), ClickResponse);
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let retries = r.max_retries.min(16);
    let done = action(&s, "click", &r.selector, on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            domain_allowed(s, &tab.tab.state.read(|v| v.url.clone()))
                .map_err(|e| failed("domain_not_allowed", e))?;
            let before = s.with(|m| m.downloads.len());
            let point = ready(
                engine,
                s,
                &tab,
                &r.selector,
                Need::Click,
                r.timeout_ms,
                retries,
            )
            .await?;
            actions::click_at(&tab.tab, point)
                .await
                .map_err(|e| failed("page_error", e))?;
            let artifact = super::downloads::after_click(engine, s, before).await;
            Ok((artifact, 1))
        }
    })
    .await;
    answer!(ClickResponse, done, |value| { artifact: value.flatten() })
}

/// Type: focuses the field (clearing it if asked) and inserts the text.
pub async fn type_text(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::TypeRequest,
) -> Result<pb::TypeResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), TypeResponse);
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let done = action(&s, "type", &r.selector, on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            if r.text.len() as u64 > s.budget.type_input_bytes {
                return Err(failed(
                    "input_too_large",
                    format!(
                        "the text is {} bytes, over the session's max_type_input_bytes of {}",
                        r.text.len(),
                        s.budget.type_input_bytes
                    ),
                ));
            }
            ready(engine, s, &tab, &r.selector, Need::Type, r.timeout_ms, 0).await?;
            let focus = format!(
                "((el, clear) => {{ el.focus(); if (clear) {{ if ('value' in el) {{ el.value = ''; \
                 el.dispatchEvent(new Event('input', {{bubbles: true}})); }} else el.textContent = ''; }} \
                 const a = el.ownerDocument.activeElement; return a === el || el.contains(a); }})({RESOLVE}({}), {})",
                Value::from(r.selector.as_str()),
                r.clear_existing
            );
            let focused = tab.tab.evaluate(&focus).await.map_err(|e| failed("page_error", e))?;
            if focused != Value::Bool(true) {
                return Err(failed(
                    "element_not_focusable",
                    format!("{}: the element did not take the focus", r.selector),
                ));
            }
            if !r.text.is_empty() {
                tab.tab
                    .call("Input.insertText", json!({"text": r.text}))
                    .await
                    .map_err(|e| failed("page_error", e.to_string()))?;
            }
            Ok((r.text.len() as u64, 1))
        }
    })
    .await;
    answer!(TypeResponse, done, |value| { typed_bytes: value.unwrap_or(0) })
}

/// Press: a key (or combination) in the focused element.
pub async fn press(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::PressRequest,
) -> Result<pb::PressResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), PressResponse);
    if r.key.is_empty() || r.key.len() > 64 {
        return Err(Status::new(
            Code::InvalidArgument,
            "key is required (at most 64 bytes), e.g. Enter or Control+a",
        ));
    }
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let done = action(&s, "press", "", on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            let limit = s.budget.action_timeout(r.timeout_ms);
            match runtime::timeout(&*engine.rt, limit, page::press(&tab.tab, &r.key)).await {
                Some(result) => result.map_err(|e| failed("key_failed", e))?,
                None => return Err(failed("timeout", "the key press timed out")),
            }
            Ok(((), 1))
        }
    })
    .await;
    answer!(PressResponse, done, |_value| { key: r.key })
}

/// Select: picks the option whose value (or, failing that, label) is `value`.
pub async fn select(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::SelectRequest,
) -> Result<pb::SelectResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), SelectResponse);
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let done = action(&s, "select", &r.selector, on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            ready(engine, s, &tab, &r.selector, Need::Select, r.timeout_ms, 0).await?;
            let js = format!(
                "((el, want) => {{ const opts = Array.from(el.options); \
                 const o = opts.find(o => o.value === want) || opts.find(o => o.label.trim() === want); \
                 if (!o) return {{ok: false, values: opts.slice(0, 20).map(o => o.value)}}; \
                 el.value = o.value; el.dispatchEvent(new Event('input', {{bubbles: true}})); \
                 el.dispatchEvent(new Event('change', {{bubbles: true}})); return {{ok: true, value: el.value}}; }})\
                 ({RESOLVE}({}), {})",
                Value::from(r.selector.as_str()),
                Value::from(r.value.as_str())
            );
            let v = tab.tab.evaluate(&js).await.map_err(|e| failed("page_error", e))?;
            if v["ok"] != Value::Bool(true) {
                return Err(failed(
                    "option_not_found",
                    format!(
                        "{}: no option has the value or label {:?} (values: {})",
                        r.selector, r.value, v["values"]
                    ),
                ));
            }
            Ok((v["value"].as_str().unwrap_or_default().to_owned(), 1))
        }
    })
    .await;
    answer!(SelectResponse, done, |value| { selected_value: value.unwrap_or_default() })
}

/// Highlight: outlines the element for `duration_ms` (0: 1 s; at most 10 s).
pub async fn highlight(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::HighlightRequest,
) -> Result<pb::HighlightResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        HighlightResponse
    );
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let duration = if r.duration_ms == 0 {
        1_000
    } else {
        r.duration_ms.min(10_000)
    };
    let done = action(&s, "highlight", &r.selector, on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            ready(engine, s, &tab, &r.selector, Need::Visible, r.timeout_ms, 0).await?;
            let js = format!(
                "((el, ms) => {{ const old = el.style.outline; el.style.outline = '3px solid #ff00ff'; \
                 setTimeout(() => {{ el.style.outline = old; }}, ms); return true; }})({RESOLVE}({}), {duration})",
                Value::from(r.selector.as_str())
            );
            tab.tab.evaluate(&js).await.map_err(|e| failed("page_error", e))?;
            Ok(((), 1))
        }
    })
    .await;
    answer!(HighlightResponse, done, |_value| { selector: r.selector })
}

/// Scroll: by (delta_x, delta_y) CSS pixels; answers the new scroll position.
pub async fn scroll(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ScrollRequest,
) -> Result<pb::ScrollResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), ScrollResponse);
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let (dx, dy) = (
        r.delta_x.clamp(-1_000_000, 1_000_000),
        r.delta_y.clamp(-1_000_000, 1_000_000),
    );
    let done = action(&s, "scroll", "", on_failure, |tab| async move {
        let js = format!(
            "new Promise(r => {{ window.scrollBy({dx}, {dy}); requestAnimationFrame(() => \
             r([Math.round(window.scrollX), Math.round(window.scrollY)])); }})"
        );
        let v = tab
            .tab
            .evaluate(&js)
            .await
            .map_err(|e| failed("page_error", e))?;
        Ok(((v[0].as_i64().unwrap_or(0), v[1].as_i64().unwrap_or(0)), 1))
    })
    .await;
    let _ = &engine;
    answer!(ScrollResponse, done, |value| {
        scroll_x: value.unwrap_or_default().0,
        scroll_y: value.unwrap_or_default().1,
    })
}

/// WaitFor: until a selector matches a visible element and/or the page shows a text.
pub async fn wait_for(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::WaitForRequest,
) -> Result<pb::WaitForResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), WaitForResponse);
    if r.selector.is_empty() && r.text.is_empty() {
        return Err(Status::new(
            Code::InvalidArgument,
            "wait_for needs a selector, a text, or both",
        ));
    }
    let on_failure = (r.capture_failure_screenshot, r.max_failure_screenshot_bytes);
    let poll = Duration::from_millis(if r.poll_interval_ms == 0 {
        100
    } else {
        r.poll_interval_ms.clamp(25, 1_000)
    });
    let started = Instant::now();
    let done = action(&s, "wait_for", &r.selector, on_failure, |tab| {
        let (s, r, engine) = (&s, &r, &engine);
        async move {
            let until = deadline(s, r.timeout_ms);
            let js = format!(
                "((sel, text) => {{ let ok = true; if (sel) {{ let el = null; try {{ el = {RESOLVE}(sel); }} \
                 catch (e) {{ return 'invalid'; }} if (!el) ok = false; else {{ const r = el.getBoundingClientRect(); \
                 const st = getComputedStyle(el); ok = r.width > 0 && r.height > 0 && st.visibility === 'visible'; }} }} \
                 if (ok && text) ok = !!document.body && document.body.innerText.includes(text); return ok; }})({}, {})",
                Value::from(r.selector.as_str()),
                Value::from(r.text.as_str())
            );
            let mut attempts = 0;
            loop {
                attempts += 1;
                match tab.tab.evaluate(&js).await {
                    Ok(Value::Bool(true)) => return Ok(((), attempts)),
                    Ok(Value::String(s)) if s == "invalid" => {
                        return Err(failed(
                            "invalid_selector",
                            format!("{}: not a valid CSS selector", r.selector),
                        ))
                    }
                    _ => {}
                }
                if Instant::now() + poll > until {
                    let what = match (r.selector.is_empty(), r.text.is_empty()) {
                        (false, true) => format!("{} did not become visible", r.selector),
                        (true, false) => format!("the text {:?} did not appear", r.text),
                        _ => format!("{} with the text {:?} did not appear", r.selector, r.text),
                    };
                    return Err(Failed {
                        outcome: "timeout".into(),
                        error: format!("{what} within {} ms", s.budget.action_timeout(r.timeout_ms).as_millis()),
                        attempts,
                    });
                }
                runtime::sleep(&*engine.rt, poll).await;
            }
        }
    })
    .await;
    answer!(WaitForResponse, done, |value| {
        waited_ms: started.elapsed().as_millis() as u64,
        matched_selector: if value.is_some() { r.selector } else { String::new() },
        matched_text: if value.is_some() { r.text } else { String::new() },
    })
}

/// GetTitle: the active tab's title (0: up to 4 KiB).
pub async fn get_title(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::GetTitleRequest,
) -> Result<pb::GetTitleResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        GetTitleResponse
    );
    let tab = match s.active_tab() {
        Ok(t) => t,
        Err(e) => {
            return Ok(pb::GetTitleResponse {
                v: 1,
                error: e,
                ..Default::default()
            })
        }
    };
    Ok(pb::GetTitleResponse {
        v: 1,
        success: true,
        title: title_of(&tab, per_call(r.max_title_bytes, MAX_TITLE)).await,
        error: String::new(),
    })
}

/// Screenshot of the active tab.
pub async fn screenshot(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ScreenshotRequest,
) -> Result<pb::ScreenshotResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        ScreenshotResponse
    );
    let (format, full) =
        page::parse_format(&r.format).map_err(|e| Status::new(Code::InvalidArgument, e))?;
    let max = per_call(r.max_bytes, s.budget.screenshot_bytes);
    let result = match s.active_tab() {
        Ok(tab) => {
            front(&tab).await;
            page::screenshot(&tab.tab, format, full, max).await
        }
        Err(e) => Err(e),
    };
    Ok(match result {
        Ok((bytes, mime)) => pb::ScreenshotResponse {
            v: 1,
            success: true,
            image_bytes: bytes,
            mime_type: mime.into(),
            error: String::new(),
        },
        Err(e) => pb::ScreenshotResponse {
            v: 1,
            error: e,
            ..Default::default()
        },
    })
}

/// Observe: DOM summary, accessibility tree and visible text, each within its budget.
pub async fn observe(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ObserveRequest,
) -> Result<pb::ObserveResponse, Status> {
    let s = or_not_found!(session(&engine, &principal, &r.session_id), ObserveResponse);
    let tab = match s.active_tab() {
        Ok(t) => t,
        Err(e) => {
            return Ok(pb::ObserveResponse {
                v: 1,
                error: e,
                ..Default::default()
            })
        }
    };
    // Nothing asked: everything but the accessibility tree.
    let all = !r.include_dom_snapshot && !r.include_accessibility_tree && !r.include_visible_text;
    let b = s.budget;
    let mut out = pb::ObserveResponse {
        v: 1,
        success: true,
        page_url: tab.tab.state.read(|v| v.url.clone()),
        ..Default::default()
    };
    let mut errors = Vec::new();
    if r.include_dom_snapshot || all {
        match page::dom_summary(
            &tab.tab,
            per_call(r.max_dom_snapshot_bytes, b.observe_snapshot_bytes),
        )
        .await
        {
            Ok((dom, cut)) => (out.dom_snapshot, out.dom_truncated) = (dom, cut),
            Err(e) => errors.push(format!("dom: {e}")),
        }
    }
    if r.include_accessibility_tree {
        let max = per_call(r.max_accessibility_tree_bytes, b.observe_snapshot_bytes);
        match page::accessibility_tree(&tab.tab, max).await {
            Ok((tree, cut)) => {
                (out.accessibility_tree, out.accessibility_tree_truncated) = (tree, cut)
            }
            Err(e) => errors.push(format!("accessibility tree: {e}")),
        }
    }
    if r.include_visible_text || all {
        match page::visible_text(
            &tab.tab,
            per_call(r.max_visible_text_bytes, b.visible_text_bytes),
        )
        .await
        {
            Ok((text, cut)) => (out.visible_text, out.visible_text_truncated) = (text, cut),
            Err(e) => errors.push(format!("visible text: {e}")),
        }
    }
    if !errors.is_empty() {
        out.success = false;
        out.error = errors.join("; ");
    }
    Ok(out)
}

fn timing_bucket(ms: u64) -> &'static str {
    match ms {
        0..=99 => "lt_100ms",
        100..=499 => "100_500ms",
        500..=1999 => "500ms_2s",
        _ => "gt_2s",
    }
}

/// The session's network log (every tab), oldest first, within entry and byte caps.
pub fn network_entries(
    s: &Session,
    limit: u64,
    include_headers: bool,
    max_bytes: u64,
) -> (Vec<pb::NetworkLogEntry>, bool) {
    let tabs = s.with(|m| m.tabs.clone());
    let mut all: Vec<_> = tabs
        .iter()
        .flat_map(|t| {
            t.tab
                .state
                .read(|v| v.network.iter().cloned().collect::<Vec<_>>())
        })
        .collect();
    all.sort_by_key(|e| e.at_unix_ms);
    let limit = per_call(limit, s.budget.network_log_entries) as usize;
    let mut truncated = all.len() > limit;
    let skip = all.len().saturating_sub(limit);
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for e in all.into_iter().skip(skip) {
        let headers: Vec<pb::NetworkLogHeader> = if include_headers {
            e.headers
                .iter()
                .filter(|(k, _)| !is_secret_header(k))
                .map(|(k, v)| pb::NetworkLogHeader {
                    v: 1,
                    name: k.clone(),
                    value: page::cut(v.clone(), 256).0,
                })
                .collect()
        } else {
            Vec::new()
        };
        let cost = e.url.len() as u64
            + headers
                .iter()
                .map(|h| (h.name.len() + h.value.len()) as u64)
                .sum::<u64>();
        if bytes + cost > max_bytes {
            truncated = true;
            break;
        }
        bytes += cost;
        out.push(pb::NetworkLogEntry {
            v: 1,
            request_url: e.url,
            status_code: e.status,
            timing_bucket: timing_bucket(e.latency_ms).into(),
            latency_ms: e.latency_ms,
            captured_at_unix_ms: e.at_unix_ms,
            headers,
        });
    }
    (out, truncated)
}

fn is_secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n == "set-cookie" || n == "cookie" || n == "authorization" || n.contains("token")
}

/// NetworkLog.
pub async fn network_log(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::NetworkLogRequest,
) -> Result<pb::NetworkLogResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        NetworkLogResponse
    );
    let max = per_call(r.max_payload_bytes, s.budget.network_log_bytes);
    let (entries, truncated) = network_entries(&s, r.limit as u64, r.include_headers, max);
    Ok(pb::NetworkLogResponse {
        v: 1,
        success: true,
        entries,
        truncated,
        error: String::new(),
    })
}

fn severity_of(s: Severity) -> i32 {
    s as i32
}

/// The session's console entries at or above `minimum`, oldest first, within caps.
pub fn console_entries(
    s: &Session,
    limit: u64,
    minimum: i32,
    max_bytes: u64,
) -> (Vec<pb::BrowserConsoleEntry>, bool) {
    // UNSPECIFIED (or unknown) is INFO: debug output only when asked for.
    let minimum = if (1..=4).contains(&minimum) {
        minimum
    } else {
        2
    };
    let tabs = s.with(|m| m.tabs.clone());
    let mut all: Vec<_> = tabs
        .iter()
        .flat_map(|t| {
            t.tab
                .state
                .read(|v| v.console.iter().cloned().collect::<Vec<_>>())
        })
        .filter(|e| severity_of(e.severity) >= minimum)
        .collect();
    all.sort_by_key(|e| e.at_unix_ms);
    let limit = per_call(limit, 256) as usize;
    let mut truncated = all.len() > limit;
    let skip = all.len().saturating_sub(limit);
    let mut out = Vec::new();
    let mut bytes = 0u64;
    for e in all.into_iter().skip(skip) {
        let cost = (e.message.len() + e.stack.len() + e.source.len()) as u64;
        if bytes + cost > max_bytes {
            truncated = true;
            break;
        }
        bytes += cost;
        out.push(pb::BrowserConsoleEntry {
            v: 1,
            severity: severity_of(e.severity),
            kind: e.kind,
            message: e.message,
            captured_at_unix_ms: e.at_unix_ms,
            source: e.source,
            stack_trace: e.stack,
            page_url: e.page_url,
        });
    }
    (out, truncated)
}

/// The active page's diagnostics.
pub async fn diagnostics(s: &Session) -> Option<pb::BrowserPageDiagnostics> {
    let tab = s.active_tab().ok()?;
    let (url, (entries, warnings, errors, last)) =
        tab.tab.state.read(|v| (v.url.clone(), v.console_counts));
    Some(pb::BrowserPageDiagnostics {
        v: 1,
        page_url: url,
        page_title: title_of(&tab, MAX_TITLE).await,
        console_entry_count: entries,
        warning_count: warnings,
        error_count: errors,
        last_event_unix_ms: last,
    })
}

/// ConsoleLog.
pub async fn console_log(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ConsoleLogRequest,
) -> Result<pb::ConsoleLogResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        ConsoleLogResponse
    );
    let max = per_call(r.max_payload_bytes, s.budget.network_log_bytes);
    let (entries, truncated) = console_entries(&s, r.limit as u64, r.minimum_severity, max);
    let page_diagnostics = if r.include_page_diagnostics {
        diagnostics(&s).await
    } else {
        None
    };
    Ok(pb::ConsoleLogResponse {
        v: 1,
        success: true,
        entries,
        truncated,
        page_diagnostics,
        error: String::new(),
    })
}

/// ExportPdf: the active page as PDF within `max_bytes` (0: the response budget).
pub async fn export_pdf(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ExportPdfRequest,
) -> Result<pb::ExportPdfResponse, Status> {
    let s = or_not_found!(
        session(&engine, &principal, &r.session_id),
        ExportPdfResponse
    );
    let max = per_call(r.max_bytes, s.budget.response_bytes);
    let tab = match s.active_tab() {
        Ok(t) => t,
        Err(e) => {
            return Ok(pb::ExportPdfResponse {
                v: 1,
                error: e,
                ..Default::default()
            })
        }
    };
    let bytes = match page::pdf(&tab.tab).await {
        Ok(b) => b,
        Err(e) => {
            return Ok(pb::ExportPdfResponse {
                v: 1,
                error: e,
                ..Default::default()
            })
        }
    };
    if bytes.len() as u64 > max {
        return Ok(pb::ExportPdfResponse {
            v: 1,
            size_bytes: bytes.len() as u64,
            error: format!(
                "pdf_too_large: the PDF is {} bytes, over the cap of {max}",
                bytes.len()
            ),
            ..Default::default()
        });
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    let artifact = pb::DownloadArtifact {
        v: 1,
        artifact_id: id(&ulid::Ulid::new().to_string()),
        session_id: id(&s.id),
        profile_id: id(&s.profile_id),
        source_url: tab.tab.state.read(|v| v.url.clone()),
        file_name: "page.pdf".into(),
        mime_type: "application/pdf".into(),
        size_bytes: bytes.len() as u64,
        sha256: sha256.clone(),
        created_at_unix_ms: wall_ms(),
        quarantined: false,
        quarantine_reason: String::new(),
    };
    Ok(pb::ExportPdfResponse {
        v: 1,
        success: true,
        size_bytes: bytes.len() as u64,
        pdf_bytes: bytes,
        mime_type: "application/pdf".into(),
        sha256,
        artifact: Some(artifact),
        error: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_urls() {
        assert_eq!(
            host_of("https://User@Example.com:8443/x?y").unwrap(),
            "example.com"
        );
        assert_eq!(host_of("http://[::1]:80/").unwrap(), "::1");
        assert_eq!(host_of("about:blank"), None);
    }

    #[test]
    fn buckets() {
        assert_eq!(timing_bucket(5), "lt_100ms");
        assert_eq!(timing_bucket(700), "500ms_2s");
        assert_eq!(timing_bucket(9000), "gt_2s");
    }
}
