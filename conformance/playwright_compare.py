#!/usr/bin/env python3
"""The same page scenarios driven through palyra-browserd (grpcio over TLS) and by Playwright
(PyPI `playwright`, Debian's Chromium as its executable) must leave the pages in the same state:
titles, texts and form values after the actions, and the same verdict on an element that is
covered by another (neither clicks it). Pages come from the local server of grpcio_browser.py.
Prints one row per scenario; exit status 1 if any differs."""

import argparse
import json
import os
import sys
import tempfile

from playwright.sync_api import sync_playwright

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpcio_browser import TOKEN, Browserd, compile_protos, page_server  # noqa: E402

READ = ("(() => ({title: document.title, out: (document.getElementById('out') || {}).textContent || null,"
        " name: (document.getElementById('name') || {}).value || null,"
        " color: (document.getElementById('color') || {}).value || null}))()")


def ours(c, base):
    """Each scenario through browserd; returns {scenario: state}."""
    sid = c("CreateSession", allow_private_targets=True).session_id.ulid
    s = dict(session_id=sid)

    def read():
        # What the RPCs expose of the page: its title, the DOM summary (with field values) and
        # the visible text.
        title = c("GetTitle", **s).title
        dom = c("Observe", include_dom_snapshot=True, **s).dom_snapshot
        text = c("Observe", include_visible_text=True, **s).visible_text
        return title, dom, text

    results = {}
    c("Navigate", url=f"{base}/form", **s)
    c("Type", selector="#name", text="Ada", **s)
    c("Select", selector="#color", value="green", **s)
    c("Click", selector="#send", **s)
    c("WaitFor", selector="#out", text="sent", timeout_ms=3000, **s)
    title, dom, text = read()
    results["form"] = {"title": title, "out": line_of(text, "sent"), "name": attr(dom, "input#name", "value"),
                       "color": attr(dom, "select#color", "value")}
    c("Navigate", url=f"{base}/late", **s)
    late = c("Click", selector="#late", timeout_ms=4000, **s)
    c("WaitFor", text="clicked late", timeout_ms=2000, **s)
    title, _, text = read()
    results["late"] = {"title": title, "clicked": late.success, "out": line_of(text, "clicked")}
    c("Navigate", url=f"{base}/covered", **s)
    cov = c("Click", selector="#under", timeout_ms=1000, **s)
    title, _, text = read()
    results["covered"] = {"title": title, "clicked": cov.success, "out": line_of(text, "untouched")}
    c("Navigate", url=f"{base}/frame", **s)
    fr = c("Click", selector="#inner >>> #ib", timeout_ms=4000, **s)
    title, dom, _ = read()
    results["iframe"] = {"title": title, "clicked": fr.success, "button": "pressed inside" if "pressed inside" in dom else dom}
    c("Navigate", url=f"{base}/logs", **s)
    c("WaitFor", text="", selector="body", timeout_ms=1000, **s)
    title = wait_title(lambda: c("GetTitle", **s).title, "Logs pong")
    results["logs"] = {"title": title}
    c("CloseSession", **s)
    return results


def wait_title(get, want, seconds=5):
    import time
    deadline = time.time() + seconds
    title = get()
    while title != want and time.time() < deadline:
        time.sleep(0.05)
        title = get()
    return title


def line_of(text, needle):
    for line in text.splitlines():
        if needle in line:
            return line.strip()
    return None


def attr(dom, prefix, name):
    for line in dom.splitlines():
        line = line.strip()
        if line.startswith(prefix):
            marker = f"[{name}="
            if marker in line:
                return json.loads(line.split(marker, 1)[1].split("]", 1)[0])
    return None


def theirs(base, chromium):
    """Each scenario with Playwright on the same Chromium."""
    results = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_context().new_page()
        page.goto(f"{base}/form")
        page.fill("#name", "Ada")
        page.select_option("#color", "green")
        page.click("#send")
        page.wait_for_function("document.getElementById('out').textContent.includes('sent')")
        st = page.evaluate(READ)
        results["form"] = {"title": st["title"], "out": st["out"], "name": st["name"], "color": st["color"]}
        page.goto(f"{base}/late")
        page.click("#late", timeout=4000)
        page.wait_for_function("document.getElementById('out').textContent === 'clicked late'")
        st = page.evaluate(READ)
        results["late"] = {"title": st["title"], "clicked": True, "out": st["out"]}
        page.goto(f"{base}/covered")
        try:
            page.click("#under", timeout=1000)
            clicked = True
        except Exception:  # noqa: BLE001 - Playwright times out: the overlay intercepts the click
            clicked = False
        st = page.evaluate(READ)
        results["covered"] = {"title": st["title"], "clicked": clicked, "out": st["out"]}
        page.goto(f"{base}/frame")
        page.frame_locator("#inner").locator("#ib").click(timeout=4000)
        text = page.frame_locator("#inner").locator("#ib").inner_text()
        results["iframe"] = {"title": page.title(), "clicked": True, "button": text}
        page.goto(f"{base}/logs")
        page.wait_for_function("document.title === 'Logs pong'", timeout=5000)
        results["logs"] = {"title": page.title()}
        browser.close()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--browserd", required=True)
    ap.add_argument("--palyrad", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--label", default="playwright")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="browser-compare-")
    pb = compile_protos(os.path.join(work, "gen"))
    server, base = page_server()
    daemon = Browserd(args.browserd, args.palyrad, work, {"service:conformance": TOKEN},
                      extra=["--chromium", args.chromium])
    failed = 0
    try:
        a = ours(daemon.client(pb, TOKEN), base)
        b = theirs(base, args.chromium)
        for name in b:
            same = a.get(name) == b[name]
            failed += not same
            detail = json.dumps(b[name]) if same else f"browserd {json.dumps(a.get(name))} vs playwright {json.dumps(b[name])}"
            print(f"{args.label:<10} {name:<18} {'PASS' if same else 'FAIL':<5} {detail[:200]}", flush=True)
    finally:
        daemon.stop()
        server.shutdown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
