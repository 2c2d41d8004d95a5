//! `palyra.browser.v1.BrowserService`: every call is authenticated (a bearer token bound to a
//! principal server-side, or a client certificate from the gateway CA) and may narrow its
//! principal with `x-palyra-principal` to a sub-principal, never widen it. Each RPC runs as a
//! task on the runtime; the call is answered when it finishes.

use super::engine::BrowserEngine;
use super::{ops, sessions};
use crate::grpc::{refuse, Answer, Deferred};
use crate::notify::Notifier;
use crate::store::pending;
use bytes::Bytes;
use palyra_proto::grpc::service::{decode, CallHandler, CallInfo, Router, RouterFactory, Service};
use palyra_proto::grpc::services::{HealthService, ReflectionService};
use palyra_proto::grpc::{Code, Status};
use palyra_proto::pb::palyra::browser::v1 as pb;
use prost::Message;
use sha2::Digest;
use std::future::Future;
use std::sync::Arc;

/// The service's name.
pub const NAME: &str = "palyra.browser.v1.BrowserService";
/// The header that narrows the caller's principal.
pub const PRINCIPAL_HEADER: &str = "x-palyra-principal";

/// Who may call: token hashes bound to principals, and whether gateway-CA client certificates
/// are accepted (as `device:<ULID>`).
#[derive(Debug, Clone, Default)]
pub struct BrowserAuth {
    tokens: Vec<([u8; 32], String)>,
    /// Client certificates (already verified against the gateway CA by TLS) are callers.
    pub accept_certs: bool,
}

impl BrowserAuth {
    /// No tokens; certificates as `accept_certs` says.
    pub fn new(accept_certs: bool) -> Self {
        Self {
            tokens: Vec::new(),
            accept_certs,
        }
    }

    /// Adds a token (its SHA-256 is kept) for `principal`.
    pub fn add_token(&mut self, token: &str, principal: &str) -> Result<(), String> {
        crate::access::valid_principal(principal)?;
        if token.len() < 16 {
            return Err("a browserd token is at least 16 characters".into());
        }
        self.add_hash(sha2::Sha256::digest(token.as_bytes()).into(), principal)
    }

    /// Adds a token by its SHA-256 for `principal`.
    pub fn add_hash(&mut self, hash: [u8; 32], principal: &str) -> Result<(), String> {
        crate::access::valid_principal(principal)?;
        self.tokens.push((hash, principal.to_owned()));
        Ok(())
    }

    /// Reads a tokens file: one `PRINCIPAL SHA256-HEX` per line, `#` comments.
    pub fn load_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || format!("tokens file line {}: expected PRINCIPAL SHA256-HEX", n + 1);
            let (principal, hash) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let bytes = hex::decode(hash.trim()).map_err(|_| bad())?;
            let hash: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
            self.add_hash(hash, principal)
                .map_err(|e| format!("tokens file line {}: {e}", n + 1))?;
        }
        Ok(())
    }

    /// Whether any credential can succeed.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty() && !self.accept_certs
    }

    /// The caller's principal.
    pub fn caller(&self, call: &CallInfo) -> Result<String, Status> {
        let header = |name: &str| {
            call.metadata
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name.as_bytes()))
                .map(|f| String::from_utf8_lossy(&f.value).trim().to_owned())
        };
        let principal = if let Some(auth) = header("authorization") {
            let Some(token) = auth.strip_prefix("Bearer ") else {
                return Err(Status::new(
                    Code::Unauthenticated,
                    "authorization must be 'Bearer <token>'",
                ));
            };
            let hash: [u8; 32] = sha2::Sha256::digest(token.trim().as_bytes()).into();
            let mut found = None;
            for (known, principal) in &self.tokens {
                if bool::from(subtle::ConstantTimeEq::ct_eq(&known[..], &hash[..])) {
                    found = Some(principal.clone());
                }
            }
            found.ok_or_else(|| Status::new(Code::Unauthenticated, "unknown browserd token"))?
        } else if let (true, Some(leaf)) = (self.accept_certs, &call.peer.leaf_der) {
            match palyra_proto::identity::cert::device_id_from_cert(leaf) {
                Ok(Some(device)) => format!("device:{device}"),
                _ => {
                    return Err(Status::new(
                        Code::Unauthenticated,
                        "the client certificate names no Palyra device",
                    ))
                }
            }
        } else {
            return Err(Status::new(
                Code::Unauthenticated,
                "BrowserService needs a credential: 'authorization: Bearer <token>' or a client \
                 certificate from the gateway CA",
            ));
        };
        match header(PRINCIPAL_HEADER) {
            None => Ok(principal),
            Some(asked) if asked.is_empty() || asked == principal => Ok(principal),
            Some(asked) => {
                crate::access::valid_principal(&asked)
                    .map_err(|e| Status::new(Code::InvalidArgument, e))?;
                if crate::access::within(&asked, &principal) {
                    Ok(asked)
                } else {
                    Err(Status::new(
                        Code::PermissionDenied,
                        format!(
                            "{PRINCIPAL_HEADER} {asked} is not {principal} or one of its \
                             sub-principals ({principal}/...)"
                        ),
                    ))
                }
            }
        }
    }
}

