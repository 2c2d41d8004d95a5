"""The scripted model server (openai_upstream.py) against the official OpenAI Python SDK: the
test double the agent-run tests use must be what a real OpenAI client accepts. Cases: a streamed
answer with usage, a tool call split across chunks, 429 with Retry-After retried by the SDK, an
error object mid-stream, a wrong API key. One row per case; exit 1 on any failure."""

import argparse
import subprocess
import sys
from pathlib import Path

import openai

HERE = Path(__file__).resolve().parent


def cases(addr):
    client = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="conformance-key", max_retries=3)

    def user(text):
        return [{"role": "user", "content": text}]

    def streamed_text_and_usage():
        text, usage = "", None
        for c in client.chat.completions.create(model="m", messages=user("hello there"), stream=True,
                                                stream_options={"include_usage": True}):
            if c.choices and c.choices[0].delta.content:
                text += c.choices[0].delta.content
            usage = c.usage or usage
        assert text == "You said: hello there", text
        assert usage and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens, usage
        return f"{text!r}, {usage.total_tokens} tokens"

    def split_tool_call():
        calls, finish = {}, None
        for c in client.chat.completions.create(model="m", stream=True,
                                                messages=user('go [[tool:disk_usage {"path": "/"}]]')):
            for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
                call = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = tc.id or call["id"]
                call["name"] += (tc.function and tc.function.name) or ""
                call["arguments"] += (tc.function and tc.function.arguments) or ""
            finish = (c.choices and c.choices[0].finish_reason) or finish
        assert finish == "tool_calls", finish
        assert calls == {0: {"id": "call_1", "name": "disk_usage", "arguments": '{"path": "/"}'}}, calls
        return "disk_usage({\"path\": \"/\"}) finish tool_calls"

    def rate_limit_retried():
        answer = client.chat.completions.create(model="m", messages=user("again [[429:2]]"))
        assert answer.choices[0].message.content.startswith("You said"), answer
        return "two 429s, then the answer"

    def error_mid_stream():
        try:
            for _ in client.chat.completions.create(model="m", messages=user("[[error]]"), stream=True):
                pass
        except openai.APIError as e:
            return f"APIError: {e.message}"
        raise AssertionError("the stream's error object was not raised")

    def wrong_key():
        bad = openai.OpenAI(base_url=f"http://{addr}/v1", api_key="wrong", max_retries=0)
        try:
            bad.chat.completions.create(model="m", messages=user("x"))
        except openai.AuthenticationError:
            return "401 AuthenticationError"
        raise AssertionError("a wrong key was accepted")

    return [
        ("stream_usage", streamed_text_and_usage),
        ("tool_call_split", split_tool_call),
        ("retry_after_429", rate_limit_retried),
        ("error_mid_stream", error_mid_stream),
        ("wrong_api_key", wrong_key),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--label", default="openai")
    args = p.parse_args()
    upstream = subprocess.Popen([sys.executable, str(HERE / "openai_upstream.py"), "--api-key", "conformance-key"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    addr = upstream.stdout.readline().split()[-1]
    failed = 0
    try:
        for name, case in cases(addr):
            try:
                detail, status = case(), "PASS"
            except Exception as e:  # noqa: BLE001 - every failure is a row
                detail, status = f"{type(e).__name__}: {e}", "FAIL"
                failed += 1
            print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    finally:
        upstream.stdin.close()
        upstream.wait(timeout=10)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
