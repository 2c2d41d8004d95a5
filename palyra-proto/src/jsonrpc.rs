//! Newline-delimited JSON-RPC 2.0 (the Agent Client Protocol's stdio transport) without IO:
//! bytes in, messages out; a line over the limit is skipped to its newline and reported once;
//! a line that is not a JSON-RPC message is reported with the error object to answer it with
//! (-32700 parse error, -32600 invalid request), so the peer learns what was wrong.

use serde_json::{json, Value};
use std::collections::VecDeque;

/// Parse error.
pub const PARSE_ERROR: i64 = -32700;
/// Not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// No such method.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// Largest line accepted by default (ACP prompts can carry files).
pub const DEFAULT_MAX_LINE: usize = 4 * 1024 * 1024;
/// Largest nesting depth accepted.
pub const MAX_DEPTH: usize = 64;

/// A request or notification ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// A number.
    Number(i64),
    /// A string.
    Text(String),
}

impl Id {
    /// As JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Id::Number(n) => json!(n),
            Id::Text(s) => json!(s),
        }
    }

    fn parse(value: &Value) -> Option<Self> {
        match value {
            Value::Number(n) => n.as_i64().map(Id::Number),
            Value::String(s) => Some(Id::Text(s.clone())),
            _ => None,
        }
    }
}

/// An error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    /// Its code.
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// More, if any.
    pub data: Option<Value>,
}

impl RpcError {
    /// An error with `code` and `message`.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// One message read.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A request (answer it with its ID).
    Request {
        /// Its ID.
        id: Id,
        /// The method.
        method: String,
        /// Its parameters (`null` when absent).
        params: Value,
    },
    /// A notification (no answer).
    Notification {
        /// The method.
        method: String,
        /// Its parameters.
        params: Value,
    },
    /// An answer to one of our requests.
    Response {
        /// The request's ID.
        id: Id,
        /// Its result or error.
        result: Result<Value, RpcError>,
    },
    /// A line that is not a message: answer with this error (and this ID, when it had one).
    Invalid {
        /// The line's ID, if it had a readable one.
        id: Option<Id>,
        /// What to answer.
        error: RpcError,
    },
}

/// The reading side: feed it bytes, take messages.
#[derive(Debug)]
pub struct LineReader {
    max_line: usize,
    line: Vec<u8>,
    /// Skipping an overlong line up to its newline.
    skipping: bool,
    messages: VecDeque<Message>,
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses one line (without its newline).
pub fn parse_line(line: &[u8]) -> Message {
    let invalid = |id, code, message: &str| Message::Invalid {
        id,
        error: RpcError::new(code, message),
    };
    let value: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return invalid(None, PARSE_ERROR, &format!("parse error: {e}")),
    };
    if depth(&value) > MAX_DEPTH {
        return invalid(None, INVALID_REQUEST, "the message is nested too deeply");
    }
    let Value::Object(map) = value else {
        return invalid(
            None,
            INVALID_REQUEST,
            "a message must be a JSON object (batches are not used by ACP)",
        );
    };
    let id = map.get("id").and_then(Id::parse);
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(id, INVALID_REQUEST, "jsonrpc must be \"2.0\"");
    }
    if map.contains_key("id") && id.is_none() && !map.get("id").is_some_and(Value::is_null) {
        return invalid(None, INVALID_REQUEST, "id must be a number or a string");
    }
    let params = map.get("params").cloned().unwrap_or(Value::Null);
    if !matches!(params, Value::Null | Value::Object(_) | Value::Array(_)) {
        return invalid(id, INVALID_REQUEST, "params must be an object or an array");
    }
    match (map.get("method"), id) {
        (Some(Value::String(method)), Some(id)) => Message::Request {
            id,
            method: method.clone(),
            params,
        },
        (Some(Value::String(method)), None) => Message::Notification {
            method: method.clone(),
            params,
        },
        (Some(_), id) => invalid(id, INVALID_REQUEST, "method must be a string"),
        (None, Some(id)) => match (map.get("result"), map.get("error")) {
            (Some(result), None) => Message::Response {
                id,
                result: Ok(result.clone()),
            },
            (None, Some(error)) => {
                let code = error.get("code").and_then(Value::as_i64);
                let message = error.get("message").and_then(Value::as_str);
                match (code, message) {
                    (Some(code), Some(message)) => Message::Response {
                        id,
                        result: Err(RpcError {
                            code,
                            message: message.to_owned(),
                            data: error.get("data").cloned(),
                        }),
                    },
                    _ => invalid(
                        Some(id),
                        INVALID_REQUEST,
                        "error must have a code and a message",
                    ),
                }
            }
            _ => invalid(
                Some(id),
                INVALID_REQUEST,
                "a response has exactly one of result and error",
            ),
        },
        (None, None) => invalid(None, INVALID_REQUEST, "a message needs a method or an id"),
    }
}

