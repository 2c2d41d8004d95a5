//! The streamed answer of an OpenAI-compatible `POST /chat/completions` (`"stream": true`),
//! decoded without IO: the response body's bytes go in, the model's turn comes out. The body is
//! an event stream of `chat.completion.chunk` objects, then `data: [DONE]`.
//!
//! - Text arrives in `choices[0].delta.content`.
//! - Tool calls arrive in `choices[0].delta.tool_calls`: pieces keyed by `index`. The first
//!   piece of a call carries its `id` and `function.name`; `function.arguments` is split across
//!   pieces and joined here.
//! - `finish_reason` ends the turn.
//! - With `stream_options.include_usage`, a last chunk has empty `choices` and the `usage`.
//! - An `{"error": {...}}` object in the stream is the upstream failing mid-way.

use crate::sse::{SseDecoder, SseError, SseLimits};
use serde_json::Value;
use std::collections::{BTreeMap, VecDeque};

/// Limits on what one streamed answer may make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatLimits {
    /// The event stream's own limits.
    pub sse: SseLimits,
    /// Tool calls in one turn.
    pub max_tool_calls: usize,
    /// A tool call's joined `arguments`, in bytes.
    pub max_arguments_bytes: usize,
}

impl Default for ChatLimits {
    fn default() -> Self {
        Self {
            sse: SseLimits::default(),
            max_tool_calls: 64,
            max_arguments_bytes: 1024 * 1024,
        }
    }
}

/// Why the model's turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// The model finished its answer.
    Stop,
    /// The model wants the tool calls run and their results sent back.
    ToolCalls,
    /// The token limit cut the answer.
    Length,
    /// The provider's content filter stopped it.
    ContentFilter,
    /// Another reason, as the server named it.
    Other(String),
}

impl FinishReason {
    fn parse(reason: &str) -> Self {
        match reason {
            "stop" => Self::Stop,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "length" => Self::Length,
            "content_filter" => Self::ContentFilter,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// One tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, sent back with its result.
    pub id: String,
    /// The function (tool) name.
    pub name: String,
    /// The arguments, as the JSON text the model wrote.
    pub arguments: String,
}

/// Token counts of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens the model produced.
    pub completion_tokens: u64,
    /// Both.
    pub total_tokens: u64,
}

/// What the stream told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// Text the model produced.
    Token(String),
    /// The turn ended, with the tool calls it asked for (in `index` order).
    Finished {
        /// Why.
        reason: FinishReason,
        /// The calls, assembled from their pieces.
        tool_calls: Vec<ToolCall>,
    },
    /// The request's token counts.
    Usage(Usage),
}

/// Why a streamed answer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The event stream itself is malformed or over a limit.
    #[error("{0}")]
    Stream(#[from] SseError),
    /// A chunk is not the JSON the protocol says.
    #[error("malformed chat completion chunk: {0}")]
    BadChunk(String),
    /// The upstream reported an error in the stream.
    #[error("the model provider failed mid-stream: {0}")]
    Upstream(String),
    /// More tool calls than the limit.
    #[error("the model asked for more than {max} tool calls in one turn")]
    TooManyToolCalls {
        /// The limit.
        max: usize,
    },
    /// A tool call's arguments over the limit.
    #[error("tool call arguments larger than {max} bytes")]
    ArgumentsTooLarge {
        /// The limit.
        max: usize,
    },
    /// The stream ended before the turn did.
    #[error("the model provider's stream ended before the answer finished")]
    Cut,
}

#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// One streamed answer being decoded.
#[derive(Debug)]
pub struct ChatStream {
    limits: ChatLimits,
    sse: SseDecoder,
    calls: BTreeMap<u64, PartialCall>,
    finished: bool,
    done: bool,
    events: VecDeque<ChatEvent>,
    failed: Option<ChatError>,
}

impl Default for ChatStream {
    fn default() -> Self {
        Self::new(ChatLimits::default())
    }
}

