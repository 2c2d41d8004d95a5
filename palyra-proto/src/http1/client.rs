//! The HTTP/1.1 client connection machine: requests go out in order (pipelining allowed),
//! responses are parsed in the same order with Content-Length, chunked or close-delimited bodies;
//! `1xx` interim responses are skipped, HEAD responses carry no body.

use super::chunked::{Chunk, ChunkedDecoder};
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use std::collections::VecDeque;

/// Largest response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A response head (in request order).
    Response {
        /// Status.
        status: StatusCode,
        /// Header fields.
        headers: HeaderMap,
    },
    /// Body bytes.
    Body(Bytes),
    /// The response is complete.
    End,
    /// The connection is unusable (malformed response, early close).
    Failed(String),
}

#[derive(Debug)]
enum Reading {
    Head,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// An HTTP/1.1 client connection.
pub struct Http1Client {
    host: String,
    out: BytesMut,
    buf: BytesMut,
    /// Methods of requests whose responses are outstanding, oldest first.
    waiting: VecDeque<Method>,
    reading: Reading,
    events: VecDeque<Event>,
    failed: bool,
}

impl Http1Client {
    /// A connection to `host` (sent as `Host`).
    pub fn new(host: &str) -> Self {
        Self {
            host: host.to_owned(),
            out: BytesMut::new(),
            buf: BytesMut::new(),
            waiting: VecDeque::new(),
            reading: Reading::Head,
            events: VecDeque::new(),
            failed: false,
        }
    }

    /// Queues a request; a body is sent with `Content-Length`.
    pub fn send_request(&mut self, method: Method, target: &str, headers: &HeaderMap, body: &[u8]) {
        self.out.extend_from_slice(
            format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.host).as_bytes(),
        );
        for (name, value) in headers {
            if name == http::header::HOST || name == http::header::CONTENT_LENGTH {
                continue;
            }
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || matches!(method, Method::POST | Method::PUT | Method::PATCH) {
            self.out
                .extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body);
        self.waiting.push_back(method);
    }

    /// Bytes to write.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Responses still expected.
    pub fn outstanding(&self) -> usize {
        self.waiting.len()
    }

    /// Bytes read from the transport.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        self.buf.extend_from_slice(bytes);
        if let Err(reason) = self.process() {
            self.fail(reason);
        }
    }

    /// The server closed the connection.
    pub fn handle_eof(&mut self) {
        if self.failed {
            return;
        }
        if matches!(self.reading, Reading::UntilClose) {
            let data = self.buf.split().freeze();
            if !data.is_empty() {
                self.events.push_back(Event::Body(data));
            }
            self.events.push_back(Event::End);
            self.waiting.pop_front();
            self.reading = Reading::Head;
        }
        if !self.waiting.is_empty() || !matches!(self.reading, Reading::Head) {
            self.fail("connection closed before the response was complete".into());
        }
    }

    fn fail(&mut self, reason: String) {
        self.failed = true;
        self.events.push_back(Event::Failed(reason));
    }

