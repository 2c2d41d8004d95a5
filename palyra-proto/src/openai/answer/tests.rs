use super::*;
use crate::openai::chat::{ChatEvent, ChatStream, FinishReason};
use crate::sse::{SseDecoder, SseLimits};
use proptest::prelude::*;
use serde_json::json;

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

const USAGE: Usage = Usage {
    prompt_tokens: 5,
    completion_tokens: 3,
    total_tokens: 8,
};

/// The data of each event of `out`, parsed.
fn events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            if data == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

/// A whole streamed answer: role, two texts, a call, the finish, usage, [DONE].
fn streamed(include_usage: bool) -> BytesMut {
    let chunks = ChatChunks::new("chatcmpl-1", 1700000000, "palyra-agent", include_usage);
    let mut out = BytesMut::new();
    chunks.role(&mut out);
    chunks.content(&mut out, "Hello \"world\"\n");
    chunks.content(&mut out, "é");
    chunks.tool_call(&mut out, 0, &call("call_a", "add", "{\"a\":1}"));
    chunks.finish(&mut out, Finish::ToolCalls);
    chunks.usage(&mut out, USAGE);
    done(&mut out);
    out
}

#[test]
fn chunks_have_the_shapes_of_the_api_reference() {
    let e = events(&streamed(true));
    assert_eq!(e.len(), 8);
    let head = |v: &Value| {
        (
            v["id"].clone(),
            v["object"].clone(),
            v["created"].clone(),
            v["model"].clone(),
        )
    };
    for chunk in &e[..7] {
        assert_eq!(
            head(chunk),
            (
                json!("chatcmpl-1"),
                json!("chat.completion.chunk"),
                json!(1700000000),
                json!("palyra-agent")
            )
        );
    }
    assert_eq!(
        e[0]["choices"],
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
    );
    assert_eq!(
        e[1]["choices"][0]["delta"],
        json!({"content": "Hello \"world\"\n"})
    );
    assert_eq!(e[2]["choices"][0]["delta"], json!({"content": "é"}));
    // The id, type and name only in the first delta of the call; the arguments after.
    assert_eq!(
        e[3]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "add", "arguments": ""}}]})
    );
    assert_eq!(
        e[4]["choices"][0]["delta"],
        json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":1}"}}]})
    );
    assert_eq!(
        e[5]["choices"],
        json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "tool_calls"}])
    );
    assert_eq!(e[6]["choices"], json!([]));
    assert_eq!(
        e[6]["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8})
    );
    assert_eq!(e[7], json!("[DONE]"));
    // Without include_usage there is no usage chunk.
    let e = events(&streamed(false));
    assert_eq!(e.len(), 7);
    assert!(e.iter().all(|c| c.get("usage").is_none()));
}

#[test]
fn a_non_streamed_completion_is_one_object() {
    let v = chat_completion(
        "chatcmpl-2",
        7,
        "m",
        "",
        &[call("c", "f", "{}")],
        Finish::ToolCalls,
        USAGE,
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"],
        json!({"role": "assistant", "content": null, "refusal": null,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
    );
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(v["usage"]["total_tokens"], 8);
    let v = chat_completion("chatcmpl-3", 7, "m", "hi", &[], Finish::Length, USAGE);
    assert_eq!(v["choices"][0]["message"]["content"], "hi");
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[test]
fn errors_comments_and_done_in_the_stream() {
    let mut out = BytesMut::new();
    comment(&mut out, "waiting for\nan approval");
    stream_error(
        &mut out,
        &ApiError::new(
            500,
            "server_error",
            "run_failed",
            "the model provider failed",
        ),
    );
    done(&mut out);
    let text = std::str::from_utf8(&out).unwrap();
    assert!(text.starts_with(": waiting for an approval\n\n"), "{text}");
    let mut sse = SseDecoder::new(SseLimits::default());
    sse.handle_input(&out).unwrap();
    let error: Value = serde_json::from_str(&sse.poll_event().unwrap().data).unwrap();
    assert_eq!(
        error,
        json!({"error": {"message": "the model provider failed", "type": "server_error", "param": null, "code": "run_failed"}})
    );
    assert_eq!(sse.poll_event().unwrap().data, "[DONE]");
}

#[test]
fn a_response_streams_typed_events_and_ends_as_one_object() {
    let mut r = Response::new("resp_01", 1700000000, "palyra-agent");
    let mut out = BytesMut::new();
    r.created(&mut out);
    r.text(&mut out, "Calling ");
    r.text(&mut out, "add.");
    r.function_call(&mut out, &call("c1", "add", "{\"a\":1}"));
    let last = r.completed(&mut out, Finish::ToolCalls, USAGE);
    let text = std::str::from_utf8(&out).unwrap();
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let e = events(&out);
    for (i, event) in e.iter().enumerate() {
        assert_eq!(event["sequence_number"], i, "{event}");
        assert_eq!(event["type"], kinds[i]);
    }
    assert_eq!(e[4]["delta"], "Calling ");
    assert_eq!(e[6]["text"], "Calling add.");
    assert_eq!(e[11]["arguments"], "{\"a\":1}");
    assert_eq!(last["status"], "completed");
    assert_eq!(
        last["output"],
        json!([
            {"id": "msg_01_0", "type": "message", "status": "completed", "role": "assistant",
             "content": [{"type": "output_text", "text": "Calling add.", "annotations": [], "logprobs": []}]},
            {"id": "fc_01_1", "type": "function_call", "status": "completed", "call_id": "c1", "name": "add", "arguments": "{\"a\":1}"},
        ])
    );
    assert_eq!(last["usage"]["input_tokens"], 5);
    assert_eq!(e[13]["response"], last);
    assert_eq!(r.output_text(), "Calling add.");
    // Cut at the limit: incomplete; broken off: failed with the error.
    let mut r = Response::new("resp_02", 1, "m");
    let mut out = BytesMut::new();
    r.text(&mut out, "part");
    assert_eq!(
        r.completed(&mut out, Finish::Length, USAGE)["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    let mut r = Response::new("resp_03", 1, "m");
    let mut out = BytesMut::new();
    r.failed(
        &mut out,
        &ApiError::new(500, "server_error", "run_failed", "cut"),
    );
    let e = events(&out);
    assert_eq!(e[0]["type"], "response.failed");
    assert_eq!(
        e[0]["response"]["error"],
        json!({"code": "run_failed", "message": "cut"})
    );
}

proptest! {
    /// Our stream read back by our own provider-side decoder, in any chunking, gives the same
    /// answer: the texts, the call, the finish and the usage.
    #[test]
    fn any_chunking_of_our_stream_decodes_to_the_same_answer(cuts in proptest::collection::vec(0usize..2000, 0..12)) {
        let body = streamed(true);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut decoder = ChatStream::default();
        let mut at = 0;
        for cut in cuts.into_iter().chain([body.len()]) {
            decoder.handle_body(&body[at..cut]).unwrap();
            at = cut;
        }
        decoder.handle_end().unwrap();
        let got: Vec<ChatEvent> = std::iter::from_fn(|| decoder.poll_event()).collect();
        prop_assert_eq!(got, vec![
            ChatEvent::Token("Hello \"world\"\n".into()),
            ChatEvent::Token("é".into()),
            ChatEvent::Finished { reason: FinishReason::ToolCalls, tool_calls: vec![call("call_a", "add", "{\"a\":1}")] },
            ChatEvent::Usage(USAGE),
        ]);
        prop_assert!(decoder.is_done());
    }
}
