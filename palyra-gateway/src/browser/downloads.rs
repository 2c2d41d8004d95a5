//! Downloads: Chromium saves them (when the session allows downloads) under the session's
//! download directory; browserd watches the browser's download events, cancels a download that
//! grows past the per-file or per-session cap, and files each finished one as an artifact, or
//! quarantines it (moved aside, with the reason) when its extension is not on the allowlist.

use super::engine::{wall_ms, BrowserEngine, BrowserProc, Session};
use super::ops::id;
use crate::browser::cdp::Event;
use palyra_proto::pb::palyra::browser::v1::DownloadArtifact;
use serde_json::{json, Value};
use sha2::Digest;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How long after a click a download may start and still be the click's.
const CLICK_DOWNLOAD_GRACE: Duration = Duration::from_millis(500);
/// Longest a click waits for its download to finish.
const CLICK_DOWNLOAD_WAIT: Duration = Duration::from_secs(30);

fn session_of(
    engine: &BrowserEngine,
    proc: &Arc<BrowserProc>,
    frame: &str,
) -> Option<Arc<Session>> {
    engine.all_sessions().into_iter().find(|s| {
        Arc::ptr_eq(&s.browser, proc)
            && s.with(|m| {
                m.tabs.iter().any(|t| {
                    t.tab.target_id == frame || t.tab.state.read(|v| v.main_frame == frame)
                })
            })
    })
}

/// A file name safe to show and store: no path, no control characters, at most 128 bytes.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned();
    let clean = super::tab::truncate(clean, 128);
    if clean.is_empty() {
        "download".into()
    } else {
        clean
    }
}

fn extension(name: &str) -> String {
    name.rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default()
}

fn mime_of(ext: &str) -> &'static str {
    match ext {
        "txt" => "text/plain",
        "csv" => "text/csv",
        "json" => "application/json",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}

/// Watches one browser's browser-level events until its connection closes: downloads, and the
/// targets Chromium attaches (handed to the engine).
pub async fn watch(
    engine: Weak<BrowserEngine>,
    proc: Arc<BrowserProc>,
    events: async_channel::Receiver<Event>,
) {
    while let Ok(event) = events.recv().await {
        let Some(engine) = engine.upgrade() else {
            return;
        };
        let p = &event.params;
        let guid = p["guid"].as_str().unwrap_or_default().to_owned();
        match event.method.as_str() {
            "Browser.downloadWillBegin" => {
                let frame = p["frameId"].as_str().unwrap_or_default();
                let Some(s) = session_of(&engine, &proc, frame) else {
                    continue;
                };
                let url = p["url"].as_str().unwrap_or_default().to_owned();
                let name = safe_name(p["suggestedFilename"].as_str().unwrap_or_default());
                s.with(|m| m.pending_downloads.insert(guid, (url, name)));
                s.downloads_changed.notify(usize::MAX);
            }
            "Target.attachedToTarget" => {
                if let Ok(attached) = palyra_proto::cdp::types::decode(p) {
                    engine.target_attached(&proc, attached);
                }
            }
            "Browser.downloadProgress" => {
                let Some(s) = engine
                    .all_sessions()
                    .into_iter()
                    .find(|s| s.with(|m| m.pending_downloads.contains_key(&guid)))
                else {
                    continue;
                };
                progress(&engine, &s, &guid, p).await;
            }
            _ => {}
        }
    }
}

