"""Running code an agent wrote: the sandbox port, its request and result, and the
``code.execute`` executor that puts every run under policy and in the trace.

The runtime knows only the :class:`Sandbox` port; :mod:`cra.sandbox` implements
it with WebAssembly. A run is a pure function of its :class:`CodeRun`: the
same code, input files and seed give the same stdout, files and fuel.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from cra.errors import ValidationError, json_pointer
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.runtime.execution import Reported

__all__ = [
    "CEILING",
    "CODE_EXECUTE",
    "MAX_DEPTH",
    "REASONS",
    "CodeExecutor",
    "CodeResult",
    "CodeRun",
    "Limits",
    "Sandbox",
    "check_file_path",
]

#: The action id under which running code is governed.
CODE_EXECUTE = "code.execute"

#: How a run can end. ``ok`` is the only success; ``exit_code`` is a non-zero exit.
#: ``disk`` is a run that passed its scratch bounds (``disk_bytes``, ``disk_entries`` or :data:`MAX_DEPTH`).
REASONS = ("ok", "exit_code", "timeout", "out_of_fuel", "memory", "trap", "disk")

#: How deep directories may nest in a run's scratch directory, its inputs included.
MAX_DEPTH = 64

_MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """The hard limits of one run. Every field is enforced by the sandbox, not by the code."""

    #: Wall-clock deadline, in seconds.
    timeout_s: float = 5.0
    #: Linear memory cap, in MiB. The interpreter itself needs about 30 of them.
    memory_mb: int = 256
    #: WebAssembly fuel: about one unit per instruction.
    fuel: int = 20_000_000_000
    #: Bytes kept of stdout, and separately of stderr; the rest is dropped and flagged.
    output_bytes: int = 1 * _MB
    #: Bytes of output files read back after the run; beyond them the run reports none.
    files_bytes: int = 16 * _MB
    #: Virtual seconds the code may sleep in all. Sleeping takes no real time.
    sleep_s: float = 60.0
    #: Bytes of scratch disk the run may use, inputs included (a file counts at the larger of
    #: its size and the blocks it holds).
    disk_bytes: int = 64 * _MB
    #: Files, directories and links the scratch directory may hold, inputs included.
    disk_entries: int = 10_000

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, value: object, path: str = "", *, base: Limits | None = None) -> Limits:
        """Limits from a JSON object, each field optional (``base`` fills the rest), each checked."""
        if not isinstance(value, dict):
            raise ValidationError(path, "must be an object")
        known = {f.name for f in fields(cls)}
        for key in value:
            if key not in known:
                raise ValidationError(
                    json_pointer([*_parts(path), key]), f"unknown limit; known: {', '.join(sorted(known))}"
                )
        merged = (base or cls()).to_json() | value
        for name, raw in merged.items():
            integral = name in _INTEGRAL
            if isinstance(raw, bool) or not isinstance(raw, int if integral else (int, float)):
                kind = "an integer" if integral else "a number"
                raise ValidationError(json_pointer([*_parts(path), name]), f"must be {kind}")
        limits = cls(**merged)
        limits.check(path)
        return limits

    def check(self, path: str = "") -> None:
        """Raise :class:`ValidationError` unless every limit is within :data:`CEILING`'s range."""
        for f in fields(self):
            value = getattr(self, f.name)
            low = _FLOOR.get(f.name, 0)
            high = getattr(CEILING, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ValidationError(json_pointer([*_parts(path), f.name]), f"must be between {low} and {high}")

    def within(self, ceiling: Limits) -> bool:
        return all(getattr(self, f.name) <= getattr(ceiling, f.name) for f in fields(self))


_FLOOR = {"timeout_s": 0.001, "memory_mb": 1, "fuel": 1}
_INTEGRAL = frozenset({"memory_mb", "fuel", "output_bytes", "files_bytes", "disk_bytes", "disk_entries"})

#: The largest limits any run may ask for (a host may set lower ones).
CEILING = Limits(
    timeout_s=300.0,
    memory_mb=4096,
    fuel=10**13,
    output_bytes=64 * _MB,
    files_bytes=256 * _MB,
    sleep_s=86_400.0,
    disk_bytes=4096 * _MB,
    disk_entries=1_000_000,
)


def _parts(path: str) -> list[str]:
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]] if path else []


