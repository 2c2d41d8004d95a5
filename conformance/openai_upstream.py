"""A scripted OpenAI-compatible model server, written from the OpenAI API reference (Chat
Completions, streaming): `POST /v1/chat/completions` (also `/chat/completions`) answers with
`chat.completion.chunk` objects as server-sent events, then `data: [DONE]`; without
`"stream": true` it answers one `chat.completion` object. It stands in for a model in tests: it is
not part of the product.

The script is chosen by markers in the last user message:

- `[[tool:NAME {json}]]` the first turn streams a call of tool NAME with those arguments (split
  across chunks, the id and name only in the first piece); the turn after the tool result answers
  `Tool NAME said: <result>`. Several markers are called in turn, one per turn, and the answer
  quotes the last result.
- `[[tokens:N]]` N one-word tokens (a benchmark's stream).
- `[[cut]]` a few tokens, then the connection closes without a finish or `[DONE]`.
- `[[error]]` a token, then an `{"error": ...}` object in the stream.
- `[[429:N]]` the first N requests with this prompt get 429 with `Retry-After: 1`.
- `[[500:N]]` likewise with 500.
- `[[slow:MS]]` waits MS milliseconds between chunks.
- `[[hold:MS]]` waits MS milliseconds after the first token (a stream held open).
- otherwise the answer is `You said: <message>`, one word per chunk.

Usage on the last chunk when `stream_options.include_usage` is set. A client that closes a stream
before its end is noticed at once (the pause between chunks watches the socket) and recorded:
`GET /scripted/closed` lists those streams as `{"prompt", "chunks", "closed_at"}`, `closed_at` on
the system's monotonic clock (Python's `time.monotonic()`, in seconds). With `--api-key KEY`, requests
without `Authorization: Bearer KEY` get 401. Prints `listening on HOST:PORT` once ready; stops when
stdin closes.
"""

import argparse
import json
import re
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAILURES: dict = {}
FAILURES_LOCK = threading.Lock()
CLOSED: list = []


class ClientGone(Exception):
    """The client closed the stream before its end."""


def last_user_text(messages):
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content or ""
    return ""


def plan(body):
    """The answer to give: (text tokens, tool call or None, finish, trouble)."""
    messages = body.get("messages") or []
    text = last_user_text(messages)
    last = messages[-1] if messages else {}
    tools = re.findall(r"\[\[tool:(\w+) (\{.*?\})\]\]", text)
    # Tool results since the last user message: the script's next step.
    done = 0
    for message in reversed(messages):
        if message.get("role") == "user":
            break
        done += message.get("role") == "tool"
    if done < len(tools):
        name, args = tools[done]
        return (["Calling ", name, "."], (name, args), "tool_calls", None)
    if last.get("role") == "tool":
        name = tools[-1][0] if tools else "tool"
        return (spaced(f"Tool {name} said: {last.get('content', '')}"), None, "stop", None)
    count = re.search(r"\[\[tokens:(\d+)\]\]", text)
    if count:
        return ([f"t{i} " for i in range(int(count.group(1)))], None, "stop", None)
    if "[[cut]]" in text:
        return (["This ", "answer ", "is ", "cut"], None, None, "cut")
    if "[[error]]" in text:
        return (["Partial "], None, None, "error")
    return (spaced(f"You said: {text}"), None, "stop", None)


def spaced(text):
    """One token per word, each but the last with its following space."""
    words = text.split(" ")
    return [w + (" " if i + 1 < len(words) else "") for i, w in enumerate(words)]


def chunk(model, delta, finish=None):
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class QuietServer(ThreadingHTTPServer):
    """A client that goes away mid-answer (a cancelled run) is normal here, not an error; many
    clients may connect at once (a benchmark's open runs)."""

    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api_key = None

    def log_message(self, *args):
        pass

    def reply_json(self, status, value, extra=()):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, val in extra:
            self.send_header(name, val)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/scripted/closed":
            with FAILURES_LOCK:
                return self.reply_json(200, list(CLOSED))
        return self.reply_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})

    def gone(self, timeout):
        """Whether the client closed its connection, waiting up to `timeout` seconds."""
        readable, _, _ = select.select([self.connection], [], [], timeout)
        if not readable:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def do_POST(self):
        if self.path not in ("/v1/chat/completions", "/chat/completions"):
            return self.reply_json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
        if self.api_key and self.headers.get("authorization") != f"Bearer {self.api_key}":
            return self.reply_json(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply_json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
        text = last_user_text(body.get("messages") or [])
        for code in (429, 500):
            wanted = re.search(rf"\[\[{code}:(\d+)\]\]", text)
            if wanted:
                with FAILURES_LOCK:
                    seen = FAILURES.get((code, text), 0)
                    FAILURES[(code, text)] = seen + 1
                if seen < int(wanted.group(1)):
                    extra = [("retry-after", "1")] if code == 429 else []
                    return self.reply_json(code, {"error": {"message": f"scripted {code}", "type": "rate_limit_error" if code == 429 else "server_error"}}, extra)
        model = body.get("model", "scripted")
        tokens, tool, finish, trouble = plan(body)
        slow = re.search(r"\[\[slow:(\d+)\]\]", text)
        pause = int(slow.group(1)) / 1000 if slow else 0
        if not body.get("stream"):
            message = {"role": "assistant", "content": "".join(tokens)}
            if tool:
                message["tool_calls"] = [{"id": "call_1", "type": "function", "function": {"name": tool[0], "arguments": tool[1]}}]
            return self.reply_json(200, {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish or "stop"}],
                "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(tokens), "total_tokens": len(text.split()) + len(tokens)},
            })
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        self.close_connection = True

        sent = [0]

        def send(value):
            data = value if isinstance(value, str) else json.dumps(value)
            try:
                self.wfile.write(f"data: {data}\n\n".encode())
                self.wfile.flush()
            except OSError:
                raise ClientGone()
            sent[0] += 1
            if pause and self.gone(pause):
                raise ClientGone()

        try:
            self.stream(send, model, tokens, tool, trouble, finish, body, text)
        except ClientGone:
            with FAILURES_LOCK:
                CLOSED.append({"prompt": text, "chunks": sent[0], "closed_at": time.monotonic()})
            self.close_connection = True

    def stream(self, send, model, tokens, tool, trouble, finish, body, text):
        send(chunk(model, {"role": "assistant", "content": ""}))
        hold = re.search(r"\[\[hold:(\d+)\]\]", text)
        for i, token in enumerate(tokens):
            send(chunk(model, {"content": token}))
            if i == 0 and hold and self.gone(int(hold.group(1)) / 1000):
                raise ClientGone()
        if trouble == "cut":
            return
        if trouble == "error":
            send({"error": {"message": "the scripted upstream failed mid-stream", "type": "server_error"}})
            return
        if tool:
            name, arguments = tool
            half = len(arguments) // 2
            send(chunk(model, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}]}))
            send(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]}))
            send(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]}))
        send(chunk(model, {}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = len(text.split())
            send({"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                  "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}})
        send("[DONE]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addr", default="127.0.0.1:0")
    parser.add_argument("--api-key")
    args = parser.parse_args()
    host, port = args.addr.rsplit(":", 1)
    Handler.api_key = args.api_key
    server = QuietServer((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"listening on {server.server_address[0]}:{server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
