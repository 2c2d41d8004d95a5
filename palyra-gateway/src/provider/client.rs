//! The provider client over any runtime: one connection per request (cleartext or TLS), the
//! answer streamed to the caller as it arrives, refused requests retried before the first token
//! as [`retry_delay`] says, and timeouts on the connect and on silence.

use crate::runtime::{self, Rt, TcpIo};
use http::StatusCode;
use palyra_proto::openai::call::{retry_delay, CallEvent, ChatCall, ChatRequest};
use palyra_proto::openai::chat::{ChatEvent, ChatLimits};
use palyra_proto::transport::tls::TlsStream;
use palyra_proto::transport::StreamMachine;
use std::sync::Arc;
use std::time::Duration;

/// Where the provider listens: a parsed `base_url` (`http://host:port/v1`, `https://...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https`.
    pub tls: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port (80 or 443 unless given).
    pub port: u16,
    /// The path before `/chat/completions` (`/v1`, or empty).
    pub prefix: String,
}

impl Endpoint {
    /// Parses `base_url`; the error says what is wrong with it.
    pub fn parse(base_url: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = base_url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = base_url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!(
                "model base_url {base_url:?} must start with http:// or https://"
            ));
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("model base_url {base_url:?} has a bad port"))?;
                (host, port)
            }
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("model base_url {base_url:?} names no host"));
        }
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            prefix: path.trim_end_matches('/').to_owned(),
        })
    }
}

/// How to reach the provider and how long to wait for it.
#[derive(Clone)]
pub struct ProviderSettings {
    /// Where.
    pub endpoint: Endpoint,
    /// The bearer token, if the provider wants one.
    pub api_key: Option<String>,
    /// The roots that verify an `https` provider.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connecting (and the TLS handshake) may take this long.
    pub connect_timeout: Duration,
    /// The provider may be silent this long (before the first byte, and between bytes).
    pub idle_timeout: Duration,
    /// Refused requests are retried at most this many times, and only before the first token.
    pub max_retries: u32,
    /// Limits on the answer.
    pub limits: ChatLimits,
}

/// Why a request produced no (complete) answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// Connecting failed or timed out.
    #[error("cannot reach the model provider at {endpoint}: {reason}")]
    Unreachable {
        /// `host:port`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The provider refused the request (after any retries).
    #[error("the model provider answered {status}: {message}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// What its `Retry-After` asked for.
        retry_after: Option<Duration>,
        /// Its error message.
        message: String,
    },
    /// The provider was silent too long.
    #[error("the model provider sent nothing for {0:?}")]
    Silent(Duration),
    /// The answer broke off or was malformed.
    #[error("{0}")]
    Failed(String),
}

/// The connection's machine: the call, in cleartext or inside TLS.
enum Machine {
    Plain(Box<ChatCall>),
    Tls(Box<TlsStream<ChatCall>>),
}

impl Machine {
    fn stream(&mut self) -> &mut dyn StreamMachine {
        match self {
            Machine::Plain(call) => call.as_mut(),
            Machine::Tls(tls) => tls.as_mut(),
        }
    }

    fn call(&mut self) -> Option<&mut ChatCall> {
        match self {
            Machine::Plain(call) => Some(call),
            Machine::Tls(tls) => tls.inner_mut(),
        }
    }
}

/// Tells a provider call when it may read on: whoever consumes the answer keeps up. While it
/// says no, the call reads nothing from the provider's connection (TCP then holds the provider
/// back), so a slow consumer grows no buffer.
pub trait Pace: Send + Sync {
    /// Whether the call may read more now.
    fn may_read(&self) -> bool;
    /// Completes when [`Pace::may_read`] may have changed.
    fn listen(&self) -> event_listener::EventListener;
}

/// Streams the answer to `request`: `on_event` gets every part as it arrives. A refusal is
/// retried (with its wait) while no part has been given out; after that an error is final.
pub async fn stream_chat(
    rt: &Rt,
    settings: &ProviderSettings,
    request: &ChatRequest,
    on_event: impl FnMut(ChatEvent) + Send,
) -> Result<(), ProviderError> {
    stream_chat_paced(rt, settings, request, None, on_event).await
}

/// [`stream_chat`] reading the provider only while `pace` allows.
pub async fn stream_chat_paced(
    rt: &Rt,
    settings: &ProviderSettings,
    request: &ChatRequest,
    pace: Option<&dyn Pace>,
    mut on_event: impl FnMut(ChatEvent) + Send,
) -> Result<(), ProviderError> {
    let mut attempt = 0;
    loop {
        let mut answered = false;
        let outcome = attempt_once(rt, settings, request, pace, &mut |event| {
            answered = true;
            on_event(event);
        })
        .await;
        match outcome {
            Err(ProviderError::Refused {
                status,
                retry_after,
                message,
            }) if !answered => {
                attempt += 1;
                match retry_delay(status, retry_after, attempt, settings.max_retries) {
                    Some(delay) => {
                        tracing::info!(%status, ?delay, attempt, "model provider refused; retrying");
                        runtime::sleep(rt.as_ref(), delay).await;
                    }
                    None => {
                        return Err(ProviderError::Refused {
                            status,
                            retry_after,
                            message,
                        })
                    }
                }
            }
            other => return other,
        }
    }
}

