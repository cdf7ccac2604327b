"""Building the sandbox's component on first use, and caching it compiled.

The guest (``guest/cra_executor.py`` and ``guest/world.wit``) is turned into a
WebAssembly component by componentize-py, then compiled by wasmtime into
native code and serialised. Both land in a private cache directory, under a key
that changes with the guest's source, the versions of both tools and the
engine's settings, so a stale artifact is never loaded. The build runs once
per key, under a file lock, and is published by an atomic rename.

Loading compiled code trusts it, so the cache directory must be owned by this
user and writable by no one else, and every artifact's SHA-256 is checked
against the record written beside it before it is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from cra.errors import SandboxError

__all__ = ["GUEST_DIR", "Artifact", "built_artifact", "default_cache_dir", "ensure_artifact"]

GUEST_DIR = Path(__file__).parent / "guest"
_GUEST_FILES = ("cra_executor.py", "world.wit")
_BUILD_TIMEOUT_S = 900

_COMPONENTIZE = "import sys\nfrom componentize_py import script\nsys.argv[0] = 'componentize-py'\nsys.exit(script())\n"


def default_cache_dir() -> Path:
    """``$CRA_CACHE_DIR``, else ``$XDG_CACHE_HOME/cra``, else ``~/.cache/cra``."""
    if os.environ.get("CRA_CACHE_DIR"):
        return Path(os.environ["CRA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cra"


@dataclass(frozen=True, slots=True)
class Artifact:
    """A compiled component in the cache, and what building it cost."""

    path: Path
    key: str
    built: bool
    build_s: float
    compile_s: float


def _versions() -> str:
    return f"componentize-py {metadata.version('componentize-py')}; wasmtime {metadata.version('wasmtime')}"


def artifact_key(engine_settings: str) -> str:
    """The cache key: the guest's bytes, the tools' versions and the engine's settings."""
    h = hashlib.sha256()
    for name in _GUEST_FILES:
        data = (GUEST_DIR / name).read_bytes()
        h.update(name.encode() + b"\x00" + len(data).to_bytes(8, "big") + data)
    h.update(_versions().encode() + b"\x00" + engine_settings.encode())
    return h.hexdigest()[:32]


def _private_dir(path: Path, *, create: bool = True) -> Path:
    """Create ``path`` (mode 0700) if needed, and refuse it unless it is ours and closed to others."""
    if create:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SandboxError(f"the sandbox cache {path} is not a directory")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise SandboxError(f"the sandbox cache {path} belongs to another user; refusing to load code from it")
    if info.st_mode & 0o022:
        raise SandboxError(f"the sandbox cache {path} is writable by others; refusing to load code from it")
    return path


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(directory: Path, key: str) -> Path | None:
    """The compiled artifact if its record is there and its digest matches, else None."""
    record_path, compiled = directory / "artifact.json", directory / "executor.cwasm"
    try:
        record = json.loads(record_path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key or not compiled.is_file():
        return None
    if record.get("sha256") != _sha256_file(compiled):
        return None
    return compiled


def componentize(source: Path, wit: Path, world: str, app: str, output: Path) -> None:
    """Run componentize-py: the module ``app`` in ``source`` (its only Python path) for ``world``."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-c", _COMPONENTIZE, "-q", "-d", str(wit), "-w", world]
    command += ["componentize", app, "-p", str(source), "-o", str(output)]
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command line of our own
            command, cwd=source.parent, env=env, capture_output=True, timeout=_BUILD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxError(f"componentize-py could not build {app}: {exc}") from None
    if done.returncode != 0 or not output.is_file():
        tail = (done.stderr or done.stdout).decode("utf-8", "replace")[-2000:]
        raise SandboxError(f"componentize-py failed on {app} (exit {done.returncode}): {tail}")


def _componentize_executor(work: Path) -> Path:
    """Build the sandbox's executor from a copy of the guest; returns the component's path."""
    source = work / "guest"
    source.mkdir()
    for name in _GUEST_FILES:
        shutil.copyfile(GUEST_DIR / name, source / name)
    output = work / "executor.wasm"
    componentize(source, source / "world.wit", "executor", "cra_executor", output)
    return output


def built_artifact(cache_dir: Path, engine_settings: str) -> Path | None:
    """The verified compiled component for these engine settings if the cache holds one; never builds.

    ``None`` for a missing, stale or damaged artifact, and for a cache that
    :func:`ensure_artifact` would refuse to load from.
    """
    key = artifact_key(engine_settings)
    try:
        directory = _private_dir(_private_dir(cache_dir, create=False) / "sandbox", create=False) / key
    except (OSError, SandboxError):
        return None
    return _verified(directory, key)


def ensure_artifact(
    cache_dir: Path,
    engine_settings: str,
    compile_component: Callable[[Path], bytes],
    progress: Callable[[str], None] | None = None,
) -> Artifact:
    """The compiled component for these engine settings, built and compiled now if the cache lacks it.

    ``compile_component(wasm_path) -> bytes`` compiles a component with the
    caller's engine and returns its serialised form. ``progress`` is told, in
    words, each step a build takes.
    """
    tell = progress or (lambda _: None)
    key = artifact_key(engine_settings)
    root = _private_dir(_private_dir(cache_dir) / "sandbox")
    directory = _private_dir(root / key)
    found = _verified(directory, key)
    if found is not None:
        return Artifact(found, key, False, 0.0, 0.0)
    with _locked(directory / ".lock"):
        found = _verified(directory, key)
        if found is not None:
            return Artifact(found, key, False, 0.0, 0.0)
        with tempfile.TemporaryDirectory(prefix="build-", dir=directory) as work_name:
            work = Path(work_name)
            started = time.perf_counter()
            tell("building the sandbox: compiling CPython and the guest into a WebAssembly component (step 1 of 2)")
            wasm = _componentize_executor(work)
            built = time.perf_counter()
            tell(f"building the sandbox: step 1 took {built - started:.1f} s; compiling to native code (step 2 of 2)")
            compiled_bytes = compile_component(wasm)
            compiled = time.perf_counter()
            tell(f"building the sandbox: step 2 took {compiled - built:.1f} s")
            staged = work / "executor.cwasm"
            staged.write_bytes(compiled_bytes)
            os.replace(staged, directory / "executor.cwasm")
            record = {
                "key": key,
                "sha256": _sha256_file(directory / "executor.cwasm"),
                "tools": _versions(),
                "engine": engine_settings,
                "build_s": round(built - started, 3),
                "compile_s": round(compiled - built, 3),
            }
            staged_record = work / "artifact.json"
            staged_record.write_text(json.dumps(record, indent=2) + "\n", "utf-8")
            os.replace(staged_record, directory / "artifact.json")
        return Artifact(directory / "executor.cwasm", key, True, built - started, compiled - built)
