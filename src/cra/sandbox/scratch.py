"""The scratch directory of one run: the whole filesystem the code sees, as ``/work``.

Inputs are written before the run with a fixed modification time. While the
run goes on, :meth:`Scratch.usage` measures the tree against the run's disk
limits; afterwards the files the code created or changed are read back without
following any symbolic link the code may have planted, and the directory is
removed.

Nothing here recurses or builds a host path from the code's names: every walk
keeps a stack of directory descriptors and opens each entry relative to its
parent, so a tree of any depth, with names of any length, is measured, read
and removed.

Each directory is held under a lease: an exclusive ``flock`` on the directory
itself, taken before anything is written into it and kept until it is removed.
The kernel releases it when the process dies, so :func:`sweep` can tell the
scratch of a crashed process, which it removes, from a live run's, which it
leaves alone.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from cra.errors import SandboxError, ValidationError, json_pointer
from cra.runtime.code import MAX_DEPTH
from cra.sandbox.virtual import WALL_CLOCK_BASE_S

__all__ = ["MAX_DEPTH", "PREFIX", "Scratch", "Usage", "sweep"]

#: Scratch directories are named ``cra-sandbox-*`` in their parent directory.
PREFIX = "cra-sandbox-"

_READ_CHUNK = 1 << 16
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
#: Errors of an entry that vanished or changed while it was walked (the code may still be running).
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES, errno.EPERM})


@dataclass(frozen=True, slots=True)
class Usage:
    """What a scratch tree holds: its entries (files, directories, links), bytes and depth.

    A walk stops as soon as a bound is passed, so the figures past it are lower bounds.
    """

    entries: int
    bytes: int
    depth: int

    def excess(self, *, most_bytes: int, most_entries: int) -> str | None:
        """Why this usage is over the bounds, in words, or None."""
        if self.depth > MAX_DEPTH:
            return f"the code nested directories deeper than {MAX_DEPTH} levels"
        if self.entries > most_entries:
            return f"the code created more than {most_entries} files and directories"
        if self.bytes > most_bytes:
            return f"the code used more than {most_bytes} bytes of scratch disk"
        return None


@dataclass(frozen=True, slots=True)
class _Entry:
    """One entry met by :func:`_walk`. ``parent_fd`` is valid only until the walk moves on."""

    path: str
    name: str
    parent_fd: int
    info: os.stat_result
    depth: int


def _disk_bytes(info: os.stat_result) -> int:
    # The larger of the apparent size and the blocks used: a sparse file counts at its size.
    return max(info.st_size, getattr(info, "st_blocks", 0) * 512)


def _list(fd: int, most: int | None = None) -> list[str]:
    """The directory's names in order, or, given ``most``, up to that many names in no order."""
    with os.scandir(fd) as entries:
        if most is None:
            return sorted(entry.name for entry in entries)
        return [entry.name for entry in itertools.islice(entries, most)]


class _Frame:
    """A directory being walked: its descriptor, its path prefix, its depth and the subdirectories left to enter."""

    __slots__ = ("depth", "fd", "prefix", "subdirs")

    def __init__(self, fd: int, prefix: str, depth: int) -> None:
        self.fd = fd
        self.prefix = prefix
        self.depth = depth
        self.subdirs: list[str] = []


def _report(frame: _Frame, max_depth: int, most: int | None) -> Iterator[_Entry]:
    """The entries of one directory (in name order unless ``most`` bounds them); notes the subdirectories to enter."""
    try:
        names = _list(frame.fd, most)
    except OSError as exc:
        if exc.errno not in _GONE:
            raise
        return
    for name in names:
        try:
            info = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _GONE:
                raise
            continue
        yield _Entry(frame.prefix + name, name, frame.fd, info, frame.depth)
        if stat.S_ISDIR(info.st_mode) and frame.depth <= max_depth:
            frame.subdirs.append(name)
    frame.subdirs.reverse()


def _walk(root_fd: int, *, max_depth: int = MAX_DEPTH, most: int | None = None) -> Iterator[_Entry]:
    """Every entry under ``root_fd``, depth first, each directory's entries in name order.

    Given ``most``, the walk reads no more than that many names from any directory,
    in whatever order the host keeps them: enough to tell that a bound was passed,
    however large the directory has grown. Entries at depth ``max_depth + 1`` are
    reported but not entered. Entries that vanish while the walk runs are
    skipped. At most ``max_depth + 1`` descriptors are open at once, and nothing
    recurses.
    """
    frames = [_Frame(os.dup(root_fd), "", 1)]
    try:
        yield from _report(frames[-1], max_depth, most)
        while frames:
            frame = frames[-1]
            if not frame.subdirs:
                os.close(frames.pop().fd)
                continue
            name = frame.subdirs.pop()
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=frame.fd)
            except OSError as exc:
                if exc.errno not in _GONE:
                    raise
                continue
            frames.append(_Frame(fd, f"{frame.prefix}{name}/", frame.depth + 1))
            yield from _report(frames[-1], max_depth, most)
    finally:
        for frame in frames:
            os.close(frame.fd)


