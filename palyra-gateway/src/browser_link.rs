//! The gateway's and the CLI's link to `palyra-browserd`: one reused gRPC channel (TLS, trusting
//! the gateway CA, or h2c on loopback) with the bearer token on every call ([`BrowserRpc`]),
//! and the runs' browser tools on top of it ([`RunBrowser`]): a session per run, opened on its
//! first browser call and closed when it ends; screenshots kept under the state directory for
//! the console.

use crate::node::hub::CapabilityResult;
use crate::run::browser_tools::{self, BrowserTools};
use crate::runtime::{BoxFuture, Rt};
use crate::serve::grpc_channel::GrpcChannel;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::h2::hpack::Field;
use palyra_proto::pb::palyra::browser::v1 as pb;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use prost::Message;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Timeout of one browserd call (navigations and waits are bounded by browserd's budgets).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest DOM summary or visible text handed to a model.
const OBSERVE_BYTES: u64 = 16 * 1024;

/// Where browserd is and how to reach it.
#[derive(Debug, Clone)]
pub struct BrowserEndpoint {
    /// Its gRPC address.
    pub addr: SocketAddr,
    /// The name its certificate is checked against.
    pub server_name: String,
    /// The CA its certificate chains to (DER); `None` with `h2c`.
    pub ca_der: Option<Vec<u8>>,
    /// Cleartext HTTP/2 (loopback only).
    pub h2c: bool,
    /// The bearer token.
    pub token: String,
    /// A sub-principal to act as (`x-palyra-principal`), if any.
    pub principal: Option<String>,
}

/// Calls BrowserService RPCs.
pub struct BrowserRpc {
    rt: Rt,
    endpoint: BrowserEndpoint,
    channel: async_lock::Mutex<Option<Arc<GrpcChannel>>>,
}

impl BrowserRpc {
    /// A client of `endpoint` (it connects on the first call).
    pub fn new(rt: &Rt, endpoint: BrowserEndpoint) -> Self {
        Self {
            rt: Rt::clone(rt),
            endpoint,
            channel: async_lock::Mutex::new(None),
        }
    }

    async fn channel(&self) -> Result<Arc<GrpcChannel>, Status> {
        let mut slot = self.channel.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(Arc::clone(c));
        }
        let e = &self.endpoint;
        let unavailable = |what: String| {
            Status::new(Code::Unavailable, format!("browserd at {}: {what}", e.addr))
        };
        let channel = match (&e.ca_der, e.h2c) {
            (_, true) => GrpcChannel::connect(&self.rt, e.addr)
                .await
                .map_err(|err| unavailable(err.to_string()))?,
            (Some(ca), false) => {
                let tls = palyra_proto::quic::tls::client_config(
                    ca,
                    None,
                    palyra_proto::quic::tls::ALPN_H2,
                )
                .map_err(|err| unavailable(err.to_string()))?;
                GrpcChannel::connect_tls(&self.rt, e.addr, &e.server_name, Arc::new(tls))
                    .await
                    .map_err(|err| unavailable(err.to_string()))?
            }
            (None, false) => return Err(unavailable("no CA certificate to verify it with".into())),
        };
        let channel = Arc::new(channel);
        *slot = Some(Arc::clone(&channel));
        Ok(channel)
    }

    /// Calls `method` with `request`.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, Status> {
        let channel = self.channel().await?;
        let mut metadata = vec![Field::new(
            b"authorization".to_vec(),
            format!("Bearer {}", self.endpoint.token).into_bytes(),
        )];
        if let Some(p) = &self.endpoint.principal {
            metadata.push(Field::new(
                b"x-palyra-principal".to_vec(),
                p.clone().into_bytes(),
            ));
        }
        let path = format!("/palyra.browser.v1.BrowserService/{method}");
        let answer = channel
            .unary_with(&path, metadata, request.encode_to_vec(), CALL_TIMEOUT)
            .await;
        match answer {
            Ok(bytes) => Resp::decode(bytes.as_ref()).map_err(|e| {
                Status::new(
                    Code::Internal,
                    format!("browserd sent a bad {method} answer: {e}"),
                )
            }),
            Err(status) => {
                if status.code == Code::Unavailable {
                    // The connection is gone: the next call reconnects.
                    *self.channel.lock().await = None;
                }
                Err(status)
            }
        }
    }
}

