#!/usr/bin/env python3
"""Conformance client built on Python grpcio (C-core, BoringSSL) against palyrad's node TLS
listener: reflection lists NodeService, certificate-less callers are UNAUTHENTICATED, a paired
device registers, streams events and gets a capability dispatch pushed while ExecuteCapability
waits, a revoked device is PERMISSION_DENIED. Message classes come from reflection, so nothing
is generated ahead of time. Prints one row per case; exit status 1 if any case fails."""

import argparse
import json
import queue
import sys
import threading
from pathlib import Path

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

SERVICE = "palyra.node.v1.NodeService"
DEVICE = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
REVOKED = "01BX5ZZKBKACTAV9WEVGEMMVRZ"


def channel(addr, ca, identity=None):
    key = cert = None
    if identity:
        key = (Path(identity) / "device.key.pem").read_bytes()
        cert = (Path(identity) / "device.crt.pem").read_bytes()
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])


def cases(args):
    ca = Path(args.ca).read_bytes()
    anonymous = channel(args.addr, ca)
    device = channel(args.addr, ca, args.identity)
    revoked = channel(args.addr, ca, args.revoked_identity)
    db = ProtoReflectionDescriptorDatabase(anonymous)
    pool = DescriptorPool(db)

    def method(name, ch, streaming=False):
        m = pool.FindServiceByName(SERVICE).methods_by_name[name]
        req, resp = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
        kind = ch.stream_stream if streaming else ch.unary_unary
        call = kind(f"/{SERVICE}/{name}", request_serializer=req.SerializeToString,
                    response_deserializer=resp.FromString)
        return req, call

    def register_request(req, device_id):
        r = req(v=1, platform="linux-x86_64")
        r.device_id.ulid = device_id
        cap = r.capabilities.add()
        cap.name, cap.available = "echo", True
        return r

    def expect_code(fn, code):
        try:
            fn()
        except grpc.RpcError as e:
            assert e.code() == code, (e.code(), e.details())
            return f"{e.code().name}: {e.details()}"
        raise AssertionError("call succeeded")

    def reflection_list():
        services = db.get_services()
        assert SERVICE in services, services
        return ", ".join(services)

    def no_certificate():
        req, call = method("RegisterNode", anonymous)
        return expect_code(lambda: call(register_request(req, DEVICE), timeout=5), grpc.StatusCode.UNAUTHENTICATED)

    def register():
        req, call = method("RegisterNode", device)
        resp = call(register_request(req, DEVICE), timeout=5)
        assert resp.accepted and resp.reason == "registered", resp
        return f"accepted={resp.accepted} reason={resp.reason}"

    def other_device_id():
        req, call = method("RegisterNode", device)
        return expect_code(lambda: call(register_request(req, REVOKED), timeout=5), grpc.StatusCode.PERMISSION_DENIED)

    def revoked_device():
        req, call = method("RegisterNode", revoked)
        return expect_code(lambda: call(register_request(req, REVOKED), timeout=5), grpc.StatusCode.PERMISSION_DENIED)

    def stream_and_execute():
        ev_req, events = method("StreamNodeEvents", device, streaming=True)
        ex_req, execute = method("ExecuteCapability", device)
        outbox = queue.Queue()

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        def event(name, payload):
            e = ev_req(v=1, event_name=name, payload_json=json.dumps(payload).encode())
            e.device_id.ulid = DEVICE
            return e

        responses = events(requests(), timeout=20)
        outbox.put(event("node.heartbeat", {}))
        first = next(responses)
        assert first.accepted, first
        result = {}

        def run():
            r = ex_req(v=1, capability="echo", input_json=b'{"text":"grpcio"}')
            r.device_id.ulid = DEVICE
            try:
                result["response"] = execute(r, timeout=15)
            except grpc.RpcError as e:  # reported below
                result["error"] = e

        caller = threading.Thread(target=run)
        caller.start()
        pushed = next(responses)  # pushed without the node sending anything
        assert pushed.HasField("dispatch"), pushed
        d = pushed.dispatch
        assert d.capability == "echo" and d.input_json == b'{"text":"grpcio"}', d
        outbox.put(event("capability.result", {"request_id": d.request_id.ulid, "success": True,
                                               "output_json": {"text": "grpcio"}}))
        ack = next(responses)
        assert ack.accepted, ack
        caller.join(15)
        outbox.put(None)
        if "error" in result:
            raise AssertionError(result["error"])
        resp = result["response"]
        assert resp.success and json.loads(resp.output_json) == {"text": "grpcio"}, resp
        for _ in responses:  # the server ends the stream after our half-close
            pass
        return f"dispatch {d.request_id.ulid} pushed; result success={resp.success}"

    return [
        ("node_reflection", reflection_list),
        ("no_certificate", no_certificate),
        ("register_node", register),
        ("other_device_id", other_device_id),
        ("revoked_device", revoked_device),
        ("push_and_execute", stream_and_execute),
    ]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--addr", required=True, help="node TLS listener (node_tcp in endpoints.json)")
    p.add_argument("--ca", required=True, help="gateway CA certificate (PEM)")
    p.add_argument("--identity", required=True, help="identity directory of a paired device")
    p.add_argument("--revoked-identity", required=True, help="identity directory of a revoked device")
    p.add_argument("--label", default="grpcio")
    args = p.parse_args()
    failed = 0
    for name, case in cases(args):
        try:
            detail, status = case(), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
