#!/usr/bin/env python3
"""Conformance client built on aioquic (Python): runs the node-plane cases against a
palyra-quic-v1 server and prints one row per case. Exit status 1 if any case fails."""

import argparse
import asyncio
import json
import os
import struct
import sys

from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated

ALPN = "palyra-quic-v1"
MAX_FRAME = 524_288


def frame(obj):
    payload = json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def parse_frames(data):
    frames, pos = [], 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError("truncated length prefix")
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes")
        body = data[pos + 4:pos + 4 + length]
        if len(body) != length:
            raise ValueError("truncated frame")
        frames.append(json.loads(body))
        pos += 4 + length
    return frames


class Recorder(QuicConnectionProtocol):
    """Keeps the ConnectionTerminated event, so rejections can be checked by their error code."""

    last_close = None

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            Recorder.last_close = event
        super().quic_event_received(event)


def close_reason():
    ev = Recorder.last_close
    if ev is None:
        return "no CONNECTION_CLOSE seen"
    return f"CONNECTION_CLOSE 0x{ev.error_code:x} {ev.reason_phrase}".strip()


class Session:
    def __init__(self, args, identity, ca, alpn):
        config = QuicConfiguration(is_client=True, alpn_protocols=[alpn], server_name=args.server_name)
        config.load_verify_locations(ca)
        if identity:
            config.load_cert_chain(os.path.join(identity, "device.crt.pem"), os.path.join(identity, "device.key.pem"))
        self.ctx = connect(args.host, args.port, configuration=config, wait_connected=True,
                           create_protocol=Recorder)

    async def __aenter__(self):
        self.client = await asyncio.wait_for(self.ctx.__aenter__(), 10)
        return self

    async def __aexit__(self, *exc):
        await self.ctx.__aexit__(*exc)

    async def call(self, obj):
        reader, writer = await self.client.create_stream()
        writer.write(frame(obj))
        writer.write_eof()
        data = await asyncio.wait_for(reader.read(), 10)
        return parse_frames(data)


def expect_ok(frames, kind):
    if not frames:
        raise AssertionError("no response frame")
    f = frames[0]
    if f.get("protocol_version") != 1 or f.get("kind") != kind or f.get("ok") is not True:
        raise AssertionError(f"unexpected frame {f}")
    return f


async def publish(session, name, n):
    ack = expect_ok(await session.call({"protocol_version": 1, "method": "node.publish_event",
                                        "event": {"name": name, "payload": {"n": n}}}), "ack")
    return ack["seq"]


async def expect_rejected(args, identity, ca, alpn, codes):
    """The handshake fails, or (TLS 1.3: the client finishes first) the server closes the
    connection before answering. The QUIC error code must be one of `codes`
    (0x100 + TLS alert for crypto errors)."""
    Recorder.last_close = None
    try:
        async with Session(args, identity, ca, alpn) as s:
            reader, writer = await s.client.create_stream()
            writer.write(frame({"protocol_version": 1, "method": "node.health", "resume_from": None}))
            writer.write_eof()
            data = await asyncio.wait_for(reader.read(), 5)
            if data:
                raise AssertionError(f"server answered {parse_frames(data)}")
            await asyncio.wait_for(s.client.wait_closed(), 5)
    except AssertionError:
        raise
    except (ConnectionError, asyncio.TimeoutError):
        pass
    ev = Recorder.last_close
    if ev is None:
        raise AssertionError("no CONNECTION_CLOSE from the server")
    if ev.error_code not in codes:
        raise AssertionError(f"rejected with an unexpected code: {close_reason()}")
    return close_reason()


async def run_case(args, case):
    ca = os.path.join(args.identity, "ca.crt.pem")
    health = {"protocol_version": 1, "method": "node.health", "resume_from": None}
    if case == "health":
        async with Session(args, args.identity, ca, ALPN) as s:
            f = expect_ok(await s.call(health), "health")
            assert f.get("node_rpc_mtls_required") is True and len(f.get("device_id", "")) == 26, f
            return f"device_id {f['device_id']}"
    if case == "publish":
        async with Session(args, args.identity, ca, ALPN) as s:
            return f"acked seq {await publish(s, 'conformance.publish', 1)}"
    if case == "stream_resume":
        async with Session(args, args.identity, ca, ALPN) as s:
            seqs = [await publish(s, "conformance.resume", n) for n in range(3)]
            frames = await s.call({"protocol_version": 1, "method": "node.stream_events", "resume_from": seqs[0]})
            got = [f.get("seq") for f in frames]
            assert got and got[0] == seqs[0] + 1 and got == sorted(got) and seqs[1] in got and seqs[2] in got, got
            assert all(f["kind"] == "event" and "device_id" in f["event"] for f in frames), frames
            return f"resume_from {seqs[0]} -> {len(got)} events"
    if case == "protocol_mismatch":
        async with Session(args, args.identity, ca, ALPN) as s:
            frames = await s.call({"protocol_version": 2, "method": "node.health", "added_later": True})
            assert len(frames) == 1 and frames[0]["error"] == "protocol_mismatch" and frames[0]["ok"] is False, frames
            return "error protocol_mismatch"
    # QUIC crypto errors are 0x100 + TLS alert: no_application_protocol 120, certificate_required
    # 116, unknown_ca 48, certificate_revoked 44.
    if case == "wrong_alpn":
        return await expect_rejected(args, args.identity, ca, "h3", {0x178})
    if case == "no_client_cert":
        return await expect_rejected(args, None, ca, ALPN, {0x174})
    if case == "foreign_ca_cert":
        return await expect_rejected(args, args.foreign_identity, ca, ALPN, {0x130})
    if case == "revoked_cert":
        return await expect_rejected(args, args.revoked_identity, ca, ALPN, {0x12C})
    raise AssertionError(f"unknown case {case}")


CASES = ["health", "publish", "stream_resume", "protocol_mismatch", "wrong_alpn", "no_client_cert",
         "foreign_ca_cert", "revoked_cert"]


async def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    p.add_argument("--server-name", default="localhost")
    p.add_argument("--identity", required=True)
    p.add_argument("--foreign-identity", required=True)
    p.add_argument("--revoked-identity", required=True)
    p.add_argument("--label", default="aioquic")
    args = p.parse_args()
    host, port = args.addr.rsplit(":", 1)
    args.host, args.port = host, int(port)
    failed = 0
    for case in CASES:
        try:
            detail, status = await asyncio.wait_for(run_case(args, case), 30), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row in the table
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {case:<18} {status:<5} {str(detail)[:90]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