fn id(s: &str) -> Option<CanonicalId> {
    Some(CanonicalId { ulid: s.to_owned() })
}

fn ok(output: Value) -> CapabilityResult {
    CapabilityResult {
        success: true,
        output_json: output.to_string().into_bytes(),
        error: String::new(),
    }
}

fn failed(error: impl Into<String>) -> CapabilityResult {
    CapabilityResult {
        success: false,
        output_json: Vec::new(),
        error: error.into(),
    }
}

/// The runs' browser tools over one browserd.
pub struct RunBrowser(Arc<Inner>);

struct Inner {
    rpc: BrowserRpc,
    rt: Rt,
    /// run ID -> browser session ID.
    sessions: Mutex<HashMap<String, String>>,
    screenshots: PathBuf,
    allow_private: bool,
}

impl RunBrowser {
    /// Tools over `rpc`; screenshots go to `screenshots/<run_id>/`; sessions may load private
    /// and loopback pages when `allow_private`.
    pub fn new(rt: &Rt, rpc: BrowserRpc, screenshots: PathBuf, allow_private: bool) -> Self {
        Self(Arc::new(Inner {
            rpc,
            rt: Rt::clone(rt),
            sessions: Mutex::new(HashMap::new()),
            screenshots,
            allow_private,
        }))
    }
}

/// A BrowserService answer that reports success in-band.
trait InBand {
    fn outcome(&self) -> (bool, &str);
}

macro_rules! in_band {
    ($($t:ident),*) => {
        $(impl InBand for pb::$t {
            fn outcome(&self) -> (bool, &str) {
                (self.success, &self.error)
            }
        })*
    };
}

in_band!(
    NavigateResponse,
    ClickResponse,
    TypeResponse,
    ObserveResponse,
    ScreenshotResponse
);

impl Inner {
    /// Calls `method`; a status or an in-band failure becomes the tool's failed result.
    async fn ask<Req: Message, Resp: Message + Default + InBand>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Resp, CapabilityResult> {
        let answer: Resp = self
            .rpc
            .call(method, request)
            .await
            .map_err(|s| failed(format!("browserd: {}", s.message)))?;
        match answer.outcome() {
            (true, _) => Ok(answer),
            (false, error) => Err(failed(error)),
        }
    }

