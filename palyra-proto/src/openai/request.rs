//! Requests to our OpenAI-compatible API, decoded without IO: the body of
//! `POST /v1/chat/completions` or `POST /v1/responses` goes in, a [`Completion`] comes out (the
//! conversation as chat messages for the model provider, the caller's function tools and the
//! sampling options), or an [`ApiError`] naming the parameter at fault.
//!
//! Every count and length a caller controls is bounded ([`ApiLimits`]); parameters this gateway
//! cannot honour are refused (400) rather than silently ignored, except those that only tune
//! the provider's billing or logging (`store`, `metadata`, `service_tier`, `user`).

use serde_json::{Map, Value};
use std::fmt;

/// Limits on what one request may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Messages (or input items) in the conversation.
    pub max_messages: usize,
    /// Function tools.
    pub max_tools: usize,
    /// `stop` sequences.
    pub max_stop: usize,
    /// Bytes of one `stop` sequence.
    pub max_stop_bytes: usize,
    /// Bytes of a model, tool or function name.
    pub max_name_bytes: usize,
    /// Bytes of `user`.
    pub max_user_bytes: usize,
    /// Tokens a caller may ask for in one answer.
    pub max_output_tokens: u32,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_messages: 2048,
            max_tools: 128,
            max_stop: 4,
            max_stop_bytes: 256,
            max_name_bytes: 128,
            max_user_bytes: 256,
            max_output_tokens: 1 << 20,
        }
    }
}

/// An error answer of the API: `{"error":{"message","type","param","code"}}` with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: u16,
    /// `type`: `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `server_error`, ...
    pub kind: &'static str,
    /// The request parameter at fault (`messages[2].content`), if one is.
    pub param: Option<String>,
    /// A stable machine-readable code (`missing_required_parameter`, `model_not_found`, ...).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// A 400 `invalid_request_error` about `param`.
    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status: 400,
            kind: "invalid_request_error",
            param: Some(param.into()),
            code,
            message: message.into(),
        }
    }

    /// An error of `status` and `kind` about no one parameter.
    pub fn new(
        status: u16,
        kind: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            param: None,
            code,
            message: message.into(),
        }
    }

    /// The error object (`{"message","type","param","code"}`).
    pub fn object(&self) -> Value {
        serde_json::json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }

    /// The answer body: `{"error": {...}}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "error": self.object() })
            .to_string()
            .into_bytes()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.param {
            Some(param) => write!(f, "{} ({param})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ApiError {}

/// Which route a request came to (answers differ in shape, not in meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
}

/// A function tool of the caller: the model may call it, and the call is answered to the
/// caller to run (`tool_calls` / `function_call` output items).
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    /// Its name (`^[A-Za-z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does.
    pub description: String,
    /// The JSON schema of its arguments.
    pub parameters: Value,
    /// Strict schema adherence, as asked.
    pub strict: Option<bool>,
}

impl FunctionTool {
    /// The chat-completions tool object sent to the provider.
    pub fn chat_tool(&self) -> Value {
        let mut function = serde_json::json!({
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        });
        if let Some(strict) = self.strict {
            function["strict"] = Value::Bool(strict);
        }
        serde_json::json!({"type": "function", "function": function})
    }
}

/// A decoded completion request, in chat-completions terms whatever the route.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The route it came to.
    pub api: Api,
    /// The model asked for.
    pub model: String,
    /// The conversation, as chat messages for the provider (`system`, `user`, `assistant`
    /// with `tool_calls`, `tool`); text content is a string.
    pub messages: Vec<Value>,
    /// The caller's function tools.
    pub tools: Vec<FunctionTool>,
    /// `tool_choice`, as the provider is sent it.
    pub tool_choice: Option<Value>,
    /// Stream the answer.
    pub stream: bool,
    /// Send a usage chunk at the end of the stream (`stream_options.include_usage`).
    pub include_usage: bool,
    /// `user`, the caller's end user.
    pub user: Option<String>,
    /// Sampling options for the provider (`max_tokens`, `temperature`, `top_p`, `stop`,
    /// `seed`, `presence_penalty`, `frequency_penalty`, `response_format`,
    /// `parallel_tool_calls`), in chat-completions names.
    pub options: Map<String, Value>,
}

