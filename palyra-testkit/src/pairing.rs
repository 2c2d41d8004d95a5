//! Pairing over the node TLS listener, on real sockets: a device without a certificate begins
//! and completes a session with a PIN, the operator approves, the device receives a certificate
//! for its own key (no private key on the wire) and then speaks mTLS on both node listeners.

use crate::grpc::Client;
use crate::{client_tls, Driver, Gateway, DEV_A};
use palyra_gateway::enroll::EnrollmentStore;
use palyra_gateway::node::service::{node_router, WallClock};
use palyra_gateway::node::NodePlaneOptions;
use palyra_gateway::store::unix_ms;
use palyra_proto::enroll::device::DeviceKeys;
use palyra_proto::enroll::gateway::GatewayConfig;
use palyra_proto::enroll::v1::{build_hello, Offer};
use palyra_proto::enroll::Method;
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

/// A gateway serving QUIC and the node TLS listener (with the pairing RPCs) on driver `D`, its
/// enrollment store keeping the live trust index current, as the daemons assemble them.
struct Rig<D: Driver> {
    driver: std::marker::PhantomData<D>,
    gw: Gateway,
    ca_der: Vec<u8>,
    quic: palyra_gateway::serve::node_plane::NodePlaneHandle,
    quic_addr: std::net::SocketAddr,
    tcp: palyra_gateway::serve::tcp::TcpHandle,
    tcp_addr: std::net::SocketAddr,
    store: Arc<EnrollmentStore>,
}

/// Waits for an enrollment operation's durable answer.
fn enrolled<T>(pending: palyra_gateway::enroll::Enrolled<T>) -> T {
    pending
        .wait_blocking(std::time::Duration::from_secs(10))
        .expect("answered")
        .expect("enrollment operation")
}

impl<D: Driver> Rig<D> {
    fn start(config: GatewayConfig) -> Self {
        let gw = Gateway::new();
        let plane = gw.plane(&NodePlaneOptions::default());
        let hub = Arc::clone(&plane.hub);
        let tls = Arc::clone(&plane.tcp_tls);
        let ca_der = plane.identity.ca_der().to_vec();
        let (quic, quic_addr) = D::start(plane);
        let random: palyra_gateway::util::RandomFill =
            Arc::new(|b: &mut [u8]| rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, b));
        let (store, _trust) = palyra_gateway::node::open_enrollment(
            gw.path(),
            None,
            Arc::clone(&gw.docs),
            config,
            &hub,
            random,
        )
        .expect("enrollment store");
        let clock: WallClock = Arc::new(|| unix_ms(SystemTime::now()));
        let routers =
            node_router(Arc::clone(&hub), clock, Some(Arc::clone(&store)), None).expect("router");
        let (tcp, tcp_addr) = D::start_grpc(routers, Some(tls), Some(hub.notifier()));
        Self {
            driver: std::marker::PhantomData,
            gw,
            ca_der,
            quic,
            quic_addr,
            tcp,
            tcp_addr,
            store,
        }
    }

    /// Mints a code of `method` (10 minutes).
    fn mint(&self, method: Method) -> String {
        let now = unix_ms(SystemTime::now());
        enrolled(
            self.store
                .with(move |m, _, r| m.mint(now, method, 600_000, "suite", r)),
        )
        .1
    }

    fn stop(self) {
        D::stop_grpc(self.tcp);
        D::stop(self.quic);
    }
}

