//! One page target (a tab) under a flattened DevTools session: its event consumer keeps what
//! the page did (URL, title, lifecycle, network and console logs in bounded rings), answers the
//! requests it pauses (the SSRF guard) and wakes whoever waits for a navigation.

use super::cdp::{Cdp, Event};
use super::ssrf;
use crate::runtime::Rt;
use palyra_proto::cdp::types::{
    self, ConsoleApiCalled, ExceptionThrown, FrameNavigated, LifecycleEvent, LoadingFailed,
    LoadingFinished, LogEntryAdded, RemoteObject, RequestPaused, RequestWillBeSent,
    ResponseReceived,
};
use palyra_proto::cdp::CdpError;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one DevTools command may take (actions set their own deadlines on top).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests in flight tracked for the network log; older ones are forgotten.
const MAX_IN_FLIGHT: usize = 512;

/// Severity of a console entry (the wire enum's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// `console.debug`, verbose log entries.
    Debug = 1,
    /// `console.log`, `console.info`.
    Info = 2,
    /// `console.warn`.
    Warn = 3,
    /// `console.error`, uncaught exceptions.
    Error = 4,
}

/// One console message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleEntry {
    /// Severity.
    pub severity: Severity,
    /// `log`, `error`, `exception`, `network`, ...
    pub kind: String,
    /// The text.
    pub message: String,
    /// Source location (`url:line:column`).
    pub source: String,
    /// Stack trace, one frame per line.
    pub stack: String,
    /// Wall time (Unix ms).
    pub at_unix_ms: u64,
    /// The page's URL then.
    pub page_url: String,
}

/// One finished (or failed) request.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkEntry {
    /// URL.
    pub url: String,
    /// HTTP status (0 when it failed).
    pub status: u32,
    /// Time from request to finish.
    pub latency_ms: u64,
    /// Wall time of the request (Unix ms).
    pub at_unix_ms: u64,
    /// Response headers (name, value).
    pub headers: Vec<(String, String)>,
    /// Why it failed, if it did (`net::ERR_...`, `blocked: ...`).
    pub error: String,
}

#[derive(Debug)]
struct InFlight {
    url: String,
    started: f64,
    wall_ms: u64,
    status: u32,
    headers: Vec<(String, String)>,
}

/// Bounds of a tab's logs.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Network entries kept.
    pub network_entries: usize,
    /// Console entries kept.
    pub console_entries: usize,
}

/// What a tab's event consumer knows.
#[derive(Debug, Default)]
pub struct TabView {
    /// The main frame's id.
    pub main_frame: String,
    /// The main frame's URL.
    pub url: String,
    /// Lifecycle events of the main frame's current loader.
    pub loader: String,
    /// Whether that loader fired `load`.
    pub loaded: bool,
    /// The main document's HTTP status and body size, by loader.
    pub documents: HashMap<String, (u32, u64)>,
    /// Redirects the main document followed, by loader.
    pub redirects: HashMap<String, u32>,
    /// Recent requests.
    pub network: VecDeque<NetworkEntry>,
    /// Recent console messages.
    pub console: VecDeque<ConsoleEntry>,
    /// Console totals: (entries, warnings, errors), and the time of the latest (Unix ms).
    pub console_counts: (u32, u32, u32, u64),
    /// Requests refused by the SSRF guard (URL, reason), latest last.
    pub blocked: VecDeque<(String, String)>,
    /// The renderer crashed.
    pub crashed: bool,
    /// The session ended (tab closed, browser gone).
    pub detached: bool,
    in_flight: HashMap<String, InFlight>,
    document_requests: HashMap<String, String>,
}

/// Shared state of a tab and a way to wait for it to change.
#[derive(Debug)]
pub struct TabState {
    view: Mutex<TabView>,
    changed: event_listener::Event,
}

