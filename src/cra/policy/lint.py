"""Static checks of an atlas's policies: what will surprise its authors.

Findings, by code:

* ``invalid`` (error) - the atlas does not load or compile; nothing else is checked.
* ``shadowed`` - a policy that can never decide, for any declared action it
  names, because an unconditional policy evaluated before it always decides first.
* ``ungrantable_action`` - a declared action that no allow policy can ever grant.
* ``unmatched_pattern`` - an action pattern that matches no declared action.
* ``priority_conflict`` - an allow with a higher priority than a deny that covers
  the same actions: priority orders policies *within* a phase, and deny is
  always evaluated before allow, so the allow cannot override it.
* ``priority_tie`` - two deny or two require_approval policies with the same
  priority and overlapping actions: which one decides (and so the reason or the
  approver roles) depends on declaration order.
* ``broad_allow`` - an allow of every action with no conditions.
* ``matches_nothing`` - a policy with an empty ``actions`` list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cra.errors import AtlasError
from cra.policy.compiler import CompiledPolicy, Rule, compile_atlas
from cra.policy.modules import ModuleLoader
from cra.protocol.atlas import Atlas

__all__ = ["Finding", "lint_atlas"]


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    severity: str  # "error" | "warning"
    path: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "path": self.path, "message": self.message}


def _path(rule: Rule) -> str:
    return f"/policies/{rule.index}"


def lint_atlas(atlas: Atlas, modules: ModuleLoader | None = None) -> list[Finding]:
    """Every finding for ``atlas``, in a stable order (by path, then code); ``modules`` loads its wasm policies."""
    try:
        compiled = compile_atlas(atlas, modules)
    except AtlasError as exc:
        return [Finding("invalid", "error", exc.path, exc.reason)]
    findings: list[Finding] = []
    declared = [a.action_id for a in atlas.actions]
    explicit = [r for r in compiled.rules if not r.implicit]

    for rule in explicit:
        if rule.patterns is not None and not rule.patterns:
            findings.append(Finding("matches_nothing", "warning", _path(rule), f"{rule.policy_id} lists no actions"))
        for i, pattern in enumerate(rule.patterns or ()):
            if declared and not any(rule.matchers[i](a) for a in declared):
                findings.append(
                    Finding(
                        "unmatched_pattern",
                        "warning",
                        f"{_path(rule)}/actions/{i}",
                        f"pattern {pattern!r} of {rule.policy_id} matches no declared action",
                    )
                )
        if rule.type == "allow" and not rule.conditions and (rule.patterns is None or "*" in rule.patterns):
            findings.append(
                Finding("broad_allow", "warning", _path(rule), f"{rule.policy_id} allows every action to every caller")
            )

    findings.extend(_shadowing(compiled, explicit, declared))
    findings.extend(_priorities(explicit, declared))
    for action in atlas.actions:
        if not _grantable(compiled, action.action_id):
            findings.append(
                Finding(
                    "ungrantable_action",
                    "warning",
                    f"/actions/{action.index}",
                    f"no allow policy can ever grant {action.action_id}",
                )
            )
    return sorted(findings, key=lambda f: (f.path, f.code))


def _grantable(compiled: CompiledPolicy, action: str) -> bool:
    for rule in compiled.rules_for(action):
        if rule.type == "deny" and not rule.conditions:
            return False
        if rule.type == "allow":
            return True
    return False


def _shadowing(compiled: CompiledPolicy, rules: list[Rule], declared: list[str]) -> list[Finding]:
    out = []
    for rule in rules:
        targets = [a for a in declared if rule.applies_to(a)]
        if not targets:
            continue
        blockers: set[str] = set()
        for action in targets:
            blocker = None
            for earlier in compiled.rules_for(action):
                if earlier is rule:
                    break
                if earlier.conditions:
                    continue
                if earlier.type == "deny" or (earlier.type == rule.type and rule.type in ("allow", "require_approval")):
                    blocker = earlier
                    break
            if blocker is None:
                break
            blockers.add(blocker.policy_id)
        else:
            out.append(
                Finding(
                    "shadowed",
                    "warning",
                    _path(rule),
                    f"{rule.policy_id} never decides: {', '.join(sorted(blockers))} always decides first",
                )
            )
    return out


def _overlap(a: Rule, b: Rule, declared: list[str]) -> list[str]:
    return [x for x in declared if a.applies_to(x) and b.applies_to(x)]


def _priorities(rules: list[Rule], declared: list[str]) -> list[Finding]:
    out = []
    for i, a in enumerate(rules):
        for b in rules[i + 1 :]:
            shared = _overlap(a, b, declared)
            if not shared:
                continue
            pair = {a.type, b.type}
            if pair == {"allow", "deny"}:
                allow, deny = (a, b) if a.type == "allow" else (b, a)
                if allow.priority > deny.priority:
                    out.append(
                        Finding(
                            "priority_conflict",
                            "warning",
                            _path(allow),
                            f"{allow.policy_id} has a higher priority than {deny.policy_id}, but deny is always "
                            f"evaluated first, so it cannot override it for {', '.join(shared)}",
                        )
                    )
            elif a.type == b.type and a.type in ("deny", "require_approval") and a.priority == b.priority:
                out.append(
                    Finding(
                        "priority_tie",
                        "warning",
                        _path(b),
                        f"{a.policy_id} and {b.policy_id} share priority {a.priority} on {', '.join(shared)}; "
                        "declaration order decides which one applies",
                    )
                )
    return out