/// A request message carrying the contract's version field.
trait Versioned: Message + Default + Send + 'static {
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ident),* $(,)?) => {
        $(impl Versioned for pb::$t { fn version(&self) -> u32 { self.v } })*
    };
}

versioned!(
    BrowserHealthRequest,
    CreateSessionRequest,
    CloseSessionRequest,
    ListSessionsRequest,
    GetSessionRequest,
    InspectSessionRequest,
    ListProfilesRequest,
    CreateProfileRequest,
    RenameProfileRequest,
    DeleteProfileRequest,
    SetActiveProfileRequest,
    NavigateRequest,
    ClickRequest,
    TypeRequest,
    PressRequest,
    SelectRequest,
    HighlightRequest,
    ScrollRequest,
    WaitForRequest,
    GetTitleRequest,
    ScreenshotRequest,
    ObserveRequest,
    NetworkLogRequest,
    ConsoleLogRequest,
    ExportPdfRequest,
    ResetStateRequest,
    ListTabsRequest,
    OpenTabRequest,
    SwitchTabRequest,
    CloseTabRequest,
    GetPermissionsRequest,
    SetPermissionsRequest,
    RelayActionRequest,
    ListDownloadArtifactsRequest,
);

/// Runs `f` on the runtime; the call is answered when it finishes.
fn task<Req, Resp, F, Fut>(
    engine: &Arc<BrowserEngine>,
    principal: String,
    wake: &Arc<Notifier>,
    f: F,
) -> Box<dyn CallHandler>
where
    Req: Versioned,
    Resp: Message + 'static,
    F: FnOnce(Arc<BrowserEngine>, String, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    let engine = Arc::clone(engine);
    let wake = Arc::clone(wake);
    Deferred::boxed(move |bytes: Bytes| {
        let request: Req = decode(&bytes)?;
        // 0 is an older client that did not set it.
        if request.version() > 1 {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "unsupported message version v={}; browserd speaks v=1",
                    request.version()
                ),
            ));
        }
        let (answer, done) = pending::pending(Some(wake));
        let rt = Arc::clone(&engine.rt);
        rt.spawn(Box::pin(async move {
            let result = f(engine, principal, request).await;
            done.complete(result.map(|r| r.encode_to_vec()));
        }));
        let answer: Answer = Box::new(move || answer.take());
        Ok(answer)
    })
}

/// Health: Chromium's state and the open sessions.
async fn health(
    engine: Arc<BrowserEngine>,
    _principal: String,
    _r: pb::BrowserHealthRequest,
) -> Result<pb::BrowserHealthResponse, Status> {
    Ok(pb::BrowserHealthResponse {
        v: 1,
        status: health_status(&engine).into(),
        uptime_seconds: engine.started.elapsed().as_secs(),
        active_sessions: engine.session_count() as u32,
    })
}

/// `ok` while every browser in use runs (or none is needed yet), `degraded` after a Chromium
/// exit until the next one starts.
pub fn health_status(engine: &BrowserEngine) -> &'static str {
    let dead = engine.all_sessions().iter().any(|s| !s.browser.alive());
    if dead {
        "degraded"
    } else {
        "ok"
    }
}

/// The 34 RPCs.
pub const METHODS: [&str; 34] = [
    "Health",
    "CreateSession",
    "CloseSession",
    "ListSessions",
    "GetSession",
    "InspectSession",
    "ListProfiles",
    "CreateProfile",
    "RenameProfile",
    "DeleteProfile",
    "SetActiveProfile",
    "Navigate",
    "Click",
    "Type",
    "Press",
    "Select",
    "Highlight",
    "Scroll",
    "WaitFor",
    "GetTitle",
    "Screenshot",
    "Observe",
    "NetworkLog",
    "ConsoleLog",
    "ExportPdf",
    "ResetState",
    "ListTabs",
    "OpenTab",
    "SwitchTab",
    "CloseTab",
    "GetPermissions",
    "SetPermissions",
    "RelayAction",
    "ListDownloadArtifacts",
];

/// `palyra.browser.v1.BrowserService`.
pub struct BrowserService {
    engine: Arc<BrowserEngine>,
    auth: Arc<BrowserAuth>,
    wake: Arc<Notifier>,
}

