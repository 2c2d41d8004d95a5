use super::*;
use serde_json::json;

fn chat(body: Value) -> Result<Completion, ApiError> {
    decode(
        Api::Chat,
        body.to_string().as_bytes(),
        &ApiLimits::default(),
    )
}

fn responses(body: Value) -> Result<Completion, ApiError> {
    decode(
        Api::Responses,
        body.to_string().as_bytes(),
        &ApiLimits::default(),
    )
}

fn refused(result: Result<Completion, ApiError>) -> (String, &'static str, String) {
    let e = result.expect_err("the request is refused");
    assert_eq!(e.status, 400);
    assert_eq!(e.kind, "invalid_request_error");
    (e.param.unwrap_or_default(), e.code, e.message)
}

#[test]
fn a_chat_request_becomes_provider_messages_tools_and_options() {
    let c = chat(json!({
        "model": "palyra-agent",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2+2?"}], "name": "ann"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":2}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "4"},
        ],
        "tools": [{"type": "function", "function": {"name": "add", "description": "adds", "parameters": {"type": "object"}, "strict": true}}],
        "tool_choice": {"type": "function", "function": {"name": "add"}},
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_completion_tokens": 64,
        "temperature": 0.2,
        "stop": "END",
        "n": 1,
        "seed": 7,
        "user": "u-1",
        "store": false,
        "metadata": {"k": "v"},
    }))
    .unwrap();
    assert_eq!(c.model, "palyra-agent");
    assert_eq!(
        c.messages,
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "What is 2+2?", "name": "ann"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":2,\"b\":2}"}}]}),
            json!({"role": "tool", "tool_call_id": "call_1", "content": "4"}),
        ]
    );
    assert_eq!(c.tools.len(), 1);
    assert_eq!(
        c.tools[0].chat_tool(),
        json!({"type": "function", "function": {
        "name": "add", "description": "adds", "parameters": {"type": "object"}, "strict": true}})
    );
    assert_eq!(
        c.tool_choice,
        Some(json!({"type": "function", "function": {"name": "add"}}))
    );
    assert!(c.stream && c.include_usage);
    assert_eq!(c.user.as_deref(), Some("u-1"));
    assert_eq!(
        Value::Object(c.options.clone()),
        json!({"max_tokens": 64, "temperature": 0.2, "stop": ["END"], "seed": 7})
    );
    assert_eq!(c.prompt(), "What is 2+2?");
}

#[test]
fn bad_chat_requests_name_the_parameter() {
    let base = |extra: Value| {
        let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        chat(body)
    };
    assert_eq!(refused(base(json!({"n": 2}))).0, "n");
    assert_eq!(refused(base(json!({"temperature": 3}))).0, "temperature");
    assert_eq!(
        refused(base(json!({"stream_options": {"include_usage": true}}))).0,
        "stream_options"
    );
    assert_eq!(refused(base(json!({"logprobs": true}))).0, "logprobs");
    assert_eq!(
        refused(base(json!({"frobnicate": 1}))),
        (
            "frobnicate".into(),
            "unsupported_parameter",
            "frobnicate is not supported by this gateway (docs/openai-api.md lists what is)".into()
        )
    );
    assert_eq!(refused(base(json!({"max_tokens": 0}))).0, "max_tokens");
    assert_eq!(
        refused(base(json!({"stop": ["a", "b", "c", "d", "e"]}))).1,
        "array_above_max_length"
    );
    assert_eq!(
        refused(base(json!({"tools": [{"type": "web_search"}]}))).0,
        "tools[0].type"
    );
    assert_eq!(
        refused(base(
            json!({"tools": [{"type": "function", "function": {"name": "bad name"}}]})
        ))
        .0,
        "tools[0].function.name"
    );
    let dup = json!({"type": "function", "function": {"name": "f"}});
    assert_eq!(
        refused(base(json!({"tools": [dup.clone(), dup]}))).1,
        "duplicate_tool_name"
    );
    assert_eq!(
        refused(base(
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}})
        ))
        .0,
        "tool_choice"
    );
    assert_eq!(
        refused(chat(
            json!({"messages": [{"role": "user", "content": "x"}]})
        ))
        .1,
        "missing_required_parameter"
    );
    assert_eq!(
        refused(chat(json!({"model": "m", "messages": []}))).0,
        "messages"
    );
    let part = json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]});
    assert_eq!(
        refused(chat(part)),
        (
            "messages[0].content[0]".into(),
            "unsupported_content",
            "image_url content parts are not supported: only text".into()
        )
    );
    assert_eq!(
        refused(chat(
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
        ))
        .0,
        "messages[0].role"
    );
    assert_eq!(
        refused(chat(
            json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})
        ))
        .0,
        "messages[0].tool_call_id"
    );
    assert_eq!(
        refused(chat(
            json!({"model": "m", "messages": [{"role": "assistant"}]})
        ))
        .0,
        "messages[0].content"
    );
    let e = decode(Api::Chat, b"{not json", &ApiLimits::default()).unwrap_err();
    assert_eq!((e.status, e.code), (400, "invalid_json"));
    let e = decode(Api::Chat, b"[1]", &ApiLimits::default()).unwrap_err();
    assert!(e.message.contains("JSON object"), "{e}");
}

