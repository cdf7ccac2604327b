"""Hostile code: every attack ends as a clean, explained result, and the next run is normal.

Each case runs, is checked, and is followed by a canary run in the same
sandbox object, which must print the right answer: the host survived.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cra.runtime.code import CodeResult, CodeRun, Limits
from cra.sandbox import WasmSandbox

TIGHT = Limits(timeout_s=1.0, memory_mb=128, fuel=10**13)


def _then_normal(sandbox: WasmSandbox) -> None:
    canary = sandbox.run(CodeRun("print(sum(range(10)))"))
    assert (canary.reason, canary.stdout) == ("ok", b"45\n")


def _hostile(sandbox: WasmSandbox, code: str, limits: Limits = TIGHT, **kw: object) -> CodeResult:
    result = sandbox.run(CodeRun(code, limits=limits, **kw))  # type: ignore[arg-type]
    assert not result.ok
    _then_normal(sandbox)
    return result


def test_an_infinite_loop_meets_the_deadline(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "while True:\n    pass\n", Limits(timeout_s=0.5, fuel=10**13))
    # The epoch deadline, not the fuel (10**13 would take hours), ended it.
    assert result.reason == "timeout"
    assert result.message == "the code ran past its deadline"
    assert 0 < result.fuel_used < 10**13


def test_an_infinite_loop_runs_out_of_fuel(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "x = 0\nwhile True:\n    x += 1\n", Limits(timeout_s=30, fuel=50_000_000))
    assert result.reason == "out_of_fuel"
    assert result.fuel_used == 50_000_000


def test_a_recursion_bomb_stops_at_the_recursion_limit(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "def f(n):\n    return f(n + 1)\nf(0)\n")
    assert (result.reason, result.exit_code) == ("exit_code", 1)
    assert b"RecursionError" in result.stderr


def test_a_recursion_bomb_past_a_raised_limit_exhausts_the_wasm_stack(wasm_sandbox: WasmSandbox) -> None:
    code = "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)\n"
    result = _hostile(wasm_sandbox, code, Limits(timeout_s=10, fuel=10**13))
    assert result.reason in ("trap", "out_of_fuel")
    assert result.message


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(1500 * 1024 * 1024)",
        "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))",
        "s = 'x'\nwhile True:\n    s = s + s",
    ],
)
def test_a_memory_bomb_hits_the_cap(wasm_sandbox: WasmSandbox, code: str) -> None:
    result = _hostile(wasm_sandbox, code, Limits(timeout_s=10, memory_mb=128, fuel=10**13))
    assert result.reason == "memory"
    assert "MemoryError" in result.message


def test_a_cap_below_the_interpreter_is_a_memory_result(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "pass", Limits(memory_mb=4))
    assert result.reason == "memory"
    assert "memory cap" in result.message


def test_huge_output_is_bounded(wasm_sandbox: WasmSandbox) -> None:
    code = "import os, sys\nfor _ in range(200):\n    sys.stdout.write('y' * 100_000)\n    os.write(2, b'e' * 10_000)\n"
    result = wasm_sandbox.run(CodeRun(code, limits=Limits(output_bytes=1 << 20, timeout_s=20)))
    assert result.ok
    assert len(result.stdout) == 1 << 20
    assert len(result.stderr) == 1 << 20
    assert result.stdout_truncated
    assert result.stderr_truncated
    _then_normal(wasm_sandbox)


@pytest.mark.parametrize(
    "code",
    [
        "import time\nwhile True:\n    time.sleep(1)\n",
        "import time\ntime.sleep(10**6)\n",
        "import asyncio\nasyncio.run(asyncio.sleep(10**6))\n",
        "import select\nwhile True:\n    select.select([], [], [], 5)\n",
    ],
)
def test_sleeping_cannot_outlast_the_deadline(wasm_sandbox: WasmSandbox, code: str) -> None:
    result = _hostile(wasm_sandbox, code, Limits(timeout_s=2.0, sleep_s=60))
    # The virtual clock's sleep budget ended it: a real sleep would have met the 2 s deadline instead.
    assert result.reason == "timeout"
    assert "sleep budget" in result.message


def test_a_threading_wait_does_not_block(wasm_sandbox: WasmSandbox) -> None:
    result = wasm_sandbox.run(CodeRun("import threading\nprint(threading.Event().wait(1000))\n", limits=TIGHT))
    assert (result.reason, result.stdout) == ("ok", b"False\n")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("open('../outside.txt', 'w').write('x')", b"PermissionError"),
        ("import os\nos.chdir('..')\nopen('outside.txt', 'w').write('x')", b"Error"),
        ("print(open('/etc/passwd').read())", b"FileNotFoundError"),
        ("import os\nprint(os.listdir('/'))", b"Error"),
        ("print(open('/work/../../etc/passwd').read())", b"PermissionError"),
        ("import os\nos.symlink('/etc/passwd', 'abs_link')\nprint(open('abs_link').read())", b"PermissionError"),
    ],
)
def test_paths_cannot_leave_the_scratch_directory(wasm_sandbox: WasmSandbox, code: str, error: bytes) -> None:
    result = _hostile(wasm_sandbox, code)
    assert result.reason == "exit_code"
    assert error in result.stderr
    assert b"root:" not in result.stdout


def test_a_planted_relative_symlink_is_never_read_back(wasm_sandbox: WasmSandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    sandbox = WasmSandbox(scratch_parent=tmp_path)
    code = (
        "import os\ntry:\n    os.symlink('../secret.txt', 'link')\nexcept OSError as e:\n    print(type(e).__name__)\n"
    )
    result = sandbox.run(CodeRun(code))
    assert result.ok
    assert "link" not in result.files
    assert b"host secret" not in result.stdout
    assert secret.read_text() == "host secret"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.txt"]  # the scratch directory is gone


@pytest.mark.parametrize(
    "code",
    [
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 5432))",
        "import socket\nsocket.create_connection(('127.0.0.1', 6379), timeout=1)",
        "import socket\nprint(socket.getaddrinfo('localhost', 80))",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('127.0.0.1', 53))",
    ],
)
def test_there_is_no_network(wasm_sandbox: WasmSandbox, code: str) -> None:
    result = _hostile(wasm_sandbox, code)
    assert (result.reason, result.message) == ("trap", "the sandbox has no network")


@pytest.mark.parametrize(
    "code",
    [
        "import subprocess\nsubprocess.run(['ls'])",
        "import os\nos.execv('/bin/sh', ['sh'])",
        "import os\nos.fork()",
        "import os\nos.system('ls')",
    ],
)
def test_there_are_no_processes(wasm_sandbox: WasmSandbox, code: str) -> None:
    result = _hostile(wasm_sandbox, code)
    assert result.reason == "exit_code"
    assert b"Error" in result.stderr


def test_threads_cannot_start(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "import threading\nthreading.Thread(target=print).start()")
    assert b"RuntimeError: can't start new thread" in result.stderr


def test_the_environment_is_empty(wasm_sandbox: WasmSandbox) -> None:
    os.environ["CRA_SANDBOX_SHOULD_NOT_SEE"] = "secret"
    try:
        result = wasm_sandbox.run(CodeRun("import os, sys\nprint(dict(os.environ), sys.argv)"))
    finally:
        del os.environ["CRA_SANDBOX_SHOULD_NOT_SEE"]
    assert result.stdout == b"{} ['main.py']\n"


def test_exiting_the_interpreter_is_an_exit(wasm_sandbox: WasmSandbox) -> None:
    result = _hostile(wasm_sandbox, "import os\nos._exit(4)")
    assert result.reason == "exit_code"
    assert result.exit_code == 1  # WASI preview 2 reports only success or failure


def test_raising_from_a_finally_or_a_broken_str_still_reports(wasm_sandbox: WasmSandbox) -> None:
    code = "class E(Exception):\n    def __str__(self):\n        raise RuntimeError('no')\nraise E()\n"
    result = _hostile(wasm_sandbox, code)
    assert (result.reason, result.exit_code) == ("exit_code", 1)


def test_a_deep_tree_after_a_large_file_ends_the_run_and_leaves_nothing(
    wasm_sandbox: WasmSandbox, tmp_path: Path
) -> None:
    """Issue #12, finding 1: 50 MB then 1,100 nested directories broke the host's recursive walk
    and cleanup (RecursionError), and the scratch directory stayed on the host's disk."""
    sandbox = WasmSandbox(scratch_parent=tmp_path)
    code = (
        "import os\nopen('big', 'wb').write(b'x' * 50_000_000)\n"
        "cur = ''\nfor i in range(1100):\n    cur += 'a/'\n    os.mkdir(cur)\nprint('all made')\n"
    )
    result = sandbox.run(CodeRun(code, limits=Limits(timeout_s=30, disk_bytes=200 * 2**20)))
    assert (result.reason, result.message) == ("disk", "the code nested directories deeper than 64 levels")
    assert list(tmp_path.iterdir()) == []
    _then_normal(sandbox)


