"""Agent runs from the web console in a real browser (headless Chromium over the DevTools
protocol), as the operator sees them.

Starts the scripted OpenAI-compatible upstream, palyrad with it as `[model] base_url`, a node
paired with the CLI serving `system.echo` through `palyra node run`, and Chromium, then:
  login          logs in with the admin token
  reply          a chat message starts a run; its reply streams into the chat
  approve_card   a prompt calling system.echo shows an approval card; "Allow once" clicked in
                 the page runs the capability on the node and the reply quotes its output
  deny_card      the same prompt, "Deny" clicked: the tool is not run and the card says so
  cancel         /cancel typed in the chat cancels a run that is streaming
  runs_view      the Runs view lists the runs with their states; clicking one shows its tape
  openai_approval  an OpenAI SDK stream (palyra-agent, a key with openai:tools) calls
                 system.echo; the operator clicks Approve on the run in the Runs view, and the
                 stream's answer quotes the node's output
  browse         (with --browserd) a run browses a local page through palyra-browserd: its
                 navigate and screenshot tools are approved on their cards, and the Runs view
                 shows the screenshot the run took
Saves a screenshot (--screenshot). Prints one line per case: LABEL CASE PASS|FAIL DETAIL.
"""

import argparse
import asyncio
import base64
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import openai
import websockets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from browser_console import Page, log_in, start_chromium  # noqa: E402
from grpcio_runs import ADMIN, Stack  # noqa: E402

AGENT_TEXTS = ("[...document.querySelectorAll('#messages li.agent')]"
               ".map(li => li.textContent)")
CARD = ".surface[data-surface^='approval-']"


