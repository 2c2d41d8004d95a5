//! The TLS peer of `enroll-bench`: tokio-rustls with the gateway's ECDSA server certificate and
//! client certificates required from the gateway CA (TLS 1.3, ALPN h2), like palyrad's node TLS
//! listener. Per connection: handshake, read the HTTP/2 client preface and SETTINGS, answer an
//! empty SETTINGS frame, close. Prints its address on stdout; exits when stdin closes.
//! Usage: `tls-peer --ca CA.pem --cert CERT.pem --key KEY.pem`.

use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| -> anyhow::Result<std::path::PathBuf> {
        let at = args
            .iter()
            .position(|a| a == name)
            .ok_or_else(|| anyhow::anyhow!("missing {name}"))?;
        Ok(args
            .get(at + 1)
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
            .into())
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in quinn_peer::certs(&arg("--ca")?)? {
        roots.add(c)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            quinn_peer::certs(&arg("--cert")?)?,
            quinn_peer::key(&arg("--key")?)?,
        )?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    palyra_bench::peer_runtime()?.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        loop {
            let (tcp, _) = listener.accept().await?;
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut preface = [0u8; 24 + 9];
                if tls.read_exact(&mut preface).await.is_ok() {
                    let _ = tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    })
}
