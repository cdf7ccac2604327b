"""The scratch directory of one run: the whole filesystem the code sees, as ``/work``.

Inputs are written before the run with a fixed modification time; afterwards
the files the code created or changed are read back without following any
symbolic link the code may have planted, and the directory is removed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from cra.errors import SandboxError, ValidationError, json_pointer
from cra.sandbox.virtual import WALL_CLOCK_BASE_S

__all__ = ["Scratch"]

_READ_CHUNK = 1 << 16


class Scratch:
    """A private temporary directory holding a run's files."""

    def __init__(self, files: Mapping[str, bytes], parent: Path | None = None) -> None:
        self._files = dict(files)
        self._parent = parent
        self.path = Path()

    def __enter__(self) -> Scratch:
        self.path = Path(tempfile.mkdtemp(prefix="cra-sandbox-", dir=self._parent))
        try:
            for name, data in self._files.items():
                try:
                    target = self.path.joinpath(*name.split("/"))
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                    os.utime(target, (WALL_CLOCK_BASE_S, WALL_CLOCK_BASE_S))
                except OSError as exc:
                    # Told without the host's path: where the scratch directory lives is not the caller's business.
                    raise _unwritable(name, exc) from None
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def outputs(self, limit: int) -> tuple[dict[str, bytes], bool]:
        """Regular files that are new or differ from the inputs, in path order, up to ``limit`` bytes.

        Returns them and whether some were left out. Symbolic links, devices and
        anything else that is not a regular file are never read.
        """
        found: dict[str, bytes] = {}
        used = 0
        left_out = False
        for name in self._walk():
            data = self._read(name, limit - used + 1)
            if data is None or self._files.get(name) == data:
                continue
            if used + len(data) > limit:
                left_out = True
                continue
            found[name] = data
            used += len(data)
        return found, left_out

    def _walk(self) -> list[str]:
        names: list[str] = []
        for top, dirs, files in os.walk(self.path, followlinks=False):
            dirs.sort()
            rel = Path(top).relative_to(self.path)
            names.extend((rel / f).as_posix() for f in files)
        return sorted(names)

    def _read(self, name: str, most: int) -> bytes | None:
        """The file's bytes (at most ``most``), or None if it is not a regular file we may read."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path / name, flags)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            chunks: list[bytes] = []
            got = 0
            while got < most:
                chunk = os.read(fd, min(_READ_CHUNK, most - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)


#: Refusals caused by the name asked for, not by the host: the caller's input is at fault.
_NAME_ERRORS = frozenset({errno.ENAMETOOLONG, errno.EINVAL, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.EILSEQ})


def _unwritable(name: str, exc: OSError) -> Exception:
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _NAME_ERRORS:
        return ValidationError(json_pointer(["files", name]), f"this host cannot create that file: {reason}")
    return SandboxError(f"the run's input files could not be written: {reason}")
