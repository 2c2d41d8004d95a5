#!/usr/bin/env python3
"""Frame-level HTTP/2 suite (in the spirit of h2spec) against our gRPC listener, written with
raw sockets and the hyperframe/hpack libraries. Each case sends malformed or hostile frames and
checks the answer the RFC asks for (GOAWAY / RST_STREAM code, or an HTTP status). After every
flood a fresh client must still get GetHealth, and the server's memory must stay bounded.
Prints one row per case; exit status 1 if any case fails."""

import argparse
import socket
import sys
import time

from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x5, 0xB
GET_HEALTH = b"\x00\x00\x00\x00\x02\x08\x01"


def request_headers(path="/palyra.gateway.v1.GatewayService/GetHealth", extra=()):
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "localhost"),
            ("content-type", "application/grpc"), ("te", "trailers")] + list(extra)


class Conn:
    def __init__(self, addr, preface=True):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.enc = Encoder()
        self.dec = Decoder()
        self.buf = b""
        if preface:
            self.sock.sendall(PREFACE + SettingsFrame(0).serialize())

    def send(self, *frames):
        try:
            self.sock.sendall(b"".join(f.serialize() if isinstance(f, Frame) else f for f in frames))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close mid-flood; what it said before closing is still read

    def headers(self, stream, fields, end_stream=True, end_headers=True):
        flags = [x for x, on in (("END_STREAM", end_stream), ("END_HEADERS", end_headers)) if on]
        return HeadersFrame(stream, self.enc.encode(fields), flags=flags)

    def frames(self, timeout=3.0):
        """Yields frames until the server closes or `timeout` passes without data."""
        self.sock.settimeout(timeout)
        while True:
            while len(self.buf) >= 9:
                length = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) < 9 + length:
                    break
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                if isinstance(frame, HeadersFrame):
                    frame.fields = dict(self.dec.decode(bytes(frame.data), raw=False))
                if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
                    self.send(SettingsFrame(0, flags=["ACK"]))
                yield frame
            try:
                chunk = self.sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                return
            if not chunk:
                return
            self.buf += chunk

    def expect(self, predicate, what):
        seen = []
        for frame in self.frames():
            seen.append(type(frame).__name__)
            result = predicate(frame)
            if result:
                return result
        raise AssertionError(f"expected {what}, got {seen[-8:]}")


def goaway(code):
    return lambda f: isinstance(f, GoAwayFrame) and f.error_code == code and f"GOAWAY code {code:#x}"


def rst(stream, code):
    return lambda f: isinstance(f, RstStreamFrame) and f.stream_id == stream and f.error_code == code and f"RST_STREAM {stream} code {code:#x}"


