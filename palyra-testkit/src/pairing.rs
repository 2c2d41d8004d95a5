//! Pairing over the node TLS listener, on real sockets: a device without a certificate begins
//! and completes a session with a PIN, the operator approves, the device receives a certificate
//! for its own key (no private key on the wire) and then speaks mTLS on both node listeners.

use crate::grpc::Client;
use crate::{client_tls, Driver, Gateway, DEV_A};
use palyra_proto::enroll::device::DeviceKeys;
use palyra_proto::enroll::gateway::GatewayConfig;
use palyra_proto::enroll::v1::{build_hello, Offer};
use palyra_proto::enroll::Method;
use palyra_proto::gateway::node_service::{node_router, WallClock};
use palyra_proto::gateway::pairing::EnrollmentStore;
use palyra_proto::gateway::NodePlaneOptions;
use palyra_proto::grpc::{Code, Status};
use palyra_proto::identity::cert;
use palyra_proto::node::NodeRequest;
use palyra_proto::pb::palyra::common::v1::CanonicalId;
use palyra_proto::pb::palyra::node::v1::{
    pairing_method, BeginPairingSessionRequest, BeginPairingSessionResponse,
    CompletePairingSessionRequest, CompletePairingSessionResponse, GetPairingRequestStatusRequest,
    GetPairingRequestStatusResponse, PairingMethod, RegisterNodeRequest, RegisterNodeResponse,
};
use palyra_proto::quic::tls::{client_config, ALPN, ALPN_H2};
use palyra_proto::store::unix_ms;
use prost::Message;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const SERVICE: &str = "/palyra.node.v1.NodeService/";

fn begin_request(pin: &str) -> Vec<u8> {
    BeginPairingSessionRequest {
        v: 1,
        client_kind: "node".into(),
        method: Some(PairingMethod {
            value: Some(pairing_method::Value::PinCode(pin.into())),
        }),
        replay: None,
    }
    .encode_to_vec()
}

fn unary<M: Message + Default>(
    client: &mut Client,
    method: &str,
    body: &[u8],
) -> Result<M, Status> {
    client
        .unary(&format!("{SERVICE}{method}"), body)
        .map(|bytes| M::decode(bytes.as_ref()).expect("decode"))
}