impl ChatStream {
    /// A decoder for one response body.
    pub fn new(limits: ChatLimits) -> Self {
        Self {
            limits,
            sse: SseDecoder::new(limits.sse),
            calls: BTreeMap::new(),
            finished: false,
            done: false,
            events: VecDeque::new(),
            failed: None,
        }
    }

    /// The next bytes of the response body.
    pub fn handle_body(&mut self, bytes: &[u8]) -> Result<(), ChatError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.sse.handle_input(bytes).map_err(ChatError::from);
        while let Some(event) = self.sse.poll_event() {
            if let Err(error) = self.handle_data(&event.data) {
                self.failed = Some(error.clone());
                return Err(error);
            }
        }
        if let Err(error) = result {
            self.failed = Some(error.clone());
            return Err(error);
        }
        Ok(())
    }

    /// The body ended. An answer whose turn never finished is [`ChatError::Cut`], never a
    /// silent success.
    pub fn handle_end(&mut self) -> Result<(), ChatError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.sse.finish();
        if !self.finished {
            self.failed = Some(ChatError::Cut);
            return Err(ChatError::Cut);
        }
        Ok(())
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ChatEvent> {
        self.events.pop_front()
    }

    /// The turn finished (a `finish_reason` arrived).
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// The stream said `[DONE]`.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn handle_data(&mut self, data: &str) -> Result<(), ChatError> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if self.done {
            return Ok(()); // nothing follows [DONE]
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| ChatError::BadChunk(e.to_string()))?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(ChatError::Upstream(message));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |name: &str| usage.get(name).and_then(Value::as_u64).unwrap_or(0);
            self.events.push_back(ChatEvent::Usage(Usage {
                prompt_tokens: count("prompt_tokens"),
                completion_tokens: count("completion_tokens"),
                total_tokens: count("total_tokens"),
            }));
        }
        let choice = match chunk.get("choices") {
            Some(Value::Array(choices)) => choices.first(),
            Some(Value::Null) | None => None,
            Some(_) => return Err(ChatError::BadChunk("choices is not an array".into())),
        };
        let Some(choice) = choice else {
            return Ok(());
        };
        if self.finished {
            return Ok(()); // the turn is over; later choices are not ours to act on
        }
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                self.events.push_back(ChatEvent::Token(text.to_owned()));
            }
        }
        if let Some(calls) = delta.get("tool_calls") {
            let Value::Array(calls) = calls else {
                return Err(ChatError::BadChunk("tool_calls is not an array".into()));
            };
            for call in calls {
                self.add_call_piece(call)?;
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finished = true;
            let tool_calls = std::mem::take(&mut self.calls)
                .into_values()
                .map(|c| ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments: c.arguments,
                })
                .collect();
            self.events.push_back(ChatEvent::Finished {
                reason: FinishReason::parse(reason),
                tool_calls,
            });
        }
        Ok(())
    }

    fn add_call_piece(&mut self, piece: &Value) -> Result<(), ChatError> {
        let index = piece
            .get("index")
            .and_then(Value::as_u64)
            .ok_or_else(|| ChatError::BadChunk("tool call piece without an index".into()))?;
        if !self.calls.contains_key(&index) && self.calls.len() >= self.limits.max_tool_calls {
            return Err(ChatError::TooManyToolCalls {
                max: self.limits.max_tool_calls,
            });
        }
        let call = self.calls.entry(index).or_default();
        if let Some(id) = piece.get("id").and_then(Value::as_str) {
            call.id = id.to_owned();
        }
        let function = piece.get("function").unwrap_or(&Value::Null);
        if let Some(name) = function.get("name").and_then(Value::as_str) {
            call.name.push_str(name);
        }
        if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
            if call.arguments.len() + arguments.len() > self.limits.max_arguments_bytes {
                return Err(ChatError::ArgumentsTooLarge {
                    max: self.limits.max_arguments_bytes,
                });
            }
            call.arguments.push_str(arguments);
        }
        if call.name.len() > 256 || call.id.len() > 256 {
            return Err(ChatError::BadChunk(
                "tool call id or name longer than 256 bytes".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A stream as an OpenAI-compatible server sends it: text, a tool call whose arguments are
    /// split across chunks (the id and name only in the first), the finish, usage, [DONE].
    fn sample() -> String {
        let chunks = [
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Let me "},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"check."},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"disk_usage","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"pa"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"th\":\"/\"}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":9,"total_tokens":21}}"#,
        ];
        let mut body = String::new();
        for chunk in chunks {
            body += &format!("data: {chunk}\n\n");
        }
        body + ": keep-alive\n\ndata: [DONE]\n\n"
    }

    fn decode(body: &[u8], pieces: &[usize]) -> Result<Vec<ChatEvent>, ChatError> {
        let mut stream = ChatStream::default();
        let mut start = 0;
        for &end in pieces.iter().chain([&body.len()]) {
            stream.handle_body(&body[start..end])?;
            start = end;
        }
        stream.handle_end()?;
        Ok(std::iter::from_fn(|| stream.poll_event()).collect())
    }

    #[test]
    fn text_a_split_tool_call_the_finish_and_usage() {
        let events = decode(sample().as_bytes(), &[]).unwrap();
        assert_eq!(
            events,
            vec![
                ChatEvent::Token("Let me ".into()),
                ChatEvent::Token("check.".into()),
                ChatEvent::Finished {
                    reason: FinishReason::ToolCalls,
                    tool_calls: vec![ToolCall {
                        id: "call_1".into(),
                        name: "disk_usage".into(),
                        arguments: r#"{"path":"/"}"#.into(),
                    }],
                },
                ChatEvent::Usage(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 9,
                    total_tokens: 21,
                }),
            ]
        );
    }

    #[test]
    fn a_stream_cut_before_the_finish_is_an_error_not_a_success() {
        let body = sample();
        let cut = body.find("tool_calls\"}]}").unwrap();
        assert_eq!(decode(&body.as_bytes()[..cut], &[]), Err(ChatError::Cut));
        // Without [DONE] but after the finish, the answer is whole.
        let no_done = body.replace("data: [DONE]\n\n", "");
        assert!(decode(no_done.as_bytes(), &[]).is_ok());
    }

    #[test]
    fn an_error_object_mid_stream_fails_with_its_message() {
        let body = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"model overloaded\",\"type\":\"server_error\"}}\n\n";
        assert_eq!(
            decode(body.as_bytes(), &[]),
            Err(ChatError::Upstream("model overloaded".into()))
        );
        assert!(matches!(
            decode(b"data: {not json\n\n", &[]),
            Err(ChatError::BadChunk(_))
        ));
    }

    #[test]
    fn limits_on_tool_calls_and_arguments() {
        let limits = ChatLimits {
            max_tool_calls: 2,
            max_arguments_bytes: 8,
            ..ChatLimits::default()
        };
        let piece = |index: u32, args: &str| {
            format!(
                "data: {{\"choices\":[{{\"delta\":{{\"tool_calls\":[{{\"index\":{index},\"id\":\"c{index}\",\"function\":{{\"name\":\"t\",\"arguments\":\"{args}\"}}}}]}}}}]}}\n\n"
            )
        };
        let mut stream = ChatStream::new(limits);
        stream.handle_body(piece(0, "").as_bytes()).unwrap();
        stream.handle_body(piece(1, "").as_bytes()).unwrap();
        assert_eq!(
            stream.handle_body(piece(2, "").as_bytes()),
            Err(ChatError::TooManyToolCalls { max: 2 })
        );
        let mut stream = ChatStream::new(limits);
        stream.handle_body(piece(0, "12345").as_bytes()).unwrap();
        assert_eq!(
            stream.handle_body(piece(0, "6789").as_bytes()),
            Err(ChatError::ArgumentsTooLarge { max: 8 })
        );
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_turn(cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12)) {
            let body = sample();
            let mut pieces: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            pieces.sort_unstable();
            prop_assert_eq!(decode(body.as_bytes(), &pieces), decode(body.as_bytes(), &[]));
        }
    }
}
