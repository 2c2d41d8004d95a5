"""The web console in a real browser: headless Chromium driven over the DevTools protocol.

Starts palyrad (fresh state, PALYRA_ADMIN_TOKEN set) and Chromium, then:
  login        logs in with the admin token; the connection indicator turns live
  surfaces     the demo agent's surfaces render all six A2UI component types
  chat         a chat message typed in the page reaches the agent; its reply streams in
               (partial texts seen before the final one)
  live_patch   the status surface changes live (versions rise without a reload)
  form_action  the deploy form submitted in the page reaches the agent as a2ui.action and
               the agent's patch shows up in the page
  restart      palyrad restarts on the same port; the page reconnects by cursor and shows
               what was posted while it was down, exactly once
Saves a screenshot (--screenshot). Prints one line per case: LABEL CASE PASS|FAIL DETAIL.
"""

import argparse
import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

import websockets

TOKEN = "palyra_adm_browser_test_token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Page:
    """A page target over CDP: evaluate JS, wait for conditions, take screenshots."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    async def eval(self, expression):
        result = await self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait(self, expression, timeout=15.0, what=None):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = await self.eval(expression)
            except RuntimeError:
                value = None  # the page is still loading
            if value:
                return value
            await asyncio.sleep(0.05)
        raise TimeoutError(f"timed out waiting for {what or expression}")


def start_daemon(binary, state, http_addr, log):
    env = dict(os.environ, PALYRA_ADMIN_TOKEN=TOKEN)
    proc = subprocess.Popen(
        [binary, "--state-dir", state, "--http-addr", http_addr, "--node-addr", "127.0.0.1:0",
         "--grpc-addr", "127.0.0.1:0", "--log-level", "warn"],
        env=env, stdout=log, stderr=log,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{http_addr}/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("palyrad did not come up")


def start_chromium(chromium, profile):
    """Headless Chromium with its own profile: the process and a new page's DevTools URL."""
    chrome = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
         "--window-size=1400,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    port_file = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + 30
    while not (os.path.exists(port_file) and open(port_file).read().count("\n") >= 1):
        if time.monotonic() > deadline:
            chrome.kill()
            raise RuntimeError("chromium did not start")
        time.sleep(0.05)
    port = int(open(port_file).read().splitlines()[0])
    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(req, timeout=5) as r:
        return chrome, json.loads(r.read())["webSocketDebuggerUrl"]


async def log_in(page, token):
    """Logs in on the console's form; returns once the connection indicator is live."""
    await page.wait("!document.getElementById('login-view').hidden", what="login form")
    await page.eval(f"document.getElementById('token').value = {json.dumps(token)}")
    await page.eval("document.getElementById('login-btn').click()")
    await page.wait("document.getElementById('conn-state').textContent === 'live'",
                    what="live indicator")


