//! The CLI's operator-plane client (`palyra ... --daemon URL`) against a real operator listener,
//! cleartext and TLS: admin calls, the daemon's error envelope, and CA verification.

use crate::{Driver, Gateway};
use palyra_gateway::client::operator::{ApiError, Daemon};
use palyra_gateway::operator::{auth::AdminAuth, Admin, Operator, OperatorAcceptor};
use palyra_gateway::serve::tcp::TcpHandle;
use palyra_proto::quic::tls::{tcp_server_config, ALPN_HTTP1};
use std::sync::Arc;
use std::time::Instant;

/// Serves the operator plane of a fresh gateway; `tls` selects HTTPS. Returns the listener, its
/// URL and the gateway (whose CA verifies the listener).
fn serve<D: Driver>(tls: bool) -> (TcpHandle, String, Gateway) {
    let gw = Gateway::new();
    let plane = gw.plane(&Default::default());
    let clock: palyra_gateway::util::WallClock =
        Arc::new(|| palyra_gateway::store::unix_ms(std::time::SystemTime::now()));
    let admin = Admin::open(
        palyra_gateway::console::open_file_log(gw.path()).expect("console log"),
        Arc::clone(&gw.docs),
        Arc::new(AdminAuth::from_token("client-token")),
        Arc::clone(&plane.hub),
        clock,
        Arc::new(|buf: &mut [u8]| buf.fill(3)),
        Vec::new(),
    )
    .expect("stores");
    let server_tls = tls.then(|| {
        Arc::new(tcp_server_config(plane.identity.tcp_cert_slot(), ALPN_HTTP1).expect("tls"))
    });
    let acceptor = Arc::new(OperatorAcceptor {
        operator: Operator::daemon("test", Instant::now(), admin, tls),
        config: Default::default(),
        tls: server_tls,
    });
    let (handle, addr) = D::start_listener(acceptor, None);
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://localhost:{}", addr.port());
    (handle, url, gw)
}

fn api_error(err: anyhow::Error) -> ApiError {
    err.downcast::<ApiError>().expect("an API error")
}

/// Admin calls over http and https, the error envelope of a missing route and a wrong token.
pub fn operator_client_calls<D: Driver>() {
    for tls in [false, true] {
        let (handle, url, gw) = serve::<D>(tls);
        let ca = gw.path().join("identity/ca.crt.pem");
        let daemon = Daemon::new(&url, Some(&ca), "client-token".into()).unwrap();
        let status = daemon
            .call(http::Method::GET, "/admin/v1/status", None)
            .unwrap();
        assert_eq!(
            status["service"],
            "palyrad",
            "[{}] tls={tls}: {status}",
            D::NAME
        );
        let err = daemon
            .call(http::Method::GET, "/admin/v1/nope", None)
            .unwrap_err();
        assert_eq!(api_error(err).status, http::StatusCode::NOT_FOUND);
        let wrong = Daemon::new(&url, Some(&ca), "wrong".into()).unwrap();
        let err = api_error(
            wrong
                .call(http::Method::GET, "/admin/v1/status", None)
                .unwrap_err(),
        );
        assert_eq!(
            (err.status.as_u16(), err.code.as_str()),
            (401, "unauthorized")
        );
        D::stop_grpc(handle);
    }
}

/// https is verified against the given CA only; a cleartext URL against a TLS listener says to
/// use https.
pub fn operator_client_verifies_the_ca<D: Driver>() {
    let (handle, url, _gw) = serve::<D>(true);
    let other = Gateway::new();
    other.plane(&Default::default());
    let foreign_ca = other.path().join("identity/ca.crt.pem");
    let daemon = Daemon::new(&url, Some(&foreign_ca), "client-token".into()).unwrap();
    let err = daemon
        .call(http::Method::GET, "/admin/v1/status", None)
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("TLS handshake"),
        "[{}] a foreign CA must fail the handshake: {err:#}",
        D::NAME
    );
    let cleartext =
        Daemon::new(&url.replace("https", "http"), None, "client-token".into()).unwrap();
    let err = cleartext
        .call(http::Method::GET, "/admin/v1/status", None)
        .unwrap_err();
    assert!(format!("{err:#}").contains("--http-tls"), "{err:#}");
    D::stop_grpc(handle);
}
