"""Executors may add facts to their trace event, never replace its standard keys."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from cra import ManualClock, Resolver, SeededIds
from cra.runtime.execution import Reported

ATLAS = {
    "atlas_version": "1.0",
    "atlas_id": "org.test.reported",
    "version": "1.0.0",
    "name": "Reported",
    "description": "One action whose executor reports facts",
    "actions": [{"action_id": "job.run", "name": "Run", "description": "Run a job"}],
    "policies": [{"policy_id": "allow", "type": "allow"}],
}


def _run(result: Any) -> tuple[dict[str, Any], list[Any]]:
    return _call(lambda args: result)


def _call(executor: Callable[[dict[str, Any]], Any]) -> tuple[dict[str, Any], list[Any]]:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    r = Resolver(clock=clock, ids=SeededIds(1, clock))
    r.load_atlas(ATLAS)
    r.register_executor("job.run", executor)
    sid = r.create_session("bot", "Run the job")
    n = itertools.count()

    def req(operation: str, **extra: Any) -> dict[str, Any]:
        return {
            "carp_version": "1.0",
            "request_id": f"00000000-0000-7000-8000-{next(n):012d}",
            "timestamp": "2026-01-01T00:00:00Z",
            "operation": operation,
            "requester": {"agent_id": "bot", "session_id": sid},
            "task": {"goal": "Run the job"},
            **extra,
        }

    rid = r.resolve(req("resolve"))["resolution_id"]
    execution = {"resolution_id": rid, "action_id": "job.run", "parameters": {}}
    return r.execute(req("execute", execution=execution)), r.get_trace(sid)


def test_reported_facts_join_the_executed_payload() -> None:
    response, trace = _run(Reported({"done": True}, trace={"job": {"steps": 3}}))
    assert response["result"] == {"done": True}
    (executed,) = [e for e in trace if e.event_type == "action.executed"]
    assert executed.payload["job"] == {"steps": 3}
    assert executed.payload["action_id"] == "job.run"


@pytest.mark.parametrize("key", ["action_id", "result_hash", "duration_ms", "error_code"])
def test_facts_may_not_replace_standard_keys(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Reported({}, trace={key: "forged"})


def test_facts_that_are_not_json_fail_the_call() -> None:
    response, trace = _run(Reported({"done": True}, trace={"job": {1, 2}}))
    assert response["status"] == "error"
    assert response["error"]["code"] == "invalid_result"
    assert not [e for e in trace if e.event_type == "action.executed"]


def test_an_executors_os_error_is_told_without_the_hosts_file_names() -> None:
    """Issue #12, finding 18: executor errors revealed host paths such as the sandbox's scratch directory."""

    def failing(args: dict[str, Any]) -> Any:
        raise PermissionError(13, "Permission denied", "/var/cra-sandbox-secret/out.txt", None, "/srv/other")

    response, trace = _call(failing)
    assert response["error"] == {"code": "executor_error", "message": "PermissionError: Permission denied"}
    (failed,) = [e for e in trace if e.event_type == "action.failed"]
    assert "/var" not in failed.payload["error_message"]
    assert "/srv" not in failed.payload["error_message"]
