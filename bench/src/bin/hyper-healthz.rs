//! The hyper peer of `operator-bench`: `GET /healthz` answered with the same JSON body and
//! headers as palyrad's operator listener (HTTP/1.1 keep-alive, tokio with two workers).
//! Prints its address on stdout; exits when stdin closes.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::time::Instant;

async fn healthz(
    req: Request<hyper::body::Incoming>,
    started: Instant,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let builder = Response::builder()
        .header("content-type", "application/json")
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("x-frame-options", "DENY")
        .header("referrer-policy", "no-referrer")
        .header(
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'",
        );
    let response = if req.uri().path() == "/healthz" {
        let body = serde_json::json!({"status":"ok","service":"palyrad","version":"bench",
            "uptime_seconds": started.elapsed().as_secs()});
        builder.body(Full::new(Bytes::from(body.to_string())))
    } else {
        builder
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(
                br#"{"error":"no such route","code":"not_found"}"#,
            )))
    };
    Ok(response.unwrap_or_default())
}

fn main() -> anyhow::Result<()> {
    palyra_bench::peer_runtime()?.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        let started = Instant::now();
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(stream);
                let service = service_fn(move |req| healthz(req, started));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    })
}
