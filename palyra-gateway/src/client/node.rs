//! Node commands against a gateway: the node plane over QUIC and NodeService over the node TLS
//! listener, with an enrolled (or offline-issued) identity, and the gateway's own health check.

use super::identity::resolve_gateway;
use crate::runtime::Rt;
use crate::serve::grpc_channel::{CallEvent, GrpcChannel};
use crate::serve::node_connection::NodeConnection;
use crate::store::{DeviceIdentityFiles, NodeIdentityDir};
use anyhow::Context;
use palyra_proto::grpc::Code;
use palyra_proto::node::{ResponseFrame, ResponseKind};
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    DeviceCapability, NodeEventRequest, NodeEventResponse, RegisterNodeRequest,
    RegisterNodeResponse,
};
use palyra_proto::quic::{tls, ClientLimits};
use prost::Message;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which gateway a node command talks to, and as whom.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// Gateway address, HOST:PORT (default: the one the identity was enrolled with).
    pub gateway: Option<String>,
    /// Identity directory (device.crt.pem, device.key.pem, ca.crt.pem).
    pub identity: PathBuf,
    /// TLS server name to verify (default: the gateway host).
    pub server_name: Option<String>,
    /// Deadline of gRPC calls.
    pub timeout: Duration,
}

/// The loaded identity, the resolved address and the TLS server name of a target.
async fn resolve(
    rt: &Rt,
    target: &NodeTarget,
) -> anyhow::Result<(DeviceIdentityFiles, SocketAddr, String)> {
    let dir = NodeIdentityDir::open(&target.identity)?;
    let identity = dir
        .load()
        .with_context(|| format!("cannot load identity from {}", target.identity.display()))?;
    let enrolled = dir.gateway()?;
    let (gateway, server_name) = match (&target.gateway, &enrolled) {
        (Some(g), _) => (g.clone(), target.server_name.clone()),
        (None, Some(record)) => (
            record.addr.clone(),
            target
                .server_name
                .clone()
                .or(Some(record.server_name.clone())),
        ),
        (None, None) => anyhow::bail!("give --gateway HOST:PORT (this identity names no gateway)"),
    };
    let (addr, server_name) = resolve_gateway(rt, &gateway, server_name.as_deref()).await?;
    Ok((identity, addr, server_name))
}

/// Connects to the target's node plane over QUIC with its identity (mutual TLS).
pub async fn connect(rt: &Rt, target: &NodeTarget) -> anyhow::Result<NodeConnection> {
    let (identity, addr, server_name) = resolve(rt, target).await?;
    let tls = tls::client_config(
        &identity.ca_der,
        Some((vec![identity.cert_der], identity.key_der)),
        tls::ALPN,
    )?;
    Ok(NodeConnection::connect(
        rt,
        addr,
        &server_name,
        Arc::new(tls),
        ClientLimits::default(),
    )
    .await?)
}

/// A NodeService session over the node TLS listener.
pub struct GrpcNode {
    channel: GrpcChannel,
    /// The device of the identity.
    pub device_id: String,
    timeout: Duration,
}

/// Opens a NodeService session with the target's identity (mutual TLS over TCP).
pub async fn connect_grpc(rt: &Rt, target: &NodeTarget) -> anyhow::Result<GrpcNode> {
    let (identity, addr, server_name) = resolve(rt, target).await?;
    let device_id = identity
        .device_id
        .clone()
        .context("the identity's certificate names no device ID")?;
    let tls = tls::client_config(
        &identity.ca_der,
        Some((vec![identity.cert_der], identity.key_der)),
        tls::ALPN_H2,
    )?;
    let channel = GrpcChannel::connect_tls(rt, addr, &server_name, Arc::new(tls))
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    Ok(GrpcNode {
        channel,
        device_id,
        timeout: target.timeout,
    })
}

fn canonical(device_id: &str) -> Option<CanonicalId> {
    Some(CanonicalId {
        ulid: device_id.to_owned(),
    })
}

impl GrpcNode {
    /// `grpc.health.v1.Health/Check` of NodeService, as the CLI prints it.
    pub async fn health(&self) -> anyhow::Result<serde_json::Value> {
        use palyra_proto::pb::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
        let request = HealthCheckRequest {
            service: "palyra.node.v1.NodeService".into(),
        };
        let response = self
            .channel
            .unary(
                "/grpc.health.v1.Health/Check",
                request.encode_to_vec(),
                self.timeout,
            )
            .await
            .map_err(|status| anyhow::anyhow!("health check failed: {status}"))?;
        let status = HealthCheckResponse::decode(response.as_ref())?.status;
        Ok(serde_json::json!({
            "transport": "grpc",
            "service": "palyra.node.v1.NodeService",
            "status": if status == 1 { "SERVING" } else { "NOT_SERVING" },
            "device_id": self.device_id,
        }))
    }

