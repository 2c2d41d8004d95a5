//! Session, profile, tab, permission, state-reset, relay and download RPCs of BrowserService.
//! The principal is always the authenticated caller's; a `principal` field in a request may
//! only repeat it (PERMISSION_DENIED otherwise), and another principal's session is not found.

use super::budget::per_call;
use super::engine::{
    default_permissions, wall_ms, BrowserEngine, CreateError, NewSession, Session, TabEntry,
};
use super::ops::{self, id, ulid, SESSION_NOT_FOUND};
use super::page;
use super::profiles::{Profile, ProfileError};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::browser::v1 as pb;
use palyra_proto::pb::palyra::browser::v1::{relay_action_request, relay_action_response};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Largest relay payload a request may ask for.
pub const MAX_RELAY_PAYLOAD: u64 = 32 * 1024;
/// Longest channel label.
const MAX_CHANNEL: usize = 64;
/// Most hosts in `action_allowed_domains`.
const MAX_DOMAINS: usize = 64;

/// PERMISSION_DENIED when a request's `principal` field names someone other than the caller.
pub fn same_principal(caller: &str, field: &str) -> Result<(), Status> {
    let field = field.trim();
    if field.is_empty() || field == caller {
        return Ok(());
    }
    Err(Status::new(
        Code::PermissionDenied,
        format!(
            "the request names principal {field:?}, but the caller is {caller}: the principal \
             comes from the credential, a request cannot choose it"
        ),
    ))
}

fn create_status(e: CreateError) -> Status {
    match e {
        CreateError::Exhausted(m) => Status::new(Code::ResourceExhausted, m),
        CreateError::Invalid(m) => Status::new(Code::InvalidArgument, m),
        CreateError::Unavailable(m) => Status::new(Code::Unavailable, m),
    }
}

fn profile_status(e: ProfileError) -> Status {
    match e {
        ProfileError::NotFound(m) => Status::new(Code::NotFound, m),
        ProfileError::Invalid(m) => Status::new(Code::InvalidArgument, m),
        ProfileError::Exhausted(m) => Status::new(Code::ResourceExhausted, m),
        ProfileError::Store(m) => Status::new(Code::Unavailable, m),
    }
}