impl Completion {
    /// The text of the last user message (a run's prompt, as listed).
    pub fn prompt(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_owned()
    }
}

/// Parameters that change nothing we can honour or refuse: accepted and not passed on.
const IGNORED: [&str; 7] = [
    "store",
    "reasoning",
    "metadata",
    "service_tier",
    "prompt_cache_key",
    "safety_identifier",
    "truncation",
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::invalid(
        param,
        "invalid_type",
        format!("{param} must be {want}, not {}", type_name(got)),
    )
}

/// A request decoder for one route with its limits.
struct Decoder<'a> {
    limits: &'a ApiLimits,
    body: Map<String, Value>,
}

/// Decodes the JSON `body` of a request to `api`.
pub fn decode(api: Api, body: &[u8], limits: &ApiLimits) -> Result<Completion, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            400,
            "invalid_request_error",
            "invalid_json",
            format!("the request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(body) = value else {
        return Err(ApiError::new(
            400,
            "invalid_request_error",
            "invalid_json",
            format!(
                "the request body must be a JSON object, not {}",
                type_name(&value)
            ),
        ));
    };
    let decoder = Decoder { limits, body };
    match api {
        Api::Chat => decoder.chat(),
        Api::Responses => decoder.responses(),
    }
}

impl Decoder<'_> {
    fn take(&mut self, name: &str) -> Option<Value> {
        self.body.remove(name).filter(|v| !v.is_null())
    }

    fn string(&mut self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= max => Ok(Some(s)),
            Some(Value::String(_)) => Err(ApiError::invalid(
                name,
                "string_above_max_length",
                format!("{name} exceeds {max} bytes"),
            )),
            Some(other) => Err(wrong_type(name, "a string", &other)),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(wrong_type(name, "a boolean", &other)),
        }
    }

    fn number(&mut self, name: &str, min: f64, max: f64) -> Result<Option<Value>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(Value::Number(n))),
                _ => Err(ApiError::invalid(
                    name,
                    "invalid_value",
                    format!("{name} must be between {min} and {max}"),
                )),
            },
            Some(other) => Err(wrong_type(name, "a number", &other)),
        }
    }

    fn count(&mut self, name: &str, max: u32) -> Result<Option<u32>, ApiError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 && n <= u64::from(max) => Ok(Some(n as u32)),
                _ => Err(ApiError::invalid(
                    name,
                    "invalid_value",
                    format!("{name} must be an integer from 1 to {max}"),
                )),
            },
        }
    }

    fn model(&mut self) -> Result<String, ApiError> {
        match self.string("model", self.limits.max_name_bytes)? {
            Some(m) if !m.trim().is_empty() => Ok(m),
            _ => Err(ApiError::invalid(
                "model",
                "missing_required_parameter",
                "you must provide a model parameter (GET /v1/models lists them)",
            )),
        }
    }

    /// Refuses a parameter we cannot honour when it asks for anything but its default.
    fn refuse_unless(
        &mut self,
        name: &str,
        default_ok: impl Fn(&Value) -> bool,
        why: &str,
    ) -> Result<(), ApiError> {
        match self.take(name) {
            Some(v) if !default_ok(&v) => {
                Err(ApiError::invalid(name, "unsupported_parameter", why))
            }
            _ => Ok(()),
        }
    }

    /// Options both routes share, in chat-completions names.
    fn sampling(&mut self, options: &mut Map<String, Value>) -> Result<(), ApiError> {
        if let Some(t) = self.number("temperature", 0.0, 2.0)? {
            options.insert("temperature".into(), t);
        }
        if let Some(p) = self.number("top_p", 0.0, 1.0)? {
            options.insert("top_p".into(), p);
        }
        if let Some(b) = self.boolean("parallel_tool_calls")? {
            options.insert("parallel_tool_calls".into(), Value::Bool(b));
        }
        Ok(())
    }

    /// Whatever is left is a parameter we do not know: refused, so that a caller relying on
    /// it finds out.
    fn finish(mut self) -> Result<(), ApiError> {
        for name in IGNORED {
            self.body.remove(name);
        }
        match self.body.keys().next() {
            None => Ok(()),
            Some(name) => Err(ApiError::invalid(
                name.clone(),
                "unsupported_parameter",
                format!(
                    "{name} is not supported by this gateway (docs/openai-api.md lists what is)"
                ),
            )),
        }
    }

    fn chat(mut self) -> Result<Completion, ApiError> {
        let model = self.model()?;
        let messages = match self.take("messages") {
            Some(Value::Array(list)) if !list.is_empty() => list,
            Some(Value::Array(_)) | None => {
                return Err(ApiError::invalid(
                    "messages",
                    "missing_required_parameter",
                    "messages must hold at least one message",
                ))
            }
            Some(other) => return Err(wrong_type("messages", "an array", &other)),
        };
        if messages.len() > self.limits.max_messages {
            return Err(ApiError::invalid(
                "messages",
                "array_above_max_length",
                format!("at most {} messages", self.limits.max_messages),
            ));
        }
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| chat_message(i, m, self.limits))
            .collect::<Result<Vec<_>, _>>()?;
        let stream = self.boolean("stream")?.unwrap_or(false);
        let include_usage = match self.take("stream_options") {
            None => false,
            Some(_) if !stream => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "invalid_value",
                    "stream_options is only allowed when stream is true",
                ))
            }
            Some(Value::Object(o)) => match o.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(wrong_type(
                        "stream_options.include_usage",
                        "a boolean",
                        other,
                    ))
                }
            },
            Some(other) => return Err(wrong_type("stream_options", "an object", &other)),
        };
        let mut options = Map::new();
        let max = self.limits.max_output_tokens;
        let max_tokens = match (
            self.count("max_completion_tokens", max)?,
            self.count("max_tokens", max)?,
        ) {
            (Some(a), _) => Some(a),
            (None, b) => b,
        };
        if let Some(n) = max_tokens {
            options.insert("max_tokens".into(), n.into());
        }
        self.sampling(&mut options)?;
        for (name, min, max) in [
            ("presence_penalty", -2.0, 2.0),
            ("frequency_penalty", -2.0, 2.0),
        ] {
            if let Some(v) = self.number(name, min, max)? {
                options.insert(name.into(), v);
            }
        }
        if let Some(seed) = self.take("seed") {
            if !seed.is_i64() && !seed.is_u64() {
                return Err(wrong_type("seed", "an integer", &seed));
            }
            options.insert("seed".into(), seed);
        }
        if let Some(stop) = self.stop()? {
            options.insert("stop".into(), stop);
        }
        if let Some(format) = self.take("response_format") {
            options.insert(
                "response_format".into(),
                response_format("response_format", format)?,
            );
        }
        match self.take("n") {
            None => {}
            Some(n) if n.as_u64() == Some(1) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    "n",
                    "unsupported_value",
                    "only n=1 is supported: each completion is one agent run",
                ))
            }
        }
        self.refuse_unless(
            "logprobs",
            |v| v == &Value::Bool(false),
            "logprobs are not supported",
        )?;
        self.refuse_unless("top_logprobs", |_| false, "logprobs are not supported")?;
        self.refuse_unless(
            "logit_bias",
            |v| v.as_object().is_some_and(Map::is_empty),
            "logit_bias is not supported",
        )?;
        self.refuse_unless(
            "modalities",
            |v| v == &serde_json::json!(["text"]),
            "only text output is supported",
        )?;
        let tools = match self.take("tools") {
            None => Vec::new(),
            Some(Value::Array(list)) => self.tools(list, chat_tool)?,
            Some(other) => return Err(wrong_type("tools", "an array", &other)),
        };
        let tool_choice = self.tool_choice(&tools, Api::Chat)?;
        let user = self.string("user", self.limits.max_user_bytes)?;
        self.finish()?;
        Ok(Completion {
            api: Api::Chat,
            model,
            messages,
            tools,
            tool_choice,
            stream,
            include_usage,
            user,
            options,
        })
    }

    fn stop(&mut self) -> Result<Option<Value>, ApiError> {
        let list = match self.take("stop") {
            None => return Ok(None),
            Some(Value::String(s)) => vec![Value::String(s)],
            Some(Value::Array(list)) => list,
            Some(other) => {
                return Err(wrong_type(
                    "stop",
                    "a string or an array of strings",
                    &other,
                ))
            }
        };
        if list.len() > self.limits.max_stop {
            return Err(ApiError::invalid(
                "stop",
                "array_above_max_length",
                format!("at most {} stop sequences", self.limits.max_stop),
            ));
        }
        for (i, s) in list.iter().enumerate() {
            match s.as_str() {
                Some(s) if !s.is_empty() && s.len() <= self.limits.max_stop_bytes => {}
                _ => {
                    return Err(ApiError::invalid(
                        format!("stop[{i}]"),
                        "invalid_value",
                        format!(
                            "a stop sequence is a string of 1 to {} bytes",
                            self.limits.max_stop_bytes
                        ),
                    ))
                }
            }
        }
        Ok(Some(Value::Array(list)))
    }

    fn tools(
        &self,
        list: Vec<Value>,
        parse: fn(usize, Value, &ApiLimits) -> Result<FunctionTool, ApiError>,
    ) -> Result<Vec<FunctionTool>, ApiError> {
        if list.len() > self.limits.max_tools {
            return Err(ApiError::invalid(
                "tools",
                "array_above_max_length",
                format!("at most {} tools", self.limits.max_tools),
            ));
        }
        let mut tools: Vec<FunctionTool> = Vec::with_capacity(list.len());
        for (i, tool) in list.into_iter().enumerate() {
            let tool = parse(i, tool, self.limits)?;
            if tools.iter().any(|t| t.name == tool.name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].name"),
                    "duplicate_tool_name",
                    format!("two tools are named {}", tool.name),
                ));
            }
            tools.push(tool);
        }
        Ok(tools)
    }

    fn tool_choice(&mut self, tools: &[FunctionTool], api: Api) -> Result<Option<Value>, ApiError> {
        let Some(choice) = self.take("tool_choice") else {
            return Ok(None);
        };
        let named = match &choice {
            Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
                return Ok(Some(choice))
            }
            Value::Object(o) if o.get("type") == Some(&Value::String("function".into())) => {
                match api {
                    Api::Chat => o
                        .get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str),
                    Api::Responses => o.get("name").and_then(Value::as_str),
                }
            }
            _ => None,
        };
        match named {
            Some(name) if tools.iter().any(|t| t.name == name) => Ok(Some(serde_json::json!(
                {"type": "function", "function": {"name": name}}
            ))),
            Some(name) => Err(ApiError::invalid(
                "tool_choice",
                "invalid_value",
                format!("tool_choice names {name}, which is not one of the request's tools"),
            )),
            None => Err(ApiError::invalid(
                "tool_choice",
                "invalid_value",
                "tool_choice must be none, auto, required or a function tool of the request",
            )),
        }
    }

    fn responses(mut self) -> Result<Completion, ApiError> {
        let model = self.model()?;
        if self.take("previous_response_id").is_some() || self.take("conversation").is_some() {
            return Err(ApiError::invalid(
                "previous_response_id",
                "unsupported_parameter",
                "this gateway keeps no responses: send the whole conversation in input",
            ));
        }
        let mut messages = Vec::new();
        if let Some(instructions) = self.take("instructions") {
            match instructions {
                Value::String(s) => {
                    messages.push(serde_json::json!({"role": "system", "content": s}))
                }
                other => return Err(wrong_type("instructions", "a string", &other)),
            }
        }
        match self.take("input") {
            Some(Value::String(s)) if !s.is_empty() => {
                messages.push(serde_json::json!({"role": "user", "content": s}))
            }
            Some(Value::Array(items)) if !items.is_empty() => {
                if items.len() > self.limits.max_messages {
                    return Err(ApiError::invalid(
                        "input",
                        "array_above_max_length",
                        format!("at most {} input items", self.limits.max_messages),
                    ));
                }
                for (i, item) in items.into_iter().enumerate() {
                    input_item(i, item, &mut messages, self.limits)?;
                }
            }
            Some(Value::String(_)) | Some(Value::Array(_)) | None => {
                return Err(ApiError::invalid(
                    "input",
                    "missing_required_parameter",
                    "input must be a non-empty string or a non-empty array of input items",
                ))
            }
            Some(other) => return Err(wrong_type("input", "a string or an array", &other)),
        }
        let stream = self.boolean("stream")?.unwrap_or(false);
        let mut options = Map::new();
        if let Some(n) = self.count("max_output_tokens", self.limits.max_output_tokens)? {
            options.insert("max_tokens".into(), n.into());
        }
        self.sampling(&mut options)?;
        if let Some(text) = self.take("text") {
            if let Some(format) = text.get("format") {
                options.insert(
                    "response_format".into(),
                    response_format("text.format", format.clone())?,
                );
            }
        }
        let tools = match self.take("tools") {
            None => Vec::new(),
            Some(Value::Array(list)) => self.tools(list, response_tool)?,
            Some(other) => return Err(wrong_type("tools", "an array", &other)),
        };
        let tool_choice = self.tool_choice(&tools, Api::Responses)?;
        self.refuse_unless(
            "background",
            |v| v == &Value::Bool(false),
            "background responses are not supported",
        )?;
        self.refuse_unless(
            "include",
            |v| v.as_array().is_some_and(Vec::is_empty),
            "include is not supported",
        )?;
        let user = self.string("user", self.limits.max_user_bytes)?;
        self.finish()?;
        Ok(Completion {
            api: Api::Responses,
            model,
            messages,
            tools,
            tool_choice,
            stream,
            include_usage: true,
            user,
            options,
        })
    }
}

