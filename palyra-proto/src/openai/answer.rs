//! Answers of our OpenAI-compatible API, encoded without IO: chat completions (one
//! `chat.completion` object, or `chat.completion.chunk` server-sent events ending with
//! `data: [DONE]`) and responses (one `response` object, or the typed `response.*` events).
//!
//! The encoders append to a caller's buffer, so the events of one read of a run's tape leave in
//! one write; a chunk's fixed prefix is built once per answer, not once per token.

use super::chat::{ToolCall, Usage};
use super::request::ApiError;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Value};

/// Why an answer ended, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The model finished.
    Stop,
    /// The token limit cut it.
    Length,
    /// The model called the caller's functions.
    ToolCalls,
}

impl Finish {
    /// `stop`, `length` or `tool_calls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }

    /// The finish named `name`, if it is one.
    pub fn parse(name: &str) -> Option<Finish> {
        match name {
            "stop" => Some(Finish::Stop),
            "length" => Some(Finish::Length),
            "tool_calls" => Some(Finish::ToolCalls),
            _ => None,
        }
    }
}

fn json_str(out: &mut BytesMut, s: &str) {
    // Serializing a str cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

/// Appends one event-stream event carrying `data` (which holds no newline: it is compact JSON).
fn data_event(out: &mut BytesMut, data: &Value) {
    out.put_slice(b"data: ");
    let _ = serde_json::to_writer(out.writer(), data);
    out.put_slice(b"\n\n");
}

/// Appends an event-stream comment (a keep-alive a client ignores).
pub fn comment(out: &mut BytesMut, text: &str) {
    out.put_slice(b": ");
    out.put_slice(text.replace(['\r', '\n'], " ").as_bytes());
    out.put_slice(b"\n\n");
}

/// Appends an error after the stream started: `data: {"error": {...}}`.
pub fn stream_error(out: &mut BytesMut, error: &ApiError) {
    data_event(out, &json!({"error": error.object()}));
}

/// Appends the chat stream's last line, `data: [DONE]`.
pub fn done(out: &mut BytesMut) {
    out.put_slice(b"data: [DONE]\n\n");
}

/// The `usage` object of a chat completion.
pub fn chat_usage(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    })
}

fn tool_call_json(call: &ToolCall) -> Value {
    json!({"id": call.id, "type": "function",
           "function": {"name": call.name, "arguments": call.arguments}})
}

/// The whole answer of a non-streamed chat completion.
pub fn chat_completion(
    id: &str,
    created: u64,
    model: &str,
    content: &str,
    tool_calls: &[ToolCall],
    finish: Finish,
    usage: Usage,
) -> Value {
    let mut message = json!({
        "role": "assistant",
        "content": if content.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::from(content) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = tool_calls.iter().map(tool_call_json).collect();
    }
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish.as_str()}],
        "usage": chat_usage(usage),
    })
}

/// The `chat.completion.chunk` events of one streamed chat completion.
#[derive(Debug, Clone)]
pub struct ChatChunks {
    /// `data: {"id":..,"object":"chat.completion.chunk","created":..,"model":..,` once.
    head: Vec<u8>,
    include_usage: bool,
}

