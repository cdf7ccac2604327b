"""Atlas test files: their format, and that failures are reported, not hidden."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cra import AtlasError, load_atlas
from cra.runtime.atlas_tests import load_tests, parse_tests, run_tests

ATLAS: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "org.test.cases",
    "version": "1.0.0",
    "name": "Cases",
    "description": "Atlas tests",
    "actions": [{"action_id": "api.call", "name": "Call", "description": "Call"}],
    "policies": [
        {
            "policy_id": "limit",
            "type": "rate_limit",
            "actions": ["api.*"],
            "parameters": {"max_calls": 1, "window_seconds": 10},
        },
        {"policy_id": "allow", "type": "allow", "actions": ["api.*"], "conditions": {"roles": ["user"]}},
    ],
}


def test_steps_share_counters_and_cases_do_not(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "limits.yaml").write_text(
        """
cases:
  - name: second call in the window is limited, third after it is not
    now: 2025-02-03T04:05:06Z
    steps:
      - request: {agent: a, roles: [user], action: api.call}
        expect: {decision: allow, policy_id: allow}
      - at: 5
        request: {agent: a, roles: [user], action: api.call}
        expect: {decision: deny, reason_code: rate_limit_exceeded, retry_after: 5}
      - at: 10
        request: {agent: a, roles: [user], action: api.call}
        expect: {decision: allow}
  - name: a fresh case starts with empty counters
    request: {agent: a, roles: [user], action: api.call}
    expect: {decision: allow}
"""
    )
    cases = load_tests(tmp_path)
    assert [len(c.steps) for c in cases] == [3, 1]
    assert all(r.passed for r in run_tests(load_atlas(ATLAS), cases))


def test_a_wrong_expectation_fails_with_a_message() -> None:
    cases = parse_tests(
        "inline.json",
        {"cases": [{"name": "n", "request": {"agent": "a", "action": "api.call"}, "expect": {"decision": "allow"}}]},
    )
    [result] = run_tests(load_atlas(ATLAS), cases)
    assert not result.passed
    assert "expected decision 'allow', got 'deny'" in result.failures[0]


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ({}, "/cases"),
        ({"cases": [{"name": "n", "request": {"agent": "a", "action": "x"}}]}, "/cases/0"),
        (
            {"cases": [{"name": "n", "request": {"agent": "a"}, "expect": {"decision": "allow"}}]},
            "/cases/0/request/action",
        ),
        (
            {"cases": [{"name": "n", "request": {"agent": "a", "action": "x"}, "expect": {"decision": "maybe"}}]},
            "/cases/0/expect/decision",
        ),
    ],
)
def test_malformed_test_files_name_the_path(document: Any, path: str) -> None:
    with pytest.raises(AtlasError) as info:
        parse_tests("t.json", document)
    assert info.value.path == path
    assert info.value.source == "t.json"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("dup.yaml", "cases: []\ncases: []\n", "duplicate key 'cases'"),
        ("dup.json", '{"cases": [], "cases": []}', "duplicate key 'cases'"),
        ("bad.yaml", "cases: [\n", "invalid YAML"),
        ("latin.yaml", "cases: caf\xe9\n", "not UTF-8"),
    ],
)
def test_test_files_are_read_strictly(tmp_path: Path, name: str, content: str, reason: str) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / name).write_bytes(content.encode("latin-1"))
    with pytest.raises(AtlasError, match=reason):
        load_tests(tmp_path)
