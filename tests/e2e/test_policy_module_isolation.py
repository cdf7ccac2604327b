"""A slow WebAssembly policy module holds up no one but its own calls (issue #12, finding 4).

A module with ``fuel: 1000000000`` took 2.3 s a call on the event loop and stalled every tenant,
and a module whose start function looped held an atlas upload as long. Module calls now have a
wall-clock deadline (``cra.sandbox.policy_module``), and the service runs the work of a tenant
whose atlases have ``wasm`` policies on threads of its own, one piece of that tenant's work at a
time (``GovernanceService``).

The in-process tests hold a module call open with a gate (a Python ``ModuleLoader`` whose calls
wait for the test), so what must happen while it is held is shown by ordering, not by timing. The
last test runs ``cra serve`` with real hostile modules, one slow and one whose start function loops.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e._process import free_port
from tests.e2e._service import SUPPORT, carp
from tests.e2e.test_crash_restart import Serve

from cra.errors import PolicyError
from cra.policy.decision import Effect
from cra.policy.modules import MAX_FUEL, ModuleAnswer, ModuleEvaluator, ModuleLimits
from cra.runtime.memory import HmacSigner
from cra.runtime.service import GovernanceService, package_of
from cra.server.app import create_app
from cra.server.boot import boot, load_atlas_dirs

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "policy_modules"
#: How long a gated call waits for the test before giving up (only a failing test waits that long).
HOLD_SECONDS = 10.0
SLOW, FAST = "slow-tenant", "fast-tenant"


def module_atlas(atlas_id: str, module: str, **parameters: Any) -> dict[str, Any]:
    """An atlas whose withdrawals a wasm policy guards (``module`` is the package path of its module)."""
    return {
        "atlas_version": "1.0",
        "atlas_id": atlas_id,
        "version": "1.0.0",
        "name": "Guarded withdrawals",
        "description": "A WebAssembly module decides which withdrawals may go ahead",
        "actions": [{"action_id": "vault.withdraw", "name": "Withdraw", "description": "Withdraw from the vault"}],
        "policies": [
            {
                "policy_id": "vault-module",
                "type": "wasm",
                "actions": ["vault.*"],
                "parameters": {"module": module, **parameters},
            },
            {"policy_id": "allow-all", "type": "allow"},
        ],
    }


GUARDED = package_of(module_atlas("org.test.guarded", "modules/gate.wat"), {"modules/gate.wat": "(module)"})


class Gate:
    """A ``ModuleLoader`` whose module calls, and (while ``hold_loads``) loads, wait for the test.

    ``entered`` is released as a call or load begins to wait; ``release`` lets every one go on.
    A call that is let go answers allow. ``most_inside`` is the most calls waiting at once.
    """

    def __init__(self, *, hold_loads: bool = False) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()
        self.hold_loads = hold_loads
        self._lock = threading.Lock()
        self._inside = 0
        self.most_inside = 0

    def _wait(self) -> bool:
        self.entered.release()
        return self.release.wait(timeout=HOLD_SECONDS)

    def loader(self, source: bytes, limits: ModuleLimits) -> ModuleEvaluator:
        if self.hold_loads and not self._wait():
            raise PolicyError("", "the test never released the load")

        def evaluate(request: bytes) -> ModuleAnswer:
            with self._lock:
                self._inside += 1
                self.most_inside = max(self.most_inside, self._inside)
            try:
                if not self._wait():
                    return ModuleAnswer(False, "the test never released the call", "timeout")
                return ModuleAnswer(True, "released")
            finally:
                with self._lock:
                    self._inside -= 1

        return evaluate

    async def wait_entered(self, timeout: float = HOLD_SECONDS) -> bool:
        return await asyncio.to_thread(self.entered.acquire, True, timeout)


@dataclass
class Served:
    service: GovernanceService
    client: httpx.AsyncClient

    async def healthy(self) -> bool:
        r = await self.client.get("/v1/health")
        return r.status_code == 200 and r.json()["status"] == "healthy"

    async def fast_decision(self) -> Effect:
        """A decision for the tenant whose atlas has no modules."""
        _, decision = await self.service.evaluate(
            FAST, action="order.lookup", agent="support-bot", roles=["agent"], params={"order_id": "42"}
        )
        return decision.effect

    async def slow_decision(self) -> tuple[Effect, str]:
        _, decision = await self.service.evaluate(SLOW, action="vault.withdraw", agent="bot", roles=[])
        return decision.effect, decision.reason


def withdraw(args: dict[str, Any]) -> dict[str, Any]:
    return {"withdrawn": args["amount"]}


@asynccontextmanager
async def served(data_dir: Path, gate: Gate) -> AsyncIterator[Served]:
    booted = await boot(data_dir)
    booted.service = service = GovernanceService(
        booted.state,
        signer=HmacSigner(b"k" * 32),
        ledger=booted.ledger,
        modules=gate.loader,
        executors={"vault.withdraw": withdraw},
    )
    try:
        await service.start()
        assert await load_atlas_dirs(service, FAST, [SUPPORT])
        app = create_app(service, booted.state)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cra.test") as client:
            yield Served(service, client)
    finally:
        gate.release.set()
        await booted.close()


def test_a_held_module_call_holds_neither_health_nor_other_tenants(tmp_path: Path) -> None:
    gate = Gate()

    async def main() -> None:
        async with served(tmp_path, gate) as env:
            await env.service.load_atlas(SLOW, GUARDED)
            held = asyncio.ensure_future(env.slow_decision())
            assert await gate.wait_entered(), "the module was never called"
            # The module call is under way and cannot end before the release below.
            assert await env.healthy()
            assert await env.fast_decision() is Effect.ALLOW
            assert not held.done()
            gate.release.set()
            assert await held == (Effect.ALLOW, "Allowed by policy allow-all")

    asyncio.run(main())


def test_a_held_module_call_in_execute_holds_neither_health_nor_other_tenants(tmp_path: Path) -> None:
    gate = Gate()

    async def main() -> None:
        async with served(tmp_path, gate) as env:
            service = env.service
            await service.load_atlas(SLOW, GUARDED)
            session = await service.create_session(SLOW, agent_id="bot", goal="Withdraw 42")
            sid = session.session_id
            resolution = await service.resolve(SLOW, carp("bot", sid))
            execution = {
                "resolution_id": resolution["resolution_id"],
                "action_id": "vault.withdraw",
                "parameters": {"amount": 5},
            }
            held = asyncio.ensure_future(service.execute(SLOW, carp("bot", sid, "execute", execution=execution)))
            assert await gate.wait_entered(), "the module was never called"
            assert await env.healthy()
            assert await env.fast_decision() is Effect.ALLOW
            assert not held.done()
            gate.release.set()
            answer = await held
            assert answer.get("result") == {"withdrawn": 5}, answer
            assert [e.event_type for e in await service.trace(SLOW, sid)].count("action.denied") == 0

    asyncio.run(main())


def test_an_upload_whose_modules_are_loading_holds_neither_health_nor_other_tenants(tmp_path: Path) -> None:
    gate = Gate()

    async def main() -> None:
        async with served(tmp_path, gate) as env:
            gate.hold_loads = True
            upload = asyncio.ensure_future(env.service.load_atlas(SLOW, GUARDED))
            assert await gate.wait_entered(), "the module was never loaded"
            # Compiling the atlas is under way: its module's load cannot end before the release.
            assert await env.healthy()
            assert await env.fast_decision() is Effect.ALLOW
            assert not upload.done()
            gate.hold_loads = False
            gate.release.set()
            assert (await upload).atlas_id == "org.test.guarded"
            assert await env.slow_decision() == (Effect.ALLOW, "Allowed by policy allow-all")

    asyncio.run(main())


def test_a_tenant_runs_one_module_call_at_a_time_even_after_its_caller_left(tmp_path: Path) -> None:
    gate = Gate()

    async def main() -> None:
        async with served(tmp_path, gate) as env:
            await env.service.load_atlas(SLOW, GUARDED)
            first = asyncio.ensure_future(env.slow_decision())
            assert await gate.wait_entered()
            first.cancel()  # a client gone, a request timed out: the call itself cannot be stopped
            second = asyncio.ensure_future(env.slow_decision())
            # The second call waits for the first to end, not for its caller to leave.
            assert not await gate.wait_entered(timeout=0.5)
            gate.release.set()
            assert await second == (Effect.ALLOW, "Allowed by policy allow-all")
            with pytest.raises(asyncio.CancelledError):
                await first
            assert gate.most_inside == 1

    asyncio.run(main())


def test_an_operation_abandoned_during_its_module_call_gives_its_charges_back(tmp_path: Path) -> None:
    gate = Gate()
    manifest = module_atlas("org.test.guarded", "modules/gate.wat")
    manifest["policies"].append(
        {
            "policy_id": "one-withdrawal",
            "type": "rate_limit",
            "actions": ["vault.*"],
            "parameters": {"max_calls": 1, "window_seconds": 3600, "scope": "agent"},
        }
    )

    async def main() -> None:
        async with served(tmp_path, gate) as env:
            service = env.service
            await service.load_atlas(SLOW, package_of(manifest, {"modules/gate.wat": "(module)"}))
            session = await service.create_session(SLOW, agent_id="bot", goal="Withdraw 42")
            sid = session.session_id
            rid = (await service.resolve(SLOW, carp("bot", sid)))["resolution_id"]

            def execute(amount: int) -> dict[str, Any]:
                execution = {"resolution_id": rid, "action_id": "vault.withdraw", "parameters": {"amount": amount}}
                return carp("bot", sid, "execute", execution=execution)

            abandoned = asyncio.ensure_future(service.execute(SLOW, execute(1)))
            assert await gate.wait_entered()
            abandoned.cancel()
            retried = asyncio.ensure_future(service.execute(SLOW, execute(2)))
            gate.release.set()
            # The abandoned call ran on to its end in its thread, consuming the one withdrawal; nothing
            # of it was committed, so the withdrawal went back before the next call was decided.
            answer = await retried
            assert answer.get("result") == {"withdrawn": 2}, answer
            with pytest.raises(asyncio.CancelledError):
                await abandoned
            denied = await service.execute(SLOW, execute(3))
            assert denied["error"]["code"] == "rate_limit_exceeded", denied

    asyncio.run(main())


# -- cra serve, with a real hostile module -----------------------------------------------------------------------

IN_FLIGHT = 8
#: Each call of slow.wat runs until this deadline (its fuel would last seconds).
CALL_DEADLINE_MS = 100


@pytest.mark.slow
def test_cra_serve_answers_health_while_slow_module_calls_are_in_flight(tmp_path: Path) -> None:
    slow = (FIXTURES / "slow.wat").read_text(encoding="utf-8")
    guarded = module_atlas("org.test.slow", "modules/slow.wat", fuel=MAX_FUEL, deadline_ms=CALL_DEADLINE_MS)
    spinning_start = slow.replace(
        "(module", "(module (func $spin (loop $l (drop (memory.grow (i32.const 0))) (br $l))) (start $spin)", 1
    )
    refused = module_atlas("org.test.spins", "modules/spin.wat", fuel=MAX_FUEL)

    async def main() -> None:
        server = Serve(tmp_path / "data", free_port(), tmp_path / "serve.log")
        try:
            await server.healthy()
            headers = {"X-API-Key": server.admin_key()}
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as client:
                r = await client.post(
                    "/v1/atlases", json={"manifest": refused, "files": {"modules/spin.wat": spinning_start}}
                )
                assert r.status_code == 400, r.text
                problem = r.json()
                assert problem["path"] == "/policies/0/parameters/module", problem
                assert "ran past its deadline of 50 ms in its start function" in problem["detail"], problem

                r = await client.post("/v1/atlases", json={"manifest": guarded, "files": {"modules/slow.wat": slow}})
                assert r.status_code == 201, r.text
                body = {"agent": "bot", "action": "vault.withdraw", "params": {"amount": 5}}
                calls = [asyncio.ensure_future(client.post("/v1/evaluate", json=body)) for _ in range(IN_FLIGHT)]
                # The tenant's calls run one at a time, each until its deadline: once the first has
                # answered, the others are still to come, and health has their (IN_FLIGHT - 1) deadlines,
                # about 0.7 s, to answer in. Only a loop they hold misses that: it answers after them all.
                await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
                async with httpx.AsyncClient(base_url=server.url, timeout=60) as other:
                    health = await other.get("/v1/health")
                pending = sum(not call.done() for call in calls)
                assert health.status_code == 200, health.text
                assert pending > 0, "/v1/health answered only after every slow module call"
                for answer in await asyncio.gather(*calls):
                    decision = answer.json()
                    assert answer.status_code == 200, answer.text
                    assert (decision["decision"], decision["reason_code"]) == ("deny", "module_failure"), decision
                    reason = f"the policy module ran past its deadline of {CALL_DEADLINE_MS} ms in evaluate"
                    assert decision["reason"] == reason, decision
        finally:
            code = server.stop()
        assert server.stopped_cleanly(code), server.stderr()

    asyncio.run(main())
