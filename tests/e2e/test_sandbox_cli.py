"""``cra sandbox``, run as a real process: first use builds the sandbox, later uses load it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.e2e._process import cra as run_cra

from cra.sandbox import WasmSandbox, default_cache_dir

RESULT_KEYS = {"ok", "reason", "exit_code", "stdout", "stderr", "fuel_used", "duration_ms"}


def cra(*args: str | Path, cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The command line with its sandbox cache at ``cache`` (else the user's); first builds take a while."""
    return run_cra(*args, env={"CRA_CACHE_DIR": str(cache or default_cache_dir())}, timeout=900)


@pytest.fixture
def script(job: Path, wasm_sandbox: WasmSandbox) -> Path:
    """The job, for the sandbox in the user's cache, which ``wasm_sandbox`` has built (or the test is skipped)."""
    return job


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A job for tests that never reach the sandbox itself."""
    path = tmp_path / "job.py"
    path.write_text(
        "import json, random\n"
        "data = json.load(open('numbers.json'))\n"
        "print(sum(data), random.randrange(10**9))\n"
        "open('report.txt', 'w').write(f'total={sum(data)}')\n"
    )
    (tmp_path / "numbers.json").write_text("[1, 2, 3]")
    return path


@pytest.mark.slow
def test_first_use_builds_the_sandbox_and_later_uses_load_it(tmp_path: Path, job: Path, wasm_builds: None) -> None:
    cache = tmp_path / "empty-cache"
    run = cra("sandbox", "run", job, "--input", job.parent / "numbers.json", "--json", cache=cache)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["stdout"].startswith("6 ")
    # Issue #12, finding 11: a first build on a cold cache shows its progress on the terminal.
    steps = [line for line in run.stderr.splitlines() if line.startswith("building the sandbox")]
    assert len(steps) == 3, run.stderr
    assert "step 1 of 2" in steps[0]
    assert "step 2 of 2" in steps[1]
    assert steps[2].startswith("building the sandbox: step 2 took ")
    assert oct((cache / "sandbox").stat().st_mode & 0o777) == oct(0o700)

    built = json.loads(cra("sandbox", "build", "--json", cache=cache).stdout)
    assert built["built"] is False
    assert Path(built["path"]).is_file()
    record = json.loads((Path(built["path"]).parent / "artifact.json").read_text())
    assert record["key"] == built["key"]
    assert record["build_s"] > 0
    assert record["compile_s"] > 0
    again = cra("sandbox", "run", job, "--input", job.parent / "numbers.json", "--json", cache=cache)
    assert again.returncode == 0, again.stderr
    assert "building the sandbox" not in again.stderr


def test_a_cache_open_to_others_is_refused(tmp_path: Path, job: Path) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    result = cra("sandbox", "run", job, cache=cache)
    assert result.returncode == 2
    assert "writable by others" in result.stderr


def test_run_prints_the_result_as_json_and_writes_outputs(tmp_path: Path, script: Path) -> None:
    out = tmp_path / "out"
    args = ("sandbox", "run", script, "--input", script.parent / "numbers.json", "--seed", "3", "--out", out, "--json")
    result = cra(*args)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) >= RESULT_KEYS
    assert (shown["ok"], shown["reason"], shown["exit_code"]) == (True, "ok", 0)
    assert shown["files"] == ["report.txt"]
    assert (out / "report.txt").read_text() == "total=6"
    same = json.loads(cra(*args).stdout)
    assert (same["stdout"], same["fuel_used"]) == (shown["stdout"], shown["fuel_used"])
    other = json.loads(cra(*args[:5], "--seed", "4", "--json").stdout)
    assert other["stdout"] != shown["stdout"]


def test_plain_output_passes_stdout_and_stderr_through(tmp_path: Path, wasm_sandbox: WasmSandbox) -> None:
    path = tmp_path / "talk.py"
    path.write_text("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    result = cra("sandbox", "run", path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "out\n", "err\n")


@pytest.mark.parametrize(
    ("code", "options", "reason"),
    [
        ("while True: pass\n", ("--timeout", "0.3", "--fuel", "10000000000000"), "timeout"),
        ("while True: pass\n", ("--fuel", "1000000"), "out_of_fuel"),
        ("x = bytearray(10**9)\n", ("--memory", "64"), "memory"),
        ("raise SystemExit(5)\n", (), "exit_code"),
    ],
)
def test_a_run_that_fails_exits_non_zero_and_says_why(
    tmp_path: Path, wasm_sandbox: WasmSandbox, code: str, options: tuple[str, ...], reason: str
) -> None:
    path = tmp_path / "bad.py"
    path.write_text(code)
    result = cra("sandbox", "run", path, *options, "--json")
    assert result.returncode == 1
    shown = json.loads(result.stdout)
    assert (shown["ok"], shown["reason"]) == (False, reason)
    plain = cra("sandbox", "run", path, *options)
    assert plain.returncode == 1
    assert f"sandbox: {reason}" in plain.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--timeout", "0"), "--timeout: must be between"),
        (("--memory", "0"), "--memory: must be between"),
        (("--fuel", "-5"), "--fuel: must be between"),
        (("--seed", "-1"), "--seed: must be an integer"),
        (("--input", "/nonexistent/file"), "no such file or directory"),
    ],
)
def test_bad_options_are_clear_errors(tmp_path: Path, job: Path, options: tuple[str, ...], message: str) -> None:
    unused = tmp_path / "unused-cache"
    result = cra("sandbox", "run", job, *options, "--json", cache=unused)
    assert result.returncode == 2
    assert message in json.loads(result.stdout)["message"]
    assert not unused.exists()  # refused before the sandbox was built or loaded


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    unused = tmp_path / "unused-cache"
    result = cra("sandbox", "run", tmp_path / "nope.py", cache=unused)
    assert result.returncode == 2
    assert "nope.py" in result.stderr
    assert not unused.exists()


def test_build_wasm_writes_the_engine_component(engine_build: dict[str, Any]) -> None:
    assert engine_build["returncode"] == 0, engine_build["stderr"]
    out = Path(engine_build["out"])
    shown = json.loads(engine_build["stdout"])
    assert shown["path"] == str(out)
    assert shown["size_bytes"] == out.stat().st_size
    assert out.read_bytes()[:4] == b"\x00asm"
    assert "cra.runtime.portable" in shown["modules"]


def test_an_out_directory_that_cannot_be_written_is_a_clear_error(tmp_path: Path, script: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output directory should be")
    args = ("sandbox", "run", script, "--input", script.parent / "numbers.json", "--out", blocker)
    result = cra(*args)
    assert result.returncode == 2
    assert "--out" in result.stderr
    assert "Traceback" not in result.stderr