impl LineReader {
    /// A reader accepting lines of at most `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            line: Vec::new(),
            skipping: false,
            messages: VecDeque::new(),
        }
    }

    /// Feeds bytes.
    pub fn handle_input(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let newline = bytes.iter().position(|&b| b == b'\n');
            let (part, rest) = match newline {
                Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
                None => (bytes, None),
            };
            if !self.skipping {
                if self.line.len() + part.len() > self.max_line {
                    self.skipping = true;
                    self.line.clear();
                    self.messages.push_back(Message::Invalid {
                        id: None,
                        error: RpcError::new(
                            INVALID_REQUEST,
                            format!("a message is longer than {} bytes", self.max_line),
                        ),
                    });
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            match rest {
                Some(rest) => {
                    if !self.skipping {
                        self.finish_line();
                    }
                    self.skipping = false;
                    self.line.clear();
                    bytes = rest;
                }
                None => return,
            }
        }
    }

    fn finish_line(&mut self) {
        let line = std::mem::take(&mut self.line);
        let trimmed = line.trim_ascii();
        if !trimmed.is_empty() {
            self.messages.push_back(parse_line(trimmed));
        }
    }

    /// The input ended: a last line without its newline is read too.
    pub fn handle_end(&mut self) {
        if !self.skipping && !self.line.is_empty() {
            self.finish_line();
        }
        self.line.clear();
        self.skipping = false;
    }

    /// The next message.
    pub fn poll_message(&mut self) -> Option<Message> {
        self.messages.pop_front()
    }
}

/// A request line.
pub fn request(id: &Id, method: &str, params: Value) -> Vec<u8> {
    line(json!({"jsonrpc": "2.0", "id": id.to_json(), "method": method, "params": params}))
}

/// A notification line.
pub fn notification(method: &str, params: Value) -> Vec<u8> {
    line(json!({"jsonrpc": "2.0", "method": method, "params": params}))
}

/// A response line (`id` `None` answers a line whose ID could not be read).
pub fn response(id: Option<&Id>, result: Result<Value, RpcError>) -> Vec<u8> {
    let id = id.map_or(Value::Null, Id::to_json);
    match result {
        Ok(result) => line(json!({"jsonrpc": "2.0", "id": id, "result": result})),
        Err(error) => line(json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()})),
    }
}

