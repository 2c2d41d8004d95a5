#!/usr/bin/env python3
"""Conformance client built on Python grpcio (C-core): reflection, GetHealth through descriptors
fetched by reflection, grpc.health.v1, and UNIMPLEMENTED for unknown services and methods.
Prints one row per case; exit status 1 if any case fails."""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase


def cases(channel):
    db = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(db)

    def reflection_list():
        services = db.get_services()
        assert "palyra.gateway.v1.GatewayService" in services, services
        assert "grpc.health.v1.Health" in services, services
        return ", ".join(services)

    def get_health_via_reflection():
        method = pool.FindServiceByName("palyra.gateway.v1.GatewayService").methods_by_name["GetHealth"]
        req_cls, resp_cls = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        call = channel.unary_unary("/palyra.gateway.v1.GatewayService/GetHealth",
                                   request_serializer=req_cls.SerializeToString,
                                   response_deserializer=resp_cls.FromString)
        resp = call(req_cls(v=1), timeout=5)
        assert resp.service == "palyrad" and resp.status == "ok", resp
        return f"service={resp.service} status={resp.status} version={resp.version}"

    def health_check():
        method = pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]
        req_cls, resp_cls = GetMessageClass(method.input_type), GetMessageClass(method.output_type)
        call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=req_cls.SerializeToString,
                                   response_deserializer=resp_cls.FromString)
        resp = call(req_cls(service=""), timeout=5)
        assert resp.status == 1, resp  # SERVING
        return "SERVING"

    def expect_code(path, code):
        def case():
            try:
                channel.unary_unary(path)(b"", timeout=5)
            except grpc.RpcError as e:
                assert e.code() == code, (e.code(), e.details())
                return f"{e.code().name}: {e.details()}"
            raise AssertionError("call succeeded")
        return case

    return [
        ("reflection_list", reflection_list),
        ("get_health", get_health_via_reflection),
        ("health_check", health_check),
        ("unknown_method", expect_code("/palyra.gateway.v1.GatewayService/Nope", grpc.StatusCode.UNIMPLEMENTED)),
        ("unknown_service", expect_code("/no.Such/Service", grpc.StatusCode.UNIMPLEMENTED)),
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
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{args.label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