    fn process(&mut self) -> Result<(), String> {
        loop {
            match &mut self.reading {
                Reading::Head => {
                    if self.buf.is_empty() {
                        return Ok(());
                    }
                    let mut headers = [httparse::EMPTY_HEADER; 100];
                    let mut response = httparse::Response::new(&mut headers);
                    let len = match response.parse(&self.buf) {
                        Ok(httparse::Status::Complete(len)) => len,
                        Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                            return Err("response head too large".into())
                        }
                        Ok(httparse::Status::Partial) => return Ok(()),
                        Err(e) => return Err(format!("malformed response head: {e}")),
                    };
                    let status = StatusCode::from_u16(response.code.unwrap_or(0))
                        .map_err(|_| "bad status code".to_string())?;
                    let mut map = HeaderMap::new();
                    for h in response.headers.iter() {
                        let name = HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| "bad header name".to_string())?;
                        let value = HeaderValue::from_bytes(h.value)
                            .map_err(|_| "bad header value".to_string())?;
                        map.append(name, value);
                    }
                    self.buf.advance(len);
                    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    let method = self
                        .waiting
                        .front()
                        .cloned()
                        .ok_or_else(|| "response without a request".to_string())?;
                    let no_body = method == Method::HEAD
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED
                        || status == StatusCode::SWITCHING_PROTOCOLS;
                    let chunked = map
                        .get(http::header::TRANSFER_ENCODING)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
                    let length = map
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok());
                    self.events.push_back(Event::Response {
                        status,
                        headers: map,
                    });
                    self.reading = if no_body {
                        Reading::Length(0)
                    } else if chunked {
                        Reading::Chunked(ChunkedDecoder::new())
                    } else if let Some(n) = length {
                        Reading::Length(n)
                    } else {
                        Reading::UntilClose
                    };
                }
                Reading::Length(left) => {
                    if *left > 0 {
                        if self.buf.is_empty() {
                            return Ok(());
                        }
                        let take = (*left).min(self.buf.len() as u64) as usize;
                        *left -= take as u64;
                        let data = self.buf.split_to(take).freeze();
                        self.events.push_back(Event::Body(data));
                    }
                    if let Reading::Length(0) = self.reading {
                        self.end_response();
                    }
                }
                Reading::Chunked(decoder) => match decoder.decode(&mut self.buf) {
                    Ok(None) => return Ok(()),
                    Ok(Some(Chunk::Data(data))) => self.events.push_back(Event::Body(data)),
                    Ok(Some(Chunk::End)) => self.end_response(),
                    Err(e) => return Err(e.to_string()),
                },
                // A body that ends with the connection (an event stream, typically) is handed
                // on as it arrives, never held until the close.
                Reading::UntilClose => {
                    if !self.buf.is_empty() {
                        let data = self.buf.split().freeze();
                        self.events.push_back(Event::Body(data));
                    }
                    return Ok(());
                }
            }
        }
    }

    fn end_response(&mut self) {
        self.events.push_back(Event::End);
        self.waiting.pop_front();
        self.reading = Reading::Head;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(c: &mut Http1Client) -> Vec<Event> {
        std::iter::from_fn(|| c.poll_event()).collect()
    }

    #[test]
    fn a_close_delimited_body_streams_as_it_arrives() {
        let mut c = Http1Client::new("model.example");
        c.send_request(
            Method::POST,
            "/v1/chat/completions",
            &HeaderMap::new(),
            b"{}",
        );
        let request = c.poll_transmit().unwrap();
        assert!(
            request.starts_with(b"POST /v1/chat/completions HTTP/1.1\r\nhost: model.example\r\n")
        );
        c.handle_input(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: 1\n\n");
        let first = events(&mut c);
        assert!(matches!(
            first[0],
            Event::Response {
                status: StatusCode::OK,
                ..
            }
        ));
        assert_eq!(
            first[1],
            Event::Body(Bytes::from_static(b"data: 1\n\n")),
            "not held back"
        );
        c.handle_input(b"data: 2\n\n");
        assert_eq!(
            events(&mut c),
            vec![Event::Body(Bytes::from_static(b"data: 2\n\n"))]
        );
        c.handle_eof();
        assert_eq!(events(&mut c), vec![Event::End]);
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn a_length_delimited_error_answer_and_an_early_close() {
        let mut c = Http1Client::new("h");
        c.send_request(Method::POST, "/x", &HeaderMap::new(), b"{}");
        c.handle_input(
            b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: 2\r\n\r\n{}",
        );
        let got = events(&mut c);
        assert!(matches!(&got[0], Event::Response { status, headers }
            if *status == StatusCode::TOO_MANY_REQUESTS && headers["retry-after"] == "1"));
        assert_eq!(
            got[1..],
            [Event::Body(Bytes::from_static(b"{}")), Event::End]
        );
        c.send_request(Method::POST, "/x", &HeaderMap::new(), b"{}");
        c.handle_input(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
        c.handle_eof();
        assert!(
            matches!(events(&mut c).last(), Some(Event::Failed(_))),
            "cut body"
        );
    }
}