fn line(value: Value) -> Vec<u8> {
    let mut out = value.to_string().into_bytes();
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn read(input: &[u8]) -> Vec<Message> {
        read_with(input, 1024)
    }

    fn read_with(input: &[u8], max_line: usize) -> Vec<Message> {
        let mut reader = LineReader::new(max_line);
        reader.handle_input(input);
        reader.handle_end();
        std::iter::from_fn(|| reader.poll_message()).collect()
    }

    #[test]
    fn requests_notifications_and_responses() {
        let messages = read(
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}\n\
              {\"jsonrpc\":\"2.0\",\"method\":\"session/cancel\",\"params\":{\"sessionId\":\"s\"}}\n\r\n\
              {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"result\":{\"x\":1}}\n\
              {\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":-1,\"message\":\"no\"}}",
        );
        assert_eq!(messages.len(), 4);
        assert!(
            matches!(&messages[0], Message::Request { id: Id::Number(1), method, .. } if method == "initialize")
        );
        assert!(
            matches!(&messages[1], Message::Notification { method, .. } if method == "session/cancel")
        );
        assert!(
            matches!(&messages[2], Message::Response { id: Id::Text(a), result: Ok(_) } if a == "a")
        );
        assert!(matches!(&messages[3], Message::Response { result: Err(e), .. } if e.code == -1));
    }

    #[test]
    fn bad_lines_are_answered_with_their_error() {
        let codes: Vec<(Option<Id>, i64)> = read(
            b"not json\n[1]\n{\"id\":3,\"method\":\"x\"}\n{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":5}\n\
              {\"jsonrpc\":\"2.0\",\"id\":[1],\"method\":\"x\"}\n{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"x\",\"params\":3}\n",
        )
        .into_iter()
        .map(|m| match m {
            Message::Invalid { id, error } => (id, error.code),
            other => panic!("{other:?}"),
        })
        .collect();
        assert_eq!(
            codes,
            [
                (None, PARSE_ERROR),
                (None, INVALID_REQUEST),
                (Some(Id::Number(3)), INVALID_REQUEST),
                (Some(Id::Number(4)), INVALID_REQUEST),
                (None, INVALID_REQUEST),
                (Some(Id::Number(5)), INVALID_REQUEST),
            ]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_skipped() {
        let mut input = vec![b'x'; 200];
        input.extend_from_slice(b"\n{\"jsonrpc\":\"2.0\",\"method\":\"ok\"}\n");
        let messages = read_with(&input, 64);
        assert_eq!(messages.len(), 2);
        assert!(
            matches!(&messages[0], Message::Invalid { error, .. } if error.message.contains("longer than 64"))
        );
        assert!(matches!(&messages[1], Message::Notification { method, .. } if method == "ok"));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        let mut reader = LineReader::new(1024);
        reader.handle_input(
            format!("{{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{deep}}}\n").as_bytes(),
        );
        assert!(matches!(
            reader.poll_message(),
            Some(Message::Invalid { .. })
        ));
    }

    #[test]
    fn written_lines_read_back() {
        let mut bytes = request(
            &Id::Number(7),
            "session/request_permission",
            json!({"a": 1}),
        );
        bytes.extend(notification("session/update", json!({"b": 2})));
        bytes.extend(response(
            Some(&Id::Text("x".into())),
            Err(RpcError::new(-32000, "auth")),
        ));
        let messages = read(&bytes);
        assert!(matches!(
            &messages[0],
            Message::Request {
                id: Id::Number(7),
                ..
            }
        ));
        assert!(matches!(&messages[1], Message::Notification { .. }));
        assert!(
            matches!(&messages[2], Message::Response { result: Err(e), .. } if e.message == "auth")
        );
    }

    proptest! {
        /// Any chunking of the input gives the same messages.
        #[test]
        fn any_chunking_gives_the_same_messages(
            lines in proptest::collection::vec("[ -~]{0,80}", 0..8),
            cuts in proptest::collection::vec(0usize..400, 0..10),
        ) {
            let mut input = Vec::new();
            for (i, l) in lines.iter().enumerate() {
                if i % 2 == 0 {
                    input.extend(notification(l, json!({"i": i})));
                } else {
                    input.extend_from_slice(l.as_bytes());
                    input.push(b'\n');
                }
            }
            let whole = read_with(&input, 64);
            let mut reader = LineReader::new(64);
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(input.len())).collect();
            points.push(0);
            points.push(input.len());
            points.sort_unstable();
            for pair in points.windows(2) {
                reader.handle_input(&input[pair[0]..pair[1]]);
            }
            reader.handle_end();
            let split: Vec<Message> = std::iter::from_fn(|| reader.poll_message()).collect();
            prop_assert_eq!(whole, split);
        }
    }
}
