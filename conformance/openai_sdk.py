"""The official `openai` Python SDK against palyrad's OpenAI-compatible API, with default client
settings except `base_url` and `api_key`.

Starts the scripted OpenAI-compatible upstream and palyrad with it as `[model] base_url` (and a
paired node, unused here), mints API keys with `palyra tokens create`, then:
  models          models.list and models.retrieve: palyra-agent and the provider's model
  completion      a chat completion: the answer, finish_reason stop, the provider's usage
  stream_usage    a streamed completion with include_usage: the role first, the text, a finish
                  chunk, then a usage chunk with no choices
  tool_stream     a tool call round trip with chat.completions.stream(): the SDK accumulates the
                  call of the caller's function; its result sent back gets the model's answer
  responses       responses.create, not streamed: output_text, status, usage
  responses_sse   responses.create(stream=True): the typed events, text deltas, completed
  responses_tool  a function call through the Responses API and its output sent back
  invalid         n=2: BadRequestError (400) naming the parameter
  bad_key         an unknown key: AuthenticationError (401); a key without openai:use: 403
  not_found       an unknown model: NotFoundError (404)
  rate_limited    a key over its requests per minute: 429 with Retry-After, which the SDK's
                  own retry honours before it succeeds
  disconnect      a stream closed mid-way cancels its run, and the upstream call closes within
                  100 ms (timed by the upstream)
  operator_approves  palyra-agent with a key holding openai:tools calls the node's system.echo:
                  the stream waits while an operator runs `palyra approve RUN_ID`, then the
                  model's answer quotes the node's output
  runs_listed     the completions are runs of the key's principal in `palyra runs list`, and
                  `palyra tokens usage` shows the key's provider tokens
With --sdk js, the same stack runs the official `openai` npm package instead
(conformance/openai-js/openai_cases.mjs, installed there with `npm install`).
Prints one line per case: LABEL CASE PASS|FAIL DETAIL.
"""

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import openai

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpcio_runs import ADMIN, Stack, run_cases  # noqa: E402

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
RPM = 30


class RetryLog(logging.Handler):
    """Counts the SDK's own retry messages."""

    def __init__(self):
        super().__init__()
        self.retries = []

    def emit(self, record):
        message = record.getMessage()
        if "Retrying request" in message:
            self.retries.append(message)