def healthy(addr):
    c = Conn(addr)
    c.send(c.headers(1, request_headers(), end_stream=False), DataFrame(1, GET_HEALTH, flags=["END_STREAM"]))
    c.expect(lambda f: isinstance(f, HeadersFrame) and "END_STREAM" in f.flags, "GetHealth trailers")
    return True


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def cases(addr):
    def bad_preface():
        c = Conn(addr, preface=False)
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return c.expect(goaway(PROTOCOL_ERROR), "GOAWAY PROTOCOL_ERROR")

    def data_on_stream_zero():
        c = Conn(addr)
        # hyperframe refuses to build it, so write the frame by hand: length 1, DATA, stream 0.
        c.send(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        return c.expect(goaway(PROTOCOL_ERROR), "GOAWAY PROTOCOL_ERROR")

    def data_on_closed_stream():
        c = Conn(addr)
        c.send(c.headers(1, request_headers(), end_stream=False), DataFrame(1, GET_HEALTH, flags=["END_STREAM"]))
        c.expect(lambda f: isinstance(f, HeadersFrame) and "END_STREAM" in f.flags, "response")
        c.send(DataFrame(1, b"late"))
        return c.expect(lambda f: (rst(1, STREAM_CLOSED)(f) or goaway(STREAM_CLOSED)(f)), "STREAM_CLOSED")

    def window_overflow():
        c = Conn(addr)
        c.send(WindowUpdateFrame(0, window_increment=2**31 - 1))
        return c.expect(goaway(FLOW_CONTROL_ERROR), "GOAWAY FLOW_CONTROL_ERROR")

    def oversized_headers():
        # A 20 KB header list (over our 16 KiB limit), split into HEADERS + CONTINUATION frames
        # of at most 16 KiB as a compliant client does.
        c = Conn(addr)
        block = c.enc.encode(request_headers(extra=[("x-big", "v" * 20000)]))
        chunks = [block[i:i + 16000] for i in range(0, len(block), 16000)]
        frames = [HeadersFrame(1, chunks[0], flags=["END_STREAM"])]
        frames += [ContinuationFrame(1, chunk) for chunk in chunks[1:]]
        frames[-1].flags.add("END_HEADERS")
        c.send(*frames)
        return c.expect(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1 and f.fields.get(":status") == "431" and "HTTP 431", "HTTP 431")

    def invalid_header_name():
        c = Conn(addr)
        c.send(c.headers(1, request_headers(extra=[("X-Upper", "a")])))
        return c.expect(rst(1, PROTOCOL_ERROR), "RST_STREAM PROTOCOL_ERROR")

    def missing_pseudo_header():
        c = Conn(addr)
        c.send(c.headers(1, [(":method", "POST"), (":authority", "x"), ("content-type", "application/grpc")]))
        return c.expect(rst(1, PROTOCOL_ERROR), "RST_STREAM PROTOCOL_ERROR")

    def continuation_without_headers():
        c = Conn(addr)
        c.send(ContinuationFrame(1, b"\x82", flags=["END_HEADERS"]))
        return c.expect(goaway(PROTOCOL_ERROR), "GOAWAY PROTOCOL_ERROR")

    def flood(name, build):
        def case():
            c = Conn(addr)
            c.send(*build(c))
            answer = c.expect(goaway(ENHANCE_YOUR_CALM), "GOAWAY ENHANCE_YOUR_CALM")
            assert healthy(addr), "daemon stopped serving"
            return f"{answer}; still serving"
        return name, case

    def rapid_reset(c):
        out = []
        for i in range(400):
            sid = 2 * i + 1
            out += [c.headers(sid, request_headers(), end_stream=False), RstStreamFrame(sid, error_code=8)]
        return out

    def continuation_flood(c):
        first = c.headers(1, request_headers(), end_stream=True, end_headers=False)
        return [first] + [ContinuationFrame(1, b"\x82" * 100) for _ in range(2000)]

    return [
        ("bad_preface", bad_preface),
        ("data_on_stream_0", data_on_stream_zero),
        ("data_on_closed", data_on_closed_stream),
        ("window_overflow", window_overflow),
        ("oversized_headers", oversized_headers),
        ("uppercase_header", invalid_header_name),
        ("missing_pseudo", missing_pseudo_header),
        ("stray_continuation", continuation_without_headers),
        flood("rapid_reset_flood", rapid_reset),
        flood("continuation_flood", continuation_flood),
        flood("ping_flood", lambda c: [PingFrame(0, b"12345678") for _ in range(5000)]),
        flood("settings_flood", lambda c: [SettingsFrame(0) for _ in range(5000)]),
        flood("empty_data_flood", lambda c: [c.headers(1, request_headers(), end_stream=False)] + [DataFrame(1, b"") for _ in range(5000)]),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    p.add_argument("--pid", type=int, help="server process, to check memory after the floods")
    p.add_argument("--label", default="h2frames")
    args = p.parse_args()
    failed = 0
    before = rss_kib(args.pid) if args.pid else None
    for name, case in cases(args.addr):
        try:
            detail, status = case(), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    if args.pid:
        time.sleep(0.5)
        after = rss_kib(args.pid)
        ok = after - before < 64 * 1024
        failed += 0 if ok else 1
        print(f"{args.label:<10} {'memory_bounded':<18} {'PASS' if ok else 'FAIL':<5} RSS {before} KiB -> {after} KiB", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