    async fn session(&self, run_id: &str) -> Result<String, String> {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
        {
            return Ok(s.clone());
        }
        let created: pb::CreateSessionResponse = self
            .rpc
            .call(
                "CreateSession",
                &pb::CreateSessionRequest {
                    v: 1,
                    channel: "run".into(),
                    allow_private_targets: self.allow_private,
                    private_profile: true,
                    ..Default::default()
                },
            )
            .await
            .map_err(|s| format!("cannot open a browser session: {}", s.message))?;
        let sid = created.session_id.map(|i| i.ulid).unwrap_or_default();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.to_owned(), sid.clone());
        Ok(sid)
    }

    async fn run(&self, run_id: String, tool: String, input: Value) -> CapabilityResult {
        let sid = match self.session(&run_id).await {
            Ok(s) => s,
            Err(e) => return failed(e),
        };
        let text = |k: &str| {
            input
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let session_id = id(&sid);
        match tool.as_str() {
            browser_tools::NAVIGATE => {
                let r: pb::NavigateResponse = match self
                    .ask(
                        "Navigate",
                        &pb::NavigateRequest {
                            v: 1,
                            session_id,
                            url: text("url"),
                            allow_redirects: true,
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(failure) => return failure,
                };
                ok(json!({"url": r.final_url, "status": r.status_code, "title": r.title}))
            }
            browser_tools::CLICK => {
                let _clicked: pb::ClickResponse = match self
                    .ask(
                        "Click",
                        &pb::ClickRequest {
                            v: 1,
                            session_id,
                            selector: text("selector"),
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(failure) => return failure,
                };
                ok(json!({"clicked": text("selector")}))
            }
            browser_tools::TYPE => {
                let clear = input.get("clear").and_then(Value::as_bool).unwrap_or(false);
                let r: pb::TypeResponse = match self
                    .ask(
                        "Type",
                        &pb::TypeRequest {
                            v: 1,
                            session_id,
                            selector: text("selector"),
                            text: text("text"),
                            clear_existing: clear,
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(failure) => return failure,
                };
                ok(json!({"typed_bytes": r.typed_bytes}))
            }
            browser_tools::OBSERVE => {
                let r: pb::ObserveResponse = match self
                    .ask(
                        "Observe",
                        &pb::ObserveRequest {
                            v: 1,
                            session_id,
                            include_dom_snapshot: true,
                            include_visible_text: true,
                            max_dom_snapshot_bytes: OBSERVE_BYTES,
                            max_visible_text_bytes: OBSERVE_BYTES,
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(failure) => return failure,
                };
                ok(
                    json!({"url": r.page_url, "elements": r.dom_snapshot, "text": r.visible_text,
                          "truncated": r.dom_truncated || r.visible_text_truncated}),
                )
            }
            browser_tools::SCREENSHOT => {
                let full = input
                    .get("full_page")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let r: pb::ScreenshotResponse = match self
                    .ask(
                        "Screenshot",
                        &pb::ScreenshotRequest {
                            v: 1,
                            session_id,
                            format: if full { "png:full" } else { "png" }.into(),
                            ..Default::default()
                        },
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(failure) => return failure,
                };
                match self.keep_screenshot(&run_id, &r.image_bytes) {
                    Ok(name) => ok(json!({
                        "screenshot": name,
                        "url": format!("/admin/v1/runs/{run_id}/screenshots/{name}"),
                        "bytes": r.image_bytes.len(),
                    })),
                    Err(e) => failed(format!("the screenshot could not be kept: {e}")),
                }
            }
            other => failed(format!("no browser tool {other}")),
        }
    }

    fn keep_screenshot(&self, run_id: &str, png: &[u8]) -> std::io::Result<String> {
        let dir = self.screenshots.join(run_id);
        std::fs::create_dir_all(&dir)?;
        let n = std::fs::read_dir(&dir)?.count() + 1;
        if n > 999_999 {
            return Err(std::io::Error::other("too many screenshots for this run"));
        }
        let name = format!("{n}.png");
        crate::store::write_atomic(&dir.join(&name), png).map_err(std::io::Error::other)?;
        Ok(name)
    }
}

impl BrowserTools for RunBrowser {
    fn call(&self, run_id: &str, tool: &str, input: Value) -> BoxFuture<CapabilityResult> {
        let inner = Arc::clone(&self.0);
        let (run_id, tool) = (run_id.to_owned(), tool.to_owned());
        Box::pin(async move { inner.run(run_id, tool, input).await })
    }

    fn screenshot(&self, run_id: &str, name: &str) -> Option<Vec<u8>> {
        let run_ok = palyra_proto::identity::is_canonical_device_id(run_id);
        if !run_ok || !browser_tools::valid_screenshot_name(name) {
            return None;
        }
        std::fs::read(self.0.screenshots.join(run_id).join(name)).ok()
    }

    fn release(&self, run_id: &str) {
        let Some(sid) = self
            .0
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id)
        else {
            return;
        };
        let inner = Arc::clone(&self.0);
        self.0.rt.spawn(Box::pin(async move {
            let closed: Result<pb::CloseSessionResponse, _> = inner
                .rpc
                .call(
                    "CloseSession",
                    &pb::CloseSessionRequest {
                        v: 1,
                        session_id: id(&sid),
                    },
                )
                .await;
            if let Err(e) = closed {
                tracing::debug!(error = %e.message, "closing a run's browser session");
            }
        }));
    }
}