def admin(http_addr, method, path, body):
    req = urllib.request.Request(
        f"http://{http_addr}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


async def run(args):
    results = []
    work = tempfile.mkdtemp(prefix="palyra-browser-")
    state = os.path.join(work, "state")
    http_addr = f"127.0.0.1:{free_port()}"
    log = open(os.path.join(work, "palyrad.log"), "wb")
    daemon = start_daemon(args.palyrad, state, http_addr, log)
    agent = None
    chrome = None
    try:
        chrome, page_url = start_chromium(args.chromium, os.path.join(work, "chrome"))
        async with websockets.connect(page_url, max_size=64 << 20) as ws:
            page = Page(ws)
            await page.call("Page.enable")
            await page.call("Page.navigate", url=f"http://{http_addr}/")

            async def case(name, coro):
                try:
                    detail = await coro
                    results.append((name, "PASS", detail))
                    return True
                except Exception as e:  # noqa: BLE001 - every failure is a reported case
                    page_state = await page.eval(
                        "(() => { try { return document.getElementById('conn-state').textContent"
                        " + ' | ' + document.getElementById('status').textContent + ' | ' + "
                        "JSON.stringify(state.cursor) + ' | ' + "
                        "[...(state.sessions.get('main') || new Map()).keys()].join(','); }"
                        " catch (e) { return String(e); } })()"
                    )
                    results.append((name, "FAIL", f"{type(e).__name__}: {e} [page: {page_state}]"))
                    return False

            async def login():
                await log_in(page, TOKEN)
                return "logged in; indicator live"

            if not await case("login", login()):
                return results

            agent = subprocess.Popen(
                [args.palyra, "agent", "demo", "--daemon", f"http://{http_addr}",
                 "--word-delay-ms", "80"],
                env=dict(os.environ, PALYRA_ADMIN_TOKEN=TOKEN),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            agent_lines = []

            async def read_agent():
                loop = asyncio.get_running_loop()
                while True:
                    line = await loop.run_in_executor(None, agent.stdout.readline)
                    if not line:
                        return
                    agent_lines.append(line.strip())

            reader = asyncio.create_task(read_agent())

            async def surfaces():
                kinds = ["text", "markdown", "list", "table", "form", "chart"]
                check = " && ".join(
                    f"document.querySelector('.a2ui.{k}')" for k in kinds
                )
                await page.wait(f"!!({check})", what="all six component types")
                svg = await page.eval("document.querySelectorAll('.a2ui.chart svg rect').length")
                rows = await page.eval("document.querySelectorAll('.a2ui.list li').length")
                assert svg >= 3 and rows >= 3, (svg, rows)
                return f"all six types rendered; chart bars={svg}"

            await case("surfaces", surfaces())

            async def chat():
                await page.eval(
                    "document.getElementById('chat-input').value = 'hello from chromium';"
                    "document.getElementById('send-btn').click()"
                )
                final = 'You said "hello from chromium". I am the demo agent'
                seen = set()
                deadline = time.monotonic() + 20
                js = ("(() => { const m = [...document.querySelectorAll('#messages li.agent')]"
                      ".filter(li => li.textContent.includes('You said')); "
                      "return m.length ? m[m.length-1].textContent : null })()")
                text = None
                while time.monotonic() < deadline:
                    text = await page.eval(js)
                    if text:
                        seen.add(text)
                        if "submit it." in text:
                            break
                    await asyncio.sleep(0.02)
                assert text and final in text, text
                assert len(seen) >= 3, f"reply did not stream: {len(seen)} distinct texts"
                assert any(line.startswith("chat from the console: hello from chromium") for line in agent_lines), agent_lines
                return f"agent got it; reply streamed in {len(seen)} steps"

            await case("chat", chat())

            async def live_patch():
                v = "Number(document.querySelector('.surface[data-surface=status]').dataset.version)"
                first = await page.eval(v)
                await page.wait(f"{v} >= {first + 2}", timeout=10, what="status surface patched")
                return f"status surface v{first} -> v{await page.eval(v)} live"

            await case("live_patch", live_patch())

            async def form_action():
                await page.eval(
                    "(() => { const f = document.querySelector('.surface[data-surface=deploy] form');"
                    "f.querySelector('[name=service]').value = 'worker';"
                    "const r = f.querySelector('[name=replicas]'); r.value = '3';"
                    "r.dispatchEvent(new Event('input'));"
                    "f.querySelector('[name=confirm]').checked = true;"
                    "f.querySelector('button[type=submit]').click(); })()"
                )
                await page.wait(
                    "document.querySelector('.surface[data-surface=deploy]').textContent"
                    ".includes('Last deploy: worker with 3 replicas')",
                    timeout=10, what="agent's patch of the deploy surface",
                )
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline and not any(l.startswith("action received") for l in agent_lines):
                    await asyncio.sleep(0.05)
                got = [l for l in agent_lines if l.startswith("action received")]
                assert got, agent_lines
                value = json.loads(got[-1][len("action received: "):])
                assert value["service"] == "worker" and value["replicas"] == 3 and value["confirm"] is True, value
                return f"agent received {got[-1][len('action received: '):][:60]}"

            await case("form_action", form_action())

            async def devices():
                # A node pairs with the CLI; the operator approves and then revokes it in the page.
                invite = admin(http_addr, "POST", "/admin/v1/pairing/codes", {"method": "qr"})["invite"]
                enroll = subprocess.Popen(
                    [args.palyra, "node", "enroll", "--invite", invite,
                     "--identity", os.path.join(work, "node"), "--wait-secs", "30"],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                await page.wait("!!document.querySelector('#pairing-requests li[data-request] button')",
                                timeout=20, what="the pairing request in the Devices card")
                await page.eval("document.querySelector('#pairing-requests li[data-request] button').click()")
                out, _ = await asyncio.get_running_loop().run_in_executor(None, lambda: enroll.communicate(timeout=30))
                assert enroll.returncode == 0, out
                device = json.loads(out)["device_id"]
                row = f"#device-list li[data-device=\"{device}\"]"
                await page.wait(f"!!document.querySelector('{row} button.danger')", timeout=10,
                                what="the paired device")
                await page.eval(f"window.confirm = () => true; document.querySelector('{row} button.danger').click()")
                await page.wait(f"document.querySelector('{row}').textContent.includes('revoked')",
                                timeout=10, what="the device shown revoked")
                listed = admin(http_addr, "GET", "/admin/v1/devices", None)["devices"]
                assert [d["state"] for d in listed if d["device_id"] == device] == ["revoked"], listed
                return f"approved {device} in the page (node enroll finished), then revoked it"

            await case("devices", devices())
            shot = await page.call("Page.captureScreenshot", format="png")
            with open(args.screenshot, "wb") as f:
                f.write(base64.b64decode(shot["data"]))

            async def restart():
                agent.send_signal(signal.SIGTERM)
                agent.wait(timeout=5)
                count_js = "document.querySelectorAll('#messages li[data-message]').length"
                before = await page.eval(count_js)
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=15)
                await page.wait("document.getElementById('conn-state').textContent !== 'live'",
                                what="indicator leaves live")
                new = start_daemon(args.palyrad, state, http_addr, log)
                globals()["_restarted"] = new
                admin(http_addr, "POST", "/admin/v1/chat/sessions/main/messages",
                      {"message_id": "after-restart", "text": "posted while the page reconnected",
                       "author": "script"})
                await page.wait("!!document.querySelector('#messages li[data-message=\"after-restart\"]')",
                                timeout=20, what="message posted after the restart")
                await page.wait("document.getElementById('conn-state').textContent === 'live'",
                                what="live again")
                ids = await page.eval("[...document.querySelectorAll('#messages li[data-message]')].map(li => li.dataset.message)")
                assert len(ids) == len(set(ids)), f"duplicates: {ids}"
                assert len(ids) == before + 1, (before, ids)
                return f"reconnected by cursor; {before} -> {len(ids)} messages, no duplicates"

            await case("restart", restart())
            reader.cancel()
    finally:
        for proc in (agent, chrome, daemon, globals().get("_restarted")):
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
        log.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--palyrad", required=True)
    p.add_argument("--palyra", required=True)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--screenshot", default="console.png")
    p.add_argument("--label", default="chromium")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    results = asyncio.run(run(args))
    failed = False
    for name, status, detail in results:
        failed |= status != "PASS"
        print(f"{args.label:<10} {name:<20} {status:<5} {str(detail) if status != 'PASS' else str(detail)[:90]}", flush=True)
    raise SystemExit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
