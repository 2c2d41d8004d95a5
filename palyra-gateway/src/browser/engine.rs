//! The browser daemon's engine: the Chromium processes, the sessions (one browser context each,
//! owned by the principal that created it), their tabs, budgets and action accounting.
//!
//! One shared Chromium serves every session whose profile does not persist; a profile with
//! persistence gets its own Chromium with the profile's user-data directory, so its cookies
//! and storage survive. When a Chromium exits, every session on it fails at once with a clear
//! error (its calls never hang: the DevTools pipe closing fails everything waiting), and the
//! next session starts a new one.

use super::budget::Budget;
use super::cdp::Cdp;
use super::chromium::{self, LaunchOptions};
use super::profiles::Profiles;
use super::tab::{Kind, LogLimits, Tab, TabPolicy};
use crate::runtime::{self, Rt};
use palyra_proto::cdp::types::{self, AttachedToTarget, CreateBrowserContext, CreateTarget};
use palyra_proto::cdp::CdpConfig;
use palyra_proto::pb::palyra::browser::v1::{
    BrowserActionLogEntry, DownloadArtifact, PermissionSetting, SessionPermissions,
};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Wall time in Unix milliseconds.
pub fn wall_ms() -> u64 {
    palyra_proto::time::unix_ms(SystemTime::now())
}

/// Timeout of the engine's own DevTools commands (contexts, targets).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// What downloads may keep.
#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    /// File extensions (lower case, without the dot) kept as artifacts; others are quarantined.
    pub allowed_extensions: Vec<String>,
    /// Largest file kept.
    pub max_file_bytes: u64,
    /// Bytes of downloads per session.
    pub max_session_bytes: u64,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self {
            allowed_extensions: [
                "txt", "csv", "json", "pdf", "png", "jpg", "jpeg", "gif", "zip",
            ]
            .map(String::from)
            .to_vec(),
            max_file_bytes: 8 * 1024 * 1024,
            max_session_bytes: 32 * 1024 * 1024,
        }
    }
}

/// How the engine runs.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The Chromium executable.
    pub executable: PathBuf,
    /// Where profiles, Chromium user-data directories and downloads live.
    pub state_dir: PathBuf,
    /// Server budgets: the defaults and maxima of every session.
    pub limits: Budget,
    /// Sessions open at once (all principals).
    pub max_sessions: usize,
    /// Profiles per principal.
    pub max_profiles: usize,
    /// Downloads.
    pub downloads: DownloadPolicy,
    /// Extra Chromium flags.
    pub extra_args: Vec<String>,
}

/// A running Chromium.
pub struct BrowserProc {
    /// `""` for the shared browser, else the persistent profile's id.
    pub key: String,
    /// Its DevTools connection.
    pub cdp: Cdp,
    child: Mutex<Child>,
    alive: AtomicBool,
    exit: Mutex<Option<String>>,
}

impl std::fmt::Debug for BrowserProc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserProc")
            .field("key", &self.key)
            .field("alive", &self.alive.load(Ordering::Relaxed))
            .finish()
    }
}

