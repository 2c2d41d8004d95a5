//! The node's side of identity: `palyra node enroll` (pair with a code, wait for the
//! operator, write the identity directory) and `palyra node run` (stay connected over QUIC,
//! renew the certificate when a third of its lifetime is left or when the operator asks,
//! reconnect with backoff). The exchanges themselves are the sans-IO
//! [`palyra_proto::enroll::device::DevicePairing`] and [`rotation_payload`].

use crate::store::{unix_ms, GatewayRecord, NodeIdentityDir, PendingPairing};
use anyhow::Context;
use palyra_proto::enroll::device::{
    check_rotated, rotation_request, CaTrust, DeviceKeys, DevicePairing, Invite, Progress,
};
use palyra_proto::enroll::Method;
use palyra_proto::grpc::Code;
use palyra_proto::identity::cert;
use palyra_proto::node::agent::{Action, CertWindow, NodeAgent, Report};
use palyra_proto::node::{NodeRequest, ResponseKind};
use palyra_proto::pb::palyra::common::v1::ReplayProtection;
use palyra_proto::pb::palyra::node::v1::{
    BeginPairingSessionResponse, CompletePairingSessionResponse, GetPairingRequestStatusResponse,
    RotateDeviceCertificateResponse,
};
use palyra_proto::quic::{tls, ClientLimits};
use prost::Message;
use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::runtime::{self, Rt};
use crate::serve::grpc_channel::GrpcChannel;
use crate::serve::node_connection::NodeConnection;

