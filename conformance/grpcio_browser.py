#!/usr/bin/env python3
"""palyra-browserd driven by Python grpcio (C-core, BoringSSL) over TLS with a certificate from
the gateway CA, messages compiled from our .proto at test time. Every one of the 34 RPCs of
palyra.browser.v1.BrowserService is called against real Chromium on pages served by a local
test server: forms, an element that appears after 500 ms, a moving element, an element covered
by another, a same-origin iframe, a download, a page that logs and fetches. Also: SSRF refusals,
budgets (clamping, 0 = default, action limits), sessions bound to their principal, and Chromium
killed mid-session (a clear error, the next session works).

It starts what it needs: the page server, `palyrad cert issue-browserd` for the TLS material and
`palyra-browserd`. Prints one row per case; exit status 1 if any case fails."""

import argparse
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SERVICE = "palyra.browser.v1.BrowserService"
TOKEN = "conformance-browser-token-main"
OTHER = "conformance-browser-token-other"

PAGES = {
    "/form": """<!doctype html><title>Form page</title>
<form id=f onsubmit="event.preventDefault(); document.getElementById('out').textContent =
  'sent ' + document.getElementById('name').value + ' ' + document.getElementById('color').value;">
<label>Name <input id=name name=name></label>
<select id=color><option value=red>Red</option><option value=green>Green</option></select>
<button id=send type=submit>Send</button></form><p id=out></p>
<div style="height:3000px"></div>""",
    "/late": """<!doctype html><title>Late</title><p id=out>waiting</p><script>
setTimeout(() => { const b = document.createElement('button'); b.id = 'late'; b.textContent = 'Late';
  b.onclick = () => document.getElementById('out').textContent = 'clicked late'; document.body.appendChild(b); }, 500);
</script>""",
    "/moving": """<!doctype html><title>Moving</title><p id=out>still</p>
<button id=mover style="position:absolute;left:0;top:40px;transition:left 0.6s linear"
 onclick="document.getElementById('out').textContent='caught'">Move</button>
<script>requestAnimationFrame(() => document.getElementById('mover').style.left = '300px');</script>""",
    "/covered": """<!doctype html><title>Covered</title><p id=out>untouched</p>
<button id=under style="position:absolute;left:10px;top:60px;width:120px;height:40px"
 onclick="document.getElementById('out').textContent='clicked under'">Under</button>
<div id=overlay style="position:absolute;left:0;top:0;width:400px;height:300px;background:rgba(0,0,0,0.3)"></div>""",
    "/frame": """<!doctype html><title>Frame host</title><iframe id=inner src="/inner" width=400 height=200></iframe>""",
    "/inner": """<!doctype html><title>Inner</title><button id=ib onclick="this.textContent='pressed inside'">Inside</button>""",
    "/download": """<!doctype html><title>Download</title><a id=dl href="/file.csv" download>get csv</a>
<a id=bad href="/tool.exe" download>get exe</a>""",
    "/logs": """<!doctype html><title>Logs</title><script>
console.debug('debug line'); console.log('hello from the page'); console.warn('careful'); console.error('broken thing');
localStorage.setItem('k1', 'v1'); document.cookie = 'c1=v1';
fetch('/api/ping').then(r => r.text()).then(t => { document.title = 'Logs ' + t; });
</script>""",
}


HITS = []


