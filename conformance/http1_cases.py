#!/usr/bin/env python3
"""HTTP/1.1 conformance of palyrad's operator listener, driven by Python h11 (a strict RFC 9112
client-side parser) over raw sockets: keep-alive, pipelining, HEAD, and the request-smuggling
and limit cases, each checked for the status, the JSON error envelope and the connection close.
Prints one row per case; exit status 1 if any case fails."""

import argparse
import json
import socket
import sys

import h11


def exchange(addr, raw, responses=1, method="GET", timeout=5.0):
    """Sends raw bytes; returns [(status, headers, body)] parsed by h11 and whether the server
    closed. `method` is what h11 is told was sent (HEAD answers have no body)."""
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=timeout)
    s.sendall(raw)
    conn = h11.Connection(our_role=h11.CLIENT)
    # h11 needs to believe it sent the requests; feed it matching request events.
    out, closed = [], False
    pending = responses
    current = None
    while pending:
        if conn.our_state is h11.IDLE or conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
            conn.send(h11.EndOfMessage())
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = s.recv(65536)
            if not data:
                closed = True
            conn.receive_data(data)
            if not data and conn.their_state is not h11.DONE:
                break
            continue
        if isinstance(event, h11.Response):
            current = [event.status_code, {k.decode(): v.decode() for k, v in event.headers}, b""]
        elif isinstance(event, h11.Data):
            current[2] += event.data
        elif isinstance(event, h11.EndOfMessage):
            out.append(tuple(current))
            pending -= 1
        elif isinstance(event, h11.ConnectionClosed):
            closed = True
            break
    if not closed:
        try:
            s.settimeout(1.0)
            closed = s.recv(1) == b""
        except socket.timeout:
            closed = False
    s.close()
    return out, closed


def cases(addr):
    def keep_alive_pipelining():
        raw = b"".join(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" for _ in range(3))
        got, closed = exchange(addr, raw, responses=3)
        assert [g[0] for g in got] == [200, 200, 200], got
        assert not closed, "keep-alive connection closed"
        assert all(json.loads(g[2])["status"] == "ok" for g in got)
        return "3 pipelined requests, 3 answers in order, connection kept"

    def head_request():
        got, _ = exchange(addr, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", method="HEAD")
        assert got and got[0][0] == 200 and int(got[0][1]["content-length"]) > 0 and got[0][2] == b"", got
        return f"content-length {got[0][1]['content-length']}"

    def refused(raw, status, code):
        def case():
            got, closed = exchange(addr, raw)
            assert got, "no answer"
            st, headers, body = got[0]
            assert st == status, (st, body)
            envelope = json.loads(body)
            assert envelope["code"] == code, envelope
            assert headers.get("connection", "").lower() == "close", headers
            assert headers.get("x-content-type-options") == "nosniff", headers
            assert closed, "connection left open"
            return f"{st} {code}: {envelope['error']}"[:80]
        return case

    def not_found():
        got, closed = exchange(addr, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got and got[0][0] == 404 and json.loads(got[0][2])["code"] == "not_found", got
        assert not closed, "a 404 keeps the connection"
        return "404 not_found, connection kept"

    return [
        ("keep_alive_pipelining", keep_alive_pipelining),
        ("head_request", head_request),
        ("cl_and_te", refused(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request")),
        ("duplicate_cl", refused(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
                                 b"Content-Length: 1\r\n\r\nx", 400, "bad_request")),
        ("obs_fold", refused(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", 400, "bad_request")),
        ("te_not_chunked", refused(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
                                   400, "bad_request")),
        ("head_over_16k", refused(b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 16400 + b"\r\n\r\n",
                                  431, "header_too_large")),
        ("unknown_method", refused(b"BREW /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented")),
        ("unknown_coding", refused(b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                                   501, "not_implemented")),
        ("not_found", not_found),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    p.add_argument("--label", default="h11")
    args = p.parse_args()
    failed = 0
    for name, case in cases(args.addr):
        try:
            detail, status = case(), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
