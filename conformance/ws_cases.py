#!/usr/bin/env python3
"""WebSocket conformance (RFC 6455) of our HTTP/1.1 + WebSocket stack, driven by Python
`websockets` (a strict client) against the conformance echo endpoint: handshake, text and
binary echo, fragmented messages, ping/pong, close handshake, and the limit and error close
codes (1009 too big, 1007 bad UTF-8, 1002 protocol error) checked on raw frames.
Prints one row per case; exit status 1 if any case fails."""

import argparse
import asyncio
import base64
import os
import socket
import struct
import sys

import websockets
from websockets.exceptions import ConnectionClosed


def mask(payload, key=b"\x01\x02\x03\x04"):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def frame(opcode, payload, fin=True):
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + b"\x01\x02\x03\x04" + mask(payload)


def raw_session(addr, frames):
    """Opens the echo endpoint by hand, sends raw frames, returns the close code the server sent."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /conformance/ws-echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(b"".join(frames))
    buf = rest
    while True:
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            off = 2
            if n == 126:
                n, off = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                n, off = struct.unpack(">Q", buf[2:10])[0], 10
            if len(buf) < off + n:
                break
            opcode, payload = buf[0] & 0x0F, buf[off:off + n]
            buf = buf[off + n:]
            if opcode == 8:
                s.close()
                return struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk


async def echo_cases(url):
    rows = []

    async def run(name, coro):
        try:
            rows.append((name, "PASS", await coro))
        except Exception as e:  # noqa: BLE001 - every failure is a row
            rows.append((name, "FAIL", f"{type(e).__name__}: {e}"))

    async def text_and_binary():
        async with websockets.connect(url, max_size=2**20) as ws:
            await ws.send("héllo 😀")
            assert await ws.recv() == "héllo 😀"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            big = "z" * 65536
            await ws.send(big)
            assert await ws.recv() == big
            return "text, binary and a 64 KiB message echoed"

    async def fragmented():
        async with websockets.connect(url) as ws:
            await ws.send(iter(["frag", "mented ", "message"]))
            assert await ws.recv() == "fragmented message"
            return "3 fragments reassembled"

    async def ping_pong():
        async with websockets.connect(url) as ws:
            waiter = await ws.ping(b"conformance")
            latency = await asyncio.wait_for(waiter, 5)
            return f"pong in {latency * 1000:.1f} ms"

    async def close_handshake():
        ws = await websockets.connect(url)
        await ws.close(code=1000, reason="bye")
        assert ws.close_code == 1000, ws.close_code
        return f"close echoed: {ws.close_code}"

    await run("text_binary_echo", text_and_binary())
    await run("fragmented", fragmented())
    await run("ping_pong", ping_pong())
    await run("close_handshake", close_handshake())
    return rows


def raw_cases(addr):
    rows = []

    def run(name, frames, want):
        try:
            code = raw_session(addr, frames)
            assert code == want, f"close code {code}, wanted {want}"
            rows.append((name, "PASS", f"closed with {code}"))
        except Exception as e:  # noqa: BLE001
            rows.append((name, "FAIL", f"{type(e).__name__}: {e}"))

    run("too_big_1009", [frame(1, b"a" * (64 * 1024 + 1))], 1009)
    run("bad_utf8_1007", [frame(1, b"\xff\xfe")], 1007)
    run("unmasked_1002", [bytes([0x81, 0x01]) + b"a"], 1002)
    run("reserved_opcode_1002", [frame(3, b"x")], 1002)
    run("close_echo_1000", [frame(8, struct.pack(">H", 1000) + b"done")], 1000)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    p.add_argument("--label", default="websockets")
    args = p.parse_args()
    rows = asyncio.run(echo_cases(f"ws://{args.addr}/conformance/ws-echo")) + raw_cases(args.addr)
    failed = 0
    for name, status, detail in rows:
        failed += status == "FAIL"
        print(f"{args.label:<10} {name:<20} {status:<5} {str(detail)[:90]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
