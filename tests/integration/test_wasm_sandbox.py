"""The WebAssembly sandbox on real wasmtime: what code can do, and that it repeats exactly."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from cra.runtime.code import CodeRun, Limits
from cra.sandbox import WasmSandbox, artifacts
from cra.sandbox.virtual import WALL_CLOCK_BASE_S

WORLD = """
import datetime, json, os, random, secrets, time, uuid
print(json.dumps({
    "random": random.random(),
    "urandom": os.urandom(8).hex(),
    "uuid": str(uuid.uuid4()),
    "token": secrets.token_hex(4),
    "time": time.time(),
    "monotonic": time.monotonic(),
    "now": datetime.datetime.now().isoformat(),
    "listing": os.listdir("."),
    "walk": [[d, f] for d, _, f in os.walk(".")],
}))
open("out/result.txt", "w").write(str(sum(random.randrange(1000) for _ in range(100))))
"""
INPUTS = {"b.txt": b"2", "a.txt": b"1", "out/keep.txt": b"kept", "c/d.txt": b"3"}


def test_a_script_prints_and_its_exit_status_is_reported(wasm_sandbox: WasmSandbox) -> None:
    result = wasm_sandbox.run(CodeRun("print(sum(range(10**6)))"))
    assert result.ok
    assert result.stdout == f"{sum(range(10**6))}\n".encode()
    assert (result.reason, result.exit_code, result.stderr) == ("ok", 0, b"")
    assert result.fuel_used > 0


@pytest.mark.parametrize(("code", "status"), [("import sys; sys.exit(3)", 3), ("raise SystemExit('bye')", 1)])
def test_a_non_zero_exit_is_not_ok(wasm_sandbox: WasmSandbox, code: str, status: int) -> None:
    result = wasm_sandbox.run(CodeRun(code))
    assert (result.ok, result.reason, result.exit_code) == (False, "exit_code", status)


def test_an_uncaught_exception_prints_the_scripts_own_traceback(wasm_sandbox: WasmSandbox) -> None:
    result = wasm_sandbox.run(CodeRun("def f():\n    return 1 / 0\nf()\n", filename="job.py"))
    assert (result.reason, result.exit_code) == ("exit_code", 1)
    lines = result.stderr.decode().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[1].startswith('  File "job.py", line 3')
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert "cra_executor" not in result.stderr.decode()


def test_the_same_code_inputs_and_seed_repeat_byte_for_byte(wasm_sandbox: WasmSandbox) -> None:
    runs = [wasm_sandbox.run(CodeRun(WORLD, files=INPUTS, seed=42)) for _ in range(3)]
    assert all(r.ok for r in runs), runs[0].stderr
    assert len({r.stdout for r in runs}) == 1
    assert len({r.fuel_used for r in runs}) == 1
    assert all(r.files == runs[0].files for r in runs)
    assert set(runs[0].files) == {"out/result.txt"}


def test_another_seed_changes_every_random_source_and_nothing_else(wasm_sandbox: WasmSandbox) -> None:
    one = json.loads(wasm_sandbox.run(CodeRun(WORLD, files=INPUTS, seed=1)).stdout)
    two = json.loads(wasm_sandbox.run(CodeRun(WORLD, files=INPUTS, seed=2)).stdout)
    for key in ("random", "urandom", "uuid", "token"):
        assert one[key] != two[key], key
    assert one["listing"] == two["listing"] == ["a.txt", "b.txt", "c", "out"]
    assert one["walk"] == [[".", ["a.txt", "b.txt"]], ["./c", ["d.txt"]], ["./out", ["keep.txt"]]]


def test_clocks_are_virtual_and_start_in_2024(wasm_sandbox: WasmSandbox) -> None:
    world = json.loads(wasm_sandbox.run(CodeRun(WORLD, files=INPUTS)).stdout)
    assert world["now"].startswith("2024-01-01T00:00:00")
    assert 1_704_067_200 <= world["time"] < 1_704_067_201


def test_sleep_advances_the_virtual_clock_without_waiting(wasm_sandbox: WasmSandbox) -> None:
    code = (
        "import asyncio, time\n"
        "t = time.monotonic(); time.sleep(30); slept = time.monotonic() - t\n"
        "async def main():\n"
        "    t = time.monotonic()\n"
        "    await asyncio.gather(asyncio.sleep(5), asyncio.sleep(10))\n"
        "    return time.monotonic() - t\n"
        "print(round(slept, 3), round(asyncio.run(main()), 3))\n"
    )
    # 45 virtual seconds of sleep under a 5 s deadline: a real sleep could not finish.
    result = wasm_sandbox.run(CodeRun(code, limits=Limits(timeout_s=5.0)))
    assert result.ok, result.stderr
    assert result.stdout == b"30.0 10.0\n"


def test_files_go_in_and_come_back(wasm_sandbox: WasmSandbox) -> None:
    code = (
        "import csv, json\n"
        "rows = list(csv.DictReader(open('data/in.csv')))\n"
        "total = sum(int(r['amount']) for r in rows)\n"
        "json.dump({'total': total}, open('summary.json', 'w'))\n"
        "open('data/in.csv', 'a').write('z,0\\n')\n"
    )
    source = b"name,amount\na,5\nb,7\n"
    result = wasm_sandbox.run(CodeRun(code, files={"data/in.csv": source}))
    assert result.ok, result.stderr
    assert json.loads(result.files["summary.json"]) == {"total": 12}
    assert result.files["data/in.csv"] == source + b"z,0\n"


def test_output_beyond_the_limit_is_dropped_and_flagged(wasm_sandbox: WasmSandbox) -> None:
    code = "import sys\nsys.stdout.write('a' * 100_000)\nsys.stderr.write('b' * 10)\n"
    result = wasm_sandbox.run(CodeRun(code, limits=Limits(output_bytes=50_000)))
    assert result.ok
    assert result.stdout == b"a" * 50_000
    assert result.stdout_truncated
    assert (result.stderr, result.stderr_truncated) == (b"b" * 10, False)


def test_large_writes_arrive_whole(wasm_sandbox: WasmSandbox) -> None:
    result = wasm_sandbox.run(CodeRun("import sys; sys.stdout.write('z' * 300_000); print('!')"))
    assert result.stdout == b"z" * 300_000 + b"!\n"
    assert not result.stdout_truncated


def test_output_files_beyond_their_limit_are_left_out(wasm_sandbox: WasmSandbox) -> None:
    code = "open('small', 'w').write('s' * 10)\nopen('large', 'w').write('L' * 5000)\n"
    result = wasm_sandbox.run(CodeRun(code, limits=Limits(files_bytes=1000)))
    assert result.files == {"small": b"s" * 10}
    assert result.files_truncated


def test_runs_on_several_threads_at_once_stay_apart(wasm_sandbox: WasmSandbox) -> None:
    code = "import random, time\ntime.sleep(1)\nprint(random.random())\n"
    results: dict[int, bytes] = {}

    def run(seed: int) -> None:
        results[seed] = wasm_sandbox.run(CodeRun(code, seed=seed)).stdout

    threads = [threading.Thread(target=run, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = {s: wasm_sandbox.run(CodeRun(code, seed=s)).stdout for s in range(4)}
    assert results == alone
    assert len(set(results.values())) == 4


def test_the_standard_library_modules_a_script_needs_are_there(wasm_sandbox: WasmSandbox) -> None:
    code = (
        "import collections, dataclasses, decimal, fractions, hashlib, itertools, re, sqlite3, statistics, zlib\n"
        "db = sqlite3.connect(':memory:'); db.execute('create table t (x)'); db.execute('insert into t values (41)')\n"
        "print(db.execute('select x + 1 from t').fetchone()[0], hashlib.sha256(b'abc').hexdigest()[:8],"
        " statistics.mean([1, 2, 3]), decimal.Decimal('1.1') + decimal.Decimal('2.2'))\n"
    )
    result = wasm_sandbox.run(CodeRun(code))
    assert result.ok, result.stderr
    assert result.stdout == b"42 ba7816bf 2 3.3\n"


def test_a_module_outside_the_snapshot_fails_to_import_cleanly(wasm_sandbox: WasmSandbox) -> None:
    result = wasm_sandbox.run(CodeRun("import email"))
    assert result.reason == "exit_code"
    assert b"ModuleNotFoundError: No module named 'email'" in result.stderr


class _BuildStarted(Exception):
    """Raised in place of componentize-py: the sandbox chose to build rather than load."""


def test_a_tampered_artifact_is_never_loaded_but_rebuilt(
    tmp_path: Path, wasm_sandbox: WasmSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = wasm_sandbox.prepare()
    cache = tmp_path / "cache"
    copy = cache / "sandbox" / built.key
    shutil.copytree(built.path.parent, copy, ignore=shutil.ignore_patterns(".lock", "build-*"))
    for directory in (cache, cache / "sandbox", copy):
        directory.chmod(0o700)
    assert WasmSandbox(cache).built()  # an intact copy is trusted as it is

    with open(copy / built.path.name, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x00" * 64)
    assert not WasmSandbox(cache).built()

    def build_instead(work: Path) -> Path:
        raise _BuildStarted

    monkeypatch.setattr(artifacts, "_componentize_executor", build_instead)
    with pytest.raises(_BuildStarted):
        WasmSandbox(cache).prepare()


def test_every_timestamp_the_code_can_see_is_virtual(wasm_sandbox: WasmSandbox) -> None:
    """Issue #12, finding 9: a file the code wrote carried the host's real modification time,
    so two runs of the same code and seed printed different things."""
    code = (
        "import os, pathlib, time\n"
        "open('x', 'w').write('1')\n"
        "with open('x') as f:\n    fd_times = os.fstat(f.fileno())\n"
        "seen = [os.stat('x').st_mtime, os.lstat('x').st_atime_ns, fd_times.st_ctime,\n"
        "        pathlib.Path('x').stat().st_mtime, os.path.getmtime('x'),\n"
        "        [entry.stat().st_mtime for entry in os.scandir('.')], os.stat('.').st_mtime]\n"
        "print(time.time(), seen)\n"
    )
    first, second = (wasm_sandbox.run(CodeRun(code, seed=3)) for _ in range(2))
    assert first.ok, first.stderr
    assert first.stdout == second.stdout
    clock, seen = first.stdout.decode().split(" ", 1)
    base = float(WALL_CLOCK_BASE_S)
    assert seen.strip() == repr([base, WALL_CLOCK_BASE_S * 10**9, base, base, base, [base], base])
    assert base <= float(clock) < base + 60


def test_a_background_start_says_it_is_warming_until_ready_and_logs_it(
    wasm_sandbox: WasmSandbox, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #12, finding 11: ``cra serve`` prepared the sandbox silently, and held calls meanwhile.
    (The steps of a cold build are logged through the same progress calls that
    ``tests/e2e/test_sandbox_cli.py`` sees on the terminal.)"""
    caplog.set_level(logging.INFO, logger="cra.sandbox.wasm")
    sandbox = WasmSandbox()  # the cache ``wasm_sandbox`` built: this start only loads
    sandbox.prepare_in_background()
    assert sandbox.warming() is not None  # from the moment the start begins
    sandbox.prepare_in_background()  # a second start does nothing
    deadline = time.monotonic() + 120
    while sandbox.warming() is not None:
        assert time.monotonic() < deadline, "the background start never finished"
        time.sleep(0.01)
    messages = [record.getMessage() for record in caplog.records if record.name == "cra.sandbox.wasm"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("preparing the WebAssembly sandbox")
    assert messages[1].startswith("the WebAssembly sandbox is ready: loaded in ")
    assert sandbox.run(CodeRun("print(6 * 7)")).stdout == b"42\n"