impl Service for BrowserService {
    fn name(&self) -> &'static str {
        NAME
    }

    fn start(&mut self, call: &CallInfo) -> Option<Box<dyn CallHandler>> {
        let method = call.method.as_str();
        if !METHODS.contains(&method) {
            return None;
        }
        let p = match self.auth.caller(call) {
            Ok(p) => p,
            Err(status) => return Some(refuse(status)),
        };
        let (e, w) = (&self.engine, &self.wake);
        Some(match method {
            "Health" => task(e, p, w, health),
            "CreateSession" => task(e, p, w, sessions::create_session),
            "CloseSession" => task(e, p, w, sessions::close_session),
            "ListSessions" => task(e, p, w, sessions::list_sessions),
            "GetSession" => task(e, p, w, sessions::get_session),
            "InspectSession" => task(e, p, w, sessions::inspect_session),
            "ListProfiles" => task(e, p, w, sessions::list_profiles),
            "CreateProfile" => task(e, p, w, sessions::create_profile),
            "RenameProfile" => task(e, p, w, sessions::rename_profile),
            "DeleteProfile" => task(e, p, w, sessions::delete_profile),
            "SetActiveProfile" => task(e, p, w, sessions::set_active_profile),
            "Navigate" => task(e, p, w, ops::navigate),
            "Click" => task(e, p, w, ops::click),
            "Type" => task(e, p, w, ops::type_text),
            "Press" => task(e, p, w, ops::press),
            "Select" => task(e, p, w, ops::select),
            "Highlight" => task(e, p, w, ops::highlight),
            "Scroll" => task(e, p, w, ops::scroll),
            "WaitFor" => task(e, p, w, ops::wait_for),
            "GetTitle" => task(e, p, w, ops::get_title),
            "Screenshot" => task(e, p, w, ops::screenshot),
            "Observe" => task(e, p, w, ops::observe),
            "NetworkLog" => task(e, p, w, ops::network_log),
            "ConsoleLog" => task(e, p, w, ops::console_log),
            "ExportPdf" => task(e, p, w, ops::export_pdf),
            "ResetState" => task(e, p, w, sessions::reset_state),
            "ListTabs" => task(e, p, w, sessions::list_tabs),
            "OpenTab" => task(e, p, w, sessions::open_tab),
            "SwitchTab" => task(e, p, w, sessions::switch_tab),
            "CloseTab" => task(e, p, w, sessions::close_tab),
            "GetPermissions" => task(e, p, w, sessions::get_permissions),
            "SetPermissions" => task(e, p, w, sessions::set_permissions),
            "RelayAction" => task(e, p, w, sessions::relay_action),
            "ListDownloadArtifacts" => task(e, p, w, sessions::list_downloads),
            _ => return None,
        })
    }
}

/// The services of browserd's gRPC listener: BrowserService, health checking, reflection.
pub fn router(
    engine: Arc<BrowserEngine>,
    auth: Arc<BrowserAuth>,
    wake: Arc<Notifier>,
) -> Result<RouterFactory, prost::DecodeError> {
    const NAMES: [&str; 4] = [
        NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let reflection = ReflectionService::new(palyra_proto::pb::DESCRIPTOR_SET, &NAMES)?;
    Ok(Arc::new(move || {
        Router::new(vec![
            Box::new(BrowserService {
                engine: Arc::clone(&engine),
                auth: Arc::clone(&auth),
                wake: Arc::clone(&wake),
            }),
            Box::new(HealthService::new(&NAMES)),
            Box::new(reflection.clone()),
            Box::new(reflection.v1alpha()),
        ])
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palyra_proto::h2::hpack::Field;
    use palyra_proto::transport::PeerIdentity;
    use std::time::Instant;

    fn call(metadata: &[(&str, &str)]) -> CallInfo {
        CallInfo {
            method: "Health".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| Field::new(k.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            deadline: None,
            started: Instant::now(),
            peer: Arc::new(PeerIdentity::default()),
        }
    }

    #[test]
    fn tokens_name_principals_and_narrowing_only_narrows() {
        let mut auth = BrowserAuth::new(false);
        auth.add_token("0123456789abcdef-gw", "service:palyrad")
            .unwrap();
        auth.load_file(&format!(
            "# comment\nuser:alice {}\n",
            hex::encode(sha2::Sha256::digest(b"alice-token-0123456"))
        ))
        .unwrap();
        let who = |m: &[(&str, &str)]| auth.caller(&call(m));
        assert_eq!(
            who(&[("authorization", "Bearer 0123456789abcdef-gw")]).unwrap(),
            "service:palyrad"
        );
        assert_eq!(
            who(&[("authorization", "Bearer alice-token-0123456")]).unwrap(),
            "user:alice"
        );
        assert_eq!(
            who(&[
                ("authorization", "Bearer 0123456789abcdef-gw"),
                (PRINCIPAL_HEADER, "service:palyrad/run-1")
            ])
            .unwrap(),
            "service:palyrad/run-1"
        );
        let widen = who(&[
            ("authorization", "Bearer alice-token-0123456"),
            (PRINCIPAL_HEADER, "service:palyrad"),
        ]);
        assert_eq!(widen.unwrap_err().code, Code::PermissionDenied);
        assert_eq!(who(&[]).unwrap_err().code, Code::Unauthenticated);
        assert_eq!(
            who(&[("authorization", "Bearer wrong-token-000000")])
                .unwrap_err()
                .code,
            Code::Unauthenticated
        );
        assert!(auth.load_file("user:x nothex").is_err());
    }
}