impl BrowserProc {
    /// Whether it still runs.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    /// Why it stopped, when it did.
    pub fn exit_reason(&self) -> Option<String> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One tab of a session.
#[derive(Debug, Clone)]
pub struct TabEntry {
    /// Our id (a ULID; Chromium's target ids are not canonical ids).
    pub id: String,
    /// The DevTools tab.
    pub tab: Tab,
}

/// What a session's calls share (behind a short lock).
#[derive(Debug)]
pub struct SessionMeta {
    /// Last call (Unix ms).
    pub last_active_unix_ms: u64,
    /// When the last call came.
    pub last_active: Instant,
    /// Actions so far.
    pub action_count: u64,
    /// Recent action times (the rate window).
    pub window: VecDeque<Instant>,
    /// Recent actions.
    pub action_log: VecDeque<BrowserActionLogEntry>,
    /// Open tabs, in opening order.
    pub tabs: Vec<TabEntry>,
    /// The active tab's id.
    pub active: String,
    /// Camera, microphone, location.
    pub permissions: SessionPermissions,
    /// Downloads of this session.
    pub downloads: Vec<DownloadArtifact>,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Downloads in progress: guid -> (URL, suggested file name).
    pub pending_downloads: HashMap<String, (String, String)>,
    /// Why the session can no longer be used (its browser exited, it expired).
    pub dead: Option<String>,
}

/// A browser session: one browser context, owned by one principal.
#[derive(Debug)]
pub struct Session {
    /// The session's id (a ULID).
    pub id: String,
    /// Who created it; nobody else sees it.
    pub principal: String,
    /// The channel it was created for (free text).
    pub channel: String,
    /// Creation (Unix ms).
    pub created_unix_ms: u64,
    /// Creation.
    pub created: Instant,
    /// The effective budget.
    pub budget: Budget,
    /// Its browser.
    pub browser: Arc<BrowserProc>,
    /// Its browser context (empty: the browser's default context, for persistent profiles).
    pub context_id: String,
    /// Private and loopback targets may be loaded.
    pub allow_private: Arc<AtomicBool>,
    /// Downloads are kept.
    pub downloads_enabled: bool,
    /// Hosts actions may run on (empty: any).
    pub allowed_domains: Vec<String>,
    /// The profile, if any.
    pub profile_id: String,
    /// The profile is private.
    pub private_profile: bool,
    /// State persists with the profile.
    pub persistence_enabled: bool,
    /// The persistence id asked for.
    pub persistence_id: String,
    /// A persistent profile's earlier state (cookies, storage) was there to restore.
    pub state_restored: bool,
    /// Where its downloads go.
    pub download_dir: PathBuf,
    /// Serialises the session's actions.
    pub busy: async_lock::Mutex<()>,
    /// Fires when a download starts or ends.
    pub downloads_changed: event_listener::Event,
    /// Fires when a tab is added.
    pub tabs_changed: event_listener::Event,
    /// Shared state.
    pub meta: Mutex<SessionMeta>,
}

impl Session {
    /// Reads or changes the shared state.
    pub fn with<T>(&self, f: impl FnOnce(&mut SessionMeta) -> T) -> T {
        f(&mut self.meta.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The active tab, or why there is none.
    pub fn active_tab(&self) -> Result<TabEntry, String> {
        self.with(|m| {
            if let Some(dead) = &m.dead {
                return Err(dead.clone());
            }
            m.tabs
                .iter()
                .find(|t| t.id == m.active)
                .cloned()
                .ok_or_else(|| "active_tab_not_found".to_owned())
        })
    }

    /// Records a call (for the idle timeout).
    pub fn touch(&self) {
        self.with(|m| {
            m.last_active = Instant::now();
            m.last_active_unix_ms = wall_ms();
        });
    }

    /// Counts an action against the budget, or says why it may not run.
    pub fn admit_action(&self, now: Instant) -> Result<(), String> {
        let budget = self.budget;
        self.with(|m| {
            if let Some(dead) = &m.dead {
                return Err(dead.clone());
            }
            if m.action_count >= budget.actions_per_session {
                return Err(format!(
                    "action_budget_exhausted: this session used its {} actions",
                    budget.actions_per_session
                ));
            }
            let window = Duration::from_millis(budget.action_rate_window_ms);
            while m
                .window
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                m.window.pop_front();
            }
            if m.window.len() as u64 >= budget.actions_per_window {
                return Err(format!(
                    "rate_limited: at most {} actions per {} ms",
                    budget.actions_per_window, budget.action_rate_window_ms
                ));
            }
            m.window.push_back(now);
            m.action_count += 1;
            m.last_active = now;
            m.last_active_unix_ms = wall_ms();
            Ok(())
        })
    }

    /// Appends to the action log (bounded).
    pub fn log_action(&self, entry: BrowserActionLogEntry) {
        let max = self.budget.action_log_entries as usize;
        self.with(|m| {
            while m.action_log.len() >= max.max(1) {
                m.action_log.pop_front();
            }
            if max > 0 {
                m.action_log.push_back(entry);
            }
        });
    }

    /// Log limits for this session's tabs.
    pub fn log_limits(&self) -> LogLimits {
        LogLimits {
            network_entries: self.budget.network_log_entries as usize,
            console_entries: self.budget.network_log_entries.max(256) as usize,
        }
    }

    /// Why the session is past its lifetime or idle timeout, if it is.
    pub fn expired(&self, now: Instant) -> Option<String> {
        let lifetime = Duration::from_millis(self.budget.session_lifetime_ms);
        if now.saturating_duration_since(self.created) >= lifetime {
            return Some(format!(
                "session_expired: the session reached its lifetime of {} ms",
                self.budget.session_lifetime_ms
            ));
        }
        let idle = Duration::from_millis(self.budget.idle_ttl_ms);
        let last = self.with(|m| m.last_active);
        (now.saturating_duration_since(last) >= idle).then(|| {
            format!(
                "session_expired: the session was idle for {} ms",
                self.budget.idle_ttl_ms
            )
        })
    }
}

/// What CreateSession asks for, after validation.
#[derive(Debug, Clone, Default)]
pub struct NewSession {
    /// The owner.
    pub principal: String,
    /// Channel label.
    pub channel: String,
    /// Effective budget.
    pub budget: Option<Budget>,
    /// Private targets allowed.
    pub allow_private: bool,
    /// Downloads kept.
    pub allow_downloads: bool,
    /// Hosts actions may run on.
    pub allowed_domains: Vec<String>,
    /// Profile to use (empty: the principal's active one, if any).
    pub profile_id: String,
    /// Use a private (throw-away) profile whatever the active one is.
    pub private_profile: bool,
    /// Persistence requested.
    pub persistence_enabled: bool,
    /// Persistence id.
    pub persistence_id: String,
}

/// Why a session could not be created (mapped to gRPC statuses by the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateError {
    /// Too many sessions.
    Exhausted(String),
    /// Bad arguments (unknown profile, ...).
    Invalid(String),
    /// Chromium could not be started or answered badly.
    Unavailable(String),
}

/// The engine.
pub struct BrowserEngine {
    /// The runtime.
    pub rt: Rt,
    /// How it runs.
    pub config: EngineConfig,
    /// When it started.
    pub started: Instant,
    browsers: Mutex<HashMap<String, Arc<BrowserProc>>>,
    launching: async_lock::Mutex<()>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Profiles, persisted.
    pub profiles: Profiles,
    /// Chromium processes that exited while in use.
    pub browser_exits: AtomicU64,
    /// Chromium processes started.
    pub browser_launches: AtomicU64,
    stopped: AtomicBool,
}

impl std::fmt::Debug for BrowserEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrowserEngine")
            .field("state_dir", &self.config.state_dir)
            .finish()
    }
}

