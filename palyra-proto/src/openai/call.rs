//! One chat-completions request as a connection machine, without IO: the HTTP/1.1 request goes
//! out, and the answer is decoded as it arrives ([`super::chat`]). It is a [`StreamMachine`], so
//! TLS wraps it like any other connection. The retry policy for refused requests is here too.

use super::chat::{ChatEvent, ChatLimits, ChatStream};
use crate::http1::client::{Event as HttpEvent, Http1Client};
use crate::transport::StreamMachine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Largest error answer read (its message is shown; the rest is dropped).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// What the request to send says.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The model name.
    pub model: String,
    /// The conversation, as OpenAI chat messages (`{"role", "content", ...}`).
    pub messages: Vec<Value>,
    /// The tools offered, as OpenAI function tools (`{"type":"function","function":{...}}`).
    pub tools: Vec<Value>,
    /// Further parameters (`max_tokens`, `temperature`, `stop`, `tool_choice`, ...), sent as
    /// they are; they cannot replace the model, the messages or the streaming parameters.
    pub options: serde_json::Map<String, Value>,
}

impl ChatRequest {
    /// The JSON body: streamed, with usage on the last chunk.
    pub fn body(&self) -> Vec<u8> {
        let mut body = json!({
            "model": self.model,
            "messages": self.messages,
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        if !self.tools.is_empty() {
            body["tools"] = Value::Array(self.tools.clone());
        }
        if let Value::Object(fields) = &mut body {
            for (name, value) in &self.options {
                let ours = ["model", "messages", "stream", "stream_options", "tools"];
                let dropped = ours.contains(&name.as_str())
                    || (name == "tool_choice" && self.tools.is_empty());
                if !dropped {
                    fields.insert(name.clone(), value.clone());
                }
            }
        }
        body.to_string().into_bytes()
    }
}

/// What the call reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// Part of the answer.
    Chat(ChatEvent),
    /// The server refused the request (a status other than 200), with its `Retry-After` and
    /// the error message of its body.
    Refused {
        /// The status.
        status: StatusCode,
        /// What `Retry-After` asked for (seconds only; an HTTP date is ignored).
        retry_after: Option<Duration>,
        /// The error's message, or the start of the body.
        message: String,
    },
    /// The answer cannot be used: malformed, over a limit, cut, or the connection failed.
    Failed(String),
    /// The answer is complete.
    Done,
}

enum State {
    Head,
    Streaming,
    Refused(StatusCode, Option<Duration>, Vec<u8>),
    Over,
}

/// One request on its own connection.
pub struct ChatCall {
    http: Http1Client,
    chat: ChatStream,
    state: State,
    events: VecDeque<CallEvent>,
}

impl ChatCall {
    /// The call of `request` to `path` (`/v1/chat/completions`, say) on `host`, with
    /// `api_key` as the bearer token when there is one.
    pub fn new(
        host: &str,
        path: &str,
        api_key: Option<&str>,
        request: &ChatRequest,
        limits: ChatLimits,
    ) -> Result<Self, String> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert("accept", HeaderValue::from_static("text/event-stream"));
        headers.insert("connection", HeaderValue::from_static("close"));
        if let Some(key) = api_key {
            let value = HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| "the API key is not a valid header value".to_owned())?;
            headers.insert("authorization", value);
        }
        let mut http = Http1Client::new(host);
        http.send_request(Method::POST, path, &headers, &request.body());
        Ok(Self {
            http,
            chat: ChatStream::new(limits),
            state: State::Head,
            events: VecDeque::new(),
        })
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    fn pump(&mut self) {
        while let Some(event) = self.http.poll_event() {
            if matches!(self.state, State::Over) {
                continue;
            }
            match event {
                HttpEvent::Response { status, .. } if status == StatusCode::OK => {
                    self.state = State::Streaming;
                }
                HttpEvent::Response { status, headers } => {
                    let retry_after = headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    self.state = State::Refused(status, retry_after, Vec::new());
                }
                HttpEvent::Body(bytes) => self.body(&bytes),
                HttpEvent::End => self.end(),
                HttpEvent::Failed(reason) => self.fail(format!("model provider: {reason}")),
            }
        }
    }

    fn body(&mut self, bytes: &Bytes) {
        match &mut self.state {
            State::Streaming => {
                let result = self.chat.handle_body(bytes);
                self.drain_chat();
                if let Err(error) = result {
                    self.fail(error.to_string());
                }
            }
            State::Refused(_, _, body) => {
                let room = MAX_ERROR_BODY.saturating_sub(body.len());
                body.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            State::Head | State::Over => {}
        }
    }

    fn end(&mut self) {
        match std::mem::replace(&mut self.state, State::Over) {
            State::Streaming => {
                let result = self.chat.handle_end();
                self.drain_chat();
                match result {
                    Ok(()) => self.events.push_back(CallEvent::Done),
                    Err(error) => self.events.push_back(CallEvent::Failed(error.to_string())),
                }
            }
            State::Refused(status, retry_after, body) => {
                self.events.push_back(CallEvent::Refused {
                    status,
                    retry_after,
                    message: error_message(&body),
                });
            }
            State::Head | State::Over => {}
        }
    }

    fn drain_chat(&mut self) {
        while let Some(event) = self.chat.poll_event() {
            self.events.push_back(CallEvent::Chat(event));
        }
    }

    fn fail(&mut self, reason: String) {
        if !matches!(self.state, State::Over) {
            self.state = State::Over;
            self.events.push_back(CallEvent::Failed(reason));
        }
    }
}

/// The message of an OpenAI-style error body (`{"error":{"message"}}`), else its start.
fn error_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| e.get("message").or(Some(e)))
    {
        Some(Value::String(message)) => message.clone(),
        _ => String::from_utf8_lossy(&body[..body.len().min(300)])
            .trim()
            .to_owned(),
    }
}

