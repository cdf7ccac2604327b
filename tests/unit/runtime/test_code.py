"""Code runs as requests: limits, arguments of code.execute, and what a result reports."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cra.errors import ValidationError
from cra.runtime.code import CEILING, CodeExecutor, CodeResult, CodeRun, Limits, check_file_path
from cra.runtime.execution import Reported


class RecordingSandbox:
    """A stand-in for the real sandbox: it records the request and answers with a fixed result."""

    def __init__(self, result: CodeResult) -> None:
        self.result = result
        self.requests: list[CodeRun] = []

    def run(self, request: CodeRun) -> CodeResult:
        self.requests.append(request)
        return self.result

    def warming(self) -> str | None:
        return None


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"timeout_s": 0}, "/limits/timeout_s"),
        ({"timeout_s": 301}, "/limits/timeout_s"),
        ({"timeout_s": float("nan")}, "/limits/timeout_s"),
        ({"memory_mb": 1.5}, "/limits/memory_mb"),
        ({"memory_mb": True}, "/limits/memory_mb"),
        ({"fuel": "many"}, "/limits/fuel"),
        ({"fuel": 10**14}, "/limits/fuel"),
        ({"output_bytes": -1}, "/limits/output_bytes"),
        ({"cpu": 1}, "/limits/cpu"),
    ],
)
def test_bad_limits_name_the_field(value: dict[str, object], path: str) -> None:
    with pytest.raises(ValidationError) as err:
        Limits.from_json(value, "/limits")
    assert err.value.path == path


def test_limits_not_given_come_from_the_base() -> None:
    base = Limits(timeout_s=1.0, memory_mb=64)
    limits = Limits.from_json({"fuel": 1000}, base=base)
    assert (limits.timeout_s, limits.memory_mb, limits.fuel) == (1.0, 64, 1000)
    assert Limits.from_json(limits.to_json()) == limits


@pytest.mark.parametrize(
    "name", ["", "/abs", "../up", "a/../b", "a//b", "./a", "a/", "nul\x00", "back\\slash", "x" * 1025]
)
def test_file_paths_outside_the_scratch_directory_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as err:
        check_file_path(name, "/files/x")
    assert err.value.path == "/files/x"


@given(st.lists(st.text(alphabet="abcXYZ019_-.", min_size=1, max_size=8), min_size=1, max_size=4))
def test_relative_paths_without_dot_parts_are_accepted(parts: list[str]) -> None:
    name = "/".join(parts)
    if any(p in (".", "..") for p in parts):
        with pytest.raises(ValidationError):
            check_file_path(name, "")
    else:
        assert check_file_path(name, "") == name


def test_a_run_refuses_bad_seeds_and_paths() -> None:
    with pytest.raises(ValidationError, match="/seed"):
        CodeRun("pass", seed=-1)
    with pytest.raises(ValidationError, match="/seed"):
        CodeRun("pass", seed=2**64)
    with pytest.raises(ValidationError, match="/files/~1etc~1passwd"):
        CodeRun("pass", files={"/etc/passwd": b""})


def _result(**kw: object) -> CodeResult:
    base: dict[str, object] = {"reason": "ok", "exit_code": 0, "stdout": b"hi\n", "fuel_used": 10, "duration_ms": 1.0}
    return CodeResult(**(base | kw))  # type: ignore[arg-type]


def test_the_digest_covers_what_was_produced_but_not_how_long_it_took() -> None:
    assert _result(duration_ms=1.0).digest() == _result(duration_ms=99.0).digest()
    assert _result().digest() != _result(stdout=b"ho\n").digest()
    assert _result().digest() != _result(files={"a": b"1"}).digest()
    assert _result().digest() != _result(reason="exit_code", exit_code=1).digest()


def test_results_decode_bad_utf8_without_failing() -> None:
    shown = _result(stdout=b"\xff ok", files={"b.bin": b"\x00\xff"}).to_json()
    assert shown["stdout"] == "\ufffd ok"
    assert base64.b64decode(shown["files"]["b.bin"]) == b"\x00\xff"
    assert shown["ok"] is True


def test_the_executor_runs_what_the_arguments_ask_within_the_defaults() -> None:
    sandbox = RecordingSandbox(_result())
    executor = CodeExecutor(sandbox, defaults=Limits(timeout_s=2.0))
    files = {"in/data.txt": base64.b64encode(b"payload").decode()}
    reported = executor({"code": "print(1)", "seed": 7, "files": files, "limits": {"memory_mb": 64}})
    assert isinstance(reported, Reported)
    (request,) = sandbox.requests
    assert request.code == "print(1)"
    assert request.seed == 7
    assert request.files == {"in/data.txt": b"payload"}
    assert (request.limits.timeout_s, request.limits.memory_mb) == (2.0, 64)
    facts = reported.trace["sandbox"]
    assert facts["code_sha256"] == request.code_sha256
    assert facts["limits"] == request.limits.to_json()
    assert facts["output_sha256"] == sandbox.result.digest()
    assert (facts["reason"], facts["exit_code"], facts["seed"]) == ("ok", 0, 7)
    assert reported.result == sandbox.result.to_json()


@pytest.mark.parametrize(
    ("arguments", "path"),
    [
        ({}, "/code"),
        ({"code": "x", "shell": True}, "/shell"),
        ({"code": "x", "files": []}, "/files"),
        ({"code": "x", "files": {"a": 1}}, "/files/a"),
        ({"code": "x", "files": {"a": "!!!"}}, "/files/a"),
        ({"code": "x", "files": {"../a": ""}}, "/files/..~1a"),
        # Issue #12, finding 18: a file that is also a directory of other files was an executor_error.
        ({"code": "x", "files": {"a": "", "a/b": ""}}, "/files/a"),
        ({"code": "x", "files": {"d/e/f": "", "d/e": ""}}, "/files/d~1e"),
        ({"code": "x", "filename": "job.py", "files": {"job.py/x": ""}}, "/filename"),
        ({"code": "x", "limits": {"timeout_s": 10}}, "/limits/timeout_s"),
        ({"code": 3}, "/code"),
    ],
)
def test_bad_arguments_name_the_argument_and_nothing_runs(arguments: dict[str, object], path: str) -> None:
    sandbox = RecordingSandbox(_result())
    executor = CodeExecutor(sandbox, ceiling=Limits(timeout_s=5.0, memory_mb=512))
    with pytest.raises(ValidationError) as err:
        executor(arguments)
    assert err.value.path == path
    assert sandbox.requests == []


def test_defaults_beyond_the_ceiling_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="ceiling"):
        CodeExecutor(RecordingSandbox(_result()), defaults=Limits(timeout_s=10), ceiling=Limits(timeout_s=5))
    assert Limits().within(CEILING)


@pytest.mark.parametrize(
    ("files", "limits", "path", "reason"),
    [
        ({"/".join(["d"] * 65): b""}, Limits(), "/files/" + "~1".join(["d"] * 65), "nested deeper than 64"),
        ({f"f{i}": b"" for i in range(11)}, Limits(disk_entries=10), "/files", "11 entries, over disk_entries"),
        ({"a/b": b"", "a/c": b"", "d": b""}, Limits(disk_entries=3), "/files", "4 entries, over disk_entries"),
        ({"big": b"x" * 101}, Limits(disk_bytes=100), "/files", "101 bytes, over disk_bytes"),
    ],
)
def test_inputs_that_alone_pass_the_scratch_bounds_are_refused(
    files: dict[str, bytes], limits: Limits, path: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as info:
        CodeRun("pass", files=files, limits=limits)
    assert info.value.path == path
    assert reason in info.value.reason