impl BrowserEngine {
    /// Opens the engine (profiles from `state_dir`) and starts its cleanup task; Chromium starts
    /// with the first session.
    pub fn open(rt: &Rt, config: EngineConfig) -> std::io::Result<Arc<Self>> {
        std::fs::create_dir_all(&config.state_dir)?;
        let profiles = Profiles::open(config.state_dir.join("profiles.json"), config.max_profiles)?;
        let engine = Arc::new(Self {
            rt: Rt::clone(rt),
            config,
            started: Instant::now(),
            browsers: Mutex::new(HashMap::new()),
            launching: async_lock::Mutex::new(()),
            sessions: Mutex::new(HashMap::new()),
            profiles,
            browser_exits: AtomicU64::new(0),
            browser_launches: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&engine);
        let rt2 = Rt::clone(rt);
        rt.spawn(Box::pin(async move {
            loop {
                runtime::sleep(&*rt2, Duration::from_secs(1)).await;
                let Some(engine) = weak.upgrade() else { return };
                if engine.stopped.load(Ordering::Acquire) {
                    return;
                }
                engine.expire_sessions().await;
            }
        }));
        Ok(engine)
    }

    /// The shared Chromium, started if needed (for health checks and tests).
    pub async fn shared_browser(self: &Arc<Self>) -> Result<Arc<BrowserProc>, String> {
        self.browser("").await
    }

    /// The live browsers.
    pub fn browsers(&self) -> Vec<Arc<BrowserProc>> {
        self.browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    async fn browser(self: &Arc<Self>, key: &str) -> Result<Arc<BrowserProc>, String> {
        if let Some(b) = self.live_browser(key) {
            return Ok(b);
        }
        let _launching = self.launching.lock().await;
        if let Some(b) = self.live_browser(key) {
            return Ok(b);
        }
        let user_data_dir = if key.is_empty() {
            self.config.state_dir.join("chromium").join("shared")
        } else {
            self.config.state_dir.join("profiles").join(key)
        };
        if key.is_empty() {
            // The shared browser keeps nothing between runs.
            let _ = std::fs::remove_dir_all(&user_data_dir);
        }
        let options = LaunchOptions {
            executable: self.config.executable.clone(),
            user_data_dir,
            log_file: Some(self.config.state_dir.join("chromium.log")),
            extra_args: self.config.extra_args.clone(),
        };
        let launched = chromium::launch(&*self.rt, &options).map_err(|e| {
            format!(
                "browser_unavailable: cannot start Chromium ({}): {e}",
                options.executable.display()
            )
        })?;
        let (cdp, closed) = Cdp::spawn(&self.rt, launched.pipe, CdpConfig::default());
        let proc = Arc::new(BrowserProc {
            key: key.to_owned(),
            cdp,
            child: Mutex::new(launched.child),
            alive: AtomicBool::new(true),
            exit: Mutex::new(None),
        });
        // A browser that does not answer is no browser.
        let probe = proc
            .cdp
            .call(None, "Browser.getVersion", Value::Null, SETUP_TIMEOUT)
            .await;
        if let Err(e) = probe {
            chromium::kill_group(&proc.child.lock().unwrap_or_else(|p| p.into_inner()));
            return Err(format!(
                "browser_unavailable: Chromium started but did not answer on its DevTools pipe \
                 ({e}); see {}",
                self.config.state_dir.join("chromium.log").display()
            ));
        }
        self.browser_launches.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pid = proc.pid(), profile = key, "Chromium started");
        self.browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), Arc::clone(&proc));
        let events = proc.cdp.subscribe(None).await;
        self.rt.spawn(Box::pin(super::downloads::watch(
            Arc::downgrade(self),
            Arc::clone(&proc),
            events,
        )));
        // Every new target (our tabs, popups, shared and service workers) is attached paused,
        // so its requests are guarded before it runs.
        let auto = proc
            .cdp
            .call(
                None,
                "Target.setAutoAttach",
                json!({"autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true}),
                SETUP_TIMEOUT,
            )
            .await;
        if let Err(e) = auto {
            chromium::kill_group(&proc.child.lock().unwrap_or_else(|p| p.into_inner()));
            return Err(format!(
                "browser_unavailable: Chromium refused auto-attach: {e}"
            ));
        }
        // Chromium's helpers (renderers, zygote) may keep the pipe open after the browser process
        // died; once it has, its whole process group goes, which closes the pipe at once.
        let polled = Arc::clone(&proc);
        let rt3 = Rt::clone(&self.rt);
        self.rt.spawn(Box::pin(async move {
            while polled.alive() {
                runtime::sleep(&*rt3, Duration::from_millis(250)).await;
                let mut child = polled.child.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    chromium::kill_group(&child);
                    return;
                }
            }
        }));
        let weak = Arc::downgrade(self);
        let watched = Arc::clone(&proc);
        let rt2 = Rt::clone(&self.rt);
        self.rt.spawn(Box::pin(async move {
            let _ = closed.recv().await;
            let reason = reap(&rt2, &watched).await;
            if let Some(engine) = weak.upgrade() {
                engine.browser_gone(&watched, reason);
            }
        }));
        Ok(proc)
    }