/// `response_format` (or the Responses API's `text.format`) in chat-completions form.
fn response_format(param: &str, format: Value) -> Result<Value, ApiError> {
    let kind = format.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" | "json_object" => Ok(serde_json::json!({"type": kind})),
        "json_schema" => {
            // Chat nests the schema under json_schema; Responses puts it beside type.
            let schema = match format.get("json_schema") {
                Some(s) => s.clone(),
                None => {
                    let mut s = format.clone();
                    if let Some(o) = s.as_object_mut() {
                        o.remove("type");
                    }
                    s
                }
            };
            if !schema.get("name").is_some_and(Value::is_string) {
                return Err(ApiError::invalid(
                    param,
                    "missing_required_parameter",
                    "a json_schema format needs a name",
                ));
            }
            Ok(serde_json::json!({"type": "json_schema", "json_schema": schema}))
        }
        _ => Err(ApiError::invalid(
            param,
            "invalid_value",
            "the format type must be text, json_object or json_schema",
        )),
    }
}

fn check_name(param: &str, name: Option<&Value>, limits: &ApiLimits) -> Result<String, ApiError> {
    let Some(Value::String(name)) = name else {
        return Err(ApiError::invalid(
            param,
            "missing_required_parameter",
            format!("{param} is required"),
        ));
    };
    let ok = !name.is_empty()
        && name.len() <= 64.min(limits.max_name_bytes)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok {
        return Err(ApiError::invalid(
            param,
            "invalid_value",
            format!("{param} must match ^[a-zA-Z0-9_-]{{1,64}}$"),
        ));
    }
    Ok(name.clone())
}