def check_file_path(name: object, path: str) -> str:
    """A scratch-relative file path: ``a/b.txt``, never absolute, never ``..``, never empty parts."""
    if not isinstance(name, str) or not name:
        raise ValidationError(path, "a file path must be a non-empty string")
    if len(name.encode("utf-8", "surrogatepass")) > 1024 or "\x00" in name or "\\" in name:
        raise ValidationError(path, "a file path must be at most 1024 bytes, without NUL or backslash")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValidationError(path, f"{name!r} must be relative to the scratch directory, without '.' or '..' parts")
    return name


def _check_tree(filename: str, files: Mapping[str, bytes], limits: Limits) -> None:
    """Refuse a name that would be both a file and a directory of other files (``a`` beside ``a/b``),
    and inputs that alone pass the run's scratch bounds."""
    paths = {name: json_pointer(["files", name]) for name in files}
    paths.setdefault(filename, "/filename")
    deep = sorted(name for name in paths if name.count("/") >= MAX_DEPTH)
    if deep:
        raise ValidationError(paths[deep[0]], f"is nested deeper than {MAX_DEPTH} directories")
    directories = {name.rsplit("/", i)[0] for name in paths for i in range(1, name.count("/") + 1)}
    clash = sorted(paths.keys() & directories)
    if clash:
        raise ValidationError(paths[clash[0]], f"{clash[0]!r} cannot be a file: other files are inside it")
    entries = len(files) + len(directories)
    if entries > limits.disk_entries:
        raise ValidationError("/files", f"the input files make {entries} entries, over disk_entries")
    size = sum(len(data) for data in files.values())
    if size > limits.disk_bytes:
        raise ValidationError("/files", f"the input files hold {size} bytes, over disk_bytes")


@dataclass(frozen=True, slots=True)
class CodeRun:
    """One run: a Python script, the files placed beside it, the seed of its randomness, and its limits."""

    code: str
    files: Mapping[str, bytes] = field(default_factory=dict)
    seed: int = 0
    limits: Limits = field(default_factory=Limits)
    filename: str = "main.py"

    def __post_init__(self) -> None:
        if not isinstance(self.code, str):
            raise ValidationError("/code", "must be a string")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64:
            raise ValidationError("/seed", "must be an integer from 0 to 2**64 - 1")
        check_file_path(self.filename, "/filename")
        for name in self.files:
            check_file_path(name, json_pointer(["files", name]))
        self.limits.check("/limits")
        _check_tree(self.filename, self.files, self.limits)

    @property
    def code_sha256(self) -> str:
        return sha256_hex(self.code)


@dataclass(frozen=True, slots=True)
class CodeResult:
    """How a run ended, what it printed and wrote, and what it cost."""

    reason: str
    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    #: Files the run created or changed, by scratch-relative path.
    files: Mapping[str, bytes] = field(default_factory=dict)
    #: Whether some output files were left out, being over ``Limits.files_bytes``.
    files_truncated: bool = False
    fuel_used: int = 0
    duration_ms: float = 0.0
    #: Why the sandbox stopped the run, in words (empty for ``ok`` and ``exit_code``).
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.reason == "ok"

    def to_json(self, *, with_files: bool = True) -> dict[str, Any]:
        """The result as JSON: text decoded as UTF-8 (bad bytes replaced), files in base64."""
        out: dict[str, Any] = {
            "ok": self.ok,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "fuel_used": self.fuel_used,
            "duration_ms": round(self.duration_ms, 3),
            "message": self.message,
            "stdout_truncated": self.stdout_truncated,
            "stderr_truncated": self.stderr_truncated,
            "files_truncated": self.files_truncated,
        }
        if with_files:
            out["files"] = {name: base64.b64encode(data).decode("ascii") for name, data in sorted(self.files.items())}
        return out

    def digest(self) -> str:
        """SHA-256 of what the run produced (reason, exit code, output, files), not of how long it took."""
        produced = self.to_json()
        del produced["duration_ms"]
        return sha256_hex(canonical_json(produced))


