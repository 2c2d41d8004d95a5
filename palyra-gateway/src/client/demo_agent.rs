//! `palyra agent demo`: a small agent on the console stream (`/console/v1/stream`, admin token,
//! role agent). It greets the console, answers every chat message with a streamed reply, keeps a
//! status surface live (all six A2UI component types) and a deploy form whose submissions it
//! receives as `a2ui.action` and answers in the chat.
//!
//! Blocking tungstenite over a std TCP (or TLS) stream: one connection, one thread, no runtime
//! needed.

use super::operator::{Conn, Daemon};
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::ErrorKind;
use std::time::{Duration, Instant};
use tungstenite::client::IntoClientRequest;
use tungstenite::{Message, WebSocket};

/// Options of the demo agent.
#[derive(Clone)]
pub struct DemoOptions {
    /// The daemon (its operator plane) and the admin token.
    pub daemon: Daemon,
    /// Chat session to talk in.
    pub session: String,
    /// Agent name (owner of its surfaces).
    pub name: String,
    /// Delay between streamed words.
    pub word_delay: Duration,
    /// Stop after this long (`None`: run until the connection ends).
    pub run_for: Option<Duration>,
}

struct Agent {
    ws: WebSocket<Conn>,
    options: DemoOptions,
    replies: u64,
    deploys: Vec<String>,
    tick: u64,
}

/// The chart's series at `tick` (made-up load that moves).
fn load_series(tick: u64) -> Value {
    ["api", "worker", "db"]
        .iter()
        .enumerate()
        .map(|(i, name)| json!({"label": name, "value": ((tick * (i as u64 + 3)) % 17) + 3}))
        .collect()
}

fn status_document(tick: u64, deploys: &[String]) -> Value {
    let load = load_series(tick);
    let rows: Vec<Value> = deploys
        .iter()
        .enumerate()
        .map(|(i, d)| json!([format!("#{}", i + 1), d, "done"]))
        .collect();
    json!({"v":1,"surface":"status","components":[
        {"id":"headline","type":"text","props":{"value": format!("Fleet healthy · tick {tick}"), "tone":"success"}},
        {"id":"about","type":"markdown","props":{"value":"**Demo agent** drives this surface live.\n- chat with it on the left\n- submit the *deploy* form"}},
        {"id":"checks","type":"list","props":{"ordered":false,"items":["gateway reachable","event log durable","console stream live"]}},
        {"id":"deploys","type":"table","props":{"columns":["#","service","state"],"rows": rows}},
        {"id":"load","type":"chart","props":{"title":"Load per service","series": load}}
    ]})
}

fn deploy_form() -> Value {
    json!({"v":1,"surface":"deploy","components":[
        {"id":"intro","type":"text","props":{"value":"Ship a service"}},
        {"id":"deploy-form","type":"form","props":{"title":"Deploy","submitLabel":"Deploy",
          "fields":[
            {"id":"service","label":"Service","type":"select","options":[
                {"label":"api","value":"api"},{"label":"worker","value":"worker"}],"defaultValue":"api"},
            {"id":"replicas","label":"Replicas","type":"number","min":1,"max":9,"defaultValue":"2"},
            {"id":"note","label":"Note","type":"text","placeholder":"why?"},
            {"id":"confirm","label":"I am sure","type":"checkbox"}]}}
    ]})
}

impl Agent {
    fn send(&mut self, msg: Value) -> anyhow::Result<()> {
        self.ws
            .send(Message::text(msg.to_string()))
            .context("sending to the console stream")
    }

    /// Posts a streamed chat reply, word by word.
    fn reply(&mut self, text: &str) -> anyhow::Result<()> {
        self.replies += 1;
        let id = format!(
            "{}-{}-{}",
            self.options.name,
            std::process::id(),
            self.replies
        );
        let session = self.options.session.clone();
        self.send(json!({"type":"chat.message","session_id":session,"message_id":id,"text":"","streaming":true}))?;
        for (i, word) in text.split(' ').enumerate() {
            let piece = if i == 0 {
                word.to_owned()
            } else {
                format!(" {word}")
            };
            self.send(json!({"type":"chat.delta","message_id":id,"text":piece}))?;
            std::thread::sleep(self.options.word_delay);
        }
        self.send(json!({"type":"chat.done","message_id":id}))
    }