def _measure(root_fd: int, *, most_bytes: int, most_entries: int) -> Usage:
    """The usage of the tree under ``root_fd``, stopping as soon as a bound is passed."""
    entries = used = depth = 0
    for entry in _walk(root_fd, most=most_entries + 1):
        entries += 1
        used += _disk_bytes(entry.info)
        depth = max(depth, entry.depth)
        if depth > MAX_DEPTH or entries > most_entries or used > most_bytes:
            break
    return Usage(entries, used, depth)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` under ``parent_fd`` and everything in it, whatever its depth.

    Each directory met is emptied of its files and links, and its subdirectories
    are moved up to the top directory under fresh names (a rename is one system
    call whatever the subtree holds), so only two descriptors are open at a time
    and no path grows with the tree's depth.
    """
    try:
        top = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return
    try:
        taken = set(_list(top))
        fresh = (name for name in (f".cra-{n}" for n in itertools.count()) if name not in taken)
        pending = _empty(top)
        while pending:
            current = pending.pop()
            try:
                fd = os.open(current, _DIR_FLAGS, dir_fd=top)
            except FileNotFoundError:
                continue
            try:
                for sub in _empty(fd):
                    moved = next(fresh)
                    os.rename(sub, moved, src_dir_fd=fd, dst_dir_fd=top)
                    pending.append(moved)
            finally:
                os.close(fd)
            os.rmdir(current, dir_fd=top)
    finally:
        os.close(top)
    os.rmdir(name, dir_fd=parent_fd)


def _is_dir(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _empty(fd: int) -> list[str]:
    """Unlink every entry of the directory that is not a directory; returns the subdirectories' names."""
    subdirs = []
    for name in _list(fd):
        if _is_dir(fd, name):
            subdirs.append(name)
            continue
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue
    return subdirs


def _lease(parent: Path | None) -> tuple[Path, int]:
    """A new scratch directory and a descriptor holding its lease.

    :func:`sweep` may take the lease of a directory made a moment ago, before its
    maker locked it, and remove it; the maker notices (its lock is refused, or the
    path no longer names the directory it locked) and makes another.
    """
    for _ in range(16):
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent))
        try:
            fd = os.open(path, _DIR_FLAGS)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            mine = os.fstat(fd)
            now = os.stat(path, follow_symlinks=False)
            if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
                return path, fd
        except OSError:
            pass
        os.close(fd)
    raise SandboxError("no scratch directory could be made: another process keeps removing them")


def sweep(parent: Path | None = None) -> int:
    """Remove the scratch directories under ``parent`` (the system's temporary directory by
    default) whose lease no process holds: those of runs whose process died. Returns how many.

    A live run's directory, and anything not this user's, is left alone.
    """
    root = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    removed = 0
    try:
        parent_fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return 0
    try:
        for name in _list(parent_fd):
            if not name.startswith(PREFIX):
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except OSError:
                continue
            try:
                if os.fstat(fd).st_uid != os.getuid():
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                _remove_tree(parent_fd, name)
                removed += 1
            except OSError:
                continue
            finally:
                os.close(fd)
    finally:
        os.close(parent_fd)
    return removed


class Scratch:
    """A private temporary directory holding a run's files, under a lease until it is removed."""

    def __init__(self, files: Mapping[str, bytes], parent: Path | None = None) -> None:
        self._files = dict(files)
        self._parent = parent
        self.path = Path()
        self._fd = -1

    def __enter__(self) -> Scratch:
        self.path, self._fd = _lease(self._parent)
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
            self._remove()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._remove()

    def _remove(self) -> None:
        """Remove the directory, then give up its lease. A failure keeps the lease until the process
        ends, after which :func:`sweep` removes what is left."""
        try:
            parent_fd = os.open(self.path.parent, _DIR_FLAGS)
            try:
                _remove_tree(parent_fd, self.path.name)
            finally:
                os.close(parent_fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def usage(self, *, most_bytes: int, most_entries: int) -> Usage:
        """What the tree holds now, measured up to the first bound passed."""
        return _measure(self._fd, most_bytes=most_bytes, most_entries=most_entries)

    def outputs(self, limit: int, most_files: int) -> tuple[dict[str, bytes], bool]:
        """Regular files that are new or differ from the inputs, in path order, up to ``limit``
        bytes and ``most_files`` files.

        Returns them and whether some were left out. Symbolic links, devices and
        anything else that is not a regular file are never read; nor is anything
        deeper than :data:`MAX_DEPTH`.
        """
        found: dict[str, bytes] = {}
        used = 0
        left_out = False
        seen = 0
        for entry in _walk(self._fd):
            seen += 1
            if seen > most_files:
                left_out = True
                break
            if entry.depth > MAX_DEPTH or not stat.S_ISREG(entry.info.st_mode):
                continue
            data = _read(entry, limit - used + 1)
            if data is None or self._files.get(entry.path) == data:
                continue
            if used + len(data) > limit:
                left_out = True
                continue
            found[entry.path] = data
            used += len(data)
        return dict(sorted(found.items())), left_out


def _read(entry: _Entry, most: int) -> bytes | None:
    """The file's bytes (at most ``most``), or None if it is not a regular file we may read."""
    try:
        fd = os.open(entry.name, _FILE_FLAGS, dir_fd=entry.parent_fd)
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