#[test]
fn limits_bound_messages_and_tools() {
    let limits = ApiLimits {
        max_messages: 2,
        max_tools: 1,
        ..ApiLimits::default()
    };
    let m = json!({"role": "user", "content": "x"});
    let body = json!({"model": "m", "messages": [m.clone(), m.clone(), m]});
    let e = decode(Api::Chat, body.to_string().as_bytes(), &limits).unwrap_err();
    assert_eq!(
        (e.param.as_deref(), e.code),
        (Some("messages"), "array_above_max_length")
    );
    let tool = |n: &str| json!({"type": "function", "function": {"name": n}});
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [tool("a"), tool("b")]});
    let e = decode(Api::Chat, body.to_string().as_bytes(), &limits).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools"));
}

#[test]
fn a_responses_request_becomes_the_same_conversation() {
    let c = responses(json!({
        "model": "palyra-agent",
        "instructions": "Be brief.",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "add 2 and 2"}]},
            {"type": "function_call", "call_id": "c1", "name": "add", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "add", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "c1", "output": "4"},
            {"type": "function_call_output", "call_id": "c2", "output": "1"},
        ],
        "tools": [{"type": "function", "name": "add", "parameters": {"type": "object"}}],
        "tool_choice": {"type": "function", "name": "add"},
        "max_output_tokens": 100,
        "stream": true,
        "store": false,
        "reasoning": {"effort": "low"},
    }))
    .unwrap();
    assert_eq!(c.api, Api::Responses);
    assert_eq!(
        c.messages,
        vec![
            json!({"role": "system", "content": "Be brief."}),
            json!({"role": "user", "content": "add 2 and 2"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "4"}),
            json!({"role": "tool", "tool_call_id": "c2", "content": "1"}),
        ]
    );
    assert_eq!(c.tools[0].name, "add");
    assert_eq!(
        c.tool_choice,
        Some(json!({"type": "function", "function": {"name": "add"}}))
    );
    assert_eq!(Value::Object(c.options.clone()), json!({"max_tokens": 100}));
    assert!(c.stream && c.include_usage);
    let simple = responses(json!({"model": "m", "input": "hello"})).unwrap();
    assert_eq!(
        simple.messages,
        vec![json!({"role": "user", "content": "hello"})]
    );
    assert!(!simple.stream);
}

#[test]
fn bad_responses_requests_name_the_parameter() {
    assert_eq!(
        refused(responses(json!({"model": "m", "input": ""}))).0,
        "input"
    );
    assert_eq!(refused(responses(json!({"model": "m"}))).0, "input");
    assert_eq!(
        refused(responses(
            json!({"model": "m", "input": "x", "previous_response_id": "resp_1"})
        ))
        .1,
        "unsupported_parameter"
    );
    assert_eq!(
        refused(responses(
            json!({"model": "m", "input": [{"type": "file_search_call"}]})
        ))
        .0,
        "input[0].type"
    );
    assert_eq!(
        refused(responses(
            json!({"model": "m", "input": "x", "tools": [{"type": "file_search"}]})
        ))
        .0,
        "tools[0].type"
    );
    assert_eq!(
        refused(responses(
            json!({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]})
        ))
        .0,
        "input[0].call_id"
    );
    assert_eq!(
        refused(responses(
            json!({"model": "m", "input": "x", "background": true})
        ))
        .0,
        "background"
    );
}

#[test]
fn errors_have_the_openai_envelope() {
    let e = ApiError::invalid("messages[0].role", "invalid_value", "bad role");
    assert_eq!(
        serde_json::from_slice::<Value>(&e.body()).unwrap(),
        json!({"error": {"message": "bad role", "type": "invalid_request_error", "param": "messages[0].role", "code": "invalid_value"}})
    );
    let e = ApiError::new(401, "authentication_error", "invalid_api_key", "no key");
    assert_eq!(
        serde_json::from_slice::<Value>(&e.body()).unwrap()["error"]["param"],
        Value::Null
    );
    assert_eq!(e.to_string(), "no key");
}
