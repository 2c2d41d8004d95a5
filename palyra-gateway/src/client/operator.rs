//! The CLI's way to palyrad's operator plane: `--daemon URL` (`http://` or `https://`, the latter
//! verified against the gateway CA), the admin token, and JSON calls to the admin API through
//! the HTTP/1.1 client machine of `palyra-proto`. Blocking std sockets: one call, one connection.

use anyhow::{bail, Context};
use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use palyra_proto::http1::client::{Event, Http1Client};
use serde_json::Value;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Largest answer body accepted from the daemon.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How long a call waits for the daemon.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's operator plane as the CLI reaches it.
#[derive(Clone)]
pub struct Daemon {
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: String,
}

/// A connection to the daemon, cleartext or TLS.
pub enum Conn {
    /// `http://`.
    Plain(TcpStream),
    /// `https://`.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    /// The TCP socket underneath (timeouts, nodelay).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// An error answer of the admin API (`{"error","code"}` with its HTTP status).
#[derive(Debug, thiserror::Error)]
#[error("palyrad answered {status}: {message} ({code})")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// The envelope's `code`.
    pub code: String,
    /// The envelope's `error`.
    pub message: String,
}

/// Splits `http[s]://HOST:PORT[/]` into (https, host, port); IPv6 hosts in brackets.
pub fn parse_daemon_url(url: &str) -> anyhow::Result<(bool, String, u16)> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("--daemon must be http://HOST:PORT or https://HOST:PORT (got {url:?})");
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') {
        bail!("--daemon takes no path (got {url:?})");
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => (host, port),
        _ => bail!("--daemon must name a host and port, e.g. http://127.0.0.1:8080"),
    };
    let port: u16 = port
        .parse()
        .with_context(|| format!("--daemon port {port:?} is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok((tls, host.to_owned(), port))
}

/// The gateway CA to verify an `https://` daemon: `ca_file`, else the local gateway's
/// `STATE/identity/ca.crt.pem` when it exists.
fn ca_der(ca_file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    let local = crate::config::default_state_dir().join("identity/ca.crt.pem");
    let path: PathBuf = match ca_file {
        Some(path) => path.to_owned(),
        None if local.exists() => local,
        None => bail!(
            "an https:// daemon needs the gateway CA: pass --ca-file (palyrad's STATE/identity/ca.crt.pem)"
        ),
    };
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the CA file {}", path.display()))?;
    palyra_proto::identity::cert::cert_pem_to_der(&pem)
        .with_context(|| format!("{} holds no PEM certificate", path.display()))
}

/// The admin token: from `token_file`, else `PALYRA_ADMIN_TOKEN`.
pub fn admin_token(token_file: Option<&Path>) -> anyhow::Result<String> {
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?,
        None => std::env::var("PALYRA_ADMIN_TOKEN")
            .context("set PALYRA_ADMIN_TOKEN or pass --token-file")?,
    };
    let token = token.trim().to_owned();
    anyhow::ensure!(!token.is_empty(), "the admin token is empty");
    Ok(token)
}

impl Daemon {
    /// The daemon at `url`, verified against `ca_file` when it is `https://`, called with `token`.
    pub fn new(url: &str, ca_file: Option<&Path>, token: String) -> anyhow::Result<Self> {
        let (https, host, port) = parse_daemon_url(url)?;
        let tls = if https {
            let config = palyra_proto::quic::tls::client_config(
                &ca_der(ca_file)?,
                None,
                palyra_proto::quic::tls::ALPN_HTTP1,
            )?;
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Self {
            host,
            port,
            tls,
            token,
        })
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A hint for answers that do not parse: a cleartext client talking to a TLS listener.
    pub fn garbled_hint(&self) -> &'static str {
        if self.tls.is_some() {
            ""
        } else {
            " (if palyrad runs with --http-tls, use an https:// --daemon URL)"
        }
    }

