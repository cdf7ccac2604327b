"""The scratch directory: inputs in, changed files out, and nothing outside it read."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cra.errors import ValidationError, json_pointer
from cra.runtime.code import MAX_DEPTH
from cra.sandbox.scratch import PREFIX, Scratch, Usage, sweep
from cra.sandbox.virtual import WALL_CLOCK_BASE_S


def test_inputs_are_placed_with_a_fixed_time_and_the_directory_is_removed(tmp_path: Path) -> None:
    with Scratch({"a.txt": b"one", "d/e/b.bin": b"\x00\x01"}, tmp_path) as scratch:
        root = scratch.path
        assert (root / "a.txt").read_bytes() == b"one"
        assert (root / "d" / "e" / "b.bin").read_bytes() == b"\x00\x01"
        assert os.stat(root / "a.txt").st_mtime == WALL_CLOCK_BASE_S
        assert oct(root.stat().st_mode & 0o777) == oct(0o700)
    assert not root.exists()


def test_only_new_or_changed_files_come_back_in_path_order(tmp_path: Path) -> None:
    with Scratch({"same.txt": b"x", "changed.txt": b"old"}, tmp_path) as scratch:
        (scratch.path / "changed.txt").write_bytes(b"new")
        (scratch.path / "z").mkdir()
        (scratch.path / "z" / "new.txt").write_bytes(b"made")
        (scratch.path / "b.txt").write_bytes(b"")
        files, left_out = scratch.outputs(1000, 100)
    assert list(files) == ["b.txt", "changed.txt", "z/new.txt"]
    assert files == {"b.txt": b"", "changed.txt": b"new", "z/new.txt": b"made"}
    assert not left_out


def test_symbolic_links_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"host secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_bytes(b"also secret")
    with Scratch({}, tmp_path) as scratch:
        os.symlink("../secret.txt", scratch.path / "rel_link")
        os.symlink(secret, scratch.path / "abs_link")
        os.symlink(outside, scratch.path / "dir_link")
        os.mkfifo(scratch.path / "fifo")
        files, _ = scratch.outputs(10_000, 100)
    assert files == {}
    assert secret.read_bytes() == b"host secret"
    assert (outside / "inner.txt").exists()


@given(
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=8), st.integers(min_value=0, max_value=200)
)
def test_outputs_stay_within_the_limit(sizes: list[int], limit: int) -> None:
    with Scratch({}) as scratch:
        for i, size in enumerate(sizes):
            (scratch.path / f"f{i:02}").write_bytes(b"x" * size)
        files, left_out = scratch.outputs(limit, 100)
    assert sum(len(v) for v in files.values()) <= limit
    kept = {f"f{i:02}" for i, size in enumerate(sizes) if f"f{i:02}" in files}
    assert left_out == (len(kept) < len(sizes))


def test_a_name_the_host_cannot_create_is_refused_at_its_path_without_the_hosts_path(tmp_path: Path) -> None:
    """Issue #12, finding 18: host errors named the scratch directory (``/tmp/cra-sandbox-…``)."""
    name = "a/" + "x" * 300  # a valid run path, but no Linux filesystem takes a 300-byte name
    with pytest.raises(ValidationError) as info, Scratch({name: b"data"}, tmp_path):
        pass
    assert info.value.path == json_pointer(["files", name])
    assert str(tmp_path) not in str(info.value)
    assert "cra-sandbox-" not in str(info.value)
    assert list(tmp_path.iterdir()) == []  # and the scratch directory is gone