/// The whole pairing over the wire, then mTLS with the new certificate on TCP and QUIC.
pub fn pairing_over_node_tls<D: Driver>() {
    let rig = Rig::<D>::start(GatewayConfig::default());
    let (store, tcp_addr, quic_addr, ca_der) =
        (&rig.store, rig.tcp_addr, rig.quic_addr, &rig.ca_der);
    let now = || unix_ms(SystemTime::now());
    let pin = rig.mint(Method::Pin);
    let ca_pem = std::fs::read_to_string(rig.gw.path().join("identity/ca.crt.pem")).expect("ca");
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
    let session = begun.session_id.clone();
    let now_ms = now();
    enrolled(store.with(move |m, a, _| m.approve(a, now_ms, &session, false, None)));
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
    // The first answer may be lost: a second poll gets the same public certificate, never a
    // private key.
    let again: GetPairingRequestStatusResponse =
        unary(&mut anonymous, "GetPairingRequestStatus", &status_request).expect("status");
    assert_eq!(again.status, "completed");
    assert_eq!(
        again.mtls_client_certificate_pem, status.mtls_client_certificate_pem,
        "the same certificate again"
    );
    assert!(again.mtls_client_private_key_pem.is_empty());

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
    let tcp_tls = Arc::new(client_config(ca_der, Some(identity.clone()), ALPN_H2).expect("tls"));
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
    let quic_tls = Arc::new(client_config(ca_der, Some(identity), ALPN).expect("tls"));
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
    rig.stop();
}

/// A follow stream on `conn` ends (not by timeout) within `limit`; returns how long it took.
fn ends_within<D: Driver>(
    stream: &mut palyra_gateway::node_client::Responses,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    let outcome = D::next(stream, limit + Duration::from_secs(2));
    let elapsed = start.elapsed();
    assert!(
        matches!(&outcome, Err(e) if !e.contains("timeout")),
        "[{}] the connection stayed open: {outcome:?}",
        D::NAME
    );
    assert!(elapsed < limit, "[{}] closed after {elapsed:?}", D::NAME);
    elapsed
}

fn follow<D: Driver>(
    conn: &palyra_gateway::serve::node_connection::NodeConnection,
) -> palyra_gateway::node_client::Responses {
    D::open(
        conn,
        crate::payload(&NodeRequest::StreamEvents {
            resume_from: None,
            follow: true,
        }),
    )
}

