#!/usr/bin/env python3
"""The standard gRPC interop cases (interop-test-descriptions) run by Python grpcio (C-core)
against a grpc.testing.TestService. Message classes come from the server's reflection, so nothing
is generated ahead of time. Prints one row per case; exit status 1 if any case fails."""

import argparse
import sys
import threading

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SPECIAL = "\t\ntest with whitespace\r\nand Unicode BMP \u263a and non-BMP \U0001f608\t\n"


def cases(channel):
    pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    svc = pool.FindServiceByName("grpc.testing.TestService")

    def msg(name):
        return GetMessageClass(pool.FindMessageTypeByName(f"grpc.testing.{name}"))

    Empty, SimpleRequest = msg("Empty"), msg("SimpleRequest")
    InReq, OutReq = msg("StreamingInputCallRequest"), msg("StreamingOutputCallRequest")

    def stub(name, service="grpc.testing.TestService"):
        if service == "grpc.testing.TestService":
            m = svc.methods_by_name[name]
            req, resp = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
        else:
            req = resp = Empty
        path = f"/{service}/{name}"
        kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream}
        client_stream = name in ("StreamingInputCall", "FullDuplexCall", "HalfDuplexCall")
        server_stream = name in ("StreamingOutputCall", "FullDuplexCall", "HalfDuplexCall")
        return kind[(client_stream, server_stream)](
            path, request_serializer=req.SerializeToString, response_deserializer=resp.FromString)

    def payload(size):
        return {"body": b"\0" * size}

    def empty_unary():
        resp = stub("EmptyCall")(Empty(), timeout=10)
        assert resp == Empty()
        return "empty in, empty out"

    def large_unary():
        resp = stub("UnaryCall")(SimpleRequest(response_size=314159, payload=payload(271828)), timeout=10)
        assert resp.payload.body == b"\0" * 314159
        return "271828 bytes in, 314159 bytes out"

    def client_streaming():
        sizes = [27182, 8, 1828, 45904]
        resp = stub("StreamingInputCall")(iter([InReq(payload=payload(n)) for n in sizes]), timeout=10)
        assert resp.aggregated_payload_size == 74922, resp
        return "aggregated 74922"

    def server_streaming():
        sizes = [31415, 9, 2653, 58979]
        req = OutReq(response_parameters=[{"size": n} for n in sizes])
        got = [len(r.payload.body) for r in stub("StreamingOutputCall")(req, timeout=10)]
        assert got == sizes, got
        return f"sizes {got}"

    def ping_pong():
        rounds = [(31415, 27182), (9, 8), (2653, 1828), (58979, 45904)]
        outbox, done = [], threading.Event()
        cond = threading.Condition()

        def requests():
            for i in range(len(rounds)):
                with cond:
                    cond.wait_for(lambda: len(outbox) > i)
                    item = outbox[i]
                yield item

        call = stub("FullDuplexCall")(requests(), timeout=10)
        got = []
        for size, body in rounds:
            with cond:
                outbox.append(OutReq(response_parameters=[{"size": size}], payload=payload(body)))
                cond.notify_all()
            got.append(len(next(call).payload.body))
        assert got == [r[0] for r in rounds], got
        assert list(call) == []
        done.set()
        return f"4 round trips {got}"

    def empty_stream():
        got = list(stub("FullDuplexCall")(iter([]), timeout=10))
        assert got == [], got
        return "no responses"

    def expect(code, fn):
        try:
            fn()
        except grpc.RpcError as e:
            assert e.code() == code, (e.code(), e.details())
            return e
        raise AssertionError(f"expected {code.name}, call succeeded")

    def timeout_on_sleeping_server():
        def run():
            gate = threading.Event()

            def requests():
                yield OutReq(payload=payload(27182))
                gate.wait(5)

            try:
                list(stub("FullDuplexCall")(requests(), timeout=0.001))
            finally:
                gate.set()
        e = expect(grpc.StatusCode.DEADLINE_EXCEEDED, run)
        return f"{e.code().name}"

    def cancel_after_begin():
        gate = threading.Event()

        def requests():
            gate.wait(5)
            return
            yield  # noqa: unreachable - makes this a generator

        future = stub("StreamingInputCall").future(requests(), timeout=10)
        future.cancel()
        gate.set()
        assert future.cancelled(), "future not cancelled"
        assert future.code() == grpc.StatusCode.CANCELLED, future.code()
        return f"{future.code().name}"

    def cancel_after_first_response():
        gate = threading.Event()

        def requests():
            yield OutReq(response_parameters=[{"size": 31415}], payload=payload(27182))
            gate.wait(5)

        call = stub("FullDuplexCall")(requests(), timeout=10)
        assert len(next(call).payload.body) == 31415
        call.cancel()
        gate.set()
        e = expect(grpc.StatusCode.CANCELLED, lambda: list(call))
        return f"{e.code().name} after 1 response"

    def status_case(message):
        def case():
            status = {"code": 2, "message": message}
            e = expect(grpc.StatusCode.UNKNOWN,
                       lambda: stub("UnaryCall")(SimpleRequest(response_status=status), timeout=10))
            assert e.details() == message, repr(e.details())
            e = expect(grpc.StatusCode.UNKNOWN,
                       lambda: list(stub("FullDuplexCall")(iter([OutReq(response_status=status)]), timeout=10)))
            assert e.details() == message, repr(e.details())
            return f"UNKNOWN {message!r}"[:80]
        return case

    def custom_metadata():
        md = (("x-grpc-test-echo-initial", "test_initial_metadata_value"),
              ("x-grpc-test-echo-trailing-bin", b"\x0a\x0b\x0a\x0b\x0a\x0b"))

        def check(initial, trailing):
            assert ("x-grpc-test-echo-initial", "test_initial_metadata_value") in initial, initial
            assert ("x-grpc-test-echo-trailing-bin", b"\x0a\x0b\x0a\x0b\x0a\x0b") in trailing, trailing

        _, call = stub("UnaryCall").with_call(SimpleRequest(response_size=314159, payload=payload(271828)),
                                              metadata=md, timeout=10)
        check(call.initial_metadata(), call.trailing_metadata())
        call = stub("FullDuplexCall")(iter([OutReq(response_parameters=[{"size": 314159}],
                                                   payload=payload(271828))]), metadata=md, timeout=10)
        assert [len(r.payload.body) for r in call] == [314159]
        check(call.initial_metadata(), call.trailing_metadata())
        return "initial and trailing-bin echoed (unary, bidi)"

    def unimplemented_method():
        e = expect(grpc.StatusCode.UNIMPLEMENTED, lambda: stub("UnimplementedCall")(Empty(), timeout=10))
        return f"{e.code().name}: {e.details()}"

    def unimplemented_service():
        e = expect(grpc.StatusCode.UNIMPLEMENTED,
                   lambda: stub("UnimplementedCall", "grpc.testing.UnimplementedService")(Empty(), timeout=10))
        return f"{e.code().name}: {e.details()}"

    return [
        ("empty_unary", empty_unary),
        ("large_unary", large_unary),
        ("client_streaming", client_streaming),
        ("server_streaming", server_streaming),
        ("ping_pong", ping_pong),
        ("empty_stream", empty_stream),
        ("timeout_on_sleeping_server", timeout_on_sleeping_server),
        ("cancel_after_begin", cancel_after_begin),
        ("cancel_after_first_response", cancel_after_first_response),
        ("status_code_and_message", status_case("test status message")),
        ("special_status_message", status_case(SPECIAL)),
        ("custom_metadata", custom_metadata),
        ("unimplemented_method", unimplemented_method),
        ("unimplemented_service", unimplemented_service),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True)
    p.add_argument("--label", default="grpcio")
    args = p.parse_args()
    channel = grpc.insecure_channel(args.addr)
    failed = 0
    for name, case in cases(channel):
        try:
            detail, status = case(), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row
            detail, status = f"{type(e).__name__}: {e!r}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {name:<28} {status:<5} {str(detail)[:90]!s}".replace("\n", " "), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
