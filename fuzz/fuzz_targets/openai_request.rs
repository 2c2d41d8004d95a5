//! The OpenAI-compatible API's request decoder never panics, and what it accepts stays within
//! its limits: every message a chat role with string content (or an assistant's tool calls),
//! every tool a valid name, at most the limit of each list. The first byte picks the route.
#![no_main]
use libfuzzer_sys::fuzz_target;
use palyra_proto::openai::request::{decode, Api, ApiLimits};

const LIMITS: ApiLimits = ApiLimits {
    max_messages: 16,
    max_tools: 4,
    max_stop: 2,
    max_stop_bytes: 16,
    max_name_bytes: 32,
    max_user_bytes: 16,
    max_output_tokens: 1000,
};

fuzz_target!(|data: &[u8]| {
    let Some((&route, body)) = data.split_first() else {
        return;
    };
    let api = if route % 2 == 0 { Api::Chat } else { Api::Responses };
    match decode(api, body, &LIMITS) {
        Ok(c) => {
            assert!(!c.messages.is_empty());
            // Responses may add a system message for `instructions`.
            assert!(c.messages.len() <= LIMITS.max_messages + 1);
            assert!(c.tools.len() <= LIMITS.max_tools);
            for m in &c.messages {
                let role = m["role"].as_str().unwrap();
                assert!(["system", "user", "assistant", "tool"].contains(&role), "{m}");
                assert!(m["content"].is_string() || (role == "assistant" && m.get("tool_calls").is_some()), "{m}");
            }
            for t in &c.tools {
                assert!(!t.name.is_empty() && t.name.len() <= 64);
                let _ = t.chat_tool();
            }
            if let Some(n) = c.options.get("max_tokens") {
                assert!(n.as_u64().is_some_and(|n| (1..=1000).contains(&n)));
            }
            let _ = c.prompt();
        }
        Err(e) => {
            assert_eq!(e.status, 400);
            assert!(!e.message.is_empty());
            let _ = e.body();
        }
    }
});