const SERVICE: &str = "/palyra.node.v1.NodeService/";
/// Deadline of one pairing call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves `HOST:PORT` and the TLS server name to verify (the host, unless overridden).
pub async fn resolve_gateway(
    rt: &Rt,
    gateway: &str,
    server_name: Option<&str>,
) -> anyhow::Result<(SocketAddr, String)> {
    let (host, _) = gateway
        .rsplit_once(':')
        .with_context(|| format!("gateway address {gateway:?} is not HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = runtime::lookup_host(rt.as_ref(), gateway)
        .await
        .with_context(|| format!("cannot resolve {gateway}"))?
        .into_iter()
        .next()
        .with_context(|| format!("{gateway} resolves to no address"))?;
    let name = server_name
        .map(str::to_owned)
        .unwrap_or_else(|| match host.parse::<IpAddr>() {
            Ok(_) => host.to_owned(),
            Err(_) => host.to_ascii_lowercase(),
        });
    Ok((addr, name))
}

/// How the device trusts the gateway and which code it pairs with.
pub enum Pairing {
    /// `--invite palyra://pair?...`.
    Invite(String),
    /// `--pin CODE` with `--ca-fingerprint` or `--ca-file`.
    Pin {
        /// The 6-digit PIN.
        code: String,
        /// The CA fingerprint (`sha256:HEX`).
        ca_fingerprint: Option<String>,
        /// The CA certificate file (PEM).
        ca_file: Option<PathBuf>,
    },
}

/// `palyra node enroll`.
pub struct EnrollOptions {
    /// Identity directory to create.
    pub identity: PathBuf,
    /// Gateway node TLS address (taken from the invite when not given).
    pub gateway: Option<String>,
    /// TLS server name (default: the gateway host).
    pub server_name: Option<String>,
    /// Code and CA trust; `None` resumes a pairing awaiting approval.
    pub pairing: Option<Pairing>,
    /// How long to wait for the operator.
    pub wait: Duration,
    /// Time between status polls.
    pub poll: Duration,
}

fn random_nonce() -> ReplayProtection {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    ReplayProtection {
        nonce: hex::encode(bytes),
        timestamp_unix_ms: unix_ms(SystemTime::now()) as i64,
        signature: String::new(),
    }
}

/// A call the gateway answered with a non-OK status.
#[derive(Debug, thiserror::Error)]
#[error("{method}: {status}")]
struct RpcError {
    method: &'static str,
    status: palyra_proto::grpc::Status,
}

async fn unary<M: Message + Default>(
    channel: &GrpcChannel,
    method: &'static str,
    request: impl Message,
) -> anyhow::Result<M> {
    let bytes = channel
        .unary(
            &format!("{SERVICE}{method}"),
            request.encode_to_vec(),
            CALL_TIMEOUT,
        )
        .await
        .map_err(|status| RpcError { method, status })?;
    M::decode(bytes.as_ref()).with_context(|| format!("{method}: malformed answer"))
}

fn ca_trust_of(pending: &PendingPairing) -> anyhow::Result<CaTrust> {
    match (&pending.ca_spki_sha256, &pending.ca_pem) {
        (Some(fp), _) => Ok(CaTrust::Pinned(
            palyra_proto::enroll::device::parse_fingerprint(fp).map_err(anyhow::Error::msg)?,
        )),
        (None, Some(pem)) => Ok(CaTrust::Certificate(cert::cert_pem_to_der(pem)?)),
        (None, None) => anyhow::bail!("pending.json names no CA"),
    }
}

fn pairing_tls(ca: &CaTrust) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    Ok(Arc::new(match ca {
        CaTrust::Pinned(pin) => tls::pinned_client_config(*pin, tls::ALPN_H2)?,
        CaTrust::Certificate(der) => tls::client_config(der, None, tls::ALPN_H2)?,
    }))
}

async fn pairing_channel(
    rt: &Rt,
    gateway: &GatewayRecord,
    ca: &CaTrust,
) -> anyhow::Result<GrpcChannel> {
    let (addr, _) = resolve_gateway(rt, &gateway.addr, Some(&gateway.server_name)).await?;
    GrpcChannel::connect_tls(rt, addr, &gateway.server_name, pairing_tls(ca)?)
        .await
        .with_context(|| format!("cannot reach the gateway at {}", gateway.addr))
}

/// Pairs (or resumes a pairing awaiting approval) and writes the identity directory. `say`
/// receives progress lines for the person running it. Returns a summary.
pub async fn enroll(rt: &Rt, options: EnrollOptions, say: impl Fn(&str)) -> anyhow::Result<Value> {
    let dir = NodeIdentityDir::open(&options.identity)?;
    if dir.is_enrolled() {
        anyhow::bail!(
            "{} already holds an enrolled identity; use another --identity directory",
            options.identity.display()
        );
    }
    let (pending, machine) = match (dir.pending()?, options.pairing) {
        (Some(pending), given) => {
            if given.is_some() {
                say("a pairing is already waiting in this identity directory; resuming it (the code given now is not used)");
            }
            say(&format!(
                "resuming pairing request {} of device {}",
                pending.session_id, pending.device_id
            ));
            let signing = dir
                .key()?
                .context("pending pairing but no device.key.pem")?;
            let keys = DeviceKeys {
                signing,
                x25519: x25519_dalek::StaticSecret::random_from_rng(OsRng),
            };
            let machine = DevicePairing::resume(
                keys,
                &pending.device_id,
                &pending.session_id,
                ca_trust_of(&pending)?,
            );
            (pending, machine)
        }
        (None, None) => anyhow::bail!("give --invite, or --pin with --ca-fingerprint or --ca-file"),
        (None, Some(pairing)) => {
            begin_pairing(
                rt,
                &dir,
                pairing,
                options.gateway,
                options.server_name,
                &say,
            )
            .await?
        }
    };
    say(&format!(
        "waiting for the operator: palyra pairing approve {}",
        pending.session_id
    ));
    let issued = wait_for_approval(rt, &pending, &machine, options.wait, options.poll).await;
    let issued = match issued {
        Ok(issued) => issued,
        Err(Refusal::Final(e)) => {
            dir.clear_pending()?;
            return Err(e);
        }
        Err(Refusal::Retry(e)) => {
            return Err(e.context("pairing not finished; run the same command again to resume"))
        }
    };
    dir.finish(&issued.cert_pem, &issued.ca_pem, &pending.gateway)?;
    Ok(json!({
        "device_id": pending.device_id,
        "request_id": pending.session_id,
        "identity": options.identity,
        "gateway": pending.gateway.addr,
        "cert_expires_at_unix_ms": issued.expires_at_unix_ms,
    }))
}

async fn begin_pairing(
    rt: &Rt,
    dir: &NodeIdentityDir,
    pairing: Pairing,
    gateway: Option<String>,
    server_name: Option<String>,
    say: &impl Fn(&str),
) -> anyhow::Result<(PendingPairing, DevicePairing)> {
    let (addr, method, code, ca, ca_fp, ca_pem) = match pairing {
        Pairing::Invite(text) => {
            let invite = Invite::parse(&text).map_err(|e| anyhow::anyhow!("--invite: {e}"))?;
            let fp = hex::encode(invite.ca_spki_sha256);
            (
                gateway.unwrap_or(invite.addr),
                Method::Qr,
                invite.code,
                CaTrust::Pinned(invite.ca_spki_sha256),
                Some(fp),
                None,
            )
        }
        Pairing::Pin {
            code,
            ca_fingerprint,
            ca_file,
        } => {
            let gateway = gateway.context("--pin needs --gateway HOST:PORT")?;
            match (ca_fingerprint, ca_file) {
                (Some(fp), None) => {
                    let pin = palyra_proto::enroll::device::parse_fingerprint(&fp)
                        .map_err(|e| anyhow::anyhow!("--ca-fingerprint: {e}"))?;
                    (
                        gateway,
                        Method::Pin,
                        code,
                        CaTrust::Pinned(pin),
                        Some(hex::encode(pin)),
                        None,
                    )
                }
                (None, Some(file)) => {
                    let pem = std::fs::read_to_string(&file)
                        .with_context(|| format!("cannot read --ca-file {}", file.display()))?;
                    let der = cert::cert_pem_to_der(&pem)
                        .with_context(|| format!("--ca-file {}", file.display()))?;
                    (
                        gateway,
                        Method::Pin,
                        code,
                        CaTrust::Certificate(der),
                        None,
                        Some(pem),
                    )
                }
                _ => anyhow::bail!("--pin needs exactly one of --ca-fingerprint and --ca-file"),
            }
        }
    };
    let (_, name) = resolve_gateway(rt, &addr, server_name.as_deref()).await?;
    let gateway = GatewayRecord {
        addr,
        server_name: name,
    };
    let keys = DeviceKeys::generate(&mut OsRng);
    let mut id = [0u8; 16];
    OsRng.fill_bytes(&mut id);
    let device_id =
        ulid::Ulid::from_parts(unix_ms(SystemTime::now()), u128::from_be_bytes(id)).to_string();
    // The key is on disk before anything is sent: a crash cannot orphan a request.
    dir.save_key(&keys.signing)?;
    let mut machine = DevicePairing::new(keys, &device_id, method, &code, ca.clone())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let channel = pairing_channel(rt, &gateway, &ca).await?;
    let offer: BeginPairingSessionResponse = unary(
        &channel,
        "BeginPairingSession",
        machine.begin_request(Some(random_nonce())),
    )
    .await?;
    let complete = machine.complete_request(&offer)?;
    // Recorded before Complete: whatever happens next, a rerun resumes this request (or
    // learns that it never came to be) instead of leaving it unclaimed.
    let pending = PendingPairing {
        gateway,
        device_id: device_id.clone(),
        session_id: offer.session_id,
        ca_spki_sha256: ca_fp,
        ca_pem,
    };
    dir.save_pending(&pending)?;
    let answer: CompletePairingSessionResponse =
        match unary(&channel, "CompletePairingSession", complete).await {
            Ok(answer) => answer,
            Err(e) => {
                // Refused by the gateway: there is no request. Lost on the way: keep the record,
                // a rerun asks the gateway whether the request exists.
                if e.downcast_ref::<RpcError>().is_some() {
                    dir.clear_pending()?;
                }
                return Err(e);
            }
        };
    say(&format!(
        "paired as device {device_id}; request {} is {} (identity fingerprint {})",
        pending.session_id, answer.reason, answer.identity_fingerprint
    ));
    Ok((pending, machine))
}

enum Refusal {
    /// The request cannot complete any more (rejected, expired, a bad certificate).
    Final(anyhow::Error),
    /// Gave up waiting or could not reach the gateway; the request may still complete.
    Retry(anyhow::Error),
}

async fn wait_for_approval(
    rt: &Rt,
    pending: &PendingPairing,
    machine: &DevicePairing,
    wait: Duration,
    poll: Duration,
) -> Result<palyra_proto::enroll::device::Issued, Refusal> {
    let deadline = rt.now() + wait;
    let ca = ca_trust_of(pending).map_err(Refusal::Final)?;
    let mut channel: Option<GrpcChannel> = None;
    let mut last_error = None;
    while rt.now() < deadline {
        if channel.is_none() {
            match pairing_channel(rt, &pending.gateway, &ca).await {
                Ok(c) => channel = Some(c),
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(c) = &channel {
            match unary::<GetPairingRequestStatusResponse>(
                c,
                "GetPairingRequestStatus",
                machine.status_request(),
            )
            .await
            {
                Ok(answer) => match machine.on_status(&answer) {
                    Ok(Progress::Issued(issued)) => return Ok(issued),
                    Ok(Progress::Waiting { .. }) => {}
                    Ok(Progress::Refused { state, reason }) => {
                        return Err(Refusal::Final(anyhow::anyhow!(
                            "pairing request {} is {state}: {reason}",
                            pending.session_id
                        )))
                    }
                    Err(e) => return Err(Refusal::Final(e.into())),
                },
                Err(e) => {
                    // The daemon forgets nothing across restarts: an unknown request, or one
                    // that is not this device's, will never complete.
                    let code = e.downcast_ref::<RpcError>().map(|r| r.status.code);
                    if matches!(code, Some(Code::NotFound | Code::PermissionDenied)) {
                        return Err(Refusal::Final(e));
                    }
                    last_error = Some(e);
                    channel = None;
                }
            }
        }
        runtime::sleep(rt.as_ref(), poll).await;
    }
    Err(Refusal::Retry(last_error.unwrap_or_else(|| {
        anyhow::anyhow!("no decision within {} s", wait.as_secs())
    })))
}

/// `palyra node run`.
pub struct RunOptions {
    /// Identity directory.
    pub identity: PathBuf,
    /// Stop after this long (default: until interrupted).
    pub run_for: Option<Duration>,
}

/// The loaded identity of a running node.
struct Loaded {
    device_id: String,
    gateway: GatewayRecord,
    addr: SocketAddr,
    ca_der: Vec<u8>,
    cert_der: Vec<u8>,
    key: ed25519_dalek::SigningKey,
    not_before: u64,
    not_after: u64,
}

impl Loaded {
    async fn load(rt: &Rt, dir: &NodeIdentityDir) -> anyhow::Result<Self> {
        let files = dir.load()?;
        let gateway = dir
            .gateway()?
            .context("the identity has no gateway.json: enroll it with palyra node enroll")?;
        let (addr, _) = resolve_gateway(rt, &gateway.addr, Some(&gateway.server_name)).await?;
        let key = dir.key()?.context("device.key.pem is missing")?;
        let validity = cert::cert_validity(&files.cert_der)?;
        Ok(Self {
            device_id: files.device_id.context("the certificate names no device")?,
            gateway,
            addr,
            ca_der: files.ca_der,
            cert_der: files.cert_der,
            key,
            not_before: unix_ms(validity.0),
            not_after: unix_ms(validity.1),
        })
    }

    fn tls(&self, alpn: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        Ok(Arc::new(tls::client_config(
            &self.ca_der,
            Some((vec![self.cert_der.clone()], cert::key_to_der(&self.key)?)),
            alpn,
        )?))
    }

    async fn connect(&self, rt: &Rt) -> anyhow::Result<NodeConnection> {
        NodeConnection::connect(
            rt,
            self.addr,
            &self.gateway.server_name,
            self.tls(tls::ALPN)?,
            ClientLimits::default(),
        )
        .await
        .with_context(|| format!("cannot connect to {} over QUIC", self.gateway.addr))
    }

    /// The certificate's validity, for the policy machine.
    fn window(&self) -> CertWindow {
        CertWindow {
            not_before_ms: self.not_before,
            not_after_ms: self.not_after,
        }
    }
}

/// Rotates the node's certificate to a new key over its current mTLS identity, and installs
/// the new pair. Returns the new certificate's end of validity.
pub async fn rotate(rt: &Rt, dir: &NodeIdentityDir) -> anyhow::Result<u64> {
    let current = Loaded::load(rt, dir).await?;
    let new_key = cert::generate_key(&mut OsRng);
    let request = rotation_request(
        &current.device_id,
        &current.cert_der,
        &new_key,
        Some(random_nonce()),
    )?;
    let channel = GrpcChannel::connect_tls(
        rt,
        current.addr,
        &current.gateway.server_name,
        current.tls(tls::ALPN_H2)?,
    )
    .await
    .with_context(|| format!("cannot reach the gateway at {}", current.gateway.addr))?;
    let answer: RotateDeviceCertificateResponse =
        unary(&channel, "RotateDeviceCertificate", request).await?;
    check_rotated(&answer, &current.ca_der, &current.device_id, &new_key)?;
    dir.install_rotation(&new_key, &answer.mtls_client_certificate_pem)?;
    Ok(answer.cert_expires_at_unix_ms)
}

/// Keeps the node connected until `run_for` elapses, as the policy machine
/// [`NodeAgent`] decides: reconnects with exponential backoff (0.5 s doubling to 30 s,
/// jittered), checks in every 10 s, renews the certificate when a third of its lifetime is left
/// or when the operator asks (event `identity.rotate`), and then opens a connection with the new
/// certificate before closing the old one. `report` receives one JSON object per change.
pub async fn run_node(rt: &Rt, options: RunOptions, report: impl Fn(Value)) -> anyhow::Result<()> {
    let dir = NodeIdentityDir::open(&options.identity)?;
    let mut loaded = Loaded::load(rt, &dir).await?;
    // Events up to the cursor were acted on already (a rotation request is handled once,
    // even across restarts of the node).
    let mut agent = NodeAgent::new(
        &loaded.device_id,
        dir.event_cursor()?,
        options.run_for,
        rt.now(),
        wall_ms(),
        &mut OsRng,
    );
    let mut conn: Option<NodeConnection> = None;
    let mut events: Option<crate::node_client::Responses> = None;
    let far = || rt.now() + Duration::from_secs(86_400);
    let mut timer = rt.new_timer(far());
    loop {
        while let Some(action) = agent.poll_event() {
            match action {
                Action::Connect { .. } => {
                    // Loaded again: a rotation changed the files.
                    let attempt = async {
                        let fresh = Loaded::load(rt, &dir).await?;
                        let opened = fresh.connect(rt).await?;
                        anyhow::Ok((fresh, opened))
                    };
                    match attempt.await {
                        Ok((fresh, opened)) => {
                            // The new connection is up: the one it replaces goes now.
                            events = None;
                            if let Some(old) = conn.replace(opened) {
                                old.close().await;
                            }
                            loaded = fresh;
                            agent.handle_connected(rt.now(), wall_ms(), loaded.window());
                        }
                        Err(e) => agent.handle_connect_failed(rt.now(), format!("{e:#}")),
                    }
                }
                Action::Follow { resume_from } => {
                    let request = NodeRequest::StreamEvents {
                        resume_from,
                        follow: true,
                    };
                    let started = match conn.as_ref() {
                        Some(c) => c.request(&request).await.map_err(|e| e.to_string()),
                        None => Err("not connected".to_owned()),
                    };
                    match started {
                        Ok(stream) => events = Some(stream),
                        Err(e) => agent.handle_connection_lost(rt.now(), e),
                    }
                }
                Action::CheckHealth => {
                    let ok = match conn.as_ref() {
                        Some(c) => match c.request(&NodeRequest::Health).await {
                            Ok(r) => r
                                .collect()
                                .await
                                .map(|f| f.first().is_some_and(|f| f.ok))
                                .unwrap_or(false),
                            Err(_) => false,
                        },
                        None => false,
                    };
                    agent.handle_health(rt.now(), ok);
                }
                Action::Rotate(_) => match rotate(rt, &dir).await {
                    Ok(expires) => agent.handle_rotated(rt.now(), wall_ms(), expires),
                    Err(e) => agent.handle_rotation_failed(rt.now(), format!("{e:#}")),
                },
                Action::SaveCursor(seq) => dir.save_event_cursor(seq)?,
                Action::Report(r) => report(report_json(&r, &loaded)),
                Action::Stop => {
                    if let Some(c) = conn.take() {
                        c.close().await;
                    }
                    return Ok(());
                }
            }
        }
        if !agent.is_connected() {
            events = None;
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
        timer
            .as_mut()
            .reset(agent.poll_timeout().unwrap_or_else(far));
        let woke = {
            let next = async {
                match events.as_mut() {
                    Some(stream) => stream.next().await,
                    None => std::future::pending().await,
                }
            };
            let mut next = std::pin::pin!(next);
            std::future::poll_fn(|cx| {
                if let std::task::Poll::Ready(frame) = std::future::Future::poll(next.as_mut(), cx)
                {
                    return std::task::Poll::Ready(Some(frame));
                }
                timer.as_mut().poll(cx).map(|()| None)
            })
            .await
        };
        let now = rt.now();
        match woke {
            None => agent.handle_timeout(now, wall_ms()),
            Some(Ok(Some(frame))) if frame.kind == ResponseKind::Event => {
                if let Some(event) = &frame.event {
                    agent.handle_event(
                        now,
                        frame.seq,
                        &event.name,
                        event.to.as_deref(),
                        event.occurred_at_unix_ms,
                    );
                }
            }
            Some(Ok(Some(frame))) if frame.kind == ResponseKind::Error => {
                let why = format!("event stream ended: {}", frame.message.unwrap_or_default());
                agent.handle_stream_ended(now, frame.first_seq, why);
            }
            Some(Ok(Some(_))) => {}
            Some(Ok(None)) => {
                agent.handle_stream_ended(now, None, "the gateway ended the event stream")
            }
            Some(Err(e)) => agent.handle_connection_lost(now, e.to_string()),
        }
    }
}

/// Wall-clock time now (Unix ms).
fn wall_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// One line of `palyra node run`'s output.
fn report_json(report: &Report, loaded: &Loaded) -> Value {
    match report {
        Report::Connected { expires_at_ms } => {
            json!({"event": "connected", "device_id": loaded.device_id,
                   "gateway": loaded.gateway.addr, "cert_expires_at_unix_ms": expires_at_ms})
        }
        Report::Disconnected { error, retry_in } => {
            json!({"event": "disconnected", "error": error,
                   "retry_in_ms": retry_in.as_millis() as u64})
        }
        Report::Rotated {
            reason,
            expires_at_ms,
        } => json!({"event": "rotated", "reason": reason.as_str(),
                    "cert_expires_at_unix_ms": expires_at_ms}),
        Report::RotationFailed { error, retry_in } => {
            json!({"event": "rotation_failed", "error": error,
                   "retry_in_ms": retry_in.as_millis() as u64})
        }
    }
}