class Pages(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?")[0]
        HITS.append(path)
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/form")
            self.end_headers()
            return
        if path in ("/file.csv", "/tool.exe"):
            body = b"a,b\n1,2\n" if path.endswith("csv") else b"MZ" + b"\0" * 64
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f"attachment; filename={path[1:]}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/api/ping":
            body = b"pong"
        elif path in PAGES:
            body = PAGES[path].encode()
        else:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8" if path != "/api/ping" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def compile_protos(out):
    os.makedirs(out, exist_ok=True)
    args = ["protoc", f"-I{ROOT}/proto", f"--python_out={out}",
            f"{ROOT}/proto/palyra/v1/common.proto", f"{ROOT}/proto/palyra/v1/browser.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, out)
    from palyra.v1 import browser_pb2  # noqa: E402
    return browser_pb2


def wait_for(path, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return json.load(open(path))
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


def page_server():
    """The test pages on a loopback port, in a thread; returns (server, base URL)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


class Browserd:
    """A palyra-browserd under `work`: TLS material from `palyrad cert issue-browserd`, a tokens
    file naming `tokens` ({principal: token}), extra flags; `addr`, `http`, `ca`, `state`."""

    def __init__(self, browserd, palyrad, work, tokens, name="browserd", extra=()):
        self.tls = os.path.join(work, "tls")
        if not os.path.exists(self.tls):
            subprocess.run([palyrad, "cert", "issue-browserd", "--state-dir", os.path.join(work, "gw"),
                            "--out", self.tls], check=True, stdout=subprocess.DEVNULL)
        self.state = os.path.join(work, name)
        os.makedirs(self.state)
        with open(os.path.join(self.state, "tokens"), "w") as f:
            for principal, token in tokens.items():
                f.write(f"{principal} {hashlib.sha256(token.encode()).hexdigest()}\n")
        self.log = os.path.join(work, f"{name}.log")
        self.proc = subprocess.Popen([browserd, "--state-dir", self.state, "--tls-dir", self.tls,
                                      "--grpc-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0", *extra],
                                     stderr=open(self.log, "w"))
        ep = wait_for(os.path.join(self.state, "endpoints.json"))
        self.addr, self.http = ep["grpc"], ep["http"]
        self.ca = os.path.join(self.tls, "ca.crt.pem")

    def client(self, pb, token):
        return Client(pb, self.addr, open(self.ca, "rb").read(), token)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def chromium_pid(state):
    """The browser process of browserd's shared Chromium (not its renderers)."""
    marker = f"--user-data-dir={state}/chromium/shared"
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in cmd]
        if marker in args and not any(a.startswith("--type=") for a in args):
            return int(pid)
    return None


class Client:
    def __init__(self, pb, addr, ca, token):
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        self.channel = grpc.secure_channel(addr, creds)
        self.pb = pb
        self.token = token

    def __call__(self, method, timeout=60, metadata=(), **fields):
        m = self.pb.DESCRIPTOR.services_by_name["BrowserService"].methods_by_name[method]
        req_cls = getattr(self.pb, m.input_type.name)
        resp_cls = getattr(self.pb, m.output_type.name)
        call = self.channel.unary_unary(f"/{SERVICE}/{method}", request_serializer=req_cls.SerializeToString,
                                        response_deserializer=resp_cls.FromString)
        meta = list(metadata)
        if self.token:
            meta.append(("authorization", f"Bearer {self.token}"))
        request = req_cls(v=1)
        for k, v in fields.items():
            if k == "session_id":
                request.session_id.ulid = v
            elif k == "tab_id":
                request.tab_id.ulid = v
            elif k == "profile_id":
                request.profile_id.ulid = v
            elif hasattr(v, "SerializeToString"):
                getattr(request, k).CopyFrom(v)
            elif isinstance(v, dict):
                getattr(request, k).CopyFrom(getattr(request, k).__class__(**v))
            else:
                setattr(request, k, v)
        return call(request, timeout=timeout, metadata=meta)


def code_of(fn):
    try:
        fn()
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def run(args, b, base, state):
    pb = b
    ca = open(args.ca, "rb").read()
    c = Client(pb, args.addr, ca, TOKEN)
    other = Client(pb, args.addr, ca, OTHER)
    anonymous = Client(pb, args.addr, ca, None)
    results = []

    def case(name, fn):
        try:
            detail = fn()
            results.append((name, "PASS", detail or ""))
        except Exception as e:  # noqa: BLE001
            results.append((name, "FAIL", f"{type(e).__name__}: {e}"))

    def new_session(**kw):
        kw.setdefault("allow_private_targets", True)
        r = c("CreateSession", **kw)
        return r.session_id.ulid, r

    sid, created = new_session(budget={"max_navigation_timeout_ms": 20000, "max_action_timeout_ms": 999999},
                               allow_downloads=True, channel="conformance")
    s = dict(session_id=sid)

    def health():
        r = c("Health")
        assert r.status == "ok" and r.active_sessions >= 1, r
        assert code_of(lambda: anonymous("Health")) == grpc.StatusCode.UNAUTHENTICATED
        return f"status={r.status} sessions={r.active_sessions}"
    case("health+auth", health)

    def create():
        b_ = created.effective_budget
        # Over the server's maximum: capped; zero: the server's value (never 1 ms).
        assert b_.max_action_timeout_ms == 5000, b_
        assert b_.max_navigation_timeout_ms == 15000, b_
        assert b_.max_screenshot_bytes == 262144, b_
        assert created.downloads_enabled
        assert code_of(lambda: c("CreateSession", principal="user:someone-else")) == grpc.StatusCode.PERMISSION_DENIED
        return f"budget action={b_.max_action_timeout_ms} nav={b_.max_navigation_timeout_ms}"
    case("create_session", create)

    def navigate():
        r = c("Navigate", url=f"{base}/form", **s)
        assert r.success and r.status_code == 200 and r.title == "Form page", r
        r2 = c("Navigate", url=f"{base}/redirect", allow_redirects=True, **s)
        assert r2.success and r2.final_url.endswith("/form"), r2
        r3 = c("Navigate", url=f"{base}/redirect", allow_redirects=False, **s)
        assert not r3.success and "redirect" in r3.error, r3
        assert code_of(lambda: c("Navigate", url=f"{base}/form", session_id="01ARZ3NDEKTSV4RRFFQ69G5FAV")) == grpc.StatusCode.NOT_FOUND
        return f"status={r.status_code} title={r.title!r} latency={r.latency_ms}ms"
    case("navigate", navigate)

    def type_select_click():
        c("Navigate", url=f"{base}/form", **s)
        t = c("Type", selector="#name", text="Ada", clear_existing=True, **s)
        assert t.success and t.typed_bytes == 3, t
        sel = c("Select", selector="#color", value="green", **s)
        assert sel.success and sel.selected_value == "green", sel
        bad = c("Select", selector="#color", value="blue", **s)
        assert not bad.success and "blue" in bad.error, bad
        k = c("Click", selector="#send", **s)
        assert k.success and k.action_log.outcome == "ok", k
        w = c("WaitFor", text="sent Ada green", timeout_ms=3000, **s)
        assert w.success and w.matched_text == "sent Ada green", w
        return "typed, selected, clicked; page shows 'sent Ada green'"
    case("type/select/click", type_select_click)

    def press():
        c("Navigate", url=f"{base}/form", **s)
        c("Type", selector="#name", text="Bob", **s)
        r = c("Press", key="Enter", **s)
        assert r.success and r.key == "Enter", r
        w = c("WaitFor", selector="#out", text="sent Bob red", timeout_ms=3000, **s)
        assert w.success, w
        assert code_of(lambda: c("Press", key="", **s)) == grpc.StatusCode.INVALID_ARGUMENT
        return "Enter submitted the form"
    case("press", press)

    def late():
        c("Navigate", url=f"{base}/late", **s)
        started = time.time()
        r = c("Click", selector="#late", timeout_ms=4000, **s)
        waited = time.time() - started
        assert r.success, r
        w = c("WaitFor", text="clicked late", timeout_ms=2000, **s)
        assert w.success, w
        return f"appeared after 500 ms, clicked after {waited * 1000:.0f} ms ({r.action_log.attempts} checks)"
    case("autowait:late", late)

    def moving():
        c("Navigate", url=f"{base}/moving", **s)
        r = c("Click", selector="#mover", timeout_ms=4000, **s)
        assert r.success, r
        w = c("WaitFor", text="caught", timeout_ms=2000, **s)
        assert w.success, w
        return f"clicked once stable ({r.action_log.attempts} checks)"
    case("autowait:moving", moving)

    def covered():
        c("Navigate", url=f"{base}/covered", **s)
        r = c("Click", selector="#under", timeout_ms=800, capture_failure_screenshot=True, **s)
        assert not r.success and r.action_log.outcome == "element_covered", r
        assert r.failure_screenshot_bytes[:8] == b"\x89PNG\r\n\x1a\n" and len(r.failure_screenshot_bytes) > 1000
        text = c("Observe", include_visible_text=True, **s).visible_text
        assert "untouched" in text, text
        return f"reported, not clicked: {r.error[:60]}"
    case("autowait:covered", covered)

    def iframe():
        c("Navigate", url=f"{base}/frame", **s)
        r = c("Click", selector="#inner >>> #ib", timeout_ms=4000, **s)
        assert r.success, r
        o = c("Observe", include_dom_snapshot=True, **s)
        assert "pressed inside" in o.dom_snapshot, o.dom_snapshot
        return "clicked inside a same-origin iframe"
    case("iframe", iframe)

    def highlight_scroll_title():
        c("Navigate", url=f"{base}/form", **s)
        h = c("Highlight", selector="#send", duration_ms=200, **s)
        assert h.success and h.selector == "#send", h
        sc = c("Scroll", delta_y=500, **s)
        assert sc.success and sc.scroll_y == 500, sc
        t = c("GetTitle", **s)
        assert t.success and t.title == "Form page", t
        t2 = c("GetTitle", max_title_bytes=4, **s)
        assert t2.title == "Form", t2
        return f"scroll_y={sc.scroll_y} title={t.title!r}"
    case("highlight/scroll/title", highlight_scroll_title)

    def screenshot_pdf():
        png = c("Screenshot", **s)
        assert png.success and png.mime_type == "image/png" and png.image_bytes[:4] == b"\x89PNG", png.error
        jpg = c("Screenshot", format="jpeg:full", **s)
        assert jpg.success and jpg.image_bytes[:2] == b"\xff\xd8", jpg.error
        small = c("Screenshot", max_bytes=100, **s)
        assert not small.success and "screenshot_too_large" in small.error, small.error
        assert code_of(lambda: c("Screenshot", format="gif", **s)) == grpc.StatusCode.INVALID_ARGUMENT
        pdf = c("ExportPdf", **s)
        assert pdf.success and pdf.pdf_bytes[:5] == b"%PDF-" and len(pdf.sha256) == 64, pdf.error
        return f"png {len(png.image_bytes)} B, jpeg full page {len(jpg.image_bytes)} B, pdf {pdf.size_bytes} B"
    case("screenshot/pdf", screenshot_pdf)

    def observe():
        c("Navigate", url=f"{base}/form", **s)
        o = c("Observe", include_dom_snapshot=True, include_accessibility_tree=True, include_visible_text=True, **s)
        assert o.success and "input#name" in o.dom_snapshot and "button#send" in o.dom_snapshot, o.dom_snapshot
        assert "button" in o.accessibility_tree and "Send" in o.accessibility_tree, o.accessibility_tree
        cut = c("Observe", include_visible_text=True, max_visible_text_bytes=5, **s)
        assert cut.visible_text_truncated and len(cut.visible_text.encode()) <= 5, cut
        return f"dom {len(o.dom_snapshot)} B, a11y {len(o.accessibility_tree)} B, text {len(o.visible_text)} B"
    case("observe", observe)

    def logs():
        c("Navigate", url=f"{base}/logs", **s)
        c("WaitFor", text="", selector="body", timeout_ms=1000, **s)
        time.sleep(0.5)
        n = c("NetworkLog", include_headers=True, **s)
        urls = [e.request_url for e in n.entries]
        assert n.success and any(u.endswith("/api/ping") for u in urls), urls
        ping = [e for e in n.entries if e.request_url.endswith("/api/ping")][-1]
        assert ping.status_code == 200 and ping.timing_bucket, ping
        cl = c("ConsoleLog", include_page_diagnostics=True, **s)
        msgs = [e.message for e in cl.entries]
        assert "hello from the page" in msgs and "broken thing" in msgs and "debug line" not in msgs, msgs
        dbg = c("ConsoleLog", minimum_severity=pb.BROWSER_DIAGNOSTIC_SEVERITY_DEBUG, **s)
        assert "debug line" in [e.message for e in dbg.entries]
        d = cl.page_diagnostics
        assert d.error_count >= 1 and d.warning_count >= 1, d
        return f"{len(n.entries)} requests, {len(cl.entries)} console entries, {d.error_count} error(s)"
    case("network+console", logs)

    def inspect():
        r = c("InspectSession", include_cookies=True, include_storage=True, include_action_log=True,
              include_network_log=True, include_page_snapshot=True, include_console_log=True,
              include_page_diagnostics=True, **s)
        assert r.success, r.error
        names = [k.name for d in r.cookies for k in d.cookies]
        keys = [e.key for o in r.storage for e in o.entries]
        assert "c1" in names and "k1" in keys, (names, keys)
        assert len(r.action_log) > 5 and r.session.summary.principal == "service:conformance", r.session
        g = c("GetSession", **s)
        assert g.success and g.session.summary.tab_count == 1 and g.session.effective_budget.max_action_timeout_ms == 5000
        lst = c("ListSessions")
        assert sid in [x.session_id.ulid for x in lst.sessions]
        return f"cookies {names}, storage {keys}, {len(r.action_log)} actions logged"
    case("inspect/get/list", inspect)

    def reset():
        r = c("ResetState", **s)  # all flags false: cookies and storage
        assert r.success and r.cookies_cleared >= 1 and r.storage_entries_cleared >= 1, r
        again = c("InspectSession", include_cookies=True, include_storage=True, **s)
        assert not any(d.cookies for d in again.cookies), again.cookies
        return f"cleared {r.cookies_cleared} cookie(s), {r.storage_entries_cleared} storage entr(ies)"
    case("reset_state", reset)

    def tabs():
        o = c("OpenTab", url=f"{base}/late", activate=True, **s)
        assert o.success and o.navigated and o.tab.active, o
        lt = c("ListTabs", **s)
        assert len(lt.tabs) == 2 and lt.active_tab_id.ulid == o.tab.tab_id.ulid, lt
        first = [t for t in lt.tabs if t.tab_id.ulid != o.tab.tab_id.ulid][0]
        sw = c("SwitchTab", tab_id=first.tab_id.ulid, **s)
        assert sw.success and sw.active_tab.tab_id.ulid == first.tab_id.ulid, sw
        t = c("GetTitle", **s)
        assert t.title != "Late", t
        cl = c("CloseTab", tab_id=o.tab.tab_id.ulid, **s)
        assert cl.success and cl.tabs_remaining == 1, cl
        last = c("CloseTab", tab_id=first.tab_id.ulid, **s)
        assert not last.success and "last_tab" in last.error, last
        gone = c("SwitchTab", tab_id=o.tab.tab_id.ulid, **s)
        assert not gone.success and gone.error == "tab_not_found", gone
        return "open, list, switch, close; the last tab stays"
    case("tabs", tabs)

    def popups():
        # A link opening a new window: the popup becomes a tab of the session, guarded like it.
        c("Navigate", url=f"{base}/download", **s)
        before = len(c("ListTabs", **s).tabs)
        page = ('data:text/html,<title>opener</title><a id=open target=_blank href="'
                f'{base}/form">open</a>')
        c("Navigate", url=page, **s)
        c("Click", selector="#open", **s)
        deadline = time.time() + 10
        while True:
            tabs = c("ListTabs", **s).tabs
            popup = [t for t in tabs if t.url.endswith("/form") and t.title == "Form page"]
            if popup:
                break
            assert time.time() < deadline, tabs
            time.sleep(0.1)
        assert len(tabs) == before + 1, tabs
        c("CloseTab", tab_id=popup[0].tab_id.ulid, **s)
        # In a session without private targets, a popup to a loopback address is refused: the
        # server never sees the request.
        plain, _ = new_session(allow_private_targets=False)
        evil = ('data:text/html,<title>evil</title><button id=go onclick="window.open(\''
                f'{base}/popup-target\')">go</button>')
        assert c("Navigate", url=evil, session_id=plain).success
        c("Click", selector="#go", session_id=plain)
        deadline = time.time() + 5
        while len(c("ListTabs", session_id=plain).tabs) < 2 and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(1)
        assert "/popup-target" not in HITS, HITS[-5:]
        n = len(c("ListTabs", session_id=plain).tabs)
        c("CloseSession", session_id=plain)
        return f"target=_blank popup became a tab; a loopback popup was never fetched ({n} tabs)"
    case("popups", popups)

    def permissions():
        g = c("GetPermissions", **s)
        assert g.permissions.camera == pb.PERMISSION_SETTING_DENY, g
        st = c("SetPermissions", location=pb.PERMISSION_SETTING_ALLOW, **s)
        assert st.success and st.permissions.location == pb.PERMISSION_SETTING_ALLOW and st.permissions.camera == pb.PERMISSION_SETTING_DENY, st
        c("Navigate", url=f"{base}/form", **s)
        # The page sees the grant.
        o = c("RelayAction", extension_id="conformance.ext", action=pb.RELAY_ACTION_KIND_SEND_PAGE_SNAPSHOT,
              page_snapshot=pb.RelayPageSnapshotPayload(include_visible_text=True), **s)
        assert o.success and "Send" in o.snapshot.visible_text, o
        rs = c("SetPermissions", reset_to_default=True, location=pb.PERMISSION_SETTING_ALLOW, **s)
        assert rs.permissions.location == pb.PERMISSION_SETTING_DENY, rs
        return "location allowed then reset to deny"
    case("permissions", permissions)

    def relay():
        sel = c("RelayAction", extension_id="conformance.ext", action=pb.RELAY_ACTION_KIND_CAPTURE_SELECTION,
                capture_selection=pb.RelayCaptureSelectionPayload(selector="#send", max_selection_bytes=3), **s)
        assert sel.success and sel.selection.selected_text == "Sen" and sel.selection.truncated, sel
        ot = c("RelayAction", extension_id="conformance.ext", action=pb.RELAY_ACTION_KIND_OPEN_TAB,
               open_tab=pb.RelayOpenTabPayload(url=f"{base}/form", activate=False), **s)
        assert ot.success and ot.opened_tab.tab_id.ulid, ot
        c("CloseTab", tab_id=ot.opened_tab.tab_id.ulid, **s)
        big = code_of(lambda: c("RelayAction", extension_id="x", action=pb.RELAY_ACTION_KIND_OPEN_TAB,
                                max_payload_bytes=40000, **s))
        noid = code_of(lambda: c("RelayAction", extension_id="", action=pb.RELAY_ACTION_KIND_OPEN_TAB, **s))
        assert big == noid == grpc.StatusCode.INVALID_ARGUMENT, (big, noid)
        return "capture_selection, open_tab, page_snapshot; bad payloads INVALID_ARGUMENT"
    case("relay_action", relay)

    def downloads():
        c("Navigate", url=f"{base}/download", **s)
        ok = c("Click", selector="#dl", **s)
        assert ok.success and ok.artifact.file_name == "file.csv" and not ok.artifact.quarantined, ok
        bad = c("Click", selector="#bad", **s)
        assert bad.success and bad.artifact.quarantined and "exe" in bad.artifact.quarantine_reason, bad
        lst = c("ListDownloadArtifacts", **s)
        q = c("ListDownloadArtifacts", quarantined_only=True, **s)
        assert len(lst.artifacts) == 2 and len(q.artifacts) == 1, (lst, q)
        assert ok.artifact.size_bytes == 8 and len(ok.artifact.sha256) == 64
        return f"csv kept ({ok.artifact.sha256[:12]}...), exe quarantined"
    case("downloads", downloads)

    def profiles():
        p = c("CreateProfile", name="work", theme_color="#336699", persistence_enabled=True)
        pid = p.profile.profile_id.ulid
        p2 = c("CreateProfile", name="scratch", private_profile=True)
        assert code_of(lambda: c("CreateProfile", name="work")) == grpc.StatusCode.INVALID_ARGUMENT
        rn = c("RenameProfile", profile_id=pid, name="office")
        assert rn.profile.name == "office"
        sa = c("SetActiveProfile", profile_id=p2.profile.profile_id.ulid)
        assert sa.profile.active
        lp = c("ListProfiles")
        assert len(lp.profiles) == 2 and lp.active_profile_id.ulid == p2.profile.profile_id.ulid
        # The principal is the credential's: another principal sees none, cannot touch them.
        assert len(other("ListProfiles").profiles) == 0
        assert code_of(lambda: other("RenameProfile", profile_id=pid, name="mine")) == grpc.StatusCode.NOT_FOUND
        assert code_of(lambda: c("ListProfiles", principal="user:other")) == grpc.StatusCode.PERMISSION_DENIED
        # A persistent profile keeps cookies across sessions.
        one, first = new_session(profile_id=pid)
        assert first.persistence_enabled and first.profile_id.ulid == pid and not first.state_restored, first
        nav = c("Navigate", url=f"{base}/logs", session_id=one)
        assert nav.success, nav
        before = [k.name for d in c("InspectSession", include_cookies=True, session_id=one).cookies for k in d.cookies]
        c("CloseSession", session_id=one)
        two, second = new_session(profile_id=pid)
        assert second.state_restored, second
        r = c("InspectSession", include_cookies=True, session_id=two)
        names = [k.name for d in r.cookies for k in d.cookies]
        c("CloseSession", session_id=two)
        assert "c1" in names, (before, names, r.error)
        d = c("DeleteProfile", profile_id=pid)
        assert d.deleted
        return "create, rename, set active, list, delete; cookies persisted in the persistent profile"
    case("profiles", profiles)

    def principals():
        # Another principal's session ID is not found, whatever it knows.
        assert other("GetSession", **s).error == "session_not_found"
        assert other("Click", selector="#x", **s).error == "session_not_found"
        assert code_of(lambda: other("Navigate", url=f"{base}/form", **s)) == grpc.StatusCode.NOT_FOUND
        assert not other("CloseSession", **s).closed
        assert sid not in [x.session_id.ulid for x in other("ListSessions").sessions]
        # A sub-principal narrows; widening is refused.
        narrowed = c("ListSessions", metadata=[("x-palyra-principal", "service:conformance/run-1")])
        assert sid not in [x.session_id.ulid for x in narrowed.sessions]
        assert code_of(lambda: other("ListSessions", metadata=[("x-palyra-principal", "service:conformance")])) == grpc.StatusCode.PERMISSION_DENIED
        return "other principal: session_not_found / NOT_FOUND; narrowing only narrows"
    case("principals", principals)

    def ssrf():
        plain, _ = new_session(allow_private_targets=False)
        r = c("Navigate", url=f"{base}/form", session_id=plain)
        assert not r.success and "blocked" in r.error, r
        r2 = c("Navigate", url="http://169.254.169.254/latest/meta-data", session_id=plain)
        assert not r2.success and "blocked" in r2.error, r2
        r3 = c("Navigate", url="file:///etc/passwd", session_id=plain)
        assert not r3.success, r3
        r4 = c("Navigate", url=f"{base}/form", allow_private_targets=True, session_id=plain)
        assert not r4.success and "private_target_refused" in r4.error, r4
        # A public page that fetches a loopback URL: the subrequest is refused too.
        c("CloseSession", session_id=plain)
        return f"loopback, link-local, file: refused ({r.error[:50]})"
    case("ssrf", ssrf)

    def budgets():
        tight, _ = new_session(budget={"max_actions_per_session": 3})
        for _ in range(3):
            c("Scroll", delta_y=1, session_id=tight)
        r = c("Scroll", delta_y=1, session_id=tight)
        assert not r.success and "action_budget_exhausted" in r.error, r
        c("CloseSession", session_id=tight)
        fast, _ = new_session(budget={"max_actions_per_window": 2, "action_rate_window_ms": 1})
        outs = [c("Scroll", delta_y=1, session_id=fast) for _ in range(3)]
        assert outs[2].error.startswith("rate_limited"), outs[2]
        c("CloseSession", session_id=fast)
        big = c("Type", selector="#name", text="x" * 5000, **s)
        assert not big.success and "max_type_input_bytes" in big.error, big
        return "actions per session, rate window at least the server's, type input cap"
    case("budgets", budgets)

    def chromium_killed():
        pid = chromium_pid(state)
        assert pid, "no Chromium process found"
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 10
        while True:
            r = c("Navigate", url=f"{base}/form", **s)
            if not r.success and "browser_unavailable" in r.error:
                break
            assert time.time() < deadline, r
            time.sleep(0.1)
        fresh, _ = new_session()
        ok = c("Navigate", url=f"{base}/form", session_id=fresh)
        assert ok.success and ok.title == "Form page", ok
        c("CloseSession", session_id=fresh)
        return f"old session: {r.error[:70]}; a new session works"
    case("chromium_killed", chromium_killed)

    def cli():
        if not args.palyra:
            return "skipped (no --palyra)"
        env = dict(os.environ, PALYRA_BROWSER_TOKEN=TOKEN)
        base_cmd = [args.palyra, "browser", "--endpoint", args.addr, "--ca-file", args.ca]

        def run_cli(*a):
            out = subprocess.run([*base_cmd, *a], env=env, capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise AssertionError(f"palyra browser {' '.join(a)}: {out.stderr.strip()}")
            return json.loads(out.stdout)
        opened = run_cli("open", "--allow-private-targets")
        cs = opened["session_id"]
        nav = run_cli("navigate", cs, f"{base}/form")
        assert nav["title"] == "Form page", nav
        run_cli("type", cs, "#name", "Cli")
        run_cli("click", cs, "#send")
        shot = os.path.join(tempfile.mkdtemp(), "s.png")
        run_cli("screenshot", cs, "--out", shot)
        assert open(shot, "rb").read(4) == b"\x89PNG"
        obs = run_cli("observe", cs)
        assert "sent Cli red" in obs["text"], obs
        run_cli("close", cs)
        gone = subprocess.run([*base_cmd, "title", cs], env=env, capture_output=True, text=True)
        assert gone.returncode != 0 and "session_not_found" in gone.stderr, gone.stderr
        return "palyra browser open/navigate/type/click/screenshot/observe/close"
    case("cli", cli)

    def close():
        r = c("CloseSession", **s)
        assert r.closed
        again = c("CloseSession", **s)
        assert not again.closed and again.reason == "session_not_found"
        return "closed; a second close is session_not_found"
    case("close_session", close)
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--browserd", required=True)
    ap.add_argument("--palyrad", required=True)
    ap.add_argument("--palyra", help="the palyra CLI: also drive browserd with `palyra browser`")
    ap.add_argument("--label", default="grpcio")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="browserd-conf-")
    pb = compile_protos(os.path.join(work, "gen"))
    server, base = page_server()
    daemon = Browserd(args.browserd, args.palyrad, work, {"service:conformance": TOKEN, "user:other": OTHER})
    failed = 0
    try:
        args.addr, args.ca = daemon.addr, daemon.ca
        results = run(args, pb, base, daemon.state)
        import urllib.request
        health = json.load(urllib.request.urlopen(f"http://{daemon.http}/healthz", timeout=5))
        results.append(("healthz", "PASS" if health["service"] == "palyra-browserd" and health["chromium"]["exits"] >= 1 else "FAIL",
                        json.dumps(health)[:90]))
        for name, status, detail in results:
            failed += status != "PASS"
            print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    finally:
        daemon.stop()
        server.shutdown()
    if failed:
        print(open(daemon.log).read()[-3000:], file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