fn function_tool(
    param: &str,
    f: &Map<String, Value>,
    limits: &ApiLimits,
) -> Result<FunctionTool, ApiError> {
    let name = check_name(&format!("{param}.name"), f.get("name"), limits)?;
    let description = match f.get("description") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(wrong_type(
                &format!("{param}.description"),
                "a string",
                other,
            ))
        }
    };
    let parameters = match f.get("parameters") {
        None | Some(Value::Null) => serde_json::json!({"type": "object", "properties": {}}),
        Some(Value::Object(o)) => Value::Object(o.clone()),
        Some(other) => {
            return Err(wrong_type(
                &format!("{param}.parameters"),
                "a JSON schema object",
                other,
            ))
        }
    };
    let strict = match f.get("strict") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return Err(wrong_type(&format!("{param}.strict"), "a boolean", other)),
    };
    Ok(FunctionTool {
        name,
        description,
        parameters,
        strict,
    })
}

fn tool_type_ok(param: &str, tool: &Map<String, Value>) -> Result<(), ApiError> {
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => Ok(()),
        Some(other) => Err(ApiError::invalid(
            format!("{param}.type"),
            "unsupported_value",
            format!("{other} tools are not supported: only function tools (the gateway's own tools are offered by the palyra-agent model)"),
        )),
        None => Err(ApiError::invalid(format!("{param}.type"), "missing_required_parameter", "a tool needs type \"function\"")),
    }
}