async fn progress(engine: &BrowserEngine, s: &Arc<Session>, guid: &str, p: &Value) {
    let policy = &engine.config.downloads;
    let received = p["receivedBytes"].as_u64().unwrap_or(0);
    let state = p["state"].as_str().unwrap_or_default();
    let so_far = s.with(|m| m.downloaded_bytes);
    let too_big = if received > policy.max_file_bytes {
        Some(format!(
            "larger than the {}-byte per-file cap",
            policy.max_file_bytes
        ))
    } else if so_far + received > policy.max_session_bytes {
        Some(format!(
            "over the session's {}-byte download cap",
            policy.max_session_bytes
        ))
    } else {
        None
    };
    let Some((url, name)) = s.with(|m| m.pending_downloads.get(guid).cloned()) else {
        return;
    };
    let partial = s.download_dir.join(guid);
    let artifact =
        |size: u64, sha256: String, quarantined: bool, reason: String| DownloadArtifact {
            v: 1,
            artifact_id: id(&ulid::Ulid::new().to_string()),
            session_id: id(&s.id),
            profile_id: id(&s.profile_id),
            source_url: url.clone(),
            file_name: name.clone(),
            mime_type: mime_of(&extension(&name)).into(),
            size_bytes: size,
            sha256,
            created_at_unix_ms: wall_ms(),
            quarantined,
            quarantine_reason: reason,
        };
    let record = match (state, too_big) {
        ("inProgress", None) => return,
        ("inProgress", Some(why)) | ("completed", Some(why)) => {
            let mut params = json!({"guid": guid});
            if !s.context_id.is_empty() {
                params["browserContextId"] = json!(s.context_id);
            }
            let _ = s
                .browser
                .cdp
                .call(
                    None,
                    "Browser.cancelDownload",
                    params,
                    Duration::from_secs(5),
                )
                .await;
            let _ = std::fs::remove_file(&partial);
            artifact(received, String::new(), true, format!("cancelled: {why}"))
        }
        ("completed", None) => file(&s.download_dir, &partial, &name, policy, artifact),
        _ => {
            // Cancelled by the page or failed: nothing to keep.
            let _ = std::fs::remove_file(&partial);
            s.with(|m| m.pending_downloads.remove(guid));
            s.downloads_changed.notify(usize::MAX);
            return;
        }
    };
    tracing::info!(session = %s.id, file = %record.file_name, size = record.size_bytes,
                   quarantined = record.quarantined, "download");
    s.with(|m| {
        m.pending_downloads.remove(guid);
        m.downloaded_bytes += record.size_bytes;
        if m.downloads.len() >= 256 {
            m.downloads.remove(0);
        }
        m.downloads.push(record);
    });
    s.downloads_changed.notify(usize::MAX);
}

fn file(
    dir: &Path,
    partial: &Path,
    name: &str,
    policy: &super::engine::DownloadPolicy,
    artifact: impl Fn(u64, String, bool, String) -> DownloadArtifact,
) -> DownloadArtifact {
    let bytes = match std::fs::read(partial) {
        Ok(b) => b,
        Err(e) => return artifact(0, String::new(), true, format!("unreadable: {e}")),
    };
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let ext = extension(name);
    let allowed = policy.allowed_extensions.contains(&ext);
    let a = if allowed {
        artifact(bytes.len() as u64, sha, false, String::new())
    } else {
        artifact(
            bytes.len() as u64,
            sha,
            true,
            format!("the extension {ext:?} is not on the download allowlist"),
        )
    };
    let folder = if allowed { "files" } else { "quarantine" };
    let artifact_id = a
        .artifact_id
        .as_ref()
        .map(|i| i.ulid.clone())
        .unwrap_or_default();
    let target = dir.join(folder).join(format!("{artifact_id}-{name}"));
    let moved =
        std::fs::create_dir_all(dir.join(folder)).and_then(|_| std::fs::rename(partial, &target));
    if let Err(e) = moved {
        tracing::warn!(error = %e, "filing a download");
    }
    a
}

/// After a click: the artifact of a download the click started (waiting for it to finish).
pub async fn after_click(
    engine: &BrowserEngine,
    s: &Arc<Session>,
    before: usize,
) -> Option<DownloadArtifact> {
    if !s.downloads_enabled {
        return None;
    }
    let started = Instant::now();
    loop {
        let listener = s.downloads_changed.listen();
        let (pending, done) = s.with(|m| (m.pending_downloads.len(), m.downloads.len()));
        if done > before && pending == 0 {
            return s.with(|m| m.downloads.last().cloned());
        }
        let limit = if pending > 0 {
            CLICK_DOWNLOAD_WAIT
        } else {
            CLICK_DOWNLOAD_GRACE
        };
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return None;
        }
        if crate::runtime::timeout(&*engine.rt, left, listener)
            .await
            .is_none()
            && pending == 0
        {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_and_control_characters() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("a\u{7}b.txt"), "ab.txt");
        assert_eq!(safe_name(".."), "download");
        assert_eq!(extension("Report.CSV"), "csv");
    }
}
