"""Running an executor, and the CARP execute responses that report it."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol, runtime_checkable

from cra.errors import ValidationError
from cra.protocol.canonical import canonical_json, sha256_hex
from cra.protocol.carp import CARP_VERSION
from cra.runtime.loaded import LoadedAtlas
from cra.runtime.ports import Clock
from cra.trace.event import format_timestamp

__all__ = ["Executor", "Outcome", "Reported", "ResponseBuilder", "Warming", "invoke"]

#: A host function that performs an action: it takes the call's arguments.
#: It returns the result, or a :class:`Reported` result with facts for the trace.
Executor = Callable[[dict[str, Any]], Any]


@runtime_checkable
class Warming(Protocol):
    """An executor that can need time before it takes calls (the sandbox's first build). A host
    refuses a call while :meth:`warming` gives a reason, before anything of the call is recorded."""

    def warming(self) -> str | None: ...


#: Keys of the ``action.executed`` and ``action.failed`` payloads that facts may not replace.
_PAYLOAD_KEYS = frozenset(
    {"action_id", "execution_id", "resolution_id", "duration_ms", "result_hash", "error_code", "error_message"}
)


@dataclass(frozen=True, slots=True)
class Reported:
    """An executor's result with facts for its trace event, added to the event's payload."""

    result: Any
    trace: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = _PAYLOAD_KEYS.intersection(self.trace)
        if clash:
            raise ValueError(f"trace facts may not replace the payload's {', '.join(sorted(clash))}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an executor did: a JSON result and its hash, or why it failed."""

    duration_ms: int
    result: dict[str, Any] | None = None
    result_hash: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    #: Facts the executor reported for the trace event (JSON, canonicalised).
    trace: Mapping[str, Any] = field(default_factory=dict)


def invoke(executor: Executor, arguments_json: str, loaded: LoadedAtlas, action_id: str, clock: Clock) -> Outcome:
    """Run ``executor`` on a fresh copy of the arguments and check what it returns.

    A result that is not JSON, or breaks the action's ``returns_schema``, is a
    failure like an exception is. The result is copied too, so the executor
    keeps no handle on what the runtime reports.
    """
    started = clock.now()

    def took() -> int:
        return max(0, int((clock.now() - started) / timedelta(milliseconds=1)))

    try:
        value = executor(json.loads(arguments_json))
    except ValidationError as exc:
        return Outcome(took(), error_code="invalid_arguments", error_message=str(exc)[:1000])
    except Exception as exc:  # noqa: BLE001 - executors are the host's code; any failure is recorded, not raised
        return Outcome(took(), error_code="executor_error", error_message=_describe(exc))
    trace: dict[str, Any] = {}
    if isinstance(value, Reported):
        try:
            trace = json.loads(canonical_json(dict(value.trace)))
        except (TypeError, ValueError, RecursionError) as exc:
            message = f"the executor reported trace facts that are not JSON: {exc}"[:1000]
            return Outcome(took(), error_code="invalid_result", error_message=message)
        value = value.result
    result = value if isinstance(value, dict) else {"value": value}
    try:
        result_json = canonical_json(result)
    except (TypeError, ValueError, RecursionError) as exc:
        message = f"the executor returned something that is not JSON: {exc}"[:1000]
        return Outcome(took(), error_code="invalid_result", error_message=message)
    result = json.loads(result_json)
    problem = loaded.check_result(action_id, result)
    if problem is not None:
        path, why = problem
        message = f"the result breaks the action's returns_schema at {path or '/'}: {why}"[:1000]
        return Outcome(took(), error_code="invalid_result", error_message=message)
    return Outcome(took(), result=result, result_hash=sha256_hex(result_json), trace=trace)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, even one whose ``str()`` fails. An operating system
    error is told by its reason alone: the file names it carries are the host's business."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"[:1000]
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not hide the failure it reports
        text = "(the exception cannot be printed)"
    return f"{type(exc).__name__}: {text}"[:1000]


class ResponseBuilder:
    """Builds the CARP execute responses of one call."""

    __slots__ = ("_base", "_clock", "_trace_id")

    def __init__(self, *, request_id: str, resolution_id: str, execution_id: str, trace_id: str, clock: Clock) -> None:
        self._base = {
            "carp_version": CARP_VERSION,
            "execution_id": execution_id,
            "request_id": request_id,
            "resolution_id": resolution_id,
        }
        self._trace_id = trace_id
        self._clock = clock

    def done(
        self, status: str, *, result: dict[str, Any] | None = None, error: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {**self._base, "timestamp": format_timestamp(self._clock.now()), "status": status}
        if result is not None:
            out["result"] = result
        if error is not None:
            out["error"] = error
        out["trace_id"] = self._trace_id
        return out
