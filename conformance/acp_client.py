#!/usr/bin/env python3
"""The official Python Agent Client Protocol SDK (`agent-client-protocol` on PyPI) plays the
editor against `palyra acp`: initialize, authenticate, a new session, a streamed prompt, a tool
call allowed once through session/request_permission, a rejection, session/cancel during a
prompt and during a pending permission request, session/list and session/load.

It starts palyrad with the scripted upstream and a paired node serving system.echo (as
grpcio_runs.py does). Prints one row per case; exit status 1 if any case fails."""

import argparse
import asyncio
import os
import sys
import tempfile

from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import AllowedOutcome, DeniedOutcome, RequestPermissionResponse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from grpcio_runs import ADMIN, Stack  # noqa: E402


class Editor:
    """The client side: collects updates; answers permission requests as `self.answer` says
    ("allow-once", "reject-once", or "wait": answered cancelled once the prompt is cancelled)."""

    def __init__(self):
        self.updates = []
        self.answer = "allow-once"
        self.asked = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def request_permission(self, session_id, tool_call, options, **kwargs):
        self.asked.set()
        assert {o.kind for o in options} == {"allow_once", "allow_always", "reject_once", "reject_always"}
        if self.answer == "wait":
            await self.cancelled.wait()
            return RequestPermissionResponse(outcome=DeniedOutcome(outcome="cancelled"))
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id=self.answer))

    async def session_update(self, session_id, update, **kwargs):
        self.updates.append(update)

    def text(self):
        return "".join(u.content.text for u in self.updates
                       if getattr(u, "session_update", "") == "agent_message_chunk")

    def kinds(self):
        return [u.session_update for u in self.updates]


async def cases(palyra, grpc, label):
    editor = Editor()
    env = dict(os.environ, PALYRA_TOKEN=ADMIN, PALYRA_GRPC=grpc)
    failed = 0

    def row(name, status, detail):
        print(f"{label:<10} {name:<18} {status:<5} {str(detail)[:90]}", flush=True)

    async with spawn_agent_process(lambda _agent: editor, palyra, "acp", env=env) as (conn, _proc):
        state = {}

        async def initialize():
            r = await conn.initialize(protocol_version=PROTOCOL_VERSION)
            assert r.protocol_version == 1 and r.agent_capabilities.load_session, r
            assert r.auth_methods[0].id == "palyra-token"
            return f"protocol {r.protocol_version}, agent {r.agent_info.name}"

        async def authenticate():
            await conn.authenticate(method_id="palyra-token")
            return "palyra-token accepted"

        async def new_session():
            s = await conn.new_session(cwd="/tmp/project", mcp_servers=[])
            state["session"] = s.session_id
            return s.session_id

        async def prompt():
            editor.updates.clear()
            r = await conn.prompt(session_id=state["session"], prompt=[text_block("hello acp")])
            assert r.stop_reason == "end_turn", r
            assert editor.text() == "You said: hello acp", editor.text()
            return f"{len(editor.updates)} updates, {editor.text()!r}"

        async def permission_allow():
            editor.updates.clear()
            editor.answer = "allow-once"
            r = await conn.prompt(session_id=state["session"],
                                  prompt=[text_block('use [[tool:system_echo {"text":"acp"}]]')])
            assert r.stop_reason == "end_turn", r
            kinds = editor.kinds()
            assert "tool_call" in kinds and "tool_call_update" in kinds, kinds
            done = [u for u in editor.updates if getattr(u, "session_update", "") == "tool_call_update"
                    and u.status == "completed"]
            assert done and done[0].raw_output == {"text": "acp"}, done
            assert 'said: {"text":"acp"}' in editor.text(), editor.text()
            return f"tool_call -> completed {done[0].raw_output}"

        async def permission_reject():
            editor.updates.clear()
            editor.answer = "reject-once"
            r = await conn.prompt(session_id=state["session"],
                                  prompt=[text_block('use [[tool:system_echo {"text":"no"}]]')])
            failed_updates = [u for u in editor.updates if getattr(u, "session_update", "") == "tool_call_update"
                              and u.status == "failed"]
            assert r.stop_reason == "end_turn" and failed_updates, (r, editor.kinds())
            return "tool_call -> failed (rejected in the editor)"

        async def cancel_prompt():
            editor.updates.clear()
            task = asyncio.ensure_future(conn.prompt(
                session_id=state["session"], prompt=[text_block("slow [[slow:200]] " + "w " * 40)]))
            while not editor.updates:
                await asyncio.sleep(0.02)
            await conn.cancel(session_id=state["session"])
            r = await asyncio.wait_for(task, 20)
            assert r.stop_reason == "cancelled", r
            return f"stopReason {r.stop_reason} after {len(editor.updates)} updates"

        async def cancel_permission():
            editor.updates.clear()
            editor.answer = "wait"
            editor.asked.clear()
            editor.cancelled.clear()
            task = asyncio.ensure_future(conn.prompt(
                session_id=state["session"], prompt=[text_block('use [[tool:system_echo {"text":"w"}]]')]))
            await asyncio.wait_for(editor.asked.wait(), 20)
            await conn.cancel(session_id=state["session"])
            editor.cancelled.set()
            r = await asyncio.wait_for(task, 20)
            assert r.stop_reason == "cancelled", r
            return "pending permission answered cancelled; stopReason cancelled"

        async def list_sessions():
            r = await conn.list_sessions()
            ids = [s.session_id for s in r.sessions]
            assert state["session"] in ids, ids
            mine = next(s for s in r.sessions if s.session_id == state["session"])
            assert mine.cwd == "/tmp/project", mine
            return f"{len(ids)} sessions"

        async def load_session():
            editor.updates.clear()
            await conn.load_session(cwd="/tmp/project", session_id=state["session"], mcp_servers=[])
            kinds = editor.kinds()
            assert kinds.count("user_message_chunk") >= 5, kinds
            assert "You said: hello acp" in editor.text(), editor.text()
            return f"replayed {kinds.count('user_message_chunk')} turns"

        for name, case in [("initialize", initialize), ("authenticate", authenticate),
                           ("new_session", new_session), ("prompt", prompt),
                           ("permission_allow", permission_allow), ("permission_reject", permission_reject),
                           ("cancel_prompt", cancel_prompt), ("cancel_permission", cancel_permission),
                           ("list_sessions", list_sessions), ("load_session", load_session)]:
            try:
                detail, status = await asyncio.wait_for(case(), 60), "PASS"
            except Exception as e:  # noqa: BLE001 - every failure is a row
                detail, status = f"{type(e).__name__}: {e}", "FAIL"
                failed += 1
            row(name, status, detail)
    return failed


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--palyrad", required=True)
    p.add_argument("--palyra", required=True)
    p.add_argument("--label", default="acp-sdk")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(args.palyrad, args.palyra, work)
        try:
            failed = asyncio.run(cases(args.palyra, stack.grpc, args.label))
        finally:
            stack.close()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