impl ChatChunks {
    /// The chunks of completion `id` (created at Unix second `created`) by `model`; with
    /// `include_usage`, [`ChatChunks::usage`] sends the usage chunk.
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        let mut head = BytesMut::new();
        head.put_slice(b"data: {\"id\":");
        json_str(&mut head, id);
        head.put_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        head.put_slice(created.to_string().as_bytes());
        head.put_slice(b",\"model\":");
        json_str(&mut head, model);
        head.put_slice(b",\"system_fingerprint\":null,");
        Self {
            head: head.to_vec(),
            include_usage,
        }
    }

    /// A chunk of choice 0 with `delta` (a JSON object's text) and `finish_reason`.
    fn choice(
        &self,
        out: &mut BytesMut,
        delta: impl FnOnce(&mut BytesMut),
        finish: Option<Finish>,
    ) {
        out.put_slice(&self.head);
        out.put_slice(b"\"choices\":[{\"index\":0,\"delta\":");
        delta(out);
        out.put_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                out.put_u8(b'"');
                out.put_slice(f.as_str().as_bytes());
                out.put_u8(b'"');
            }
            None => out.put_slice(b"null"),
        }
        out.put_slice(b"}]}\n\n");
    }

    /// The first chunk: the role, and no content yet.
    pub fn role(&self, out: &mut BytesMut) {
        self.choice(
            out,
            |o| o.put_slice(b"{\"role\":\"assistant\",\"content\":\"\"}"),
            None,
        );
    }

    /// Text of the answer.
    pub fn content(&self, out: &mut BytesMut, text: &str) {
        self.choice(
            out,
            |o| {
                o.put_slice(b"{\"content\":");
                json_str(o, text);
                o.put_u8(b'}');
            },
            None,
        );
    }

    /// A call of the caller's function at `index`: the first chunk has its id, type and name
    /// (with empty arguments), the next one the arguments.
    pub fn tool_call(&self, out: &mut BytesMut, index: usize, call: &ToolCall) {
        let head = json!({"tool_calls": [{"index": index, "id": call.id, "type": "function",
                                           "function": {"name": call.name, "arguments": ""}}]});
        self.choice(
            out,
            |o| {
                let _ = serde_json::to_writer(o.writer(), &head);
            },
            None,
        );
        if !call.arguments.is_empty() {
            let args = json!({"tool_calls": [{"index": index, "function": {"arguments": call.arguments}}]});
            self.choice(
                out,
                |o| {
                    let _ = serde_json::to_writer(o.writer(), &args);
                },
                None,
            );
        }
    }

    /// The last choice chunk: an empty delta with the finish reason.
    pub fn finish(&self, out: &mut BytesMut, finish: Finish) {
        self.choice(out, |o| o.put_slice(b"{}"), Some(finish));
    }

    /// The usage chunk (`choices: []`), when the caller asked for it; nothing otherwise.
    pub fn usage(&self, out: &mut BytesMut, usage: Usage) {
        if !self.include_usage {
            return;
        }
        out.put_slice(&self.head);
        out.put_slice(b"\"choices\":[],\"usage\":");
        let _ = serde_json::to_writer(out.writer(), &chat_usage(usage));
        out.put_slice(b"}\n\n");
    }
}

/// The `usage` object of a response.
pub fn response_usage(usage: Usage) -> Value {
    json!({
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage.total_tokens,
    })
}

/// One response of the Responses API as it is built: its output items, and (streamed) the
/// typed events that build it. A non-streamed answer is built the same way and sent whole
/// ([`Response::object`]).
#[derive(Debug, Clone)]
pub struct Response {
    id: String,
    created_at: u64,
    model: String,
    seq: u64,
    output: Vec<Value>,
    /// The message item being written, with its text so far.
    message: Option<String>,
    usage: Option<Usage>,
}

impl Response {
    /// Response `id` by `model`, created at Unix second `created_at`.
    pub fn new(id: &str, created_at: u64, model: &str) -> Self {
        Self {
            id: id.to_owned(),
            created_at,
            model: model.to_owned(),
            seq: 0,
            output: Vec::new(),
            message: None,
            usage: None,
        }
    }

    fn event(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        data["type"] = Value::from(kind);
        data["sequence_number"] = Value::from(self.seq);
        self.seq += 1;
        out.put_slice(b"event: ");
        out.put_slice(kind.as_bytes());
        out.put_u8(b'\n');
        data_event(out, &data);
    }