impl TabState {
    /// Reads the view.
    pub fn read<T>(&self, f: impl FnOnce(&TabView) -> T) -> T {
        f(&self.view.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn update(&self, f: impl FnOnce(&mut TabView)) {
        f(&mut self.view.lock().unwrap_or_else(|p| p.into_inner()));
        self.changed.notify(usize::MAX);
    }

    /// Waits until `done` holds (checked now and after every change).
    pub async fn wait_for(&self, mut done: impl FnMut(&TabView) -> bool) {
        loop {
            let listener = self.changed.listen();
            if self.read(&mut done) {
                return;
            }
            listener.await;
        }
    }

    /// Clears the logs (ResetState).
    pub fn clear_logs(&self) {
        self.update(|v| {
            v.network.clear();
            v.console.clear();
            v.console_counts = (0, 0, 0, 0);
            v.blocked.clear();
        });
    }
}

/// What a navigation loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loaded {
    /// The document's HTTP status (0 for `about:`, `data:` and same-document navigations).
    pub status: u32,
    /// Its body size.
    pub body_bytes: u64,
    /// Redirects followed on the way.
    pub redirects: u32,
}

/// A page target and its session.
#[derive(Debug, Clone)]
pub struct Tab {
    /// The DevTools connection.
    pub cdp: Cdp,
    /// Chromium's target id.
    pub target_id: String,
    /// The flattened session id.
    pub session: String,
    /// What the page did.
    pub state: Arc<TabState>,
}

/// Per-tab policy the event consumer applies.
#[derive(Debug, Clone)]
pub struct TabPolicy {
    /// Loopback and private addresses may be loaded.
    pub allow_private: Arc<std::sync::atomic::AtomicBool>,
    /// Log bounds.
    pub limits: LogLimits,
}

/// What a session Chromium attached is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A page: every domain we use.
    Page,
    /// A worker or out-of-process frame: only the request guard.
    Guarded,
}

