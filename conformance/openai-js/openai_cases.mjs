// The official openai npm package against palyrad's OpenAI-compatible API, with default client
// settings except baseURL and apiKey. Started by ../openai_sdk.py --sdk js, which brings up the
// stack and passes BASE_URL, KEY (openai:use), RATE_KEY (a fresh key), RPM, HTTP (the operator
// listener) and UPSTREAM (the scripted upstream). Prints one line per case:
// LABEL CASE PASS|FAIL DETAIL.
import OpenAI from "openai";
import assert from "node:assert/strict";

const env = process.env;
const label = env.LABEL || "openai-js";
const client = new OpenAI({ baseURL: env.BASE_URL, apiKey: env.KEY });
const user = (text) => [{ role: "user", content: text }];
const weather = {
  type: "function",
  function: {
    name: "get_weather",
    description: "the weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
};
const monotonic = () => Number(process.hrtime.bigint()) / 1e9; // CLOCK_MONOTONIC, as Python's

async function count4xx() {
  const text = await (await fetch(`http://${env.HTTP}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith('palyra_http_responses_total{class="4xx"}'));
  return Number(line.split(" ")[1]);
}

const cases = {
  async models() {
    const ids = [];
    for await (const m of client.models.list()) ids.push(m.id);
    assert.ok(ids.includes("palyra-agent") && ids.includes("scripted"), String(ids));
    const m = await client.models.retrieve("scripted");
    assert.equal(m.object, "model");
    return `models ${ids.join(", ")}`;
  },
  async completion() {
    const c = await client.chat.completions.create({ model: "scripted", messages: user("hello from js") });
    assert.equal(c.choices[0].message.content, "You said: hello from js");
    assert.equal(c.choices[0].finish_reason, "stop");
    assert.deepEqual([c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens], [3, 5, 8]);
    return `${JSON.stringify(c.choices[0].message.content)}, usage ${c.usage.total_tokens}`;
  },
  async stream_usage() {
    const stream = await client.chat.completions.create({
      model: "palyra-agent", messages: user("stream js"), stream: true, stream_options: { include_usage: true },
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.equal(chunks[0].choices[0].delta.role, "assistant");
    const text = chunks.filter((c) => c.choices.length).map((c) => c.choices[0].delta.content || "").join("");
    assert.equal(text, "You said: stream js");
    const finishes = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason).map((c) => c.choices[0].finish_reason);
    assert.deepEqual(finishes, ["stop"]);
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage.total_tokens, 2 + 4);
    return `${chunks.length} chunks, usage ${last.usage.total_tokens}`;
  },
  async tool_stream() {
    const messages = user('weather? [[tool:get_weather {"city": "Lima"}]]');
    const stream = client.chat.completions.stream({ model: "scripted", messages, tools: [weather] });
    const kinds = new Set();
    stream.on("tool_calls.function.arguments.done", () => kinds.add("arguments.done"));
    const final = await stream.finalChatCompletion();
    const choice = final.choices[0];
    assert.equal(choice.finish_reason, "tool_calls");
    const call = choice.message.tool_calls[0];
    assert.equal(call.function.name, "get_weather");
    assert.deepEqual(JSON.parse(call.function.arguments), { city: "Lima" });
    assert.ok(kinds.has("arguments.done"));
    messages.push({ role: "assistant", content: choice.message.content, tool_calls: choice.message.tool_calls });
    messages.push({ role: "tool", tool_call_id: call.id, content: "mild" });
    const answer = await client.chat.completions.create({ model: "scripted", messages, tools: [weather] });
    assert.equal(answer.choices[0].message.content, "Tool get_weather said: mild");
    return `call ${call.function.arguments}; answer ${JSON.stringify(answer.choices[0].message.content)}`;
  },
  async responses() {
    const r = await client.responses.create({ model: "scripted", input: "hello js responses" });
    assert.equal(r.output_text, "You said: hello js responses");
    assert.equal(r.status, "completed");
    return `${r.id}: ${JSON.stringify(r.output_text)}`;
  },
  async responses_sse() {
    const stream = await client.responses.create({ model: "scripted", input: "js stream", stream: true });
    const events = [];
    for await (const e of stream) events.push(e);
    assert.equal(events[0].type, "response.created");
    assert.equal(events.at(-1).type, "response.completed");
    const text = events.filter((e) => e.type === "response.output_text.delta").map((e) => e.delta).join("");
    assert.equal(text, "You said: js stream");
    return `${events.length} events`;
  },
  async invalid() {
    await assert.rejects(
      client.chat.completions.create({ model: "scripted", messages: user("x"), n: 2 }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "n",
    );
    return "400 naming n";
  },
  async bad_key() {
    const stranger = new OpenAI({ baseURL: env.BASE_URL, apiKey: "palyra_tok_01ARZ3NDEKTSV4RRFFQ69G5FAV_nope" });
    await assert.rejects(stranger.models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    return "401 AuthenticationError";
  },
  async rate_limited() {
    const limited = new OpenAI({ baseURL: env.BASE_URL, apiKey: env.RATE_KEY });
    for (let i = 0; i < Number(env.RPM); i++) {
      await limited.chat.completions.create({ model: "scripted", messages: user("quick") });
    }
    const before = await count4xx();
    const started = monotonic();
    const c = await limited.chat.completions.create({ model: "scripted", messages: user("one more") });
    const waited = monotonic() - started;
    const refused = (await count4xx()) - before;
    assert.equal(c.choices[0].message.content, "You said: one more");
    assert.ok(refused >= 1 && waited >= 0.9, `refused ${refused}, waited ${waited}`);
    return `${refused} x 429, retried by the SDK after ${waited.toFixed(1)} s`;
  },
  async disconnect() {
    const prompt = "[[tokens:2000]] [[slow:10]] js long";
    const stream = await client.chat.completions.create({ model: "scripted", messages: user(prompt), stream: true });
    let got = 0;
    let closedAt = 0;
    for await (const _ of stream) {
      if (++got === 5) {
        stream.controller.abort();
        closedAt = monotonic();
        break;
      }
    }
    let closed = [];
    while (!closed.length && monotonic() < closedAt + 5) {
      closed = (await (await fetch(`http://${env.UPSTREAM}/scripted/closed`)).json()).filter((c) => c.prompt === prompt);
      if (!closed.length) await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(closed.length, "the upstream stream was never closed");
    const lagMs = (closed[0].closed_at - closedAt) * 1000;
    assert.ok(lagMs < 100, `the upstream call closed ${lagMs.toFixed(0)} ms after the client`);
    return `upstream closed ${lagMs.toFixed(0)} ms after the client`;
  },
};

let failed = 0;
for (const [name, run] of Object.entries(cases)) {
  let status = "PASS";
  let detail;
  try {
    detail = await run();
  } catch (e) {
    status = "FAIL";
    detail = `${e.name}: ${e.message}`.replace(/\s+/g, " ");
    failed += 1;
  }
  console.log(`${label.padEnd(10)} ${name.padEnd(18)} ${status.padEnd(5)} ${String(detail).slice(0, 90)}`);
}
process.exit(failed ? 1 : 0);
