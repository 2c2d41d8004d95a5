//! `palyra browser ...`: BrowserService of a `palyra-browserd`, straight from the command line
//! (TLS trusting the gateway CA, the bearer token from the environment). Each command prints
//! one JSON object, so scripts can read it.

use crate::browser_link::{BrowserEndpoint, BrowserRpc};
use crate::runtime::Rt;
use anyhow::Context;
use clap::{Args, Subcommand};
use palyra_proto::pb::palyra::browser::v1 as pb;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use prost::Message;
use serde_json::{json, Value};
use std::path::PathBuf;

/// How to reach browserd.
#[derive(Args, Debug, Clone)]
pub struct BrowserArgs {
    /// browserd's gRPC address, HOST:PORT.
    #[arg(long, env = "PALYRA_BROWSERD", default_value = "127.0.0.1:7543")]
    pub endpoint: String,
    /// CA certificate (PEM) browserd's certificate chains to: the gateway's ca.crt.pem, or the
    /// one `palyrad cert issue-browserd` wrote beside browserd's certificate.
    #[arg(long, env = "PALYRA_BROWSERD_CA")]
    pub ca_file: Option<PathBuf>,
    /// The name browserd's certificate is checked against (default: the endpoint's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Cleartext HTTP/2 (a loopback browserd started with --insecure-h2c).
    #[arg(long)]
    pub insecure_h2c: bool,
    /// File holding the token (default: the PALYRA_BROWSER_TOKEN environment variable).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Act as a sub-principal of the token's (`x-palyra-principal`).
    #[arg(long)]
    pub principal: Option<String>,
    #[command(subcommand)]
    pub command: BrowserCommand,
}