    /// `HOST:PORT` as sent in `Host` (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The console stream's URL (`ws://` or `wss://`).
    pub fn stream_url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/console/v1/stream", self.authority())
    }

    /// Opens a connection (TLS handshake included) whose reads time out after `read_timeout`.
    pub fn connect(&self, read_timeout: Duration) -> anyhow::Result<Conn> {
        let authority = self.authority();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .with_context(|| format!("cannot connect to palyrad at {authority}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(read_timeout))?;
        tcp.set_write_timeout(Some(read_timeout))?;
        let Some(tls) = &self.tls else {
            return Ok(Conn::Plain(tcp));
        };
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .with_context(|| format!("{:?} is not a valid TLS server name", self.host))?;
        let mut conn = rustls::ClientConnection::new(Arc::clone(tls), name)?;
        let mut tcp = tcp;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)
                .with_context(|| format!("TLS handshake with palyrad at {authority} failed"))?;
        }
        Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    /// Calls the admin API: `method path` with an optional JSON body; the JSON answer, or an
    /// [`ApiError`] carrying the daemon's error envelope.
    pub fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let mut conn = self.connect(CALL_TIMEOUT)?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {}", self.token))
                .context("the admin token is not a valid header value")?,
        );
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let body = match body {
            Some(value) => {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                serde_json::to_vec(value)?
            }
            None => Vec::new(),
        };
        let mut client = Http1Client::new(&self.authority());
        client.send_request(method.clone(), path, &headers, &body);
        while let Some(bytes) = client.poll_transmit() {
            conn.write_all(&bytes).context("sending the request")?;
        }
        conn.flush()?;
        let (status, answer) = read_answer(&mut conn, &mut client).with_context(|| {
            format!(
                "{method} {path}: no complete answer from palyrad{}",
                self.garbled_hint()
            )
        })?;
        let json: Value = if answer.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&answer).with_context(|| {
                format!("{method} {path}: palyrad answered {status} with a body that is not JSON")
            })?
        };
        if !status.is_success() {
            return Err(ApiError {
                status,
                code: json["code"].as_str().unwrap_or("unknown").to_owned(),
                message: json["error"].as_str().unwrap_or("no message").to_owned(),
            }
            .into());
        }
        Ok(json)
    }
}

/// A typed answer and the JSON it was read from (printed as is by `--json`).
#[derive(Debug)]
pub struct Answer<T> {
    /// The answer.
    pub value: T,
    /// Its JSON, as the daemon sent it.
    pub raw: Value,
}

impl Daemon {
    /// Calls one typed admin endpoint ([`crate::operator::api`]): the request is its body, the
    /// answer is read as its response type.
    pub fn send<E: crate::operator::api::Endpoint>(
        &self,
        request: &E,
    ) -> anyhow::Result<Answer<E::Response>> {
        let path = request.path();
        let body = if E::HAS_BODY {
            Some(serde_json::to_value(request)?)
        } else {
            None
        };
        let raw = self.call(E::METHOD, &path, body.as_ref())?;
        let value = serde_json::from_value(raw.clone()).with_context(|| {
            format!(
                "{} {path}: palyrad's answer is not what this CLI expects",
                E::METHOD
            )
        })?;
        Ok(Answer { value, raw })
    }
}

/// Reads one response: its status and body (bounded).
fn read_answer(conn: &mut Conn, client: &mut Http1Client) -> anyhow::Result<(StatusCode, Vec<u8>)> {
    let mut status = None;
    let mut body = BytesMut::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(event) = client.poll_event() {
            match event {
                Event::Response { status: s, .. } => status = Some(s),
                Event::Body(chunk) => {
                    if body.len() + chunk.len() > MAX_ANSWER {
                        bail!("the answer is larger than {MAX_ANSWER} bytes");
                    }
                    body.extend_from_slice(&chunk);
                }
                Event::End => {
                    let status = status.context("a body without a status")?;
                    return Ok((status, body.to_vec()));
                }
                Event::Failed(reason) => bail!("{reason}"),
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => client.handle_eof(),
            Ok(n) => client.handle_input(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                bail!("palyrad did not answer within {} s", CALL_TIMEOUT.as_secs())
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_urls() {
        assert_eq!(
            parse_daemon_url("http://127.0.0.1:8080/").unwrap(),
            (false, "127.0.0.1".into(), 8080)
        );
        assert_eq!(
            parse_daemon_url("https://[::1]:8443").unwrap(),
            (true, "::1".into(), 8443)
        );
        for bad in [
            "ftp://x:1",
            "http://nohost",
            "http://:80",
            "http://x:80/admin",
            "http://x:port",
        ] {
            assert!(parse_daemon_url(bad).is_err(), "{bad}");
        }
    }
}