impl Tab {
    /// Attaches to `target_id`, enables the domains we use, and starts its event consumer.
    pub async fn attach(
        rt: &Rt,
        cdp: &Cdp,
        target_id: &str,
        policy: TabPolicy,
        wall_ms: fn() -> u64,
    ) -> Result<Self, CdpError> {
        let attached: types::AttachToTarget = types::decode(
            &cdp.call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                COMMAND_TIMEOUT,
            )
            .await?,
        )?;
        Self::adopt(
            rt,
            cdp,
            target_id,
            attached.session_id,
            Kind::Page,
            false,
            policy,
            wall_ms,
        )
        .await
    }

    /// Takes over an attached session: starts its event consumer, puts every request behind the
    /// SSRF guard, and has Chromium attach (paused) to whatever the target opens (popups,
    /// workers, out-of-process frames) so those are guarded before they run. A `paused` target
    /// (auto-attached) is resumed right after the guard commands, in the same batch: Chromium
    /// applies a session's commands in order, and the opener may share its event loop, so
    /// nothing may wait for the paused target before it runs.
    #[allow(clippy::too_many_arguments)]
    pub async fn adopt(
        rt: &Rt,
        cdp: &Cdp,
        target_id: &str,
        session: String,
        kind: Kind,
        paused: bool,
        policy: TabPolicy,
        wall_ms: fn() -> u64,
    ) -> Result<Self, CdpError> {
        let events = cdp.subscribe(Some(&session)).await;
        let state = Arc::new(TabState {
            view: Mutex::new(TabView::default()),
            changed: event_listener::Event::new(),
        });
        let tab = Self {
            cdp: cdp.clone(),
            target_id: target_id.to_owned(),
            session,
            state,
        };
        rt.spawn(Box::pin(consume(
            Rt::clone(rt),
            tab.clone(),
            events,
            policy,
            wall_ms,
        )));
        // Requests pause until the guard answers; everything else only reports.
        let guard = futures_lite::future::zip(
            tab.call(
                "Fetch.enable",
                json!({"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}),
            ),
            tab.call(
                "Target.setAutoAttach",
                json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true}),
            ),
        );
        let resume = async {
            if paused {
                tab.call("Runtime.runIfWaitingForDebugger", Value::Null)
                    .await
                    .map(drop)
            } else {
                Ok(())
            }
        };
        let ((fetch, auto), resumed) = futures_lite::future::zip(guard, resume).await;
        fetch?;
        auto?;
        resumed?;
        if kind == Kind::Guarded {
            return Ok(tab);
        }
        for domain in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            "Log.enable",
        ] {
            tab.call(domain, Value::Null).await?;
        }
        tab.call("Page.setLifecycleEventsEnabled", json!({"enabled": true}))
            .await?;
        let tree = tab.call("Page.getFrameTree", Value::Null).await?;
        let main = tree
            .pointer("/frameTree/frame/id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let url = tree
            .pointer("/frameTree/frame/url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        tab.state.update(|v| {
            v.main_frame = main;
            v.url = url;
        });
        Ok(tab)
    }

    /// Sends a command to this tab's session.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, CdpError> {
        self.cdp
            .call(Some(&self.session), method, params, COMMAND_TIMEOUT)
            .await
    }

    /// Loads `url` in the main frame and waits for its `load` event until `deadline`; returns
    /// the document's HTTP status (0 for `about:` and `data:` pages), body size and redirects.
    pub async fn navigate(
        &self,
        rt: &Rt,
        url: &str,
        deadline: std::time::Instant,
    ) -> Result<Loaded, String> {
        let answer = self
            .call("Page.navigate", json!({"url": url}))
            .await
            .map_err(|e| e.to_string())?;
        let navigated: types::Navigate = types::decode(&answer).map_err(|e| e.to_string())?;
        if let Some(error) = navigated.error_text.filter(|e| !e.is_empty()) {
            let blocked = self.state.read(|v| {
                v.blocked
                    .iter()
                    .rev()
                    .find(|(u, _)| u == url || url.starts_with(u.as_str()))
                    .map(|(_, why)| why.clone())
            });
            return Err(match blocked {
                Some(why) => format!("navigation blocked: {why}"),
                None => format!("navigation failed: {error}"),
            });
        }
        let Some(loader) = navigated.loader_id else {
            // Same-document navigation (a fragment): nothing loads.
            return Ok(Loaded::default());
        };
        let loaded = crate::runtime::timeout(
            &**rt,
            deadline.saturating_duration_since(rt.now()),
            self.state
                .wait_for(|v| (v.loader == loader && v.loaded) || v.detached || v.crashed),
        )
        .await;
        let (detached, crashed, document, redirects) = self.state.read(|v| {
            (
                v.detached,
                v.crashed,
                v.documents.get(&loader).copied(),
                v.redirects.get(&loader).copied().unwrap_or(0),
            )
        });
        if crashed {
            return Err("the page crashed while loading".into());
        }
        if detached {
            return Err("the tab closed while loading".into());
        }
        if loaded.is_none() {
            return Err(format!("{url}: not loaded before the navigation timeout"));
        }
        let (status, body_bytes) = document.unwrap_or((0, 0));
        Ok(Loaded {
            status,
            body_bytes,
            redirects,
        })
    }

    /// Evaluates `expression` (awaiting a promise) and returns its JSON value, or the page's
    /// exception text.
    pub async fn evaluate(&self, expression: &str) -> Result<Value, String> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true,
                       "userGesture": true}),
            )
            .await
            .map_err(|e| e.to_string())?;
        let evaluated: types::Evaluate = types::decode(&result).map_err(|e| e.to_string())?;
        if let Some(exception) = evaluated.exception_details {
            return Err(exception.message());
        }
        Ok(evaluated.result.value)
    }
}

fn header_pairs(headers: &serde_json::Map<String, Value>) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string()),
            )
        })
        .collect()
}

fn describe(arg: &RemoteObject) -> String {
    match &arg.value {
        Value::String(s) => s.clone(),
        Value::Null => arg
            .description
            .clone()
            .or_else(|| arg.unserializable_value.clone())
            .unwrap_or_else(|| arg.kind.clone()),
        other => other.to_string(),
    }
}