/// What to do.
#[derive(Subcommand, Debug, Clone)]
pub enum BrowserCommand {
    /// browserd's status and open sessions.
    Health,
    /// Opens a session (a fresh browser context); prints its id.
    Open {
        /// Pages on loopback and private addresses may be loaded.
        #[arg(long)]
        allow_private_targets: bool,
        /// Downloads are kept (allowlisted types) or quarantined.
        #[arg(long)]
        allow_downloads: bool,
        /// A profile of yours (its id); default: your active profile, if any.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Your sessions.
    List,
    /// One session: budget, tabs, counters.
    Show {
        /// Session id.
        session: String,
    },
    /// Closes a session.
    Close {
        /// Session id.
        session: String,
    },
    /// Loads URL in the session's active tab.
    Navigate {
        /// Session id.
        session: String,
        /// http(s), data: or about:blank.
        url: String,
    },
    /// Clicks the element SELECTOR matches once it is actionable.
    Click {
        /// Session id.
        session: String,
        /// CSS selector (`frame >>> inner` for a same-origin iframe).
        selector: String,
    },
    /// Types TEXT into the field SELECTOR matches.
    Type {
        /// Session id.
        session: String,
        /// CSS selector.
        selector: String,
        /// The text.
        text: String,
        /// Clear the field first.
        #[arg(long)]
        clear: bool,
    },
    /// Presses a key (Enter, Tab, Control+a, ...).
    Press {
        /// Session id.
        session: String,
        /// The key.
        key: String,
    },
    /// The page's URL, element summary and visible text.
    Observe {
        /// Session id.
        session: String,
        /// Also the accessibility tree.
        #[arg(long)]
        accessibility: bool,
    },
    /// The active tab's title.
    Title {
        /// Session id.
        session: String,
    },
    /// Writes a screenshot to OUT.
    Screenshot {
        /// Session id.
        session: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// png or jpeg, with :full for the whole page.
        #[arg(long, default_value = "png")]
        format: String,
    },
    /// Writes the page as PDF to OUT.
    Pdf {
        /// Session id.
        session: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// The session's tabs.
    Tabs {
        /// Session id.
        session: String,
    },
    /// Console messages (with --network, the requests instead).
    Logs {
        /// Session id.
        session: String,
        /// The network log instead of the console.
        #[arg(long)]
        network: bool,
    },
    /// Files the session downloaded (kept or quarantined).
    Downloads {
        /// Session id.
        session: String,
    },
    /// Your profiles.
    Profiles,
    /// Creates a profile.
    CreateProfile {
        /// Its name.
        name: String,
        /// Keep cookies and storage between sessions.
        #[arg(long)]
        persist: bool,
    },
    /// Deletes a profile (and its stored browser data).
    DeleteProfile {
        /// Profile id.
        profile: String,
    },
}

fn id(s: &str) -> Option<CanonicalId> {
    Some(CanonicalId { ulid: s.to_owned() })
}

fn ulid(id: &Option<CanonicalId>) -> String {
    id.as_ref().map(|i| i.ulid.clone()).unwrap_or_default()
}

impl BrowserArgs {
    fn endpoint(&self) -> anyhow::Result<BrowserEndpoint> {
        let addr = std::net::ToSocketAddrs::to_socket_addrs(self.endpoint.as_str())
            .with_context(|| format!("--endpoint {}", self.endpoint))?
            .next()
            .with_context(|| format!("--endpoint {} resolves to nothing", self.endpoint))?;
        let host = self
            .endpoint
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']).to_owned())
            .unwrap_or_default();
        let token = match &self.token_file {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?,
            None => std::env::var("PALYRA_BROWSER_TOKEN").unwrap_or_default(),
        };
        let token = token.trim().to_owned();
        if token.is_empty() {
            anyhow::bail!("a browserd token is needed: set PALYRA_BROWSER_TOKEN or --token-file");
        }
        let ca_der = match (&self.ca_file, self.insecure_h2c) {
            (_, true) => None,
            (Some(path), false) => Some(palyra_proto::identity::cert::cert_pem_to_der(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            )?),
            (None, false) => anyhow::bail!(
                "--ca-file (or PALYRA_BROWSERD_CA) is needed to verify browserd's certificate"
            ),
        };
        Ok(BrowserEndpoint {
            addr,
            server_name: self.server_name.clone().unwrap_or(host),
            ca_der,
            h2c: self.insecure_h2c,
            token,
            principal: self.principal.clone(),
        })
    }
}

async fn call<Req: Message, Resp: Message + Default>(
    rpc: &BrowserRpc,
    method: &str,
    request: Req,
) -> anyhow::Result<Resp> {
    rpc.call(method, &request)
        .await
        .map_err(|s| anyhow::anyhow!("{method}: {:?}: {}", s.code, s.message))
}

/// Fails with the in-band error of an action that did not succeed.
fn check(success: bool, error: &str) -> anyhow::Result<()> {
    if success {
        Ok(())
    } else {
        anyhow::bail!("{error}")
    }
}

fn tab_json(t: &pb::BrowserTab) -> Value {
    json!({"tab_id": ulid(&t.tab_id), "url": t.url, "title": t.title, "active": t.active})
}

/// Runs one `palyra browser` command.
pub async fn browser_command(rt: &Rt, args: BrowserArgs) -> anyhow::Result<()> {
    let rpc = BrowserRpc::new(rt, args.endpoint()?);
    let r = &rpc;
    let out: Value = match args.command {
        BrowserCommand::Health => {
            let h: pb::BrowserHealthResponse =
                call(r, "Health", pb::BrowserHealthRequest { v: 1 }).await?;
            json!({"status": h.status, "uptime_seconds": h.uptime_seconds, "active_sessions": h.active_sessions})
        }
        BrowserCommand::Open {
            allow_private_targets,
            allow_downloads,
            profile,
        } => {
            let c: pb::CreateSessionResponse = call(
                r,
                "CreateSession",
                pb::CreateSessionRequest {
                    v: 1,
                    channel: "cli".into(),
                    allow_private_targets,
                    allow_downloads,
                    profile_id: profile.as_deref().and_then(id),
                    ..Default::default()
                },
            )
            .await?;
            let b = c.effective_budget.unwrap_or_default();
            json!({"session_id": ulid(&c.session_id), "profile_id": ulid(&c.profile_id),
                   "budget": {"navigation_timeout_ms": b.max_navigation_timeout_ms,
                              "action_timeout_ms": b.max_action_timeout_ms,
                              "lifetime_ms": b.max_session_lifetime_ms,
                              "actions": b.max_actions_per_session}})
        }
        BrowserCommand::List => {
            let l: pb::ListSessionsResponse = call(
                r,
                "ListSessions",
                pb::ListSessionsRequest {
                    v: 1,
                    ..Default::default()
                },
            )
            .await?;
            json!({"sessions": l.sessions.iter().map(|s| json!({
                "session_id": ulid(&s.session_id), "principal": s.principal, "tabs": s.tab_count,
                "url": s.active_tab_url, "title": s.active_tab_title, "actions": s.action_count,
                "idle_for_ms": s.idle_for_ms})).collect::<Vec<_>>(), "truncated": l.truncated})
        }
        BrowserCommand::Show { session } => {
            let g: pb::GetSessionResponse = call(
                r,
                "GetSession",
                pb::GetSessionRequest {
                    v: 1,
                    session_id: id(&session),
                },
            )
            .await?;
            check(g.success, &g.error)?;
            let d = g.session.unwrap_or_default();
            let s = d.summary.unwrap_or_default();
            json!({"session_id": session, "principal": s.principal, "age_ms": s.age_ms,
                   "actions": s.action_count, "tabs": d.tabs.iter().map(tab_json).collect::<Vec<_>>()})
        }
        BrowserCommand::Close { session } => {
            let c: pb::CloseSessionResponse = call(
                r,
                "CloseSession",
                pb::CloseSessionRequest {
                    v: 1,
                    session_id: id(&session),
                },
            )
            .await?;
            check(c.closed, &c.reason)?;
            json!({"closed": session})
        }
        BrowserCommand::Navigate { session, url } => {
            let n: pb::NavigateResponse = call(
                r,
                "Navigate",
                pb::NavigateRequest {
                    v: 1,
                    session_id: id(&session),
                    url,
                    allow_redirects: true,
                    ..Default::default()
                },
            )
            .await?;
            check(n.success, &n.error)?;
            json!({"url": n.final_url, "status": n.status_code, "title": n.title, "latency_ms": n.latency_ms})
        }
        BrowserCommand::Click { session, selector } => {
            let c: pb::ClickResponse = call(
                r,
                "Click",
                pb::ClickRequest {
                    v: 1,
                    session_id: id(&session),
                    selector: selector.clone(),
                    ..Default::default()
                },
            )
            .await?;
            check(c.success, &c.error)?;
            json!({"clicked": selector, "download": c.artifact.map(|a| a.file_name)})
        }
        BrowserCommand::Type {
            session,
            selector,
            text,
            clear,
        } => {
            let t: pb::TypeResponse = call(
                r,
                "Type",
                pb::TypeRequest {
                    v: 1,
                    session_id: id(&session),
                    selector,
                    text,
                    clear_existing: clear,
                    ..Default::default()
                },
            )
            .await?;
            check(t.success, &t.error)?;
            json!({"typed_bytes": t.typed_bytes})
        }
        BrowserCommand::Press { session, key } => {
            let p: pb::PressResponse = call(
                r,
                "Press",
                pb::PressRequest {
                    v: 1,
                    session_id: id(&session),
                    key,
                    ..Default::default()
                },
            )
            .await?;
            check(p.success, &p.error)?;
            json!({"pressed": p.key})
        }
        BrowserCommand::Observe {
            session,
            accessibility,
        } => {
            let o: pb::ObserveResponse = call(
                r,
                "Observe",
                pb::ObserveRequest {
                    v: 1,
                    session_id: id(&session),
                    include_dom_snapshot: true,
                    include_visible_text: true,
                    include_accessibility_tree: accessibility,
                    ..Default::default()
                },
            )
            .await?;
            check(o.success, &o.error)?;
            json!({"url": o.page_url, "elements": o.dom_snapshot, "text": o.visible_text,
                   "accessibility_tree": o.accessibility_tree})
        }
        BrowserCommand::Title { session } => {
            let t: pb::GetTitleResponse = call(
                r,
                "GetTitle",
                pb::GetTitleRequest {
                    v: 1,
                    session_id: id(&session),
                    ..Default::default()
                },
            )
            .await?;
            check(t.success, &t.error)?;
            json!({"title": t.title})
        }
        BrowserCommand::Screenshot {
            session,
            out,
            format,
        } => {
            let s: pb::ScreenshotResponse = call(
                r,
                "Screenshot",
                pb::ScreenshotRequest {
                    v: 1,
                    session_id: id(&session),
                    format,
                    ..Default::default()
                },
            )
            .await?;
            check(s.success, &s.error)?;
            std::fs::write(&out, &s.image_bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            json!({"file": out, "bytes": s.image_bytes.len(), "mime_type": s.mime_type})
        }
        BrowserCommand::Pdf { session, out } => {
            let p: pb::ExportPdfResponse = call(
                r,
                "ExportPdf",
                pb::ExportPdfRequest {
                    v: 1,
                    session_id: id(&session),
                    ..Default::default()
                },
            )
            .await?;
            check(p.success, &p.error)?;
            std::fs::write(&out, &p.pdf_bytes)
                .with_context(|| format!("writing {}", out.display()))?;
            json!({"file": out, "bytes": p.size_bytes, "sha256": p.sha256})
        }
        BrowserCommand::Tabs { session } => {
            let t: pb::ListTabsResponse = call(
                r,
                "ListTabs",
                pb::ListTabsRequest {
                    v: 1,
                    session_id: id(&session),
                },
            )
            .await?;
            check(t.success, &t.error)?;
            json!({"tabs": t.tabs.iter().map(tab_json).collect::<Vec<_>>()})
        }
        BrowserCommand::Logs {
            session,
            network: true,
        } => {
            let n: pb::NetworkLogResponse = call(
                r,
                "NetworkLog",
                pb::NetworkLogRequest {
                    v: 1,
                    session_id: id(&session),
                    ..Default::default()
                },
            )
            .await?;
            check(n.success, &n.error)?;
            json!({"requests": n.entries.iter().map(|e| json!({"url": e.request_url, "status": e.status_code,
                "latency_ms": e.latency_ms})).collect::<Vec<_>>(), "truncated": n.truncated})
        }
        BrowserCommand::Logs {
            session,
            network: false,
        } => {
            let c: pb::ConsoleLogResponse = call(
                r,
                "ConsoleLog",
                pb::ConsoleLogRequest {
                    v: 1,
                    session_id: id(&session),
                    ..Default::default()
                },
            )
            .await?;
            check(c.success, &c.error)?;
            json!({"console": c.entries.iter().map(|e| json!({"severity": e.severity, "kind": e.kind,
                "message": e.message, "source": e.source})).collect::<Vec<_>>(), "truncated": c.truncated})
        }
        BrowserCommand::Downloads { session } => {
            let d: pb::ListDownloadArtifactsResponse = call(
                r,
                "ListDownloadArtifacts",
                pb::ListDownloadArtifactsRequest {
                    v: 1,
                    session_id: id(&session),
                    ..Default::default()
                },
            )
            .await?;
            check(d.error.is_empty(), &d.error)?;
            json!({"downloads": d.artifacts.iter().map(|a| json!({"file_name": a.file_name, "bytes": a.size_bytes,
                "sha256": a.sha256, "quarantined": a.quarantined, "reason": a.quarantine_reason})).collect::<Vec<_>>()})
        }
        BrowserCommand::Profiles => {
            let p: pb::ListProfilesResponse = call(
                r,
                "ListProfiles",
                pb::ListProfilesRequest {
                    v: 1,
                    ..Default::default()
                },
            )
            .await?;
            json!({"active": ulid(&p.active_profile_id), "profiles": p.profiles.iter().map(|p| json!({
                "profile_id": ulid(&p.profile_id), "name": p.name, "persistent": p.persistence_enabled,
                "active": p.active})).collect::<Vec<_>>()})
        }
        BrowserCommand::CreateProfile { name, persist } => {
            let p: pb::CreateProfileResponse = call(
                r,
                "CreateProfile",
                pb::CreateProfileRequest {
                    v: 1,
                    name,
                    persistence_enabled: persist,
                    ..Default::default()
                },
            )
            .await?;
            let p = p.profile.unwrap_or_default();
            json!({"profile_id": ulid(&p.profile_id), "name": p.name, "active": p.active})
        }
        BrowserCommand::DeleteProfile { profile } => {
            let d: pb::DeleteProfileResponse = call(
                r,
                "DeleteProfile",
                pb::DeleteProfileRequest {
                    v: 1,
                    profile_id: id(&profile),
                    ..Default::default()
                },
            )
            .await?;
            json!({"deleted": d.deleted, "active": ulid(&d.active_profile_id)})
        }
    };
    println!("{out}");
    Ok(())
}