async fn attempt_once(
    rt: &Rt,
    settings: &ProviderSettings,
    request: &ChatRequest,
    pace: Option<&dyn Pace>,
    on_event: &mut (dyn FnMut(ChatEvent) + Send),
) -> Result<(), ProviderError> {
    let endpoint = &settings.endpoint;
    // An IPv6 address is written in brackets, in the socket address and in `Host`.
    let host = match endpoint.host.contains(':') {
        true => format!("[{}]", endpoint.host),
        false => endpoint.host.clone(),
    };
    let target = format!("{host}:{}", endpoint.port);
    let unreachable = |reason: String| ProviderError::Unreachable {
        endpoint: target.clone(),
        reason,
    };
    let connect = async {
        let addrs = runtime::lookup_host(rt.as_ref(), &target).await?;
        let addr = addrs
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::other("the name resolves to no address"))?;
        rt.connect_tcp(addr).await
    };
    let stream: Box<dyn TcpIo> = runtime::timeout(rt.as_ref(), settings.connect_timeout, connect)
        .await
        .ok_or_else(|| {
            unreachable(format!(
                "no connection within {:?}",
                settings.connect_timeout
            ))
        })?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = stream.socket().set_tcp_nodelay(true);
    let path = format!("{}/chat/completions", endpoint.prefix);
    let host_header = match endpoint.port {
        80 if !endpoint.tls => host,
        443 if endpoint.tls => host,
        _ => target.clone(),
    };
    let call = ChatCall::new(
        &host_header,
        &path,
        settings.api_key.as_deref(),
        request,
        settings.limits,
    )
    .map_err(ProviderError::Failed)?;
    let mut machine = match (endpoint.tls, &settings.tls) {
        (false, _) => Machine::Plain(Box::new(call)),
        (true, Some(tls)) => Machine::Tls(Box::new(
            TlsStream::client(Arc::clone(tls), &endpoint.host, call, rt.now())
                .map_err(|e| unreachable(e.to_string()))?,
        )),
        (true, None) => return Err(unreachable("https needs TLS roots".into())),
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while let Some(bytes) = machine.stream().poll_transmit() {
            runtime::write_all(stream.as_ref(), &bytes)
                .await
                .map_err(|e| {
                    ProviderError::Failed(format!("writing to the model provider: {e}"))
                })?;
        }
        if let Some(call) = machine.call() {
            while let Some(event) = call.poll_event() {
                match event {
                    CallEvent::Chat(event) => on_event(event),
                    CallEvent::Done => return Ok(()),
                    CallEvent::Failed(reason) => return Err(ProviderError::Failed(reason)),
                    CallEvent::Refused {
                        status,
                        retry_after,
                        message,
                    } => {
                        return Err(ProviderError::Refused {
                            status,
                            retry_after,
                            message,
                        })
                    }
                }
            }
        }
        if machine.stream().is_closed() {
            let failure = machine.stream().failure().map(str::to_owned);
            return Err(ProviderError::Failed(failure.unwrap_or_else(|| {
                "the model provider connection closed without an answer".into()
            })));
        }
        if let Some(pace) = pace {
            loop {
                // Listen before looking, so a change in between is not missed.
                let listener = pace.listen();
                if pace.may_read() {
                    break;
                }
                listener.await;
            }
        }
        let read = runtime::timeout(
            rt.as_ref(),
            settings.idle_timeout,
            runtime::read(stream.as_ref(), &mut buf),
        )
        .await
        .ok_or(ProviderError::Silent(settings.idle_timeout))?
        .map_err(|e| ProviderError::Failed(format!("reading from the model provider: {e}")))?;
        let now = rt.now();
        match read {
            0 => machine.stream().handle_eof(),
            n => machine.stream().handle_input(now, &buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.prefix.as_str()),
            (false, "127.0.0.1", 8080, "/v1")
        );
        let e = Endpoint::parse("https://api.example.com/v1").unwrap();
        assert_eq!((e.tls, e.port, e.prefix.as_str()), (true, 443, "/v1"));
        let e = Endpoint::parse("http://[::1]:11434").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.prefix.as_str()),
            ("::1", 11434, "")
        );
        assert!(Endpoint::parse("ftp://x").unwrap_err().contains("http://"));
        assert!(Endpoint::parse("http://host:99999/v1")
            .unwrap_err()
            .contains("port"));
        assert!(Endpoint::parse("http:///v1")
            .unwrap_err()
            .contains("no host"));
    }
}