/// The whole pairing over the wire, then mTLS with the new certificate on TCP and QUIC.
pub fn pairing_over_node_tls<D: Driver>() {
    let gw = Gateway::new();
    let plane = gw.plane(&NodePlaneOptions::default());
    let hub = Arc::clone(&plane.hub);
    let tls = Arc::clone(&plane.tcp_tls);
    let ca_der = plane.identity.ca_der().to_vec();
    let (quic, quic_addr) = D::start(plane);
    let random: palyra_proto::operator::RandomFill =
        Arc::new(|b: &mut [u8]| rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, b));
    let store = Arc::new(
        EnrollmentStore::open(gw.path(), GatewayConfig::default(), random)
            .expect("enrollment store"),
    );
    let clock: WallClock = Arc::new(|| unix_ms(SystemTime::now()));
    let routers = node_router(Arc::clone(&hub), clock, Some(Arc::clone(&store))).expect("router");
    let (tcp, tcp_addr) = D::start_grpc(routers, Some(tls), Some(hub.notifier()));
    let now = || unix_ms(SystemTime::now());
    let (_, pin) = store
        .with(|m, _, r| m.mint(now(), Method::Pin, 600_000, "suite", r))
        .expect("mint");
    let ca_pem = std::fs::read_to_string(gw.path().join("identity/ca.crt.pem")).expect("ca");
    let mut anonymous = Client::tls(tcp_addr, client_tls(None, &ca_pem, ALPN_H2))
        .expect("TLS without a certificate");

    // A wrong PIN: refused, and counted.
    let wrong = if pin == "000000" { "000001" } else { "000000" };
    let refused = unary::<BeginPairingSessionResponse>(
        &mut anonymous,
        "BeginPairingSession",
        &begin_request(wrong),
    );
    assert_eq!(
        refused.unwrap_err().code,
        Code::FailedPrecondition,
        "[{}]",
        D::NAME
    );

    let begun: BeginPairingSessionResponse =
        unary(&mut anonymous, "BeginPairingSession", &begin_request(&pin)).expect("Begin");
    let keys = DeviceKeys::generate(&mut rand_core::OsRng);
    let offer = Offer {
        session_id: begun.session_id.clone(),
        gateway_ephemeral_public: begun
            .gateway_ephemeral_public
            .as_slice()
            .try_into()
            .expect("32"),
        challenge: begun.challenge.as_slice().try_into().expect("32"),
    };
    let hello =
        build_hello(&keys.signing, &keys.x25519, &offer, DEV_A, "node", &pin).expect("hello");
    let complete = CompletePairingSessionRequest {
        v: 1,
        session_id: hello.session_id.clone(),
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        client_kind: "node".into(),
        proof: pin.clone(),
        device_signing_public: hello.device_signing_public.to_vec(),
        device_x25519_public: hello.device_x25519_public.to_vec(),
        challenge_signature: hello.challenge_signature.to_vec(),
        transcript_mac: hello.transcript_mac.to_vec(),
    }
    .encode_to_vec();
    let completed: CompletePairingSessionResponse =
        unary(&mut anonymous, "CompletePairingSession", &complete).expect("Complete");
    assert_eq!(
        (completed.paired, completed.reason.as_str()),
        (false, "pending_approval")
    );
    // Replaying Complete finds no session.
    let replay = unary::<CompletePairingSessionResponse>(
        &mut anonymous,
        "CompletePairingSession",
        &complete,
    );
    assert_eq!(replay.unwrap_err().code, Code::NotFound, "[{}]", D::NAME);

    let status_request = GetPairingRequestStatusRequest {
        v: 1,
        session_id: begun.session_id.clone(),
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
    }
    .encode_to_vec();
    let status: GetPairingRequestStatusResponse =
        unary(&mut anonymous, "GetPairingRequestStatus", &status_request).expect("status");
    assert_eq!(status.status, "pending_approval");
    assert!(status.mtls_client_certificate_pem.is_empty());
    store
        .with(|m, a, _| m.approve(a, now(), &begun.session_id, false, None))
        .expect("approve");
    let status: GetPairingRequestStatusResponse =
        unary(&mut anonymous, "GetPairingRequestStatus", &status_request).expect("status");
    assert_eq!(
        (status.status.as_str(), status.paired),
        ("completed", true),
        "[{}]",
        D::NAME
    );
    assert!(
        status.mtls_client_private_key_pem.is_empty(),
        "no private key on the wire"
    );
    let cert_der = cert::cert_pem_to_der(&status.mtls_client_certificate_pem).expect("cert");
    assert_eq!(
        cert::cert_ed25519_public(&cert_der).expect("parse"),
        Some(keys.signing.verifying_key().to_bytes()),
        "the certificate carries the device's own key"
    );
    let again: GetPairingRequestStatusResponse =
        unary(&mut anonymous, "GetPairingRequestStatus", &status_request).expect("status");
    assert!(
        again.mtls_client_certificate_pem.is_empty(),
        "delivered once"
    );

    // mTLS with the new certificate and the key that never left the device.
    let identity = (
        vec![cert_der],
        cert::key_to_der(&keys.signing).expect("key"),
    );
    let register = RegisterNodeRequest {
        v: 1,
        device_id: Some(CanonicalId { ulid: DEV_A.into() }),
        platform: "suite".into(),
        capabilities: Vec::new(),
        replay: None,
    }
    .encode_to_vec();
    let tcp_tls = Arc::new(client_config(&ca_der, Some(identity.clone()), ALPN_H2).expect("tls"));
    let deadline = Instant::now() + Duration::from_secs(3);
    let registered = loop {
        // The daemon reloads the trust file within a maintenance tick.
        let mut paired = Client::tls(tcp_addr, Arc::clone(&tcp_tls)).expect("mTLS connect");
        match unary::<RegisterNodeResponse>(&mut paired, "RegisterNode", &register) {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!(
                "[{}] RegisterNode with the paired certificate: {e:?}",
                D::NAME
            ),
        }
    };
    assert!(registered.accepted, "[{}]", D::NAME);
    let quic_tls = Arc::new(client_config(&ca_der, Some(identity), ALPN).expect("tls"));
    let conn = D::connect(quic_addr, quic_tls).expect("QUIC with the paired certificate");
    let frames = crate::call::<D>(&conn, &NodeRequest::Health);
    assert!(
        frames
            .iter()
            .any(|f| f.kind == palyra_proto::node::ResponseKind::Health),
        "[{}] {frames:?}",
        D::NAME
    );
    D::close(conn);
    D::stop_grpc(tcp);
    D::stop(quic);
}
