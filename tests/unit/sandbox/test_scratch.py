"""The scratch directory: inputs in, changed files out, and nothing outside it read."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cra.errors import ValidationError, json_pointer
from cra.sandbox.scratch import Scratch
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
        files, left_out = scratch.outputs(1000)
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
        files, _ = scratch.outputs(10_000)
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
        files, left_out = scratch.outputs(limit)
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