/// A chat-completions tool: `{"type":"function","function":{name, description, parameters, strict}}`.
fn chat_tool(i: usize, tool: Value, limits: &ApiLimits) -> Result<FunctionTool, ApiError> {
    let param = format!("tools[{i}]");
    let Value::Object(tool) = tool else {
        return Err(wrong_type(&param, "an object", &tool));
    };
    tool_type_ok(&param, &tool)?;
    match tool.get("function") {
        Some(Value::Object(f)) => function_tool(&format!("{param}.function"), f, limits),
        _ => Err(ApiError::invalid(
            format!("{param}.function"),
            "missing_required_parameter",
            "a function tool needs its function object",
        )),
    }
}

/// A Responses tool: `{"type":"function", name, description, parameters, strict}`.
fn response_tool(i: usize, tool: Value, limits: &ApiLimits) -> Result<FunctionTool, ApiError> {
    let param = format!("tools[{i}]");
    let Value::Object(tool) = tool else {
        return Err(wrong_type(&param, "an object", &tool));
    };
    tool_type_ok(&param, &tool)?;
    function_tool(&param, &tool, limits)
}

/// Text of a content value: a string, or parts whose types are in `text_types`.
fn text_content(param: &str, content: &Value, text_types: &[&str]) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for (j, part) in parts.iter().enumerate() {
                let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
                if !text_types.contains(&kind) {
                    return Err(ApiError::invalid(
                        format!("{param}[{j}]"),
                        "unsupported_content",
                        match kind {
                            "" => "a content part needs a type".to_owned(),
                            kind => format!("{kind} content parts are not supported: only text"),
                        },
                    ));
                }
                let piece = part
                    .get("text")
                    .or_else(|| part.get("refusal"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid(
                            format!("{param}[{j}].text"),
                            "missing_required_parameter",
                            "a text part needs its text",
                        )
                    })?;
                text.push_str(piece);
            }
            Ok(text)
        }
        other => Err(wrong_type(
            param,
            "a string or an array of content parts",
            other,
        )),
    }
}

