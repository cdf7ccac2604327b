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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from cra.policy.decision import EvalRequest
from cra.protocol.canonical import canonical_json

__all__ = ["ModuleAnswer", "ModuleEvaluator", "ModuleLimits", "ModuleLoader", "module_request"]


class ModuleAnswer(NamedTuple):
    """What a module decided: ``failure`` names what went wrong, or is None when it answered."""

    allow: bool
    reason: str
    failure: str | None = None


class ModuleLimits(NamedTuple):
    """The per-call limits of one ``wasm`` policy (its ``fuel`` and ``memory_mb`` parameters)."""

    fuel: int
    memory_bytes: int


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