    fn live_browser(&self, key: &str) -> Option<Arc<BrowserProc>> {
        self.browsers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .filter(|b| b.alive())
            .cloned()
    }

    fn browser_gone(&self, proc: &Arc<BrowserProc>, reason: String) {
        proc.alive.store(false, Ordering::Release);
        *proc.exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        {
            let mut browsers = self.browsers.lock().unwrap_or_else(|p| p.into_inner());
            if browsers
                .get(&proc.key)
                .is_some_and(|b| Arc::ptr_eq(b, proc))
            {
                browsers.remove(&proc.key);
            }
        }
        if self.stopped.load(Ordering::Acquire) {
            return;
        }
        self.browser_exits.fetch_add(1, Ordering::Relaxed);
        let why = format!(
            "browser_unavailable: Chromium exited during the session ({reason}); the session is \
             gone, create a new one"
        );
        let mut failed = 0;
        for session in self.all_sessions() {
            if Arc::ptr_eq(&session.browser, proc) {
                session.with(|m| {
                    m.dead.get_or_insert_with(|| why.clone());
                });
                failed += 1;
            }
        }
        tracing::warn!(%reason, sessions_failed = failed, "Chromium exited");
    }

    /// Every open session.
    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Sessions open now.
    pub fn session_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// The sessions `principal` owns (itself or its sub-principals), newest first.
    pub fn sessions_of(&self, principal: &str) -> Vec<Arc<Session>> {
        let mut list: Vec<_> = self
            .all_sessions()
            .into_iter()
            .filter(|s| crate::access::within(&s.principal, principal))
            .collect();
        list.sort_by(|a, b| b.id.cmp(&a.id));
        list
    }

