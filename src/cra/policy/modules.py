"""``wasm`` policies: a decision handed to a WebAssembly module, which may deny but never grant.

The core knows modules only through these types. A host that runs WebAssembly
(``cra.sandbox.policy_module``) supplies a :data:`ModuleLoader` to
``compile_atlas``; without one, an atlas with a ``wasm`` policy does not load.

A ``wasm`` policy sits in the deny phase. When its action patterns and
conditions match, the module is called with :func:`module_request`. If it
answers ``deny``, or fails in any way (a trap, out of fuel, a bad pointer, bad
JSON, a wrong shape), the call is denied by that policy with the module's
reason. If it answers ``allow``, the policy does not apply and evaluation goes
on: a module can only take permissions away. At resolve time, when no
arguments are known yet, the policy is deferred like a condition on ``params``.

Each call runs under :class:`ModuleLimits`: fuel, a memory cap and a wall-clock
deadline. The core only carries them; the host enforces them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

from cra.policy.decision import EvalRequest
from cra.protocol.canonical import canonical_json

__all__ = [
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_FUEL",
    "DEFAULT_MEMORY_MB",
    "MAX_DEADLINE_MS",
    "MAX_FUEL",
    "MAX_MEMORY_MB",
    "ModuleAnswer",
    "ModuleEvaluator",
    "ModuleLimits",
    "ModuleLoader",
    "module_request",
]

# The limits of a module call: what a wasm policy gets when it sets none, and the most it may set.
# The most fuel fits within the longest deadline: a tight loop of plain instructions burns 0.6 to
# 1.2 million units a millisecond on the reference machine (``tools/bench_policy_module.py``,
# workload ``policy-module-fuel-rate``), so MAX_FUEL takes 85 to 165 ms of MAX_DEADLINE_MS there,
# and DEFAULT_FUEL 1 to 2 ms of DEFAULT_DEADLINE_MS. (With its two cores shared four ways, the
# rate fell to 0.2 to 0.5 million.) Fuel does not bound time by itself: calls into the runtime
# such as ``memory.grow`` burn about 60 thousand units a millisecond. The deadline is the bound.

#: Fuel of a call (``fuel``): about one unit per WebAssembly instruction.
DEFAULT_FUEL: Final = 1_000_000
MAX_FUEL: Final = 100_000_000
#: Linear memory cap (``memory_mb``), in MiB.
DEFAULT_MEMORY_MB: Final = 16
MAX_MEMORY_MB: Final = 256
#: Wall-clock deadline of a call, and of the module's instantiation (``deadline_ms``), in milliseconds.
DEFAULT_DEADLINE_MS: Final = 50
MAX_DEADLINE_MS: Final = 500


class ModuleAnswer(NamedTuple):
    """What a module decided: ``failure`` names what went wrong, or is None when it answered."""

    allow: bool
    reason: str
    failure: str | None = None


class ModuleLimits(NamedTuple):
    """The per-call limits of one ``wasm`` policy (its ``fuel``, ``memory_mb`` and ``deadline_ms`` parameters).

    A call that runs past ``deadline_ms`` milliseconds of wall-clock time, or out of ``fuel``, is a failure."""

    fuel: int
    memory_bytes: int
    deadline_ms: int = DEFAULT_DEADLINE_MS


#: A loaded module: canonical JSON request in, answer out. It must be a pure function of the request.
ModuleEvaluator = Callable[[bytes], ModuleAnswer]

#: Turns a module's bytes (binary or WAT text) and limits into an evaluator, raising ``PolicyError`` if it cannot.
ModuleLoader = Callable[[bytes, ModuleLimits], ModuleEvaluator]


def module_request(req: EvalRequest) -> bytes:
    """The request a module reads: the call as canonical JSON (sorted keys, no whitespace)."""
    return canonical_json(
        {
            "action": req.action,
            "agent": req.agent,
            "roles": sorted(req.roles),
            "risk_tier": req.risk_tier,
            "params": dict(req.params) if req.params is not None else None,
            "context": dict(req.context),
            "tenant": req.tenant_id,
            "session": req.session_id,
            "now": req.now.isoformat().replace("+00:00", "Z") if req.now is not None else None,
        }
    ).encode("utf-8")