fn tool_calls(param: &str, calls: &Value, limits: &ApiLimits) -> Result<Vec<Value>, ApiError> {
    let Value::Array(calls) = calls else {
        return Err(wrong_type(param, "an array", calls));
    };
    calls
        .iter()
        .enumerate()
        .map(|(j, call)| {
            let p = format!("{param}[{j}]");
            let id = call.get("id").and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 256);
            let Some(id) = id else {
                return Err(ApiError::invalid(format!("{p}.id"), "missing_required_parameter", "a tool call needs its id"));
            };
            let function = call.get("function").unwrap_or(&Value::Null);
            let name = check_name(&format!("{p}.function.name"), function.get("name"), limits)?;
            let arguments = match function.get("arguments") {
                Some(Value::String(a)) => a.clone(),
                None | Some(Value::Null) => String::new(),
                Some(other) => return Err(wrong_type(&format!("{p}.function.arguments"), "a string", other)),
            };
            Ok(serde_json::json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}))
        })
        .collect()
}

/// One chat message, checked and put in the provider's form.
fn chat_message(i: usize, message: Value, limits: &ApiLimits) -> Result<Value, ApiError> {
    let param = format!("messages[{i}]");
    let Value::Object(m) = message else {
        return Err(wrong_type(&param, "an object", &message));
    };
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    let content = m.get("content").unwrap_or(&Value::Null);
    let content_param = format!("{param}.content");
    let mut out = match role {
        "system" | "developer" | "user" => {
            if content.is_null() {
                return Err(ApiError::invalid(
                    content_param,
                    "missing_required_parameter",
                    format!("a {role} message needs content"),
                ));
            }
            let text = text_content(&content_param, content, &["text", "input_text"])?;
            // Providers behind a compatible API know `system`; `developer` is its newer name.
            let role = if role == "user" { "user" } else { "system" };
            serde_json::json!({"role": role, "content": text})
        }
        "assistant" => {
            let text = match content {
                Value::Null => Value::Null,
                c => Value::String(text_content(
                    &content_param,
                    c,
                    &["text", "output_text", "refusal"],
                )?),
            };
            let mut out = serde_json::json!({"role": "assistant", "content": text});
            match m.get("tool_calls") {
                None | Some(Value::Null) => {
                    if text.is_null() {
                        return Err(ApiError::invalid(
                            content_param,
                            "missing_required_parameter",
                            "an assistant message needs content or tool_calls",
                        ));
                    }
                }
                Some(calls) => {
                    let calls = tool_calls(&format!("{param}.tool_calls"), calls, limits)?;
                    if !calls.is_empty() {
                        out["tool_calls"] = Value::Array(calls);
                    }
                }
            }
            out
        }
        "tool" => {
            let id = m
                .get("tool_call_id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 256);
            let Some(id) = id else {
                return Err(ApiError::invalid(
                    format!("{param}.tool_call_id"),
                    "missing_required_parameter",
                    "a tool message needs the tool_call_id it answers",
                ));
            };
            let text = text_content(&content_param, content, &["text"])?;
            serde_json::json!({"role": "tool", "tool_call_id": id, "content": text})
        }
        "function" => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                "unsupported_value",
                "function messages are deprecated: send tool messages",
            ))
        }
        "" => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                "missing_required_parameter",
                "a message needs a role",
            ))
        }
        other => {
            return Err(ApiError::invalid(
                format!("{param}.role"),
                "invalid_value",
                format!("unknown role {other:?}: system, developer, user, assistant or tool"),
            ))
        }
    };
    if let Some(name) = m.get("name").and_then(Value::as_str) {
        if role != "tool" {
            out["name"] = Value::String(name.chars().take(64).collect());
        }
    }
    Ok(out)
}