async def cases(page, label, stack, palyra):
    results = []

    async def case(name, coro):
        try:
            detail = await asyncio.wait_for(coro, 60)
            results.append((name, "PASS", detail))
        except Exception as e:  # noqa: BLE001 - every failure is a reported case
            texts = await page.eval(AGENT_TEXTS)
            results.append((name, "FAIL", f"{type(e).__name__}: {e} [chat: {texts}]"))

    async def say(text):
        await page.eval(f"document.getElementById('chat-input').value = {json.dumps(text)};"
                        "document.getElementById('send-btn').click()")

    async def agent_text(predicate_js, what):
        return await page.wait(
            f"(() => {{ const t = {AGENT_TEXTS}; return t.find(x => {predicate_js}) || null; }})()",
            timeout=30, what=what)

    async def login():
        await log_in(page, ADMIN)
        return "logged in; indicator live"

    async def reply():
        await say("hello console run [[slow:40]]")
        final = "You said: hello console run [[slow:40]]"
        seen = set()
        deadline = time.monotonic() + 20
        text = None
        while time.monotonic() < deadline:
            text = await page.eval(
                f"(() => {{ const t = {AGENT_TEXTS}.filter(x => x.includes('You said')); "
                "return t.length ? t[t.length - 1] : null })()")
            if text:
                seen.add(text)
                if final in text:
                    break
            await asyncio.sleep(0.02)
        assert text and final in text, text
        assert len(seen) >= 3, f"reply did not stream: {len(seen)} distinct texts"
        return f"reply streamed in {len(seen)} steps"

    async def decide(button, marker):
        await say(f'echo it [[tool:system_echo {{"text":"{marker}"}}]]')
        card = f"{CARD}:has(button[data-action={button}])"
        await page.wait(f"!!document.querySelector(\"{card}\")", timeout=30, what="approval card")
        name = await page.eval(f"document.querySelector(\"{card}\").dataset.surface")
        sel = f".surface[data-surface='{name}']"
        title = await page.eval(f"document.querySelector(\"{sel}\").textContent")
        assert "Approval needed: system_echo" in title and marker in title, title
        await page.eval(f"document.querySelector(\"{sel} button[data-action={button}]\").click()")
        return await page.wait(
            f"(() => {{ const c = document.querySelector(\"{sel}\");"
            " return c && !c.querySelector('button') ? c.textContent : null })()",
            timeout=30, what="the card showing the decision")

    async def approve_card():
        decided = await decide("allow_once", "from chromium")
        assert "Allowed: approved in the console" in decided, decided
        ran = await agent_text("x.includes('Tool system_echo ran:')", "the tool's output")
        assert "from chromium" in ran, ran
        said = await agent_text("x.includes('Tool system_echo said:')", "the model's answer")
        assert "from chromium" in said, said
        return "card decided in the page; the node's output reached the model"

    async def deny_card():
        decided = await decide("deny", "not this")
        assert "Denied" in decided, decided
        note = await agent_text("x.includes('Tool system_echo was not run')", "the denial")
        return note[:80]

    async def cancel():
        await say("[[slow:150]] [[tokens:200]]")
        await agent_text("x.includes('t1 ')", "tokens streaming")
        await say("/cancel")
        note = await agent_text("x.includes('The run was cancelled')", "the cancellation")
        assert "cancelled in the console" in note, note
        return note[:80]

    async def runs_view():
        rows = "document.querySelectorAll('#run-list li[data-run]')"
        await page.wait(f"{rows}.length >= 4", timeout=10, what="four runs listed")
        states = await page.eval(f"[...{rows}].map(li => li.dataset.state)")
        assert states[:4] == ["cancelled", "done", "done", "done"], states
        # The approved run (third newest) and its tape.
        await page.eval(f"{rows}[2].click()")
        tape = await page.wait(
            "(() => { const t = document.getElementById('run-events').textContent;"
            " return t.includes('tool_approval_response') ? t : null })()",
            timeout=10, what="the run's tape")
        assert "approved in the console" in tape and "tool_attestation" in tape, tape[:300]
        count = await page.eval("document.querySelectorAll('#run-events li').length")
        return f"runs {states[:4]}; tape of the approved run shows {count} lines"

    async def openai_approval():
        env = dict(os.environ, PALYRA_ADMIN_TOKEN=ADMIN, PALYRA_DAEMON_URL=f"http://{stack.http}")
        key = subprocess.run([palyra, "tokens", "create", "--principal", "user:api", "--scope", "openai:use",
                              "--scope", "openai:tools"], env=env, check=True, capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
        client = openai.OpenAI(base_url=f"http://{stack.http}/v1", api_key=key)
        prompt = 'from the API [[tool:system_echo {"text": "via the console"}]]'

        def ask():
            stream = client.chat.completions.create(
                model="palyra-agent", messages=[{"role": "user", "content": prompt}], stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        answer = asyncio.get_running_loop().run_in_executor(None, ask)
        row = ("[...document.querySelectorAll('#run-list li[data-run]')]"
               ".find(li => li.textContent.includes('from the API'))")
        await page.wait(f"!!{row}", timeout=20, what="the API's run listed")
        await page.eval(f"{row}.click()")
        await page.wait("!!document.querySelector('#run-approval button.approve')", timeout=20,
                        what="the Approve button")
        waiting = await page.eval("document.getElementById('run-approval').textContent")
        await page.eval("document.querySelector('#run-approval button.approve').click()")
        text = await asyncio.wait_for(answer, 30)
        assert "Tool system_echo said:" in text and "via the console" in text, text
        return f"{waiting!r}; approved; the stream says {text[-50:]!r}"

    async def allow(tool):
        card = f"{CARD}:has(button[data-action=allow_once])"
        sel = await page.wait(
            f"(() => {{ const c = [...document.querySelectorAll(\"{card}\")]"
            f".find(c => c.textContent.includes('Approval needed: {tool}')); return c ? c.dataset.surface : null }})()",
            timeout=30, what=f"the approval card of {tool}")
        await page.eval(f"document.querySelector(\".surface[data-surface='{sel}'] button[data-action=allow_once]\").click()")

    async def browse():
        url = f"{stack.pages}/hello"
        await say(f'browse it [[tool:palyra_browser_navigate {{"url":"{url}"}}]] '
                  '[[tool:palyra_browser_screenshot {}]]')
        await allow("palyra_browser_navigate")
        await allow("palyra_browser_screenshot")
        said = await agent_text("x.includes('Tool palyra_browser_screenshot said:')", "the model's answer")
        assert ".png" in said, said
        row = ("[...document.querySelectorAll('#run-list li[data-run]')]"
               ".find(li => li.textContent.includes('browse it'))")
        await page.wait(f"!!{row}", timeout=20, what="the browsing run listed")
        await page.eval(f"{row}.click()")
        width = await page.wait(
            "(() => { const i = document.querySelector('#run-events img.shot');"
            " return i && i.complete && i.naturalWidth > 0 ? i.naturalWidth : null })()",
            timeout=20, what="the run's screenshot in the Runs view")
        tape = await page.eval("document.getElementById('run-events').textContent")
        assert "Hello from the test page" in tape, tape[:300]
        return f"navigated and screenshot approved; the Runs view shows a {width} px wide screenshot"

    await case("login", login())
    steps = [("reply", reply), ("approve_card", approve_card), ("deny_card", deny_card),
             ("cancel", cancel), ("runs_view", runs_view), ("openai_approval", openai_approval)]
    if getattr(stack, "pages", None):
        steps.append(("browse", browse))
    for name, coro in steps:
        await case(name, coro())
    return results


class Hello(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"<!doctype html><title>Hello from the test page</title><h1>Hello, browser</h1>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def start_browserd(args, work):
    """palyra-browserd with a certificate from the gateway CA of the state directory the Stack's
    palyrad will use, and a token for it; returns (process, [browser] config text)."""
    state = os.path.join(work, "state")
    tls = os.path.join(work, "browserd-tls")
    subprocess.run([args.palyrad, "cert", "issue-browserd", "--state-dir", state, "--out", tls],
                   check=True, stdout=subprocess.DEVNULL)
    token = "browser-runs-token-0123456789"
    os.environ["PALYRA_BROWSER_TOKEN"] = token
    bstate = os.path.join(work, "browserd")
    proc = subprocess.Popen([args.browserd, "--state-dir", bstate, "--tls-dir", tls,
                             "--grpc-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"],
                            env=dict(os.environ, PALYRA_BROWSERD_AUTH_TOKEN=token),
                            stderr=open(os.path.join(work, "browserd.log"), "w"))
    deadline = time.time() + 30
    path = os.path.join(bstate, "endpoints.json")
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
        if time.time() > deadline or proc.poll() is not None:
            raise RuntimeError("palyra-browserd did not start")
        time.sleep(0.05)
    grpc_addr = json.load(open(path))["grpc"]
    return proc, f'[browser]\nendpoint = "{grpc_addr}"\nallow_private_targets = true\n'


async def run(args, work):
    browserd, extra, pages = None, "", None
    if args.browserd:
        browserd, extra = start_browserd(args, work)
        pages = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
        threading.Thread(target=pages.serve_forever, daemon=True).start()
    stack = Stack(args.palyrad, args.palyra, work, approval_timeout=60, extra_config=extra)
    if pages:
        stack.pages = f"http://127.0.0.1:{pages.server_address[1]}"
    chrome = None
    try:
        chrome, page_url = start_chromium(args.chromium, os.path.join(work, "chrome"))
        async with websockets.connect(page_url, max_size=64 << 20) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=f"http://{stack.http}/")
            results = await cases(page, args.label, stack, args.palyra)
            shot = await page.call("Page.captureScreenshot", format="png")
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))
            return results
    finally:
        if chrome:
            chrome.kill()
            chrome.wait()
        stack.close()
        if browserd:
            browserd.terminate()
            browserd.wait(15)
        if pages:
            pages.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--palyrad", required=True)
    p.add_argument("--palyra", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--browserd", help="palyra-browserd: also run the browsing case")
    p.add_argument("--screenshot", default="console-runs.png")
    p.add_argument("--label", default="chromium")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = asyncio.run(run(args, work))
    failed = False
    for name, status, detail in results:
        failed |= status != "PASS"
        print(f"{args.label:<10} {name:<20} {status:<5} {detail if status != 'PASS' else str(detail)[:90]}",
              flush=True)
    raise SystemExit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