    /// Sends one event on StreamNodeEvents and returns its answer.
    pub async fn publish(
        &self,
        name: &str,
        payload: &serde_json::Value,
    ) -> anyhow::Result<NodeEventResponse> {
        let mut call = self
            .channel
            .open(
                "/palyra.node.v1.NodeService/StreamNodeEvents",
                Vec::new(),
                Some(self.timeout),
            )
            .await
            .map_err(|status| anyhow::anyhow!("cannot open the event stream: {status}"))?;
        let request = NodeEventRequest {
            v: 1,
            device_id: canonical(&self.device_id),
            event_name: name.to_owned(),
            payload_json: serde_json::to_vec(payload)?,
            replay: None,
        };
        call.send(request.encode_to_vec())
            .await
            .map_err(|status| anyhow::anyhow!("{status}"))?;
        call.close_send()
            .await
            .map_err(|status| anyhow::anyhow!("{status}"))?;
        let mut answer = None;
        while let Some(event) = call.next().await {
            match event {
                CallEvent::Message(bytes) => {
                    let response = NodeEventResponse::decode(bytes.as_ref())?;
                    // Pushed capability work is not this command's business.
                    if response.dispatch.is_none() || response.reason != "dispatch" {
                        answer.get_or_insert(response);
                    }
                }
                CallEvent::Finished(status, _) if status.code != Code::Ok => {
                    anyhow::bail!("gateway answered {status}")
                }
                CallEvent::Finished(..) => break,
                CallEvent::Headers(_) => {}
            }
        }
        answer.context("gateway sent no answer")
    }

    /// RegisterNode with `capabilities`, all available.
    pub async fn register(
        &self,
        platform: &str,
        capabilities: &[String],
    ) -> anyhow::Result<RegisterNodeResponse> {
        let capabilities = capabilities
            .iter()
            .map(|name| DeviceCapability {
                name: name.clone(),
                available: true,
                ..DeviceCapability::default()
            })
            .collect();
        self.register_capabilities(platform, capabilities).await
    }

    /// Opens StreamNodeEvents (bidi, no deadline): the caller sends events and reads answers,
    /// with capability dispatches pushed on them.
    pub async fn open_events(&self) -> anyhow::Result<crate::serve::grpc_channel::StreamingCall> {
        self.channel
            .open(
                "/palyra.node.v1.NodeService/StreamNodeEvents",
                Vec::new(),
                None,
            )
            .await
            .map_err(|status| anyhow::anyhow!("cannot open the event stream: {status}"))
    }

    /// RegisterNode with these capability descriptions.
    pub async fn register_capabilities(
        &self,
        platform: &str,
        capabilities: Vec<DeviceCapability>,
    ) -> anyhow::Result<RegisterNodeResponse> {
        let request = RegisterNodeRequest {
            v: 1,
            device_id: canonical(&self.device_id),
            platform: platform.to_owned(),
            capabilities,
            replay: None,
        };
        let response = self
            .channel
            .unary(
                "/palyra.node.v1.NodeService/RegisterNode",
                request.encode_to_vec(),
                self.timeout,
            )
            .await
            .map_err(|status| anyhow::anyhow!("RegisterNode failed: {status}"))?;
        Ok(RegisterNodeResponse::decode(response.as_ref())?)
    }
}

/// An error frame (or a frame that is not ok) as an error naming its code and message.
pub fn check(frame: &ResponseFrame) -> anyhow::Result<()> {
    if frame.kind == ResponseKind::Error || !frame.ok {
        let code = frame
            .error
            .map(|c| c.to_string())
            .unwrap_or_else(|| "error".into());
        let mut line = format!("gateway answered {code}");
        if let Some(message) = &frame.message {
            line.push_str(": ");
            line.push_str(message);
        }
        if let Some(first) = frame.first_seq {
            line.push_str(&format!(" (first_seq {first})"));
        }
        anyhow::bail!(line);
    }
    Ok(())
}

/// A cleartext HTTP/2 channel to the gateway gRPC listener at `grpc` (`HOST:PORT`).
pub async fn h2c_channel(rt: &Rt, grpc: &str) -> anyhow::Result<GrpcChannel> {
    let addr: SocketAddr = crate::runtime::lookup_host(rt.as_ref(), grpc)
        .await
        .with_context(|| format!("cannot resolve {grpc}"))?
        .into_iter()
        .next()
        .with_context(|| format!("{grpc} resolves to no address"))?;
    GrpcChannel::connect(rt, addr)
        .await
        .with_context(|| format!("cannot connect to the gateway at {addr}"))
}

/// `GatewayService/GetHealth` on the gateway gRPC listener at `grpc` (cleartext), as JSON.
pub async fn gateway_health(
    rt: &Rt,
    grpc: &str,
    timeout: Duration,
) -> anyhow::Result<serde_json::Value> {
    use palyra_proto::pb::palyra::gateway::v1::{HealthRequest, HealthResponse};
    let channel = h2c_channel(rt, grpc).await?;
    let response = channel
        .unary(
            "/palyra.gateway.v1.GatewayService/GetHealth",
            HealthRequest { v: 1 }.encode_to_vec(),
            timeout,
        )
        .await
        .map_err(|status| anyhow::anyhow!("GetHealth failed: {status}"))?;
    let health = HealthResponse::decode(response.as_ref()).context("malformed HealthResponse")?;
    Ok(serde_json::json!({
        "service": health.service,
        "status": health.status,
        "version": health.version,
        "git_hash": health.git_hash,
        "build_profile": health.build_profile,
        "uptime_seconds": health.uptime_seconds,
    }))
}