/// One item of a Responses `input`, appended to `messages` in chat form; consecutive
/// `function_call` items become one assistant message.
fn input_item(
    i: usize,
    item: Value,
    messages: &mut Vec<Value>,
    limits: &ApiLimits,
) -> Result<(), ApiError> {
    let param = format!("input[{i}]");
    let Value::Object(item) = item else {
        return Err(wrong_type(&param, "an object", &item));
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("");
            let content = item.get("content").unwrap_or(&Value::Null);
            let content_param = format!("{param}.content");
            let (role, types): (&str, &[&str]) = match role {
                "user" => ("user", &["input_text", "text"]),
                "system" | "developer" => ("system", &["input_text", "text"]),
                "assistant" => ("assistant", &["output_text", "text", "refusal"]),
                "" => return Err(ApiError::invalid(format!("{param}.role"), "missing_required_parameter", "a message item needs a role")),
                other => {
                    return Err(ApiError::invalid(
                        format!("{param}.role"),
                        "invalid_value",
                        format!("unknown role {other:?}: system, developer, user or assistant"),
                    ))
                }
            };
            let text = text_content(&content_param, content, types)?;
            messages.push(serde_json::json!({"role": role, "content": text}));
        }
        "function_call" => {
            let call_id = item.get("call_id").and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 256);
            let Some(call_id) = call_id else {
                return Err(ApiError::invalid(format!("{param}.call_id"), "missing_required_parameter", "a function_call item needs its call_id"));
            };
            let name = check_name(&format!("{param}.name"), item.get("name"), limits)?;
            let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("").to_owned();
            let call = serde_json::json!({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}});
            let joins = messages
                .last()
                .is_some_and(|m| m["role"] == "assistant" && m.get("tool_calls").is_some());
            if joins {
                if let Some(Value::Array(calls)) = messages.last_mut().and_then(|m| m.get_mut("tool_calls")) {
                    calls.push(call);
                }
            } else {
                messages.push(serde_json::json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
        }
        "function_call_output" => {
            let call_id = item.get("call_id").and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 256);
            let Some(call_id) = call_id else {
                return Err(ApiError::invalid(format!("{param}.call_id"), "missing_required_parameter", "a function_call_output item needs its call_id"));
            };
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Array(_)) => text_content(&format!("{param}.output"), v, &["input_text", "text"])?,
                _ => return Err(ApiError::invalid(format!("{param}.output"), "missing_required_parameter", "a function_call_output item needs its output")),
            };
            messages.push(serde_json::json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        other => {
            return Err(ApiError::invalid(
                format!("{param}.type"),
                "unsupported_value",
                format!("{other} input items are not supported: message, function_call or function_call_output"),
            ))
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