impl StreamMachine for ChatCall {
    fn handle_input(&mut self, _now: Instant, bytes: &[u8]) {
        self.http.handle_input(bytes);
        self.pump();
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn handle_wake(&mut self, _now: Instant) {}

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    fn poll_transmit(&mut self) -> Option<Bytes> {
        self.http.poll_transmit()
    }

    fn is_closed(&self) -> bool {
        matches!(self.state, State::Over)
    }

    fn handle_eof(&mut self) {
        self.http.handle_eof();
        self.pump();
        self.fail("model provider closed the connection".into());
    }

    fn go_away(&mut self) {
        self.fail("stopped".into());
    }
}

/// How long to wait before retrying a refused request (attempt 1 is the first retry), or
/// `None` when it is not to be retried: only 408, 429 and 5xx are, at most `max_retries`
/// times, waiting what `Retry-After` asks (up to a minute) or 0.5 s doubling up to 30 s.
pub fn retry_delay(
    status: StatusCode,
    retry_after: Option<Duration>,
    attempt: u32,
    max_retries: u32,
) -> Option<Duration> {
    let retryable = status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    if !retryable || attempt > max_retries {
        return None;
    }
    let backoff = Duration::from_millis(500)
        .saturating_mul(1 << attempt.saturating_sub(1).min(6))
        .min(Duration::from_secs(30));
    Some(retry_after.map_or(backoff, |d| d.min(Duration::from_secs(60))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::chat::FinishReason;

    fn call() -> ChatCall {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![json!({"role": "user", "content": "hi"})],
            tools: vec![],
            options: Default::default(),
        };
        ChatCall::new(
            "up",
            "/v1/chat/completions",
            Some("k"),
            &request,
            ChatLimits::default(),
        )
        .unwrap()
    }

    fn run(answer: &[u8], eof: bool) -> (String, Vec<CallEvent>) {
        let mut c = call();
        let now = Instant::now();
        let request = String::from_utf8(c.poll_transmit().unwrap().to_vec()).unwrap();
        c.handle_input(now, answer);
        if eof {
            c.handle_eof();
        }
        (request, std::iter::from_fn(|| c.poll_event()).collect())
    }

    #[test]
    fn the_request_is_a_streamed_post_with_the_key_and_the_answer_streams() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
        let (request, events) = run(answer, true);
        assert!(request.starts_with("POST /v1/chat/completions HTTP/1.1\r\n"));
        assert!(request.contains("authorization: Bearer k\r\n"));
        assert!(request.contains("\"stream\":true") && request.contains("include_usage"));
        assert_eq!(
            events,
            vec![
                CallEvent::Chat(ChatEvent::Token("Hi".into())),
                CallEvent::Chat(ChatEvent::Finished {
                    reason: FinishReason::Stop,
                    tool_calls: vec![],
                }),
                CallEvent::Done,
            ]
        );
    }

    #[test]
    fn a_refusal_carries_status_retry_after_and_message() {
        let answer = b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 3\r\ncontent-length: 44\r\n\r\n{\"error\":{\"message\":\"slow down\",\"type\":\"x\"}}";
        let (_, events) = run(answer, false);
        assert_eq!(
            events,
            vec![CallEvent::Refused {
                status: StatusCode::TOO_MANY_REQUESTS,
                retry_after: Some(Duration::from_secs(3)),
                message: "slow down".into(),
            }]
        );
    }

    #[test]
    fn a_stream_cut_off_mid_way_fails_with_the_reason() {
        let answer =
            b"HTTP/1.1 200 OK\r\n\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n";
        let (_, events) = run(answer, true);
        assert_eq!(events[0], CallEvent::Chat(ChatEvent::Token("Hi".into())));
        assert!(
            matches!(&events[1], CallEvent::Failed(reason) if reason.contains("ended before")),
            "{events:?}"
        );
        assert_eq!(events.len(), 2, "one failure, not two");
    }

    #[test]
    fn retries_only_what_may_succeed_later() {
        let d = |status, retry_after, attempt| retry_delay(status, retry_after, attempt, 3);
        assert_eq!(
            d(StatusCode::TOO_MANY_REQUESTS, None, 1),
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            d(StatusCode::BAD_GATEWAY, None, 3),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            d(
                StatusCode::TOO_MANY_REQUESTS,
                Some(Duration::from_secs(7)),
                1
            ),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            d(
                StatusCode::SERVICE_UNAVAILABLE,
                Some(Duration::from_secs(600)),
                1
            ),
            Some(Duration::from_secs(60)),
            "a huge Retry-After is capped"
        );
        assert_eq!(
            d(StatusCode::TOO_MANY_REQUESTS, None, 4),
            None,
            "budget spent"
        );
        assert_eq!(d(StatusCode::UNAUTHORIZED, None, 1), None);
        assert_eq!(d(StatusCode::BAD_REQUEST, None, 1), None);
    }
}