class Sandbox(Protocol):
    """Runs untrusted code under hard limits, deterministically, with no network."""

    def run(self, request: CodeRun) -> CodeResult: ...

    def warming(self) -> str | None:
        """Why a run cannot start now (the sandbox is still being prepared), or None when it can."""
        ...


class CodeExecutor:
    """The executor of ``code.execute``: its arguments are a :class:`CodeRun` in JSON.

    Arguments: ``code`` (required), ``filename``, ``files`` (path to base64 text),
    ``seed`` and ``limits`` (any of :class:`Limits`' fields). Limits not given come
    from ``defaults``; limits beyond ``ceiling`` are refused, so the atlas's
    policies (for example a deny on ``params.limits.timeout_s`` for high risk
    tiers) and this host's ceiling both bound every run.

    The result is :meth:`CodeResult.to_json`; the trace event records the code's
    hash, the limits, the outcome and the result's digest under ``sandbox``.
    """

    def __init__(self, sandbox: Sandbox, *, defaults: Limits | None = None, ceiling: Limits = CEILING) -> None:
        self._sandbox = sandbox
        self._defaults = defaults or Limits()
        self._ceiling = ceiling
        if not self._defaults.within(ceiling):
            raise ValueError("the default limits exceed the ceiling")

    def request(self, arguments: Mapping[str, Any]) -> CodeRun:
        """The run the arguments ask for, or :class:`ValidationError` saying which argument is wrong."""
        known = {"code", "filename", "files", "seed", "limits"}
        for key in arguments:
            if key not in known:
                raise ValidationError(json_pointer([key]), f"unknown argument; known: {', '.join(sorted(known))}")
        if "code" not in arguments:
            raise ValidationError("/code", "is required")
        limits = Limits.from_json(arguments.get("limits", {}), "/limits", base=self._defaults)
        if not limits.within(self._ceiling):
            over = [f.name for f in fields(limits) if getattr(limits, f.name) > getattr(self._ceiling, f.name)]
            raise ValidationError(
                f"/limits/{over[0]}", f"exceeds this host's ceiling of {getattr(self._ceiling, over[0])}"
            )
        files_arg = arguments.get("files", {})
        if not isinstance(files_arg, dict):
            raise ValidationError("/files", "must be an object of path to base64 text")
        files: dict[str, bytes] = {}
        for name, text in files_arg.items():
            where = json_pointer(["files", name])
            if not isinstance(text, str):
                raise ValidationError(where, "must be base64 text")
            try:
                files[name] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ValidationError(where, f"is not base64: {exc}") from None
        return CodeRun(
            code=arguments["code"],
            files=files,
            seed=arguments.get("seed", 0),
            limits=limits,
            filename=arguments.get("filename", "main.py"),
        )

    def warming(self) -> str | None:
        """Why no call can start now (:meth:`Sandbox.warming`), or None."""
        return self._sandbox.warming()

    def __call__(self, arguments: dict[str, Any]) -> Reported:
        run = self.request(arguments)
        result = self._sandbox.run(run)
        facts = {
            "code_sha256": run.code_sha256,
            "seed": run.seed,
            "limits": run.limits.to_json(),
            "reason": result.reason,
            "exit_code": result.exit_code,
            "fuel_used": result.fuel_used,
            "output_sha256": result.digest(),
        }
        return Reported(result.to_json(), trace={"sandbox": facts})