fn valid_domain(d: &str) -> bool {
    let d = d.trim_start_matches("*.");
    !d.is_empty()
        && d.len() <= 253
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

/// CreateSession.
pub async fn create_session(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::CreateSessionRequest,
) -> Result<pb::CreateSessionResponse, Status> {
    same_principal(&principal, &r.principal)?;
    if r.channel.len() > MAX_CHANNEL || r.channel.chars().any(char::is_control) {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("channel is at most {MAX_CHANNEL} bytes of printable text"),
        ));
    }
    if r.action_allowed_domains.len() > MAX_DOMAINS
        || !r.action_allowed_domains.iter().all(|d| valid_domain(d))
    {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "action_allowed_domains holds at most {MAX_DOMAINS} host names (letters, digits, \
                 dots, dashes; *.example.com allowed)"
            ),
        ));
    }
    let persistence_id = r.persistence_id.trim().to_owned();
    if r.persistence_enabled
        && (persistence_id.is_empty()
            || persistence_id.len() > 64
            || !persistence_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(Status::new(
            Code::InvalidArgument,
            "persistence_enabled needs a persistence_id of 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    let budget = engine.config.limits.clamp(r.budget.as_ref(), r.idle_ttl_ms);
    let new = NewSession {
        principal: principal.clone(),
        channel: r.channel.clone(),
        budget: Some(budget),
        allow_private: r.allow_private_targets,
        allow_downloads: r.allow_downloads,
        allowed_domains: r.action_allowed_domains.clone(),
        profile_id: ulid(&r.profile_id).to_owned(),
        private_profile: r.private_profile,
        persistence_enabled: r.persistence_enabled,
        persistence_id,
    };
    let s = engine.create_session(new).await.map_err(create_status)?;
    Ok(pb::CreateSessionResponse {
        v: 1,
        session_id: id(&s.id),
        created_at_unix_ms: s.created_unix_ms,
        effective_budget: Some(s.budget.to_proto()),
        downloads_enabled: s.downloads_enabled,
        action_allowed_domains: s.allowed_domains.clone(),
        persistence_enabled: s.persistence_enabled,
        persistence_id: s.persistence_id.clone(),
        state_restored: s.state_restored,
        profile_id: id(&s.profile_id),
        private_profile: s.private_profile,
    })
}

/// CloseSession.
pub async fn close_session(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::CloseSessionRequest,
) -> Result<pb::CloseSessionResponse, Status> {
    let Some(s) = engine.session(&principal, ulid(&r.session_id)) else {
        return Ok(pb::CloseSessionResponse {
            v: 1,
            closed: false,
            reason: SESSION_NOT_FOUND.into(),
        });
    };
    engine.close_session(&s, "closed by its owner").await;
    Ok(pb::CloseSessionResponse {
        v: 1,
        closed: true,
        reason: "closed".into(),
    })
}

/// Tab URLs and titles as Chromium knows them: target id -> (url, title).
async fn target_infos(s: &Session) -> BTreeMap<String, (String, String)> {
    let answer = s
        .browser
        .cdp
        .call(
            None,
            "Target.getTargets",
            json!({}),
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
    answer["targetInfos"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|t| {
                    Some((
                        t["targetId"].as_str()?.to_owned(),
                        (
                            t["url"].as_str().unwrap_or_default().to_owned(),
                            t["title"].as_str().unwrap_or_default().to_owned(),
                        ),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn tabs_of(s: &Session) -> (Vec<pb::BrowserTab>, String) {
    let infos = if s.browser.alive() {
        target_infos(s).await
    } else {
        BTreeMap::new()
    };
    let (tabs, active) = s.with(|m| (m.tabs.clone(), m.active.clone()));
    let list = tabs
        .iter()
        .map(|t| {
            let (url, title) = infos
                .get(&t.tab.target_id)
                .cloned()
                .unwrap_or_else(|| (t.tab.state.read(|v| v.url.clone()), String::new()));
            pb::BrowserTab {
                v: 1,
                tab_id: id(&t.id),
                url,
                title: page::cut(title, ops::MAX_TITLE).0,
                active: t.id == active,
            }
        })
        .collect();
    (list, active)
}

async fn summary(s: &Session) -> (pb::BrowserSessionSummary, Vec<pb::BrowserTab>) {
    let (tabs, active) = tabs_of(s).await;
    let now = Instant::now();
    let (last_ms, last, count, log_len, permissions) = s.with(|m| {
        (
            m.last_active_unix_ms,
            m.last_active,
            m.action_count,
            m.action_log.len() as u32,
            m.permissions,
        )
    });
    let active_tab = tabs.iter().find(|t| t.active);
    let summary = pb::BrowserSessionSummary {
        v: 1,
        session_id: id(&s.id),
        principal: s.principal.clone(),
        channel: s.channel.clone(),
        created_at_unix_ms: s.created_unix_ms,
        last_active_unix_ms: last_ms,
        idle_ttl_ms: s.budget.idle_ttl_ms,
        age_ms: now.saturating_duration_since(s.created).as_millis() as u64,
        idle_for_ms: now.saturating_duration_since(last).as_millis() as u64,
        action_count: count,
        action_log_entries: log_len,
        tab_count: tabs.len() as u32,
        active_tab_id: id(&active),
        active_tab_url: active_tab.map(|t| t.url.clone()).unwrap_or_default(),
        active_tab_title: active_tab.map(|t| t.title.clone()).unwrap_or_default(),
        allow_private_targets: s.allow_private.load(std::sync::atomic::Ordering::Relaxed),
        downloads_enabled: s.downloads_enabled,
        persistence_enabled: s.persistence_enabled,
        persistence_id: s.persistence_id.clone(),
        state_restored: s.state_restored,
        profile_id: id(&s.profile_id),
        private_profile: s.private_profile,
        action_allowed_domains: s.allowed_domains.clone(),
        permissions: Some(permissions),
    };
    (summary, tabs)
}

async fn detail(s: &Session) -> pb::BrowserSessionDetail {
    let (summary, tabs) = summary(s).await;
    pb::BrowserSessionDetail {
        v: 1,
        summary: Some(summary),
        effective_budget: Some(s.budget.to_proto()),
        tabs,
    }
}

/// ListSessions: the caller's sessions (and its sub-principals'), newest first.
pub async fn list_sessions(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ListSessionsRequest,
) -> Result<pb::ListSessionsResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let limit = per_call(r.limit as u64, 128) as usize;
    let all = engine.sessions_of(&principal);
    let mut sessions = Vec::new();
    for s in all.iter().take(limit) {
        sessions.push(summary(s).await.0);
    }
    Ok(pb::ListSessionsResponse {
        v: 1,
        sessions,
        truncated: all.len() > limit,
        error: String::new(),
    })
}

/// GetSession.
pub async fn get_session(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::GetSessionRequest,
) -> Result<pb::GetSessionResponse, Status> {
    let Some(s) = engine.session(&principal, ulid(&r.session_id)) else {
        return Ok(pb::GetSessionResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    Ok(pb::GetSessionResponse {
        v: 1,
        success: true,
        session: Some(detail(&s).await),
        error: String::new(),
    })
}

/// Cookies of the session's context grouped by domain, within `max` bytes.
async fn cookies(s: &Session, max: u64) -> (Vec<pb::SessionCookieDomain>, bool, u32) {
    let mut params = json!({});
    if !s.context_id.is_empty() {
        params["browserContextId"] = json!(s.context_id);
    }
    let answer = s
        .browser
        .cdp
        .call(
            None,
            "Storage.getCookies",
            params,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap_or_default();
    let list = answer["cookies"].as_array().cloned().unwrap_or_default();
    let count = list.len() as u32;
    let mut by_domain: BTreeMap<String, Vec<pb::SessionCookieEntry>> = BTreeMap::new();
    let mut bytes = 0u64;
    let mut truncated = false;
    for c in &list {
        let name = c["name"].as_str().unwrap_or_default().to_owned();
        let value = page::cut(c["value"].as_str().unwrap_or_default().to_owned(), 512).0;
        let cost = (name.len() + value.len()) as u64;
        if bytes + cost > max {
            truncated = true;
            break;
        }
        bytes += cost;
        by_domain
            .entry(c["domain"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(pb::SessionCookieEntry { v: 1, name, value });
    }
    let domains = by_domain
        .into_iter()
        .map(|(domain, cookies)| pb::SessionCookieDomain {
            v: 1,
            domain,
            cookies,
        })
        .collect();
    (domains, truncated, count)
}

/// InspectSession: everything about a session, each part within its cap.
pub async fn inspect_session(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::InspectSessionRequest,
) -> Result<pb::InspectSessionResponse, Status> {
    let Some(s) = engine.session(&principal, ulid(&r.session_id)) else {
        return Ok(pb::InspectSessionResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let b = s.budget;
    let mut out = pb::InspectSessionResponse {
        v: 1,
        success: true,
        session: Some(detail(&s).await),
        ..Default::default()
    };
    let tab = s.active_tab().ok();
    if let Some(t) = &tab {
        out.page_url = t.tab.state.read(|v| v.url.clone());
    }
    if r.include_cookies {
        let (cookies, truncated, _) = cookies(&s, per_call(r.max_cookie_bytes, 16 * 1024)).await;
        (out.cookies, out.cookies_truncated) = (cookies, truncated);
    }
    if let (true, Some(t)) = (r.include_storage, &tab) {
        let max = per_call(r.max_storage_bytes, 16 * 1024);
        if let Ok((origin, entries)) = page::storage(&t.tab).await {
            let mut bytes = 0u64;
            let mut kept = Vec::new();
            for (key, value) in entries {
                let value = page::cut(value, 1024).0;
                let cost = (key.len() + value.len()) as u64;
                if bytes + cost > max {
                    out.storage_truncated = true;
                    break;
                }
                bytes += cost;
                kept.push(pb::SessionStorageEntry { v: 1, key, value });
            }
            out.storage = vec![pb::SessionStorageOrigin {
                v: 1,
                origin,
                entries: kept,
            }];
        }
    }
    if r.include_action_log {
        let max = per_call(r.max_action_log_entries as u64, b.action_log_entries) as usize;
        let log = s.with(|m| m.action_log.iter().cloned().collect::<Vec<_>>());
        out.action_log_truncated = log.len() > max;
        out.action_log = log[log.len().saturating_sub(max)..].to_vec();
    }
    if r.include_network_log {
        let (entries, truncated) = ops::network_entries(
            &s,
            r.max_network_log_entries as u64,
            false,
            per_call(r.max_network_log_bytes, b.network_log_bytes),
        );
        (out.network_log, out.network_log_truncated) = (entries, truncated);
    }
    if let (true, Some(t)) = (r.include_page_snapshot, &tab) {
        let max = per_call(r.max_dom_snapshot_bytes, b.observe_snapshot_bytes);
        if let Ok((dom, cut)) = page::dom_summary(&t.tab, max).await {
            (out.dom_snapshot, out.dom_truncated) = (dom, cut);
        }
        let max = per_call(r.max_visible_text_bytes, b.visible_text_bytes);
        if let Ok((text, cut)) = page::visible_text(&t.tab, max).await {
            (out.visible_text, out.visible_text_truncated) = (text, cut);
        }
    }
    if r.include_console_log {
        let (entries, truncated) = ops::console_entries(
            &s,
            r.max_console_log_entries as u64,
            0,
            per_call(r.max_console_log_bytes, b.network_log_bytes),
        );
        (out.console_log, out.console_log_truncated) = (entries, truncated);
    }
    if r.include_page_diagnostics {
        out.page_diagnostics = ops::diagnostics(&s).await;
    }
    Ok(out)
}

fn profile_pb(p: &Profile, active: &str) -> pb::BrowserProfile {
    pb::BrowserProfile {
        v: 1,
        profile_id: id(&p.profile_id),
        principal: p.principal.clone(),
        name: p.name.clone(),
        theme_color: p.theme_color.clone(),
        created_at_unix_ms: p.created_at_unix_ms,
        updated_at_unix_ms: p.updated_at_unix_ms,
        last_used_unix_ms: p.last_used_unix_ms,
        persistence_enabled: p.persistence_enabled,
        private_profile: p.private_profile,
        active: p.profile_id == active,
    }
}

/// ListProfiles.
pub async fn list_profiles(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ListProfilesRequest,
) -> Result<pb::ListProfilesResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let (list, active) = engine.profiles.list(&principal);
    Ok(pb::ListProfilesResponse {
        v: 1,
        profiles: list.iter().map(|p| profile_pb(p, &active)).collect(),
        active_profile_id: id(&active),
    })
}

/// CreateProfile.
pub async fn create_profile(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::CreateProfileRequest,
) -> Result<pb::CreateProfileResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let p = engine
        .profiles
        .create(
            &principal,
            &r.name,
            &r.theme_color,
            r.persistence_enabled,
            r.private_profile,
            wall_ms(),
        )
        .map_err(profile_status)?;
    let active = engine.profiles.list(&principal).1;
    Ok(pb::CreateProfileResponse {
        v: 1,
        profile: Some(profile_pb(&p, &active)),
    })
}

/// RenameProfile.
pub async fn rename_profile(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::RenameProfileRequest,
) -> Result<pb::RenameProfileResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let p = engine
        .profiles
        .rename(&principal, ulid(&r.profile_id), &r.name, wall_ms())
        .map_err(profile_status)?;
    let active = engine.profiles.list(&principal).1;
    Ok(pb::RenameProfileResponse {
        v: 1,
        profile: Some(profile_pb(&p, &active)),
    })
}

/// DeleteProfile: refused while a session uses it; its persisted browser data goes too.
pub async fn delete_profile(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::DeleteProfileRequest,
) -> Result<pb::DeleteProfileResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let pid = ulid(&r.profile_id).to_owned();
    if engine
        .sessions_of(&principal)
        .iter()
        .any(|s| s.profile_id == pid)
    {
        return Err(Status::new(
            Code::FailedPrecondition,
            format!("profile {pid} is in use by an open session; close it first"),
        ));
    }
    let active = engine
        .profiles
        .delete(&principal, &pid)
        .map_err(profile_status)?;
    if let Some(b) = engine.browsers().into_iter().find(|b| b.key == pid) {
        let _ = b
            .cdp
            .call(
                None,
                "Browser.close",
                serde_json::Value::Null,
                std::time::Duration::from_secs(5),
            )
            .await;
    }
    let dir = engine.config.state_dir.join("profiles").join(&pid);
    if pid.len() == 26 {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(pb::DeleteProfileResponse {
        v: 1,
        deleted: true,
        active_profile_id: id(&active),
    })
}

/// SetActiveProfile.
pub async fn set_active_profile(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::SetActiveProfileRequest,
) -> Result<pb::SetActiveProfileResponse, Status> {
    same_principal(&principal, &r.principal)?;
    let p = engine
        .profiles
        .set_active(&principal, ulid(&r.profile_id))
        .map_err(profile_status)?;
    Ok(pb::SetActiveProfileResponse {
        v: 1,
        profile: Some(profile_pb(&p, &p.profile_id)),
    })
}

fn owned(
    engine: &BrowserEngine,
    principal: &str,
    sid: &Option<palyra_proto::pb::palyra::common::v1::CanonicalId>,
) -> Option<Arc<Session>> {
    let s = engine.session(principal, ulid(sid))?;
    s.touch();
    Some(s)
}

/// ResetState: cookies, storage, tabs, permissions (all flags false: cookies and storage).
pub async fn reset_state(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ResetStateRequest,
) -> Result<pb::ResetStateResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::ResetStateResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let _busy = s.busy.lock().await;
    let none = !(r.clear_cookies || r.clear_storage || r.reset_tabs || r.reset_permissions);
    let mut out = pb::ResetStateResponse {
        v: 1,
        success: true,
        ..Default::default()
    };
    let mut errors = Vec::new();
    if r.clear_cookies || none {
        out.cookies_cleared = cookies(&s, u64::MAX).await.2;
        let mut params = json!({});
        if !s.context_id.is_empty() {
            params["browserContextId"] = json!(s.context_id);
        }
        if let Err(e) = s
            .browser
            .cdp
            .call(
                None,
                "Storage.clearCookies",
                params,
                std::time::Duration::from_secs(5),
            )
            .await
        {
            errors.push(format!("cookies: {e}"));
        }
    }
    if r.clear_storage || none {
        for t in s.with(|m| m.tabs.clone()) {
            match page::clear_storage(&t.tab).await {
                Ok(n) => out.storage_entries_cleared += n,
                Err(e) => errors.push(format!("storage: {e}")),
            }
        }
    }
    if r.reset_tabs {
        let tabs = s.with(|m| m.tabs.clone());
        let mut keep: Option<TabEntry> = None;
        for t in tabs {
            if keep.is_none() {
                keep = Some(t);
                continue;
            }
            engine.close_target(&s, &t.tab).await;
            out.tabs_closed += 1;
        }
        if let Some(k) = &keep {
            s.with(|m| {
                m.tabs.retain(|t| t.id == k.id);
                m.active = k.id.clone();
            });
            let deadline = Instant::now() + s.budget.navigation_timeout(0);
            if let Err(e) = k.tab.navigate(&engine.rt, "about:blank", deadline).await {
                errors.push(format!("tabs: {e}"));
            }
            k.tab.state.clear_logs();
        }
    }
    if r.reset_permissions {
        s.with(|m| m.permissions = default_permissions());
        if let Err(e) = engine.apply_permissions(&s).await {
            errors.push(e);
        }
    }
    out.permissions = Some(s.with(|m| m.permissions));
    if !errors.is_empty() {
        out.success = false;
        out.error = errors.join("; ");
    }
    Ok(out)
}

/// ListTabs.
pub async fn list_tabs(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ListTabsRequest,
) -> Result<pb::ListTabsResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::ListTabsResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let (tabs, active) = tabs_of(&s).await;
    Ok(pb::ListTabsResponse {
        v: 1,
        success: true,
        tabs,
        active_tab_id: id(&active),
        error: String::new(),
    })
}

async fn tab_pb(s: &Session, tab_id: &str) -> Option<pb::BrowserTab> {
    tabs_of(s)
        .await
        .0
        .into_iter()
        .find(|t| ulid(&t.tab_id) == tab_id)
}

async fn activate(s: &Session, t: &TabEntry) -> Result<(), String> {
    s.browser
        .cdp
        .call(
            None,
            "Target.activateTarget",
            json!({"targetId": t.tab.target_id}),
            std::time::Duration::from_secs(5),
        )
        .await
        .map_err(|e| e.to_string())?;
    s.with(|m| m.active = t.id.clone());
    Ok(())
}

/// Opens a tab, activates it if asked, and loads `url` when given.
async fn open_tab_in(
    engine: &Arc<BrowserEngine>,
    s: &Arc<Session>,
    load: ops::Load<'_>,
    activate_it: bool,
) -> pb::OpenTabResponse {
    let mut out = pb::OpenTabResponse {
        v: 1,
        ..Default::default()
    };
    if let Err(e) = s.admit_action(Instant::now()) {
        out.error = e;
        return out;
    }
    let _busy = s.busy.lock().await;
    let t = match engine.open_tab(s).await {
        Ok(t) => t,
        Err(e) => {
            out.error = e;
            return out;
        }
    };
    if activate_it {
        if let Err(e) = activate(s, &t).await {
            out.error = e;
        }
    }
    if !load.url.trim().is_empty() && out.error.is_empty() {
        let load = ops::Load {
            url: load.url.trim(),
            ..load
        };
        match ops::load_in(engine, s, &t, load).await {
            Ok(loaded) => {
                out.navigated = true;
                out.status_code = loaded.status;
            }
            Err(e) => out.error = e,
        }
    }
    out.tab = tab_pb(s, &t.id).await;
    out.success = out.error.is_empty();
    out
}

/// OpenTab.
pub async fn open_tab(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::OpenTabRequest,
) -> Result<pb::OpenTabResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::OpenTabResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let load = ops::Load {
        url: &r.url,
        timeout_ms: r.timeout_ms,
        allow_redirects: r.allow_redirects,
        max_redirects: r.max_redirects,
        allow_private: r.allow_private_targets,
    };
    Ok(open_tab_in(&engine, &s, load, r.activate).await)
}

/// SwitchTab.
pub async fn switch_tab(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::SwitchTabRequest,
) -> Result<pb::SwitchTabResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::SwitchTabResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let want = ulid(&r.tab_id).to_owned();
    let Some(t) = s.with(|m| m.tabs.iter().find(|t| t.id == want).cloned()) else {
        return Ok(pb::SwitchTabResponse {
            v: 1,
            error: "tab_not_found".into(),
            ..Default::default()
        });
    };
    if let Err(e) = activate(&s, &t).await {
        return Ok(pb::SwitchTabResponse {
            v: 1,
            error: e,
            ..Default::default()
        });
    }
    Ok(pb::SwitchTabResponse {
        v: 1,
        success: true,
        active_tab: tab_pb(&s, &t.id).await,
        error: String::new(),
    })
}

/// CloseTab: the last tab stays (a session always has one); closing the active one activates
/// the most recently opened other tab.
pub async fn close_tab(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::CloseTabRequest,
) -> Result<pb::CloseTabResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::CloseTabResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let _busy = s.busy.lock().await;
    let want = match ulid(&r.tab_id) {
        "" => s.with(|m| m.active.clone()),
        other => other.to_owned(),
    };
    let (found, count) = s.with(|m| (m.tabs.iter().find(|t| t.id == want).cloned(), m.tabs.len()));
    let Some(t) = found else {
        return Ok(pb::CloseTabResponse {
            v: 1,
            error: "tab_not_found".into(),
            ..Default::default()
        });
    };
    if count <= 1 {
        return Ok(pb::CloseTabResponse {
            v: 1,
            error: "last_tab: a session keeps at least one tab; close the session instead".into(),
            tabs_remaining: 1,
            ..Default::default()
        });
    }
    engine.close_target(&s, &t.tab).await;
    let next = s.with(|m| {
        m.tabs.retain(|x| x.id != t.id);
        if m.active == t.id {
            m.tabs.last().cloned()
        } else {
            None
        }
    });
    if let Some(n) = &next {
        let _ = activate(&s, n).await;
    }
    let active = s.with(|m| m.active.clone());
    Ok(pb::CloseTabResponse {
        v: 1,
        success: true,
        closed_tab_id: id(&t.id),
        active_tab: tab_pb(&s, &active).await,
        tabs_remaining: s.with(|m| m.tabs.len() as u32),
        error: String::new(),
    })
}

/// GetPermissions.
pub async fn get_permissions(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::GetPermissionsRequest,
) -> Result<pb::GetPermissionsResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::GetPermissionsResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    Ok(pb::GetPermissionsResponse {
        v: 1,
        success: true,
        permissions: Some(s.with(|m| m.permissions)),
        error: String::new(),
    })
}

/// SetPermissions: UNSPECIFIED leaves a setting as it is; reset_to_default denies all three.
pub async fn set_permissions(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::SetPermissionsRequest,
) -> Result<pb::SetPermissionsResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::SetPermissionsResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    for v in [r.camera, r.microphone, r.location] {
        if pb::PermissionSetting::try_from(v).is_err() {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("permission setting {v} is not UNSPECIFIED, DENY or ALLOW"),
            ));
        }
    }
    s.with(|m| {
        if r.reset_to_default {
            m.permissions = default_permissions();
            return;
        }
        let p = &mut m.permissions;
        for (slot, v) in [
            (&mut p.camera, r.camera),
            (&mut p.microphone, r.microphone),
            (&mut p.location, r.location),
        ] {
            if v != pb::PermissionSetting::Unspecified as i32 {
                *slot = v;
            }
        }
    });
    let applied = engine.apply_permissions(&s).await;
    let permissions = Some(s.with(|m| m.permissions));
    Ok(match applied {
        Ok(()) => pb::SetPermissionsResponse {
            v: 1,
            success: true,
            permissions,
            error: String::new(),
        },
        Err(e) => pb::SetPermissionsResponse {
            v: 1,
            success: false,
            permissions,
            error: e,
        },
    })
}

fn valid_extension_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// RelayAction: what a browser extension relays (open a tab, capture a selection, send a page
/// snapshot), bounded by `max_payload_bytes` (at most 32 KiB).
pub async fn relay_action(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::RelayActionRequest,
) -> Result<pb::RelayActionResponse, Status> {
    if !valid_extension_id(&r.extension_id) {
        return Err(Status::new(
            Code::InvalidArgument,
            "extension_id is required: 1 to 128 letters, digits, '.', '_' or '-'",
        ));
    }
    if r.max_payload_bytes > MAX_RELAY_PAYLOAD {
        return Err(Status::new(
            Code::InvalidArgument,
            format!("max_payload_bytes is at most {MAX_RELAY_PAYLOAD}"),
        ));
    }
    let kind = pb::RelayActionKind::try_from(r.action).unwrap_or(pb::RelayActionKind::Unspecified);
    let max = per_call(r.max_payload_bytes, MAX_RELAY_PAYLOAD);
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::RelayActionResponse {
            v: 1,
            action: r.action,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let mut out = pb::RelayActionResponse {
        v: 1,
        action: r.action,
        ..Default::default()
    };
    use relay_action_request::Payload;
    use relay_action_response::Result as R;
    match (kind, r.payload) {
        (pb::RelayActionKind::OpenTab, Some(Payload::OpenTab(p))) => {
            let load = ops::Load {
                url: &p.url,
                timeout_ms: p.timeout_ms,
                allow_redirects: true,
                max_redirects: 0,
                allow_private: false,
            };
            let opened = open_tab_in(&engine, &s, load, p.activate).await;
            out.error = opened.error;
            out.result = opened.tab.map(R::OpenedTab);
        }
        (pb::RelayActionKind::CaptureSelection, Some(Payload::CaptureSelection(p))) => {
            let cap = per_call(p.max_selection_bytes, max).min(max);
            match s.active_tab() {
                Err(e) => out.error = e,
                Ok(t) => {
                    let js = if p.selector.is_empty() {
                        "String(window.getSelection())".to_owned()
                    } else {
                        format!(
                            "(() => {{ const el = {}({}); return el ? (el.innerText || el.textContent || '') : null; }})()",
                            page::RESOLVE,
                            serde_json::Value::from(p.selector.as_str())
                        )
                    };
                    match t.tab.evaluate(&js).await {
                        Ok(serde_json::Value::String(text)) => {
                            let (selected_text, truncated) = page::cut(text, cap);
                            out.result = Some(R::Selection(pb::RelaySelectionResult {
                                selector: p.selector,
                                selected_text,
                                truncated,
                            }));
                        }
                        Ok(_) => out.error = format!("{}: no element matches", p.selector),
                        Err(e) => out.error = e,
                    }
                }
            }
        }
        (pb::RelayActionKind::SendPageSnapshot, Some(Payload::PageSnapshot(p))) => {
            match s.active_tab() {
                Err(e) => out.error = e,
                Ok(t) => {
                    let mut snap = pb::RelayPageSnapshotResult {
                        page_url: t.tab.state.read(|v| v.url.clone()),
                        ..Default::default()
                    };
                    let both = !p.include_dom_snapshot && !p.include_visible_text;
                    if p.include_dom_snapshot || both {
                        let cap = per_call(p.max_dom_snapshot_bytes, max).min(max);
                        if let Ok((dom, cut)) = page::dom_summary(&t.tab, cap).await {
                            (snap.dom_snapshot, snap.dom_truncated) = (dom, cut);
                        }
                    }
                    if p.include_visible_text || both {
                        let cap = per_call(p.max_visible_text_bytes, max).min(max);
                        if let Ok((text, cut)) = page::visible_text(&t.tab, cap).await {
                            (snap.visible_text, snap.visible_text_truncated) = (text, cut);
                        }
                    }
                    out.result = Some(R::Snapshot(snap));
                }
            }
        }
        (pb::RelayActionKind::Unspecified, _) => {
            return Err(Status::new(Code::InvalidArgument, "action is required"));
        }
        _ => {
            return Err(Status::new(
                Code::InvalidArgument,
                "the payload does not match the action (open_tab, capture_selection or page_snapshot)",
            ));
        }
    }
    out.success = out.error.is_empty();
    Ok(out)
}

/// ListDownloadArtifacts: newest first.
pub async fn list_downloads(
    engine: Arc<BrowserEngine>,
    principal: String,
    r: pb::ListDownloadArtifactsRequest,
) -> Result<pb::ListDownloadArtifactsResponse, Status> {
    let Some(s) = owned(&engine, &principal, &r.session_id) else {
        return Ok(pb::ListDownloadArtifactsResponse {
            v: 1,
            error: SESSION_NOT_FOUND.into(),
            ..Default::default()
        });
    };
    let limit = per_call(r.limit as u64, 100) as usize;
    let all: Vec<_> = s
        .with(|m| m.downloads.clone())
        .into_iter()
        .rev()
        .filter(|a| !r.quarantined_only || a.quarantined)
        .collect();
    Ok(pb::ListDownloadArtifactsResponse {
        v: 1,
        truncated: all.len() > limit,
        artifacts: all.into_iter().take(limit).collect(),
        error: String::new(),
    })
}
