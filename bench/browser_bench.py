#!/usr/bin/env python3
"""browser-bench: one scripted scenario (new session, navigate, type, click, observe, screenshot,
close) repeated through palyra-browserd (grpcio over TLS) and by Playwright driving the same
Chromium executable, the two taking turns run by run; prints the median scenario time of each and
the ratio ours/Playwright, then the memory (PSS of the whole process tree: browserd or the
Playwright driver, and their Chromium) per open session with --sessions sessions open.

Usage (after `cargo build --release -p palyra-tokio`; needs conformance/.venv with playwright):
  conformance/.venv/bin/python bench/browser_bench.py --browserd target/release/palyra-browserd \\
      --palyrad target/release/palyrad [--runs 5] [--iterations 10] [--sessions 10] [--before PATH]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "conformance"))
from grpcio_browser import TOKEN, Browserd, compile_protos, page_server  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402


def tree_pss_kib(root):
    """PSS (KiB) of `root` and all its descendants."""
    parents = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read()
                parents[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for pid in tree:
        try:
            for line in open(f"/proc/{pid}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def playwright_driver():
    """The Playwright driver process: the parent of the Chromium it launched."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        if any(a.startswith(b"--user-data-dir=") and b"playwright" in a for a in args) and \
                not any(a.startswith(b"--type=") for a in args):
            return int(stat.rsplit(")", 1)[1].split()[1])
    raise RuntimeError("no Chromium launched by Playwright")


def ours_scenario(c, base):
    sid = c("CreateSession", allow_private_targets=True).session_id.ulid
    s = dict(session_id=sid)
    assert c("Navigate", url=f"{base}/form", **s).success
    assert c("Type", selector="#name", text="Ada", **s).success
    assert c("Click", selector="#send", **s).success
    assert "sent Ada" in c("Observe", include_visible_text=True, **s).visible_text
    assert c("Screenshot", **s).success
    c("CloseSession", **s)


def playwright_scenario(browser, base):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{base}/form")
    page.fill("#name", "Ada")
    page.click("#send")
    assert "sent Ada" in page.inner_text("body")
    page.screenshot()
    context.close()


def timed(fn, iterations):
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--browserd", required=True)
    ap.add_argument("--palyrad", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=10, help="scenarios per run")
    ap.add_argument("--sessions", type=int, default=10, help="sessions open for the memory figure")
    ap.add_argument("--before", help="another build's palyra-browserd, measured in the same turns")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="browser-bench-")
    pb = compile_protos(os.path.join(work, "gen"))
    server, base = page_server()
    flags = ["--chromium", args.chromium, "--max-actions-per-second", "1000",
             "--max-actions-per-session", "100000"]
    daemons = [Browserd(args.browserd, args.palyrad, work, {"service:bench": TOKEN}, "ours", flags)]
    if args.before:
        daemons.append(Browserd(args.before, args.palyrad, work, {"service:bench": TOKEN}, "before", flags))
    c = daemons[0].client(pb, TOKEN)
    before_client = daemons[1].client(pb, TOKEN) if args.before else None
    proc = daemons[0].proc
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            # Warm both (Chromium start, first page).
            ours_scenario(c, base)
            playwright_scenario(browser, base)
            ours, theirs, earlier = [], [], []
            if before_client:
                ours_scenario(before_client, base)
            for run in range(args.runs):
                ours.append(timed(lambda: ours_scenario(c, base), args.iterations))
                if before_client:
                    earlier.append(timed(lambda: ours_scenario(before_client, base), args.iterations))
                theirs.append(timed(lambda: playwright_scenario(browser, base), args.iterations))
                print(f"run {run + 1}/{args.runs}: browserd {ours[-1]:.1f} ms, playwright {theirs[-1]:.1f} ms",
                      file=sys.stderr)
            # Memory per open session: N sessions, each with the form page loaded.
            before = tree_pss_kib(proc.pid)
            sids = []
            for _ in range(args.sessions):
                sid = c("CreateSession", allow_private_targets=True).session_id.ulid
                c("Navigate", url=f"{base}/form", session_id=sid)
                sids.append(sid)
            time.sleep(1)
            ours_mem = (tree_pss_kib(proc.pid) - before) / args.sessions
            for sid in sids:
                c("CloseSession", session_id=sid)
            driver = playwright_driver()
            before = tree_pss_kib(driver)
            contexts = []
            for _ in range(args.sessions):
                ctx = browser.new_context()
                ctx.new_page().goto(f"{base}/form")
                contexts.append(ctx)
            time.sleep(1)
            theirs_mem = (tree_pss_kib(driver) - before) / args.sessions
            for ctx in contexts:
                ctx.close()
            browser.close()
    finally:
        for daemon in daemons:
            daemon.stop()
        server.shutdown()
    mo, mt = statistics.median(ours), statistics.median(theirs)
    print(f"scenario (new session, navigate, type, click, observe, screenshot, close), median of {args.runs} "
          f"runs x {args.iterations}:")
    print(f"  browserd   {mo:8.1f} ms")
    print(f"  playwright {mt:8.1f} ms")
    if earlier:
        print(f"  before     {statistics.median(earlier):8.1f} ms (--before)")
    print(f"  ratio ours/playwright {mo / mt:.2f} (lower is faster)")
    print(f"memory per open session ({args.sessions} open, PSS of the process tree):")
    print(f"  browserd   {ours_mem / 1024:8.1f} MiB")
    print(f"  playwright {theirs_mem / 1024:8.1f} MiB")
    print(f"  ratio ours/playwright {ours_mem / theirs_mem:.2f}" if theirs_mem > 0 else "  ratio n/a")


if __name__ == "__main__":
    main()