fn push_bounded<T>(ring: &mut VecDeque<T>, item: T, max: usize) {
    if max == 0 {
        return;
    }
    while ring.len() >= max {
        ring.pop_front();
    }
    ring.push_back(item);
}

async fn consume(
    rt: Rt,
    tab: Tab,
    events: async_channel::Receiver<Event>,
    policy: TabPolicy,
    wall_ms: fn() -> u64,
) {
    while let Ok(event) = events.recv().await {
        handle(&rt, &tab, &policy, wall_ms, event);
    }
    tab.state.update(|v| v.detached = true);
}

fn handle(rt: &Rt, tab: &Tab, policy: &TabPolicy, wall_ms: fn() -> u64, event: Event) {
    let p = &event.params;
    match event.method.as_str() {
        "Fetch.requestPaused" => {
            let Ok(paused) = types::decode::<RequestPaused>(p) else {
                return;
            };
            let allow = policy
                .allow_private
                .load(std::sync::atomic::Ordering::Relaxed);
            let tab = tab.clone();
            let rt2 = Rt::clone(rt);
            rt.spawn(Box::pin(async move {
                let verdict = ssrf::check_url(&*rt2, &paused.request.url, allow).await;
                let answer = match &verdict {
                    Ok(()) => {
                        tab.call(
                            "Fetch.continueRequest",
                            json!({"requestId": paused.request_id}),
                        )
                        .await
                    }
                    Err(refused) => {
                        tracing::info!(url = %paused.request.url, %refused, "browser request blocked");
                        let (url, why) = (paused.request.url.clone(), refused.0.clone());
                        tab.state
                            .update(|v| push_bounded(&mut v.blocked, (url, why), 64));
                        tab.call(
                            "Fetch.failRequest",
                            json!({"requestId": paused.request_id, "errorReason": "BlockedByClient"}),
                        )
                        .await
                    }
                };
                if let Err(e) = answer {
                    tracing::debug!(error = %e, "answering a paused request");
                }
            }));
        }
        "Target.attachedToTarget" => {
            // What this page runs beside it (out-of-process frames, workers) is guarded like
            // it; pages it opens reach the engine through the browser-level auto-attach.
            let Ok(attached) = types::decode::<types::AttachedToTarget>(p) else {
                return;
            };
            let (rt2, cdp, policy) = (Rt::clone(rt), tab.cdp.clone(), policy.clone());
            rt.spawn(Box::pin(async move {
                let target = attached.target_info.target_id.clone();
                let paused = attached.waiting_for_debugger;
                let session = attached.session_id;
                let guarded =
                    Tab::adopt(&rt2, &cdp, &target, session, Kind::Guarded, paused, policy, wall_ms)
                        .await;
                if let Err(e) = guarded {
                    tracing::warn!(error = %e, %target, "could not guard an attached target; closing it");
                    let _ = cdp
                        .call(None, "Target.closeTarget", json!({"targetId": target}), COMMAND_TIMEOUT)
                        .await;
                }
            }));
        }
        "Page.lifecycleEvent" => {
            let Ok(e) = types::decode::<LifecycleEvent>(p) else {
                return;
            };
            tab.state.update(|v| {
                if e.frame_id != v.main_frame {
                    return;
                }
                if e.name == "init" {
                    v.loader = e.loader_id.clone();
                    v.loaded = false;
                } else if e.name == "load" && e.loader_id == v.loader {
                    v.loaded = true;
                }
            });
        }
        "Page.frameNavigated" => {
            let Ok(e) = types::decode::<FrameNavigated>(p) else {
                return;
            };
            if e.frame.parent_id.is_none() {
                tab.state.update(|v| {
                    v.main_frame = e.frame.id;
                    v.url = e.frame.url;
                });
            }
        }
        "Page.navigatedWithinDocument" => {
            let frame = p.get("frameId").and_then(Value::as_str).unwrap_or("");
            let url = p.get("url").and_then(Value::as_str).unwrap_or("");
            tab.state.update(|v| {
                if frame == v.main_frame {
                    v.url = url.to_owned();
                }
            });
        }
        "Network.requestWillBeSent" => {
            let Ok(e) = types::decode::<RequestWillBeSent>(p) else {
                return;
            };
            let loader = p.get("loaderId").and_then(Value::as_str).unwrap_or("");
            let is_document = e.kind.as_deref() == Some("Document") && e.request_id == loader;
            tab.state.update(|v| {
                if is_document && e.redirect_response.is_some() {
                    if v.redirects.len() >= MAX_IN_FLIGHT {
                        v.redirects.clear();
                    }
                    *v.redirects.entry(loader.to_owned()).or_default() += 1;
                }
                if let Some(redirect) = &e.redirect_response {
                    // The hop that redirected is finished.
                    if let Some(hop) = v.in_flight.remove(&e.request_id) {
                        let entry = NetworkEntry {
                            url: hop.url,
                            status: redirect.status as u32,
                            latency_ms: ((e.timestamp - hop.started) * 1000.0).max(0.0) as u64,
                            at_unix_ms: hop.wall_ms,
                            headers: header_pairs(&redirect.headers),
                            error: String::new(),
                        };
                        push_bounded(&mut v.network, entry, policy.limits.network_entries);
                    }
                }
                if v.in_flight.len() >= MAX_IN_FLIGHT {
                    v.in_flight.clear();
                }
                v.in_flight.insert(
                    e.request_id.clone(),
                    InFlight {
                        url: e.request.url.clone(),
                        started: e.timestamp,
                        wall_ms: if e.wall_time > 0.0 {
                            (e.wall_time * 1000.0) as u64
                        } else {
                            wall_ms()
                        },
                        status: 0,
                        headers: Vec::new(),
                    },
                );
                if is_document {
                    v.document_requests
                        .insert(e.request_id.clone(), loader.to_owned());
                    if v.document_requests.len() > 64 {
                        v.document_requests.clear();
                    }
                }
            });
        }
        "Network.responseReceived" => {
            let Ok(e) = types::decode::<ResponseReceived>(p) else {
                return;
            };
            tab.state.update(|v| {
                if let Some(f) = v.in_flight.get_mut(&e.request_id) {
                    f.status = e.response.status as u32;
                    f.headers = header_pairs(&e.response.headers);
                }
                if let Some(loader) = v.document_requests.get(&e.request_id).cloned() {
                    let entry = v.documents.entry(loader).or_insert((0, 0));
                    entry.0 = e.response.status as u32;
                }
            });
        }
        "Network.loadingFinished" => {
            let Ok(e) = types::decode::<LoadingFinished>(p) else {
                return;
            };
            tab.state.update(|v| {
                if let Some(loader) = v.document_requests.remove(&e.request_id) {
                    let entry = v.documents.entry(loader).or_insert((0, 0));
                    entry.1 = e.encoded_data_length.max(0.0) as u64;
                    if v.documents.len() > 64 {
                        let keep = v.loader.clone();
                        v.documents.retain(|k, _| *k == keep);
                    }
                }
                if let Some(f) = v.in_flight.remove(&e.request_id) {
                    let entry = NetworkEntry {
                        url: f.url,
                        status: f.status,
                        latency_ms: ((e.timestamp - f.started) * 1000.0).max(0.0) as u64,
                        at_unix_ms: f.wall_ms,
                        headers: f.headers,
                        error: String::new(),
                    };
                    push_bounded(&mut v.network, entry, policy.limits.network_entries);
                }
            });
        }
        "Network.loadingFailed" => {
            let Ok(e) = types::decode::<LoadingFailed>(p) else {
                return;
            };
            tab.state.update(|v| {
                v.document_requests.remove(&e.request_id);
                if let Some(f) = v.in_flight.remove(&e.request_id) {
                    let entry = NetworkEntry {
                        url: f.url,
                        status: f.status,
                        latency_ms: ((e.timestamp - f.started) * 1000.0).max(0.0) as u64,
                        at_unix_ms: f.wall_ms,
                        headers: f.headers,
                        error: e.error_text,
                    };
                    push_bounded(&mut v.network, entry, policy.limits.network_entries);
                }
            });
        }
        "Runtime.consoleAPICalled" => {
            let Ok(e) = types::decode::<ConsoleApiCalled>(p) else {
                return;
            };
            let severity = match e.kind.as_str() {
                "debug" | "trace" => Severity::Debug,
                "warning" => Severity::Warn,
                "error" | "assert" => Severity::Error,
                _ => Severity::Info,
            };
            let message = e.args.iter().map(describe).collect::<Vec<_>>().join(" ");
            let frames = e.stack_trace.map(|s| s.call_frames).unwrap_or_default();
            let source = frames
                .first()
                .map(|f| format!("{}:{}:{}", f.url, f.line_number + 1, f.column_number + 1))
                .unwrap_or_default();
            let stack = frames
                .iter()
                .map(|f| format!("{} ({}:{})", f.function_name, f.url, f.line_number + 1))
                .collect::<Vec<_>>()
                .join("\n");
            record_console(
                tab,
                policy,
                severity,
                e.kind,
                message,
                source,
                stack,
                e.timestamp,
                wall_ms,
            );
        }
        "Runtime.exceptionThrown" => {
            let Ok(e) = types::decode::<ExceptionThrown>(p) else {
                return;
            };
            let d = &e.exception_details;
            let source = format!(
                "{}:{}:{}",
                d.url.clone().unwrap_or_default(),
                d.line_number + 1,
                d.column_number + 1
            );
            let stack = d
                .stack_trace
                .as_ref()
                .map(|s| {
                    s.call_frames
                        .iter()
                        .map(|f| format!("{} ({}:{})", f.function_name, f.url, f.line_number + 1))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            record_console(
                tab,
                policy,
                Severity::Error,
                "exception".into(),
                d.message(),
                source,
                stack,
                e.timestamp,
                wall_ms,
            );
        }
        "Log.entryAdded" => {
            let Ok(e) = types::decode::<LogEntryAdded>(p) else {
                return;
            };
            let severity = match e.entry.level.as_str() {
                "verbose" => Severity::Debug,
                "warning" => Severity::Warn,
                "error" => Severity::Error,
                _ => Severity::Info,
            };
            record_console(
                tab,
                policy,
                severity,
                e.entry.source,
                e.entry.text,
                e.entry.url.unwrap_or_default(),
                String::new(),
                e.entry.timestamp,
                wall_ms,
            );
        }
        "Inspector.targetCrashed" => tab.state.update(|v| v.crashed = true),
        "Target.detachedFromTarget" => tab.state.update(|v| v.detached = true),
        _ => {}
    }
}

#[allow(clippy::too_many_arguments)]
fn record_console(
    tab: &Tab,
    policy: &TabPolicy,
    severity: Severity,
    kind: String,
    message: String,
    source: String,
    stack: String,
    timestamp_ms: f64,
    wall_ms: fn() -> u64,
) {
    let at = if timestamp_ms > 0.0 {
        timestamp_ms as u64
    } else {
        wall_ms()
    };
    tab.state.update(|v| {
        let entry = ConsoleEntry {
            severity,
            kind: truncate(kind, 64),
            message: truncate(message, 1024),
            source: truncate(source, 256),
            stack: truncate(stack, 1024),
            at_unix_ms: at,
            page_url: v.url.clone(),
        };
        v.console_counts.0 += 1;
        if severity == Severity::Warn {
            v.console_counts.1 += 1;
        }
        if severity == Severity::Error {
            v.console_counts.2 += 1;
        }
        v.console_counts.3 = at;
        push_bounded(&mut v.console, entry, policy.limits.console_entries);
    });
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
