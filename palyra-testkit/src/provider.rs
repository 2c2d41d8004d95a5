//! The model provider client against the scripted OpenAI-compatible server
//! (`conformance/openai_upstream.py`, itself checked against the official OpenAI SDK): a
//! streamed answer, a tool call split across chunks, refusals retried before the first token,
//! a refusal that is not retried, an error mid-stream, a cut stream, a silent provider.

use crate::Driver;
use palyra_gateway::provider::client::{stream_chat, Endpoint, ProviderError, ProviderSettings};
use palyra_proto::openai::call::ChatRequest;
use palyra_proto::openai::chat::{ChatEvent, ChatLimits, FinishReason};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The scripted upstream (`conformance/openai_upstream.py`), stopped when dropped (its stdin
/// closes).
pub struct Upstream {
    child: Child,
    /// Where it listens, `HOST:PORT`.
    pub addr: String,
}

impl Upstream {
    /// Starts it, wanting `api_key` as the bearer token (none when empty).
    pub fn start(api_key: &str) -> Self {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../conformance/openai_upstream.py"
        );
        let key = if api_key.is_empty() {
            Vec::new()
        } else {
            vec!["--api-key", api_key]
        };
        let mut child = Command::new("python3")
            .arg(script)
            .args(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the scripted upstream");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the upstream prints its address");
        let addr = line
            .split_whitespace()
            .last()
            .expect("an address")
            .to_owned();
        Self { child, addr }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn settings(addr: &str, key: &str) -> ProviderSettings {
    ProviderSettings {
        endpoint: Endpoint::parse(&format!("http://{addr}/v1")).expect("base_url"),
        api_key: Some(key.to_owned()),
        tls: None,
        connect_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_retries: 3,
        limits: ChatLimits::default(),
    }
}

fn ask<D: Driver>(
    settings: &ProviderSettings,
    prompt: &str,
) -> (Vec<ChatEvent>, Result<(), ProviderError>) {
    let request = ChatRequest {
        model: "scripted".into(),
        messages: vec![serde_json::json!({"role": "user", "content": prompt})],
        tools: vec![],
        options: Default::default(),
    };
    let rt = D::runtime();
    let mut events = Vec::new();
    let result = D::block_on(stream_chat(&rt, settings, &request, |e| events.push(e)));
    (events, result)
}

fn text(events: &[ChatEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Token(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

/// Every case against one upstream.
pub fn provider_against_scripted_upstream<D: Driver>() {
    let upstream = Upstream::start("test-key");
    let good = settings(&upstream.addr, "test-key");

    let (events, result) = ask::<D>(&good, "hello there");
    result.expect("a streamed answer");
    assert_eq!(text(&events), "You said: hello there");
    assert!(events
        .iter()
        .any(|e| matches!(e, ChatEvent::Usage(u) if u.total_tokens > 0)));

    let (events, result) = ask::<D>(&good, r#"check [[tool:disk_usage {"path": "/"}]]"#);
    result.expect("a tool call");
    let finished = events.iter().find_map(|e| match e {
        ChatEvent::Finished { reason, tool_calls } => Some((reason.clone(), tool_calls.clone())),
        _ => None,
    });
    let (reason, calls) = finished.expect("the turn finished");
    assert_eq!(reason, FinishReason::ToolCalls);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        (calls[0].name.as_str(), calls[0].arguments.as_str()),
        ("disk_usage", r#"{"path": "/"}"#)
    );

    // Two 429s with Retry-After: 1, then the answer: retried, and waited for.
    let started = Instant::now();
    let (events, result) = ask::<D>(&good, "again [[429:2]]");
    result.expect("retried after the refusals");
    assert!(text(&events).starts_with("You said"), "{events:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );

    // More refusals than the retry budget: the last refusal is the error.
    let mut once = good.clone();
    once.max_retries = 1;
    let (_, result) = ask::<D>(&once, "busy [[500:5]]");
    assert!(
        matches!(result, Err(ProviderError::Refused { status, .. }) if status == 500),
        "{result:?}"
    );

    // A wrong key: 401, not retried.
    let started = Instant::now();
    let (_, result) = ask::<D>(&settings(&upstream.addr, "wrong"), "x");
    match result {
        Err(ProviderError::Refused {
            status, message, ..
        }) => {
            assert_eq!(status, 401);
            assert!(message.contains("API key"), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1), "not retried");

    // An error object mid-stream, and a stream cut off: failures with the reason, never a
    // success with a partial answer.
    let (events, result) = ask::<D>(&good, "[[error]]");
    assert_eq!(text(&events), "Partial ");
    assert!(
        matches!(&result, Err(ProviderError::Failed(r)) if r.contains("failed mid-stream")),
        "{result:?}"
    );
    let (_, result) = ask::<D>(&good, "[[cut]]");
    assert!(
        matches!(&result, Err(ProviderError::Failed(r)) if r.contains("ended before")),
        "{result:?}"
    );

    // A provider that goes silent longer than the idle limit.
    let mut impatient = good.clone();
    impatient.idle_timeout = Duration::from_millis(300);
    let (_, result) = ask::<D>(&impatient, "[[slow:1500]] hello");
    assert!(
        matches!(result, Err(ProviderError::Silent(_))),
        "{result:?}"
    );

    // Nobody listening.
    let (_, result) = ask::<D>(&settings("127.0.0.1:9", "k"), "x");
    assert!(
        matches!(result, Err(ProviderError::Unreachable { .. })),
        "{result:?}"
    );
}
