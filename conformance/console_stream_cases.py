"""/console/v1/stream against the Python `websockets` client (strict RFC 6455 framing).

Cases: subprotocol negotiated; refused upgrades (no token, foreign Origin with a session
cookie); hello -> welcome + snapshot; agent messages pushed live to a second client; resume by
cursor gets exactly the missed records; a foreign cursor gets snapshot.required; binary frames
closed with 1003; the server's pings answered by the client library keep the stream open.
Prints one line per case: LABEL CASE PASS|FAIL DETAIL.
"""

import argparse
import asyncio
import json
import urllib.request

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

PROTOCOL = "palyra.console.v1"


def connect(addr, token=None, headers=None, subprotocols=(PROTOCOL,)):
    extra = dict(headers or {})
    if token:
        extra["authorization"] = f"Bearer {token}"
    return websockets.connect(
        f"ws://{addr}/console/v1/stream",
        subprotocols=list(subprotocols) if subprotocols else None,
        additional_headers=extra,
        max_size=4 << 20,
    )


async def recv_until(ws, kind, limit=200):
    got = []
    for _ in range(limit):
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        got.append(msg)
        if msg["type"] == kind:
            return got
    raise AssertionError(f"no {kind} in {[m['type'] for m in got]}")


async def run(addr, token):
    results = []

    async def case(name, coro):
        try:
            results.append((name, "PASS", await coro))
        except Exception as e:  # noqa: BLE001 - every failure is a reported case
            results.append((name, "FAIL", f"{type(e).__name__}: {e}"))

    async def negotiated():
        async with connect(addr, token) as ws:
            assert ws.subprotocol == PROTOCOL, ws.subprotocol
            await ws.send(json.dumps({"type": "hello", "resume": None}))
            got = await recv_until(ws, "snapshot.done")
            assert got[0]["type"] == "welcome" and got[0]["resumed"] is False, got[0]
            return f"subprotocol {ws.subprotocol}; welcome boot {got[0]['boot']}"

    async def refused():
        statuses = []
        for headers, tok in (({}, None), ({"origin": "http://evil.example",
                                            "cookie": "palyra_console_session=forged"}, None)):
            try:
                async with connect(addr, tok, headers):
                    raise AssertionError("upgrade was accepted")
            except InvalidStatus as e:
                statuses.append(e.response.status_code)
        req = urllib.request.Request(
            f"http://{addr}/console/v1/auth/login", method="POST",
            data=json.dumps({"admin_token": token}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            cookie = r.headers["set-cookie"].split(";")[0]
        try:
            async with connect(addr, None, {"cookie": cookie, "origin": "http://evil.example"}):
                raise AssertionError("foreign origin accepted")
        except InvalidStatus as e:
            statuses.append(e.response.status_code)
        async with connect(addr, None, {"cookie": cookie, "origin": f"http://{addr}"}) as ws:
            assert ws.subprotocol == PROTOCOL
        assert statuses == [401, 401, 403], statuses
        return f"no token 401, forged cookie 401, foreign Origin 403, own Origin 101"

    async def live_and_resume():
        async with connect(addr, token) as watcher, connect(addr, token) as agent:
            await watcher.send(json.dumps({"type": "hello", "resume": None}))
            await recv_until(watcher, "snapshot.done")
            await agent.send(json.dumps({"type": "hello", "resume": None, "agent": "py"}))
            await recv_until(agent, "snapshot.done")
            for i in range(3):
                await agent.send(json.dumps({"type": "chat.message", "session_id": "conf",
                                             "message_id": f"py-{i}", "text": f"m{i}"}))
            got = [json.loads(await asyncio.wait_for(watcher.recv(), 5)) for _ in range(3)]
            assert [m["text"] for m in got] == ["m0", "m1", "m2"], got
            cursor = got[0]["cursor"]
        async with connect(addr, token) as again:
            await again.send(json.dumps({"type": "hello", "resume": cursor}))
            welcome = json.loads(await asyncio.wait_for(again.recv(), 5))
            replay = [json.loads(await asyncio.wait_for(again.recv(), 5)) for _ in range(2)]
            assert welcome["resumed"] is True, welcome
            assert [m["text"] for m in replay] == ["m1", "m2"], replay
            await again.send(json.dumps({"type": "ping"}))
            pong = json.loads(await asyncio.wait_for(again.recv(), 5))
            assert pong["type"] == "pong", pong
        return "pushed live in order; resume replayed exactly the 2 missed"

    async def foreign_cursor():
        async with connect(addr, token) as ws:
            await ws.send(json.dumps({"type": "hello", "resume": {"boot": "nope", "seq": 1}}))
            got = await recv_until(ws, "snapshot.done")
            kinds = [m["type"] for m in got]
            assert kinds[:2] == ["welcome", "snapshot.required"], kinds
            return f"snapshot.required ({got[1]['reason']}) then {len(got) - 2} snapshot messages"

    async def binary_closed():
        async with connect(addr, token) as ws:
            await ws.send(b"\x01\x02")
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as e:
                assert e.rcvd and e.rcvd.code == 1003, e.rcvd
                return "closed 1003"

    await case("negotiated", negotiated())
    await case("refused", refused())
    await case("live_and_resume", live_and_resume())
    await case("foreign_cursor", foreign_cursor())
    await case("binary_1003", binary_closed())
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True, help="palyrad HTTP address HOST:PORT")
    p.add_argument("--token", required=True)
    p.add_argument("--label", default="websockets")
    args = p.parse_args()
    results = asyncio.run(run(args.addr, args.token))
    failed = False
    for name, status, detail in results:
        failed |= status != "PASS"
        print(f"{args.label:<10} {name:<20} {status:<5} {str(detail)[:90]}", flush=True)
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