    /// The response object with `status` (`in_progress`, `completed`, `incomplete`, `failed`).
    pub fn object(&self, status: &str, error: Option<&ApiError>) -> Value {
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": false,
            "error": error.map(|e| json!({"code": e.code, "message": e.message})),
            "incomplete_details": if status == "incomplete" { json!({"reason": "max_output_tokens"}) } else { Value::Null },
            "instructions": null,
            "max_output_tokens": null,
            "metadata": {},
            "model": self.model,
            "output": self.output,
            "parallel_tool_calls": true,
            "previous_response_id": null,
            "store": false,
            "temperature": null,
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": null,
            "truncation": "disabled",
            "usage": self.usage.map(response_usage),
            "user": null,
        })
    }

    /// The text of its output messages, joined (`output_text`).
    pub fn output_text(&self) -> String {
        let mut text = String::new();
        for item in &self.output {
            for part in item["content"].as_array().into_iter().flatten() {
                text.push_str(part["text"].as_str().unwrap_or(""));
            }
        }
        text
    }

    /// `response.created` and `response.in_progress`.
    pub fn created(&mut self, out: &mut BytesMut) {
        let response = self.object("in_progress", None);
        self.event(out, "response.created", json!({"response": response}));
        let response = self.object("in_progress", None);
        self.event(out, "response.in_progress", json!({"response": response}));
    }

    fn message_id(&self) -> String {
        format!(
            "msg_{}_{}",
            self.id.trim_start_matches("resp_"),
            self.output.len()
        )
    }

    fn message_item(&self, status: &str, text: Option<&str>) -> Value {
        let content = match text {
            Some(t) => {
                json!([{"type": "output_text", "text": t, "annotations": [], "logprobs": []}])
            }
            None => json!([]),
        };
        json!({"id": self.message_id(), "type": "message", "status": status, "role": "assistant", "content": content})
    }

    /// Text of the answer (opening its message item first).
    pub fn text(&mut self, out: &mut BytesMut, delta: &str) {
        if delta.is_empty() {
            return;
        }
        let index = self.output.len();
        if self.message.is_none() {
            let item = self.message_item("in_progress", None);
            self.event(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            let id = self.message_id();
            self.event(
                out,
                "response.content_part.added",
                json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            );
            self.message = Some(String::new());
        }
        let id = self.message_id();
        self.event(
            out,
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0,
            "delta": delta, "logprobs": []}),
        );
        if let Some(text) = &mut self.message {
            text.push_str(delta);
        }
    }

    fn close_message(&mut self, out: &mut BytesMut) {
        let Some(text) = self.message.take() else {
            return;
        };
        let (index, id) = (self.output.len(), self.message_id());
        self.event(
            out,
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
            "text": text, "logprobs": []}),
        );
        self.event(
            out,
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
            "part": {"type": "output_text", "text": text, "annotations": [], "logprobs": []}}),
        );
        let item = self.message_item("completed", Some(&text));
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output.push(item);
    }

    /// A call of the caller's function: its item, its arguments, its end.
    pub fn function_call(&mut self, out: &mut BytesMut, call: &ToolCall) {
        self.close_message(out);
        let index = self.output.len();
        let id = format!("fc_{}_{index}", self.id.trim_start_matches("resp_"));
        let item = |status: &str, arguments: &str| {
            json!({"id": id, "type": "function_call", "status": status, "call_id": call.id,
                   "name": call.name, "arguments": arguments})
        };
        self.event(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": item("in_progress", "")}),
        );
        self.event(
            out,
            "response.function_call_arguments.delta",
            json!({"item_id": id, "output_index": index,
            "delta": call.arguments}),
        );
        self.event(
            out,
            "response.function_call_arguments.done",
            json!({"item_id": id, "output_index": index,
            "name": call.name, "arguments": call.arguments}),
        );
        let done = item("completed", &call.arguments);
        self.event(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": done}),
        );
        self.output.push(done);
    }

    /// The answer ended: `response.completed` (or `response.incomplete` when cut at the token
    /// limit); returns the final object.
    pub fn completed(&mut self, out: &mut BytesMut, finish: Finish, usage: Usage) -> Value {
        self.close_message(out);
        self.usage = Some(usage);
        let (kind, status) = match finish {
            Finish::Length => ("response.incomplete", "incomplete"),
            _ => ("response.completed", "completed"),
        };
        let response = self.object(status, None);
        self.event(out, kind, json!({"response": response.clone()}));
        response
    }

    /// The answer broke off: `response.failed` with the error.
    pub fn failed(&mut self, out: &mut BytesMut, error: &ApiError) {
        self.close_message(out);
        let response = self.object("failed", Some(error));
        self.event(out, "response.failed", json!({"response": response}));
    }
}

#[cfg(test)]
mod tests;