    /// The session `id` if `principal` owns it; another principal's session is not found.
    pub fn session(&self, principal: &str, id: &str) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .filter(|s| crate::access::within(&s.principal, principal))
            .cloned()
    }

    /// Creates a session: a browser context (or a persistent profile's browser), one blank tab.
    pub async fn create_session(
        self: &Arc<Self>,
        new: NewSession,
    ) -> Result<Arc<Session>, CreateError> {
        if self.session_count() >= self.config.max_sessions {
            return Err(CreateError::Exhausted(format!(
                "{} browser sessions are open, the server's limit; close one first",
                self.config.max_sessions
            )));
        }
        let profile = if new.private_profile {
            None
        } else if new.profile_id.is_empty() {
            self.profiles.active(&new.principal)
        } else {
            Some(
                self.profiles
                    .get(&new.principal, &new.profile_id)
                    .ok_or_else(|| {
                        CreateError::Invalid(format!("profile {} not found", new.profile_id))
                    })?,
            )
        };
        let persistent = profile.as_ref().is_some_and(|p| p.persistence_enabled);
        let key = match (&profile, persistent) {
            (Some(p), true) => p.profile_id.clone(),
            _ => String::new(),
        };
        let browser = self.browser(&key).await.map_err(CreateError::Unavailable)?;
        let unavailable = |e: String| CreateError::Unavailable(format!("browser_unavailable: {e}"));
        let context_id = if persistent {
            String::new()
        } else {
            let created: CreateBrowserContext = types::decode(
                &browser
                    .cdp
                    .call(
                        None,
                        "Target.createBrowserContext",
                        json!({"disposeOnDetach": false}),
                        SETUP_TIMEOUT,
                    )
                    .await
                    .map_err(|e| unavailable(e.to_string()))?,
            )
            .map_err(|e| unavailable(e.to_string()))?;
            created.browser_context_id
        };
        let id = ulid::Ulid::new().to_string();
        let download_dir = self.config.state_dir.join("downloads").join(&id);
        let budget = new.budget.unwrap_or(self.config.limits);
        let now = Instant::now();
        let session = Arc::new(Session {
            id: id.clone(),
            principal: new.principal.clone(),
            channel: new.channel.clone(),
            created_unix_ms: wall_ms(),
            created: now,
            budget,
            browser: Arc::clone(&browser),
            context_id,
            allow_private: Arc::new(AtomicBool::new(new.allow_private)),
            downloads_enabled: new.allow_downloads,
            allowed_domains: new.allowed_domains.clone(),
            profile_id: profile
                .as_ref()
                .map(|p| p.profile_id.clone())
                .unwrap_or_default(),
            private_profile: profile.as_ref().is_none_or(|p| p.private_profile),
            persistence_enabled: persistent,
            persistence_id: new.persistence_id.clone(),
            state_restored: persistent && profile.as_ref().is_some_and(|p| p.last_used_unix_ms > 0),
            download_dir,
            busy: async_lock::Mutex::new(()),
            downloads_changed: event_listener::Event::new(),
            tabs_changed: event_listener::Event::new(),
            meta: Mutex::new(SessionMeta {
                last_active_unix_ms: wall_ms(),
                last_active: now,
                action_count: 0,
                window: VecDeque::new(),
                action_log: VecDeque::new(),
                tabs: Vec::new(),
                active: String::new(),
                permissions: default_permissions(),
                downloads: Vec::new(),
                downloaded_bytes: 0,
                pending_downloads: HashMap::new(),
                dead: None,
            }),
        });
        // Registered first: its tabs are adopted by context as Chromium attaches them.
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Arc::clone(&session));
        let setup = async {
            self.apply_downloads(&session).await?;
            self.apply_permissions(&session).await?;
            let tab = self.open_tab(&session).await?;
            session.with(|m| m.active = tab.id.clone());
            Ok::<_, String>(())
        };
        if let Err(e) = setup.await {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            self.dispose(&session).await;
            return Err(unavailable(e));
        }
        if let Some(p) = &profile {
            self.profiles.touch(&p.principal, &p.profile_id, wall_ms());
        }
        tracing::info!(session = %session.id, principal = %session.principal, "browser session created");
        Ok(session)
    }

    /// Opens a blank tab in the session (not activated).
    pub async fn open_tab(&self, session: &Arc<Session>) -> Result<TabEntry, String> {
        let open = session.with(|m| m.tabs.len() as u64);
        if open >= session.budget.tabs {
            return Err(format!(
                "tab_limit_reached: the session has {open} tabs, its limit"
            ));
        }
        let mut params = json!({"url": "about:blank"});
        if !session.context_id.is_empty() {
            params["browserContextId"] = json!(session.context_id);
        }
        let created: CreateTarget = types::decode(
            &session
                .browser
                .cdp
                .call(None, "Target.createTarget", params, SETUP_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        // Chromium attaches it (browser-level auto-attach); the watcher adopts it as a tab.
        let find = || {
            session.with(|m| {
                m.tabs
                    .iter()
                    .find(|t| t.tab.target_id == created.target_id)
                    .cloned()
            })
        };
        let waited = runtime::timeout(&*self.rt, SETUP_TIMEOUT, async {
            loop {
                let listener = session.tabs_changed.listen();
                if let Some(entry) = find() {
                    return entry;
                }
                listener.await;
            }
        })
        .await;
        waited.ok_or_else(|| "the new tab was not attached in time".to_owned())
    }

    fn tab_policy(session: &Session) -> TabPolicy {
        TabPolicy {
            allow_private: Arc::clone(&session.allow_private),
            limits: session.log_limits(),
        }
    }

    /// The session a page target of `proc` in browser context `context` belongs to.
    fn owner_of(&self, proc: &Arc<BrowserProc>, context: Option<&str>) -> Option<Arc<Session>> {
        self.all_sessions().into_iter().find(|s| {
            Arc::ptr_eq(&s.browser, proc)
                && (s.context_id.is_empty() || Some(s.context_id.as_str()) == context)
        })
    }

    /// Chromium attached a new target (browser-level auto-attach, paused): a page becomes a tab
    /// of the session whose context it is in (a tab we opened or a popup the page opened),
    /// once its requests are guarded; anything else (and a page of no session) is guarded with
    /// no private targets. A page over its session's tab limit is closed.
    pub fn target_attached(self: &Arc<Self>, proc: &Arc<BrowserProc>, attached: AttachedToTarget) {
        let (engine, proc) = (Arc::clone(self), Arc::clone(proc));
        self.rt.spawn(Box::pin(async move {
            let info = attached.target_info;
            let page = info.kind == "page";
            // Targets that existed when auto-attach was turned on (Chromium's first tab) come
            // unpaused and belong to no session; new ones come paused.
            let owner = match attached.waiting_for_debugger {
                true => engine.owner_of(&proc, info.browser_context_id.as_deref()),
                false => None,
            };
            let policy = match &owner {
                Some(s) => Self::tab_policy(s),
                None => TabPolicy {
                    allow_private: Arc::new(AtomicBool::new(false)),
                    limits: LogLimits {
                        network_entries: 16,
                        console_entries: 16,
                    },
                },
            };
            let kind = if page { Kind::Page } else { Kind::Guarded };
            let adopted = Tab::adopt(
                &engine.rt,
                &proc.cdp,
                &info.target_id,
                attached.session_id,
                kind,
                attached.waiting_for_debugger,
                policy,
                wall_ms,
            )
            .await;
            let keep = match (adopted, owner) {
                (Ok(_), _) if !page => true,
                (Ok(tab), Some(s)) => {
                    let added = s.with(|m| {
                        let room = (m.tabs.len() as u64) < s.budget.tabs && m.dead.is_none();
                        if room {
                            m.tabs.push(TabEntry {
                                id: ulid::Ulid::new().to_string(),
                                tab,
                            });
                        }
                        room
                    });
                    s.tabs_changed.notify(usize::MAX);
                    added
                }
                // Chromium's own first tab (attached when auto-attach is turned on): kept, guarded
                // with no private targets, so the browser does not exit with the last session tab.
                (Ok(_), None) => true,
                (Err(e), _) => {
                    tracing::warn!(error = %e, target = %info.target_id, "could not guard a new target");
                    false
                }
            };
            if !keep {
                let _ = proc
                    .cdp
                    .call(
                        None,
                        "Target.closeTarget",
                        json!({"targetId": info.target_id}),
                        SETUP_TIMEOUT,
                    )
                    .await;
            }
        }));
    }

    /// Closes one tab's target.
    pub async fn close_target(&self, session: &Session, tab: &Tab) {
        let _ = session
            .browser
            .cdp
            .call(
                None,
                "Target.closeTarget",
                json!({"targetId": tab.target_id}),
                SETUP_TIMEOUT,
            )
            .await;
    }

    async fn apply_downloads(&self, session: &Session) -> Result<(), String> {
        let mut params = if session.downloads_enabled {
            std::fs::create_dir_all(&session.download_dir)
                .map_err(|e| format!("download directory: {e}"))?;
            json!({"behavior": "allowAndName", "downloadPath": session.download_dir,
                   "eventsEnabled": true})
        } else {
            // eventsEnabled is the browser's, not the context's: never turn it off.
            json!({"behavior": "deny", "eventsEnabled": true})
        };
        if !session.context_id.is_empty() {
            params["browserContextId"] = json!(session.context_id);
        }
        session
            .browser
            .cdp
            .call(None, "Browser.setDownloadBehavior", params, SETUP_TIMEOUT)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Applies the session's camera, microphone and location settings to its context.
    pub async fn apply_permissions(&self, session: &Session) -> Result<(), String> {
        let permissions = session.with(|m| m.permissions);
        for (name, setting) in [
            ("camera", permissions.camera),
            ("microphone", permissions.microphone),
            ("geolocation", permissions.location),
        ] {
            let setting = if setting == PermissionSetting::Allow as i32 {
                "granted"
            } else {
                "denied"
            };
            let mut params = json!({"permission": {"name": name}, "setting": setting});
            if !session.context_id.is_empty() {
                params["browserContextId"] = json!(session.context_id);
            }
            session
                .browser
                .cdp
                .call(None, "Browser.setPermission", params, SETUP_TIMEOUT)
                .await
                .map_err(|e| format!("setting the {name} permission: {e}"))?;
        }
        Ok(())
    }

    /// Closes a session: its context and tabs go; `reason` is logged.
    pub async fn close_session(&self, session: &Arc<Session>, reason: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session.id);
        session.with(|m| {
            m.dead
                .get_or_insert_with(|| format!("session_closed: {reason}"));
        });
        self.dispose(session).await;
        tracing::info!(session = %session.id, reason, "browser session closed");
    }

    async fn dispose(&self, session: &Session) {
        if !session.browser.alive() {
            return;
        }
        if session.context_id.is_empty() {
            // A persistent profile's browser keeps a blank page, or it would exit with the
            // session's last tab (and lose the profile's session cookies).
            let _ = session
                .browser
                .cdp
                .call(
                    None,
                    "Target.createTarget",
                    json!({"url": "about:blank"}),
                    SETUP_TIMEOUT,
                )
                .await;
            let tabs = session.with(|m| std::mem::take(&mut m.tabs));
            for t in tabs {
                self.close_target(session, &t.tab).await;
            }
        } else {
            let _ = session
                .browser
                .cdp
                .call(
                    None,
                    "Target.disposeBrowserContext",
                    json!({"browserContextId": session.context_id}),
                    SETUP_TIMEOUT,
                )
                .await;
        }
    }

    async fn expire_sessions(&self) {
        let now = Instant::now();
        for session in self.all_sessions() {
            if let Some(why) = session.expired(now) {
                self.close_session(&session, &why).await;
            }
        }
    }

    /// Closes every session and stops every browser.
    pub async fn shutdown(&self) {
        self.stopped.store(true, Ordering::Release);
        for session in self.all_sessions() {
            self.close_session(&session, "browserd is shutting down")
                .await;
        }
        for browser in self.browsers() {
            let _ = browser
                .cdp
                .call(None, "Browser.close", Value::Null, Duration::from_secs(5))
                .await;
            chromium::kill_group(&browser.child.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// Every permission denied: the default.
pub fn default_permissions() -> SessionPermissions {
    SessionPermissions {
        v: 1,
        camera: PermissionSetting::Deny as i32,
        microphone: PermissionSetting::Deny as i32,
        location: PermissionSetting::Deny as i32,
    }
}

/// Waits (bounded) for the exited browser's status and describes it.
async fn reap(rt: &Rt, proc: &BrowserProc) -> String {
    for _ in 0..50 {
        let status = proc
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_wait();
        match status {
            Ok(Some(status)) => {
                use std::os::unix::process::ExitStatusExt;
                return match (status.code(), status.signal()) {
                    (_, Some(signal)) => format!("killed by signal {signal}"),
                    (Some(code), _) => format!("exit status {code}"),
                    _ => status.to_string(),
                };
            }
            Ok(None) => runtime::sleep(&**rt, Duration::from_millis(20)).await,
            Err(e) => return format!("its status is unknown: {e}"),
        }
    }
    // The pipe closed but the process lingers: make sure it is gone.
    chromium::kill_group(&proc.child.lock().unwrap_or_else(|p| p.into_inner()));
    "its DevTools pipe closed".into()
}
