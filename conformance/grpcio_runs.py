#!/usr/bin/env python3
"""Agent runs driven by Python grpcio (C-core) with messages compiled from our .proto files at
test time (grpcio-tools): a streamed reply, a node tool call approved in-band, a denial, an
approval that times out, AbortRun mid-run, re-attaching by cursor, and a missing credential.

It starts what it needs: the scripted OpenAI-compatible upstream (openai_upstream.py), palyrad
with that upstream as `[model] base_url`, and a node paired with the palyra CLI serving the
capability `system.echo` (`palyra node run --capability system.echo=cat`). Prints one row per
case; exit status 1 if any case fails."""

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ADMIN = "grpcio-runs-admin"
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid():
    """A ULID: 48 bits of milliseconds, 80 random bits, Crockford base32."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


def compile_protos(out):
    os.makedirs(out, exist_ok=True)
    args = ["protoc", f"-I{ROOT}/proto", f"--python_out={out}",
            f"{ROOT}/proto/palyra/v1/common.proto", f"{ROOT}/proto/palyra/v1/gateway.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, out)
    from palyra.v1 import common_pb2, gateway_pb2  # noqa: E402
    return common_pb2, gateway_pb2


def wait_for(path, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if os.path.exists(path) and os.path.getsize(path) > 0:
            return json.load(open(path))
        time.sleep(0.05)
    raise RuntimeError(f"{path} did not appear")


class Stack:
    """The upstream, palyrad and a paired node serving system.echo."""

    def __init__(self, palyrad, palyra, work, approval_timeout=2, extra_config=""):
        self.procs = []
        up = subprocess.Popen([sys.executable, f"{HERE}/openai_upstream.py"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
        self.procs.append(up)
        upstream = up.stdout.readline().split()[-1]
        self.upstream = upstream
        config = os.path.join(work, "palyrad.toml")
        with open(config, "w") as f:
            f.write(f'[model]\nbase_url = "http://{upstream}/v1"\nmodel = "scripted"\n'
                    f'[tools]\napproval_timeout_secs = {approval_timeout}\n{extra_config}')
        state = os.path.join(work, "state")
        env = dict(os.environ, PALYRA_ADMIN_TOKEN=ADMIN)
        self.procs.append(subprocess.Popen(
            [palyrad, "--state-dir", state, "--config", config, "--node-addr", "127.0.0.1:0",
             "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--log-level", "warn"], env=env))
        endpoints = wait_for(os.path.join(state, "endpoints.json"))
        self.grpc = endpoints["grpc"]
        self.http = endpoints["http"]
        env = dict(env, PALYRA_DAEMON_URL=f"http://{endpoints['http']}")

        def cli(*args):
            return subprocess.run([palyra, *args], env=env, check=True, capture_output=True, text=True).stdout

        invite = cli("pairing", "code", "--method", "qr").strip()
        identity = os.path.join(work, "node")
        enroll = subprocess.Popen([palyra, "node", "enroll", "--invite", invite, "--identity", identity],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while True:
            pending = [r["request_id"] for r in json.loads(cli("pairing", "list", "--json"))["requests"]
                       if r["state"] == "pending_approval"]
            if pending:
                break
            if time.time() > deadline:
                raise RuntimeError("no pairing request")
            time.sleep(0.05)
        cli("pairing", "approve", pending[0])
        if enroll.wait(30) != 0:
            raise RuntimeError("enrollment failed")
        node = subprocess.Popen([palyra, "node", "run", "--identity", identity,
                                 "--capability", "system.echo=cat"], stdout=subprocess.PIPE, text=True)
        self.procs.append(node)
        for line in node.stdout:
            if "capabilities_registered" in line:
                break
        threading.Thread(target=lambda: [None for _ in node.stdout], daemon=True).start()

    def close(self):
        for proc in reversed(self.procs):
            if proc.stdin:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def cases(stack, common_pb2, gateway_pb2):
    channel = grpc.insecure_channel(stack.grpc)
    auth = [("authorization", f"Bearer {ADMIN}")]
    run_stream = channel.stream_stream(
        "/palyra.gateway.v1.GatewayService/RunStream",
        request_serializer=common_pb2.RunStreamRequest.SerializeToString,
        response_deserializer=common_pb2.RunStreamEvent.FromString)
    abort_run = channel.unary_unary(
        "/palyra.gateway.v1.GatewayService/AbortRun",
        request_serializer=gateway_pb2.AbortRunRequest.SerializeToString,
        response_deserializer=gateway_pb2.AbortRunResponse.FromString)
    Kind = common_pb2.StreamStatus.StatusKind

    def start(run_id, text, key=None):
        return common_pb2.RunStreamRequest(
            v=1, run_id=common_pb2.CanonicalId(ulid=run_id), session_key=key or f"grpcio-{uuid.uuid4().hex[:8]}",
            input=common_pb2.MessageEnvelope(v=1, content=common_pb2.MessageContent(text=text)))

    def drive(run_id, text, on_event=None, metadata=auth):
        """Runs a stream: the first message, then whatever on_event answers; returns the events
        and the call's final code."""
        outbox = queue.Queue()
        outbox.put(start(run_id, text))

        def requests():
            while True:
                item = outbox.get()
                if item is None:
                    return
                yield item

        events = []
        call = run_stream(requests(), metadata=metadata, timeout=30)
        try:
            for event in call:
                events.append(event)
                if on_event:
                    answer = on_event(event)
                    if answer is not None:
                        outbox.put(answer)
            code = call.code()
        except grpc.RpcError as e:
            code = e.code()
        finally:
            outbox.put(None)
        return events, code

    def kinds(events):
        return [e.WhichOneof("body") for e in events]

    def statuses(events):
        return [Kind.Name(e.status.kind) for e in events if e.WhichOneof("body") == "status"]

    def approve(approved):
        def answer(event):
            if event.WhichOneof("body") != "tool_approval_request":
                return None
            r = event.tool_approval_request
            return common_pb2.RunStreamRequest(
                v=1, run_id=event.run_id,
                tool_approval_response=common_pb2.ToolApprovalResponse(
                    proposal_id=r.proposal_id, approval_id=r.approval_id, approved=approved,
                    decision_scope=common_pb2.APPROVAL_DECISION_SCOPE_ONCE))
        return answer

    def stream_reply():
        events, code = drive(ulid(), "hello grpcio")
        text = "".join(e.model_token.token for e in events if e.WhichOneof("body") == "model_token")
        assert code == grpc.StatusCode.OK, code
        assert statuses(events) == ["STATUS_KIND_ACCEPTED", "STATUS_KIND_IN_PROGRESS", "STATUS_KIND_DONE"], statuses(events)
        assert text == "You said: hello grpcio", text
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        return f"{len(events)} events, {text!r}"

    def tool_approved():
        events, code = drive(ulid(), 'go [[tool:system_echo {"text":"hi"}]]', approve(True))
        assert code == grpc.StatusCode.OK, code
        order = [k for k in kinds(events) if k != "model_token"]
        want = ["status", "status", "tool_proposal", "tool_approval_request", "tool_approval_response",
                "tool_decision", "tool_result", "tool_attestation", "journal_event", "status"]
        assert order == want, order
        result = next(e.tool_result for e in events if e.WhichOneof("body") == "tool_result")
        assert result.success and json.loads(result.output_json) == {"text": "hi"}, result
        attestation = next(e.tool_attestation for e in events if e.WhichOneof("body") == "tool_attestation")
        assert len(attestation.execution_sha256) == 64 and attestation.executor.startswith("node:")
        return f"result {result.output_json.decode()} by {attestation.executor}"

    def tool_denied():
        events, code = drive(ulid(), 'go [[tool:system_echo {"text":"no"}]]', approve(False))
        decision = next(e.tool_decision for e in events if e.WhichOneof("body") == "tool_decision")
        result = next(e.tool_result for e in events if e.WhichOneof("body") == "tool_result")
        assert code == grpc.StatusCode.OK and decision.kind == common_pb2.ToolDecision.DECISION_KIND_DENY
        assert not result.success and "denied" in result.error, result
        assert "tool_attestation" not in kinds(events)
        return result.error

    def approval_timeout():
        started = time.time()
        events, code = drive(ulid(), 'go [[tool:system_echo {"text":"late"}]]')
        decision = next(e.tool_decision for e in events if e.WhichOneof("body") == "tool_decision")
        assert "timed out" in decision.reason, decision
        assert time.time() - started >= 1.9
        return decision.reason

    def abort():
        run_id = ulid()
        state = {}

        def on(event):
            if event.seq == 4 and "aborted" not in state:
                state["aborted"] = abort_run(gateway_pb2.AbortRunRequest(
                    v=1, run_id=common_pb2.CanonicalId(ulid=run_id), reason="grpcio"), metadata=auth, timeout=5)
            return None

        events, code = drive(run_id, "slow [[slow:200]] " + "w " * 30, on)
        assert state["aborted"].cancel_requested
        assert statuses(events)[-1] == "STATUS_KIND_CANCELLED", statuses(events)
        assert code == grpc.StatusCode.CANCELLED, code
        return events[-1].status.message

    def attach_replay():
        run_id = ulid()
        events, _ = drive(run_id, "replay me")
        attach = common_pb2.RunStreamRequest(v=1, run_id=common_pb2.CanonicalId(ulid=run_id),
                                             attach=True, attach_after_seq=2)
        replayed = list(run_stream(iter([attach]), metadata=auth, timeout=10))
        assert [e.SerializeToString() for e in replayed] == [e.SerializeToString() for e in events[2:]]
        return f"{len(replayed)} events after seq 2"

    def unauthenticated():
        events, code = drive(ulid(), "hi", metadata=[])
        assert code == grpc.StatusCode.UNAUTHENTICATED and not events, code
        return code.name

    return [("stream_reply", stream_reply), ("tool_approved", tool_approved), ("tool_denied", tool_denied),
            ("approval_timeout", approval_timeout), ("abort_run", abort), ("attach_replay", attach_replay),
            ("unauthenticated", unauthenticated)]


def run_cases(label, named_cases):
    """Runs each (name, case) and prints its row (LABEL CASE PASS|FAIL DETAIL); how many failed."""
    failed = 0
    for name, case in named_cases:
        try:
            detail, status = case(), "PASS"
        except Exception as e:  # noqa: BLE001 - every failure is a row
            detail, status = f"{type(e).__name__}: {e}", "FAIL"
            failed += 1
        print(f"{label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--palyrad", required=True)
    p.add_argument("--palyra", required=True)
    p.add_argument("--label", default="grpcio")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        common_pb2, gateway_pb2 = compile_protos(os.path.join(work, "gen"))
        stack = Stack(args.palyrad, args.palyra, work)
        try:
            failed = run_cases(args.label, cases(stack, common_pb2, gateway_pb2))
        finally:
            stack.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