def _nest(root: Path, depth: int, name: str = "a") -> None:
    """``depth`` directories inside one another, made relative to each other so no path grows."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)


@pytest.mark.parametrize("depth", [1100, 5000])
def test_a_tree_of_any_depth_is_measured_read_and_removed(tmp_path: Path, depth: int) -> None:
    """Issue #12, finding 1: 1,100 nested directories made the recursive walk and rmtree fail,
    and the scratch directory stayed. 5,000 levels make paths far longer than PATH_MAX."""
    with Scratch({}, tmp_path) as scratch:
        _nest(scratch.path, depth, "a" * 200)
        (scratch.path / "top.txt").write_bytes(b"kept")
        usage = scratch.usage(most_bytes=1 << 40, most_entries=1 << 30)
        files, left_out = scratch.outputs(1000, 100_000)
    assert usage.depth == MAX_DEPTH + 1  # the walk stops one level past the bound
    assert usage.excess(most_bytes=1 << 40, most_entries=1 << 30) == (
        f"the code nested directories deeper than {MAX_DEPTH} levels"
    )
    assert files == {"top.txt": b"kept"}
    assert not left_out
    assert list(tmp_path.iterdir()) == []


def test_usage_counts_entries_and_bytes_and_stops_at_a_bound(tmp_path: Path) -> None:
    with Scratch({"in.bin": b"x" * 5000}, tmp_path) as scratch:
        for i in range(30):
            (scratch.path / f"f{i}").write_bytes(b"")
        sparse = scratch.path / "sparse"
        with sparse.open("wb") as handle:
            handle.seek(10**9)
            handle.write(b"x")
        under = scratch.usage(most_bytes=1 << 40, most_entries=1000)
        over_entries = scratch.usage(most_bytes=1 << 40, most_entries=10)
        over_bytes = scratch.usage(most_bytes=10**8, most_entries=1000)
    assert under.entries == 32
    assert under.bytes >= 10**9 + 5000  # a sparse file counts at its size
    assert under.excess(most_bytes=1 << 40, most_entries=1000) is None
    assert over_entries.entries == 11  # stopped as soon as the bound was passed
    assert (
        over_entries.excess(most_bytes=1 << 40, most_entries=10)
        == "the code created more than 10 files and directories"
    )
    assert (
        over_bytes.excess(most_bytes=10**8, most_entries=1000)
        == "the code used more than 100000000 bytes of scratch disk"
    )


def test_outputs_are_capped_in_number_as_well_as_bytes(tmp_path: Path) -> None:
    """Issue #12, finding 1: 300,000 empty output files kept the host busy past the deadline."""
    with Scratch({}, tmp_path) as scratch:
        for i in range(50):
            (scratch.path / f"f{i:03}").write_bytes(b"")
        files, left_out = scratch.outputs(1000, 20)
    assert list(files) == [f"f{i:03}" for i in range(20)]
    assert left_out


@given(st.integers(min_value=0, max_value=3), st.integers(min_value=0, max_value=3))
def test_usage_excess_names_the_bound_passed(over_depth: int, over_entries: int) -> None:
    usage = Usage(entries=10 + over_entries, bytes=0, depth=MAX_DEPTH + over_depth)
    excess = usage.excess(most_bytes=0, most_entries=10)
    if over_depth:
        assert excess is not None
        assert "deeper" in excess
    elif over_entries:
        assert excess is not None
        assert "more than 10 files" in excess
    else:
        assert excess is None


def _hold_scratch(
    parent: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event
) -> None:
    with Scratch({"x": b"1"}, Path(parent)):
        ready.set()
        done.wait(30)


def test_sweep_removes_the_scratch_of_dead_processes_and_leaves_live_runs(tmp_path: Path) -> None:
    """Issue #12, finding 1: scratch left by a crash is removed at the next start, never a live run's."""
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    live = context.Process(target=_hold_scratch, args=(str(tmp_path), ready, done))
    live.start()
    try:
        assert ready.wait(30)
        dead_ready, never = context.Event(), context.Event()
        dead = context.Process(target=_hold_scratch, args=(str(tmp_path), dead_ready, never))
        dead.start()
        assert dead_ready.wait(30)
        dead.kill()  # killed while its run holds the scratch: nothing removes it
        dead.join()
        leftovers = sorted(p.name for p in tmp_path.iterdir())
        assert len(leftovers) == 2
        _nest(tmp_path / leftovers[0], 1500)
        (tmp_path / "unrelated").mkdir()
        assert sweep(tmp_path) == 1
        remaining = sorted(p.name for p in tmp_path.iterdir())
        assert len(remaining) == 2
        assert "unrelated" in remaining
        survivor = tmp_path / next(name for name in remaining if name.startswith(PREFIX))
        assert (survivor / "x").read_bytes() == b"1"  # the live run's inputs are untouched
    finally:
        done.set()
        live.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["unrelated"]


def test_a_scratch_directory_is_leased_while_it_exists(tmp_path: Path) -> None:
    with Scratch({}, tmp_path) as scratch:
        fd = os.open(scratch.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