/// With auto-approval on, the device side machine pairs over the wire; then the device rotates
/// to a new key over its mTLS identity (the new certificate works on the very next handshake,
/// the old connection closes once the new certificate is in use), and finally revokes itself:
/// its open connection closes within a second and it cannot connect again.
pub fn rotation_and_revocation_over_node_tls<D: Driver>() {
    use palyra_proto::enroll::device::{CaTrust, DevicePairing, Progress};
    use palyra_proto::enroll::gateway::rotation_payload;
    use palyra_proto::pb::palyra::node::v1::{
        RevokeDevicePairingRequest, RevokeDevicePairingResponse, RotateDeviceCertificateRequest,
        RotateDeviceCertificateResponse,
    };
    let rig = Rig::<D>::start(GatewayConfig {
        auto_approve: true,
        ..GatewayConfig::default()
    });
    let (tcp_addr, quic_addr, ca_der) = (rig.tcp_addr, rig.quic_addr, &rig.ca_der);
    let token = rig.mint(Method::Qr);

    // Pair with the device machine, trusting the CA by its pinned key only.
    let pin = cert::cert_spki_fingerprint(ca_der).expect("fingerprint");
    let pinned = Arc::new(
        palyra_proto::quic::tls::pinned_client_config(pin, ALPN_H2).expect("pinned config"),
    );
    let mut anonymous = Client::tls(tcp_addr, pinned).expect("TLS to the pinned CA");
    let keys = DeviceKeys::generate(&mut rand_core::OsRng);
    let mut device =
        DevicePairing::new(keys, DEV_A, Method::Qr, &token, CaTrust::Pinned(pin)).expect("device");
    let offer: BeginPairingSessionResponse = unary(
        &mut anonymous,
        "BeginPairingSession",
        &device.begin_request(None).encode_to_vec(),
    )
    .expect("Begin");
    let complete = device.complete_request(&offer).expect("hello");
    let _: CompletePairingSessionResponse = unary(
        &mut anonymous,
        "CompletePairingSession",
        &complete.encode_to_vec(),
    )
    .expect("Complete");
    let status: GetPairingRequestStatusResponse = unary(
        &mut anonymous,
        "GetPairingRequestStatus",
        &device.status_request().encode_to_vec(),
    )
    .expect("status");
    let Ok(Progress::Issued(issued)) = device.on_status(&status) else {
        panic!("[{}] auto-approval issued nothing: {status:?}", D::NAME);
    };
    let old_der = cert::cert_pem_to_der(&issued.cert_pem).expect("cert");
    let old_identity = (
        vec![old_der.clone()],
        cert::key_to_der(device.signing_key()).expect("key"),
    );
    let old_conn = D::connect(
        quic_addr,
        Arc::new(client_config(ca_der, Some(old_identity.clone()), ALPN).expect("tls")),
    )
    .expect("QUIC with the paired certificate on the next handshake");
    let mut old_stream = follow::<D>(&old_conn);

    // Rotate to a new key over the current mTLS identity.
    let new_key = cert::generate_key(&mut rand_core::OsRng);
    let new_public = new_key.verifying_key().to_bytes();
    let spki = cert::cert_spki_fingerprint(&old_der).expect("spki");
    let signature =
        ed25519_dalek::Signer::sign(&new_key, &rotation_payload(DEV_A, &spki, &new_public));
    let mut paired = Client::tls(
        tcp_addr,
        Arc::new(client_config(ca_der, Some(old_identity), ALPN_H2).expect("tls")),
    )
    .expect("mTLS");
    let rotated: RotateDeviceCertificateResponse = unary(
        &mut paired,
        "RotateDeviceCertificate",
        &RotateDeviceCertificateRequest {
            v: 1,
            device_id: Some(CanonicalId { ulid: DEV_A.into() }),
            new_signing_public: new_public.to_vec(),
            new_key_signature: signature.to_bytes().to_vec(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
    .expect("rotate");
    assert!(rotated.mtls_client_private_key_pem.is_empty());
    let new_der = cert::cert_pem_to_der(&rotated.mtls_client_certificate_pem).expect("cert");
    assert_eq!(
        cert::cert_ed25519_public(&new_der).expect("parse"),
        Some(new_public)
    );
    let new_identity = (vec![new_der], cert::key_to_der(&new_key).expect("key"));
    let new_conn = D::connect(
        quic_addr,
        Arc::new(client_config(ca_der, Some(new_identity.clone()), ALPN).expect("tls")),
    )
    .expect("QUIC with the rotated certificate at once");
    let mut new_stream = follow::<D>(&new_conn);
    assert!(!crate::call::<D>(&new_conn, &NodeRequest::Health).is_empty());
    // The new certificate is in use: the old one is revoked and its connection closes.
    ends_within::<D>(&mut old_stream, Duration::from_secs(2));

    // The device revokes itself over its mTLS identity.
    let mut current = Client::tls(
        tcp_addr,
        Arc::new(client_config(ca_der, Some(new_identity.clone()), ALPN_H2).expect("tls")),
    )
    .expect("mTLS with the rotated certificate");
    let revoked: RevokeDevicePairingResponse = unary(
        &mut current,
        "RevokeDevicePairing",
        &RevokeDevicePairingRequest {
            v: 1,
            device_id: Some(CanonicalId { ulid: DEV_A.into() }),
            reason: "retired".into(),
            replay: None,
        }
        .encode_to_vec(),
    )
    .expect("revoke");
    assert!(revoked.revoked);
    ends_within::<D>(&mut new_stream, Duration::from_secs(1));
    assert!(
        D::connect(
            quic_addr,
            Arc::new(client_config(ca_der, Some(new_identity), ALPN).expect("tls"))
        )
        .is_err(),
        "[{}] a revoked device connected",
        D::NAME
    );
    D::close(old_conn);
    D::close(new_conn);
    rig.stop();
}