def cases(stack, palyra):
    env = dict(os.environ, PALYRA_ADMIN_TOKEN=ADMIN, PALYRA_DAEMON_URL=f"http://{stack.http}",
               PALYRA_GRPC=stack.grpc)

    def cli(*args):
        return subprocess.run([palyra, *args], env=env, check=True, capture_output=True, text=True).stdout

    def mint(*scopes, principal="user:sdk"):
        args = ["tokens", "create", "--principal", principal]
        for s in scopes:
            args += ["--scope", s]
        return cli(*args).strip().splitlines()[-1]

    base_url = f"http://{stack.http}/v1"
    key = mint("openai:use")
    client = openai.OpenAI(base_url=base_url, api_key=key)
    user = lambda text: [{"role": "user", "content": text}]  # noqa: E731

    def models():
        ids = [m.id for m in client.models.list()]
        assert "palyra-agent" in ids and "scripted" in ids, ids
        m = client.models.retrieve("palyra-agent")
        assert (m.id, m.object, m.owned_by) == ("palyra-agent", "model", "palyra"), m
        return f"models {ids}"

    def completion():
        c = client.chat.completions.create(model="scripted", messages=user("hello there"))
        choice = c.choices[0]
        assert choice.message.content == "You said: hello there", choice
        assert choice.finish_reason == "stop" and choice.message.role == "assistant", choice
        assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.total_tokens) == (2, 4, 6), c.usage
        assert c.object == "chat.completion" and c.id.startswith("chatcmpl-"), c
        return f"{choice.message.content!r}, usage {c.usage.total_tokens}"

    def stream_usage():
        chunks = list(client.chat.completions.create(
            model="palyra-agent", messages=user("stream this please"), stream=True,
            stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant", chunks[0]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text == "You said: stream this please", text
        assert finishes == ["stop"], finishes
        last = chunks[-1]
        assert last.choices == [] and last.usage.total_tokens == 3 + 5, last
        return f"{len(chunks)} chunks, usage {last.usage.total_tokens}"

    def tool_stream():
        prompt = 'weather? [[tool:get_weather {"city": "Oslo"}]]'
        messages = user(prompt)
        with client.chat.completions.stream(model="scripted", messages=messages, tools=[WEATHER]) as s:
            kinds = {event.type for event in s}
            final = s.get_final_completion()
        choice = final.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        call = choice.message.tool_calls[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}, call
        assert "tool_calls.function.arguments.done" in kinds, kinds
        messages.append(choice.message.model_dump(exclude_none=True))
        messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
        answer = client.chat.completions.create(model="scripted", messages=messages, tools=[WEATHER])
        assert answer.choices[0].message.content == "Tool get_weather said: sunny", answer
        return f"call {call.id} {call.function.arguments}; answer {answer.choices[0].message.content!r}"

    def responses():
        r = client.responses.create(model="scripted", input="hello responses", instructions="be brief")
        assert r.output_text == "You said: hello responses", r
        assert r.status == "completed" and r.usage.total_tokens > 0, r
        return f"{r.id}: {r.output_text!r}"

    def responses_sse():
        events = list(client.responses.create(model="scripted", input="stream responses", stream=True))
        types = [e.type for e in events]
        assert types[0] == "response.created" and types[-1] == "response.completed", types
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == "You said: stream responses", text
        assert events[-1].response.output_text == text
        assert [e.sequence_number for e in events] == list(range(len(events)))
        return f"{len(events)} events"

    def responses_tool():
        tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
        first = client.responses.create(model="scripted", input='[[tool:get_weather {"city": "Rome"}]]', tools=[tool])
        calls = [o for o in first.output if o.type == "function_call"]
        assert calls and calls[0].name == "get_weather", first.output
        items = [{"role": "user", "content": '[[tool:get_weather {"city": "Rome"}]]'},
                 {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                  "arguments": calls[0].arguments},
                 {"type": "function_call_output", "call_id": calls[0].call_id, "output": "warm"}]
        second = client.responses.create(model="scripted", input=items, tools=[tool])
        assert second.output_text == "Tool get_weather said: warm", second
        return f"call {calls[0].arguments}; answer {second.output_text!r}"

    def invalid():
        try:
            client.chat.completions.create(model="scripted", messages=user("x"), n=2)
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == "n", e.body
            return f"400 {e.body['code']}: {e.body['message']}"
        raise AssertionError("n=2 accepted")

    def bad_key():
        try:
            openai.OpenAI(base_url=base_url, api_key="palyra_tok_01ARZ3NDEKTSV4RRFFQ69G5FAV_nope").models.list()
            raise AssertionError("an unknown key was accepted")
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
        narrow = openai.OpenAI(base_url=base_url, api_key=mint("runs:read"))
        try:
            narrow.models.list()
            raise AssertionError("a key without openai:use was accepted")
        except openai.PermissionDeniedError as e:
            assert e.status_code == 403, e
        try:
            openai.OpenAI(base_url=base_url, api_key=ADMIN).models.list()
            raise AssertionError("the admin token was accepted")
        except openai.AuthenticationError:
            pass
        return "401 unknown key and admin token; 403 without openai:use"

    def not_found():
        try:
            client.chat.completions.create(model="gpt-nope", messages=user("x"))
        except openai.NotFoundError as e:
            assert e.body["code"] == "model_not_found", e.body
            return e.body["message"]
        raise AssertionError("an unknown model was accepted")

    def rate_limited():
        limited = openai.OpenAI(base_url=base_url, api_key=mint("openai:use"))
        for _ in range(RPM):
            limited.chat.completions.create(model="scripted", messages=user("quick"))
        log = RetryLog()
        logger = logging.getLogger("openai._base_client")
        logger.addHandler(log)
        logger.setLevel(logging.INFO)
        started = time.monotonic()
        try:
            raw = limited.chat.completions.with_raw_response.create(model="scripted", messages=user("one more"))
        finally:
            logger.removeHandler(log)
        waited = time.monotonic() - started
        assert raw.parse().choices[0].message.content == "You said: one more"
        assert log.retries and waited >= 0.9, (log.retries, waited)
        return f"429 then retried after {waited:.1f} s: {log.retries[0][:60]}"

    def disconnect():
        prompt = "[[tokens:2000]] [[slow:10]] long"
        stream = client.chat.completions.create(model="scripted", messages=user(prompt), stream=True)
        got = 0
        for chunk in stream:
            got += 1
            if got == 5:
                break
        stream.close()
        closed_at = time.monotonic()
        deadline = closed_at + 5
        while True:
            with urllib.request.urlopen(f"http://{stack.upstream}/scripted/closed") as r:
                closed = [c for c in json.load(r) if c["prompt"] == prompt]
            if closed or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert closed, "the upstream stream was never closed"
        lag_ms = (closed[0]["closed_at"] - closed_at) * 1000
        assert lag_ms < 100, f"the upstream call closed {lag_ms:.0f} ms after the client"
        runs = wait_runs(lambda rs: [r for r in rs if r["prompt"].startswith("[[tokens:2000]]")
                                     and r["state"] == "cancelled"])
        return f"upstream closed {lag_ms:.0f} ms after the client; run {runs[0]['run_id']} cancelled"

    def operator_approves():
        agent = openai.OpenAI(base_url=base_url, api_key=mint("openai:use", "openai:tools"))
        prompt = 'echo please [[tool:system_echo {"text": "from the sdk"}]]'
        decided = []

        def operator():
            admin = {"authorization": f"Bearer {ADMIN}"}
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not decided:
                req = urllib.request.Request(f"http://{stack.http}/admin/v1/runs", headers=admin)
                with urllib.request.urlopen(req) as r:
                    runs = [x for x in json.load(r)["runs"] if x["prompt"] == prompt and x["state"] == "in_progress"]
                for run in runs:
                    try:
                        decided.append(json.loads(cli("approve", "--json", run["run_id"])))
                    except subprocess.CalledProcessError as e:
                        if "waits for no approval" not in e.stderr:  # not yet
                            raise
                time.sleep(0.1)

        thread = threading.Thread(target=operator)
        thread.start()
        stream = agent.chat.completions.create(model="palyra-agent", messages=user(prompt), stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        thread.join()
        assert decided and decided[0]["tool"] == "system_echo", decided
        assert "Tool system_echo said:" in text and "from the sdk" in text, text
        return f"approved by the operator; {text[:60]!r}"

    def wait_runs(pick):
        deadline = time.monotonic() + 5
        while True:
            runs = pick([json.loads(line) for line in cli("runs", "list", "--json").splitlines() if line])
            if runs or time.monotonic() > deadline:
                assert runs, "no such run"
                return runs
            time.sleep(0.05)

    def runs_listed():
        runs = wait_runs(lambda rs: [r for r in rs if r["origin"].startswith("openai:")])
        assert all(r["principal"] == "user:sdk" for r in runs), runs
        usage = json.loads(cli("tokens", "--json", "usage"))["usage"]
        ours = [u for u in usage if key.startswith(f"palyra_tok_{u['token_id']}_")]
        assert ours and ours[0]["runs"] >= 8 and ours[0]["prompt_tokens"] > 0, usage
        u = ours[0]
        return (f"{len(runs)} runs of user:sdk; tokens usage: {u['runs']} runs, "
                f"{u['prompt_tokens']}+{u['completion_tokens']} tokens")

    return [("models", models), ("completion", completion), ("stream_usage", stream_usage),
            ("tool_stream", tool_stream), ("responses", responses), ("responses_sse", responses_sse),
            ("responses_tool", responses_tool), ("invalid", invalid), ("bad_key", bad_key),
            ("not_found", not_found), ("rate_limited", rate_limited), ("disconnect", disconnect),
            ("operator_approves", operator_approves), ("runs_listed", runs_listed)]


def js_cases(stack, palyra, label):
    """Runs the npm SDK's cases against the stack; its exit status."""
    env = dict(os.environ, PALYRA_ADMIN_TOKEN=ADMIN, PALYRA_DAEMON_URL=f"http://{stack.http}")

    def mint():
        out = subprocess.run([palyra, "tokens", "create", "--principal", "user:sdk-js", "--scope", "openai:use"],
                             env=env, check=True, capture_output=True, text=True).stdout
        return out.strip().splitlines()[-1]

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openai-js")
    env = dict(env, BASE_URL=f"http://{stack.http}/v1", KEY=mint(), RATE_KEY=mint(), RPM=str(RPM),
               HTTP=stack.http, UPSTREAM=stack.upstream, LABEL=label)
    return subprocess.run(["node", os.path.join(here, "openai_cases.mjs")], env=env, timeout=240).returncode


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--palyrad", required=True)
    p.add_argument("--palyra", required=True)
    p.add_argument("--label")
    p.add_argument("--sdk", choices=["py", "js"], default="py")
    args = p.parse_args()
    args.label = args.label or f"openai-{args.sdk}"
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(args.palyrad, args.palyra, work, extra_config=f"[openai]\nrequests_per_minute = {RPM}\n")
        if args.sdk == "js":
            try:
                sys.exit(js_cases(stack, args.palyra, args.label))
            finally:
                stack.close()
        try:
            failed = run_cases(args.label, cases(stack, args.palyra))
        finally:
            stack.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