    fn on_message(&mut self, msg: &Value) -> anyhow::Result<()> {
        match msg["type"].as_str() {
            Some("chat.message")
                if msg["role"] == "user" && msg["session_id"] == self.options.session.as_str() =>
            {
                let text = msg["text"].as_str().unwrap_or("");
                println!("chat from the console: {text}");
                let answer = format!(
                    "You said \"{text}\". I am the demo agent: open the deploy form on the right and submit it."
                );
                self.reply(&answer)?;
            }
            Some("a2ui.action") if msg["owner"] == self.options.name.as_str() => {
                println!("action received: {}", msg["value"]);
                let service = msg["value"]["service"].as_str().unwrap_or("?").to_owned();
                let replicas = msg["value"]["replicas"].clone();
                self.deploys.push(format!("{service} x{replicas}"));
                self.send(json!({"type":"a2ui.patch","surface":"deploy","ops":[
                    {"op":"replace","path":"/components/0/props/value",
                     "value": format!("Last deploy: {service} with {replicas} replicas")}]}))?;
                self.send(json!({"type":"a2ui.snapshot","document": status_document(self.tick, &self.deploys)}))?;
                self.reply(&format!(
                    "Deploying {service} with {replicas} replicas. Done."
                ))?;
            }
            Some("error") => eprintln!("console stream error: {} {}", msg["code"], msg["message"]),
            _ => {}
        }
        Ok(())
    }

    fn tick(&mut self) -> anyhow::Result<()> {
        self.tick += 1;
        let load = load_series(self.tick);
        self.send(json!({"type":"a2ui.patch","surface":"status","ops":[
            {"op":"replace","path":"/components/0/props/value","value": format!("Fleet healthy · tick {}", self.tick)},
            {"op":"replace","path":"/components/4/props/series","value": load}]}))
    }
}

/// Runs the demo agent until the stream ends (or `run_for` passes).
pub fn run_demo(options: DemoOptions) -> anyhow::Result<()> {
    let stream = options.daemon.connect(Duration::from_secs(30))?;
    let mut request = options.daemon.stream_url().into_client_request()?;
    let headers = request.headers_mut();
    headers.insert(
        "authorization",
        format!("Bearer {}", options.daemon.token())
            .parse()
            .context("the admin token is not a valid header value")?,
    );
    headers.insert(
        "sec-websocket-protocol",
        "palyra.console.v1".parse().expect("static header"),
    );
    let (ws, response) = tungstenite::client(request, stream).map_err(|e| match e {
        tungstenite::HandshakeError::Failure(tungstenite::Error::Http(r)) => anyhow::anyhow!(
            "the daemon refused the stream: HTTP {} {}",
            r.status(),
            String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
        ),
        other => anyhow::anyhow!(
            "WebSocket handshake failed: {other}{}",
            options.daemon.garbled_hint()
        ),
    })?;
    if response
        .headers()
        .get("sec-websocket-protocol")
        .is_none_or(|p| p != "palyra.console.v1")
    {
        bail!("the daemon did not agree on palyra.console.v1");
    }
    let mut agent = Agent {
        ws,
        options: options.clone(),
        replies: 0,
        deploys: Vec::new(),
        tick: 0,
    };
    agent.send(json!({"type":"hello","resume":null,"agent":options.name}))?;
    agent.send(json!({"type":"a2ui.snapshot","document": status_document(0, &[])}))?;
    agent.send(json!({"type":"a2ui.snapshot","document": deploy_form()}))?;
    agent.reply("Hello from the demo agent. Ask me anything, or use the deploy form.")?;
    println!(
        "demo agent {:?} connected; talking in session {:?}",
        options.name, options.session
    );
    agent
        .ws
        .get_ref()
        .tcp()
        .set_read_timeout(Some(Duration::from_millis(200)))?;
    let started = Instant::now();
    let mut next_tick = Instant::now() + Duration::from_secs(2);
    loop {
        if options.run_for.is_some_and(|d| started.elapsed() >= d) {
            let _ = agent.ws.close(None);
            return Ok(());
        }
        match agent.ws.read() {
            Ok(Message::Text(text)) => {
                if let Ok(msg) = serde_json::from_str::<Value>(&text) {
                    agent.on_message(&msg)?;
                }
            }
            Ok(Message::Close(frame)) => {
                bail!("the daemon closed the stream: {frame:?}");
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e).context("console stream"),
        }
        if Instant::now() >= next_tick {
            agent.tick()?;
            next_tick = Instant::now() + Duration::from_secs(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_valid_a2ui() {
        palyra_proto::a2ui::validate_document(&status_document(3, &["api x2".into()])).unwrap();
        palyra_proto::a2ui::validate_document(&deploy_form()).unwrap();
    }
}
