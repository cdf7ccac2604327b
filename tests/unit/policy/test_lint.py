"""Static checks of atlases: each finding, and silence on a clean atlas."""

from __future__ import annotations

from typing import Any

import pytest

from cra.policy.lint import lint_atlas
from cra.protocol.atlas import parse_atlas

ACTIONS = [
    {"action_id": "doc.read", "name": "Read", "description": "Read"},
    {"action_id": "doc.delete", "name": "Delete", "description": "Delete"},
]


def findings(*policies: dict[str, Any]) -> set[tuple[str, str]]:
    atlas = parse_atlas(
        {
            "atlas_version": "1.0",
            "atlas_id": "org.test.lint",
            "version": "1.0.0",
            "name": "Lint",
            "description": "Lint",
            "actions": ACTIONS,
            "policies": list(policies),
        }
    )
    return {(f.code, f.path) for f in lint_atlas(atlas)}


READ = {"policy_id": "read", "type": "allow", "actions": ["doc.read"], "conditions": {"roles": ["r"]}}
DELETE = {"policy_id": "delete", "type": "allow", "actions": ["doc.delete"], "conditions": {"roles": ["admin"]}}


def test_a_clean_atlas_has_no_findings() -> None:
    guard = {"policy_id": "guard", "type": "deny", "actions": ["*.delete"], "conditions": {"not_roles": ["admin"]}}
    assert findings(READ, DELETE, guard) == set()


def test_unconditional_deny_shadows_later_policies_and_makes_the_action_ungrantable() -> None:
    deny = {"policy_id": "never", "type": "deny", "actions": ["doc.delete"]}
    assert findings(READ, DELETE, deny) == {("shadowed", "/policies/1"), ("ungrantable_action", "/actions/1")}


def test_an_earlier_unconditional_allow_shadows_a_later_one() -> None:
    first = {"policy_id": "first", "type": "allow", "actions": ["doc.*"], "priority": 5}
    second = {"policy_id": "second", "type": "allow", "actions": ["doc.read"]}
    assert ("shadowed", "/policies/1") in findings(first, second)
    assert ("shadowed", "/policies/0") not in findings(first, second)


def test_allow_priority_above_a_deny_is_reported() -> None:
    deny = {"policy_id": "no", "type": "deny", "actions": ["doc.read"], "conditions": {"roles": ["guest"]}}
    allow = {**READ, "priority": 50}
    assert ("priority_conflict", "/policies/1") in findings(deny, allow, DELETE)
    assert ("priority_conflict", "/policies/1") not in findings(deny, READ, DELETE)


def test_deny_ties_are_reported_but_allow_ties_are_not() -> None:
    a = {"policy_id": "a", "type": "deny", "actions": ["doc.read"], "conditions": {"roles": ["x"]}}
    b = {"policy_id": "b", "type": "deny", "actions": ["doc.*"], "conditions": {"roles": ["y"]}}
    assert ("priority_tie", "/policies/1") in findings(a, b, READ, DELETE)
    assert not any(code == "priority_tie" for code, _ in findings(READ, {**READ, "policy_id": "again"}, DELETE))


@pytest.mark.parametrize(
    ("policy", "code", "path"),
    [
        (
            {"policy_id": "ghost", "type": "allow", "actions": ["refund.*"], "conditions": {"roles": ["r"]}},
            "unmatched_pattern",
            "/policies/2/actions/0",
        ),
        ({"policy_id": "all", "type": "allow"}, "broad_allow", "/policies/2"),
        ({"policy_id": "star", "type": "allow", "actions": ["*"]}, "broad_allow", "/policies/2"),
        ({"policy_id": "none", "type": "deny", "actions": []}, "matches_nothing", "/policies/2"),
    ],
)
def test_single_findings(policy: dict[str, Any], code: str, path: str) -> None:
    assert (code, path) in findings(READ, DELETE, policy)


def test_an_atlas_that_does_not_compile_is_one_error() -> None:
    bad = {"policy_id": "bad", "type": "rate_limit", "actions": ["doc.read"], "parameters": {"max_call": 1}}
    assert findings(READ, bad) == {("invalid", "/policies/1/parameters/max_call")}