@pytest.mark.parametrize(
    ("code", "limits", "message"),
    [
        (
            "for i in range(300_000):\n    open(f'f{i}', 'w').close()\n",
            Limits(timeout_s=60, disk_entries=2000),
            "the code created more than 2000 files and directories",
        ),
        (
            "with open('big', 'wb') as f:\n    while True:\n        f.write(b'x' * 1_000_000)\n",
            Limits(timeout_s=60, disk_bytes=20 * 2**20),
            f"the code used more than {20 * 2**20} bytes of scratch disk",
        ),
    ],
)
def test_scratch_use_is_bounded_while_the_run_goes_on(
    wasm_sandbox: WasmSandbox, tmp_path: Path, code: str, limits: Limits, message: str
) -> None:
    """Issue #12, finding 1: disk use and the number of files are bounded during the run, not after it."""
    sandbox = WasmSandbox(scratch_parent=tmp_path)
    result = sandbox.run(CodeRun(code, limits=limits))
    assert (result.reason, result.exit_code, result.message) == ("disk", None, message)
    assert len(result.files) <= limits.disk_entries
    assert list(tmp_path.iterdir()) == []
    _then_normal(sandbox)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("import socket\nprint('before')\nsocket.create_connection(('127.0.0.1', 80))", "trap"),
        ("import sys\nprint('before')\nprint('to stderr', file=sys.stderr)\nwhile True: pass", "timeout"),
        ("print('before', end='')\nx = 0\nwhile True: x += 1", "out_of_fuel"),
    ],
)
def test_what_was_printed_before_a_trap_is_kept(wasm_sandbox: WasmSandbox, code: str, reason: str) -> None:
    """Issue #12, finding 17: output buffered in the guest was lost when the run trapped."""
    limits = Limits(timeout_s=1.0, fuel=2_000_000_000 if reason == "out_of_fuel" else 10**13)
    result = wasm_sandbox.run(CodeRun(code, limits=limits))
    assert result.reason == reason
    assert result.stdout.startswith(b"before")
    if reason == "timeout":
        assert result.stderr == b"to stderr\n"
    _then_normal(wasm_sandbox)
