"""The ``cra`` command line, run as a real process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import EXAMPLES
from tests.e2e._process import cra

ATLAS: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "org.test.cli",
    "version": "1.0.0",
    "name": "CLI",
    "description": "Atlas for command-line tests",
    "actions": [
        {"action_id": "payments.send", "name": "Send", "description": "Send money"},
        {"action_id": "payments.read", "name": "Read", "description": "Read payments"},
    ],
    "policies": [
        {
            "policy_id": "big",
            "type": "deny",
            "actions": ["payments.send"],
            "conditions": {"params": {"amount": {"gt": 1000}}},
            "parameters": {"reason": "Too much money"},
        },
        {"policy_id": "staff", "type": "allow", "actions": ["payments.*"], "conditions": {"roles": ["staff"]}},
    ],
}


@pytest.fixture
def atlas_file(tmp_path: Path) -> Path:
    path = tmp_path / "atlas.json"
    path.write_text(json.dumps(ATLAS))
    return path


def test_validate_reports_the_json_path_of_a_bad_atlas(tmp_path: Path, atlas_file: Path) -> None:
    ok = cra("atlas", "validate", atlas_file, "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["valid"] is True
    broken = {**ATLAS, "policies": [{**ATLAS["policies"][0], "conditions": {"paramz": {}}}]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(broken))
    result = cra("atlas", "validate", bad, "--json")
    assert result.returncode == 2
    assert json.loads(result.stdout)["path"] == "/policies/0/conditions/paramz"


def test_evaluate_one_call(atlas_file: Path) -> None:
    result = cra(
        "evaluate",
        "--atlas",
        atlas_file,
        "--agent",
        "a",
        "--action",
        "payments.send",
        "--role",
        "staff",
        "--params",
        '{"amount": 5000}',
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["decision"], out["policy_id"], out["reason"]) == ("deny", "big", "Too much money")
    explained = cra(
        "evaluate",
        "--atlas",
        atlas_file,
        "--agent",
        "a",
        "--action",
        "payments.send",
        "--role",
        "staff",
        "--params",
        '{"amount": 5}',
        "--explain",
    )
    assert "[allow] staff: applies" in explained.stdout


def test_evaluate_rejects_bad_json_arguments(atlas_file: Path) -> None:
    result = cra("evaluate", "--atlas", atlas_file, "--agent", "a", "--action", "x.y", "--params", "{nope")
    assert result.returncode == 2
    assert "--params" in result.stderr


def test_batch_answers_every_line_in_order_and_denies_bad_lines(tmp_path: Path, atlas_file: Path) -> None:
    lines = [
        {"agent": "a", "roles": ["staff"], "action": "payments.send", "params": {"amount": 10}},
        "{not json",
        {"agent": "a", "roles": ["staff"], "action": "payments.send", "params": {"amount": "10"}},
        {"agent": "a", "action": "payments.read", "params": []},
        {"agent": "a", "roles": ["staff"], "action": "payments.read"},
    ]
    batch = tmp_path / "requests.jsonl"
    batch.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    result = cra("evaluate", "--atlas", atlas_file, "--batch", batch)
    assert result.returncode == 2
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [o["decision"] for o in out] == ["allow", "deny", "deny", "deny", "allow"]
    assert [o["policy_id"] for o in out] == ["staff", None, "big", None, "staff"]
    assert out[3]["reason"].startswith("line 4: /params")
    assert set(out[0]) == {"decision", "policy_id", "reason"}


def test_resolve_the_golden_request(cra10: Path, tmp_path: Path) -> None:
    golden = cra10 / "conformance" / "golden" / "simple-resolve"
    shutil.copy(golden / "atlas.json", tmp_path / "atlas.json")
    (tmp_path / "context").mkdir()
    (tmp_path / "context" / "overview.md").write_text("# Resources\n")
    trace = tmp_path / "golden.trace.jsonl"
    result = cra("resolve", "--atlas", tmp_path, "--request", golden / "request.json", "--trace", trace)
    assert result.returncode == 0, result.stderr
    resolution = json.loads(result.stdout)
    assert resolution["decision"]["type"] == "partial"
    assert [d["action_id"] for d in resolution["denied_actions"]] == ["resource.delete"]
    assert cra("trace", "verify", trace).returncode == 0


def _session_trace(tmp_path: Path, atlas_file: Path) -> Path:
    request = {
        "carp_version": "1.0",
        "request_id": "01936f0e-0000-7000-8000-000000000001",
        "timestamp": "2025-01-02T03:04:05Z",
        "operation": "resolve",
        "requester": {"agent_id": "a", "session_id": "01936f0e-0000-7000-8000-000000000002"},
        "task": {"goal": "pay the invoices"},
    }
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    trace = tmp_path / "session.trace.jsonl"
    result = cra("resolve", "--atlas", atlas_file, "--request", path, "--role", "staff", "--trace", trace)
    assert result.returncode == 0, result.stderr
    return trace


def test_trace_verify_names_the_first_failure(tmp_path: Path, atlas_file: Path) -> None:
    trace = _session_trace(tmp_path, atlas_file)
    ok = cra("trace", "verify", trace, "--json")
    assert (ok.returncode, json.loads(ok.stdout)["valid"]) == (0, True)

    events = [json.loads(line) for line in trace.read_text().splitlines()]
    events[2]["payload"]["result"] = "allow" if events[2]["payload"]["result"] == "deny" else "deny"
    tampered = tmp_path / "tampered.trace.jsonl"
    tampered.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert cra("trace", "replay", tampered, "--atlas", atlas_file).returncode == 1
    bad = cra("trace", "verify", tampered, "--json")
    assert bad.returncode == 1
    assert {k: json.loads(bad.stdout)[k] for k in ("valid", "error", "index")} == {
        "valid": False,
        "error": "hash_mismatch",
        "index": 2,
    }

    garbage = tmp_path / "garbage.trace.jsonl"
    garbage.write_text(trace.read_text() + "{oops\n")
    broken = cra("trace", "verify", garbage, "--json")
    assert broken.returncode == 1
    assert json.loads(broken.stdout)["valid"] is False


def test_trace_replay_and_diff(tmp_path: Path, atlas_file: Path) -> None:
    trace = _session_trace(tmp_path, atlas_file)
    same = cra("trace", "replay", trace, "--atlas", atlas_file, "--json")
    assert same.returncode == 0, same.stdout
    assert json.loads(same.stdout)["identical"] is True

    stricter = tmp_path / "stricter.json"
    stricter.write_text(json.dumps({**ATLAS, "policies": ATLAS["policies"][:1]}))
    changed = cra("trace", "replay", trace, "--atlas", stricter, "--json")
    assert changed.returncode == 1
    assert json.loads(changed.stdout)["different"] == 2

    other = tmp_path / "other"
    other.mkdir()
    second = _session_trace(other, atlas_file)
    equal = cra("trace", "diff", trace, second, "--json")
    assert (equal.returncode, json.loads(equal.stdout)["compatibility"]) == (0, "identical")


def test_missing_files_are_clear_errors(tmp_path: Path) -> None:
    result = cra("trace", "verify", tmp_path / "nope.jsonl")
    assert result.returncode == 2
    assert "no such file" in result.stderr


@pytest.mark.parametrize("name", ["customer-support", "devops", "data-analytics", "code-sandbox"])
def test_example_atlases_validate_lint_clean_and_pass_their_tests(name: str) -> None:
    path = EXAMPLES / name
    assert cra("atlas", "validate", path).returncode == 0
    lint = cra("atlas", "lint", path, "--json")
    assert lint.returncode == 0, lint.stdout
    assert json.loads(lint.stdout)["findings"] == []
    tests = cra("atlas", "test", path, "--json")
    assert tests.returncode == 0, tests.stdout
    assert json.loads(tests.stdout)["passed"] > 0


def test_lint_reports_findings(tmp_path: Path) -> None:
    atlas = {
        **ATLAS,
        "policies": [
            {"policy_id": "no-send", "type": "deny", "actions": ["payments.send"]},
            {"policy_id": "send", "type": "allow", "actions": ["payments.send"], "priority": 10},
            {"policy_id": "ghost", "type": "allow", "actions": ["refunds.*"]},
        ],
    }
    path = tmp_path / "atlas.json"
    path.write_text(json.dumps(atlas))
    result = cra("atlas", "lint", path, "--json")
    assert result.returncode == 1
    codes = {f["code"] for f in json.loads(result.stdout)["findings"]}
    assert codes == {"shadowed", "priority_conflict", "unmatched_pattern", "ungrantable_action"}


def test_demo_runs_and_its_trace_verifies(tmp_path: Path) -> None:
    out = tmp_path / "demo.trace.jsonl"
    result = cra("demo", "--out", out, "--data-dir", tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    for expected in ("needs approval", "rate_limit_exceeded", "budget_exceeded", "hash chain verified"):
        assert expected in result.stdout
    assert cra("trace", "verify", out).returncode == 0
    assert cra("trace", "replay", out, "--atlas", EXAMPLES / "customer-support").returncode == 0


def test_version_is_the_installed_distributions() -> None:
    import tomllib
    from importlib.metadata import version

    declared = tomllib.loads((EXAMPLES.parents[1] / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    result = cra("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"cra {declared}\n"
    assert version("cra") == declared


def test_evaluate_denies_arguments_the_actions_schema_refuses() -> None:
    """Issue #12, finding 3: ``cra evaluate`` checks ``parameters_schema`` as execute does."""
    result = cra(
        "evaluate",
        "--atlas",
        EXAMPLES / "customer-support",
        "--agent",
        "support-bot",
        "--role",
        "agent",
        "--action",
        "refund.create",
        "--params",
        '{"order_id": "42", "amount": 2500}',
        "--json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["decision"], out["reason_code"], out["details"]) == (
        "deny",
        "invalid_parameters",
        {"path": "/currency"},
    )
