"""Policy conditions compiled into three-valued (four, with deferral) tests.

A condition answers one of:

* ``TRUE`` / ``FALSE`` - the facts are known and the condition holds or not;
* ``UNKNOWN`` - it reads an attribute that is missing or of the wrong type;
* ``DEFERRED`` - it reads call arguments that are not known yet (resolve time).

All conditions of one policy must hold. They combine so that ``FALSE`` wins,
then ``UNKNOWN``, then ``DEFERRED``. What a result means depends on the policy:
``UNKNOWN`` never grants (an allow does not match) and always restricts (a deny,
approval, rate limit or budget applies).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import time
from typing import TYPE_CHECKING, Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cra.errors import PolicyError, json_pointer
from cra.policy._glob import compile_glob

if TYPE_CHECKING:
    from cra.policy.decision import EvalRequest

__all__ = [
    "CONDITION_KEYS",
    "DEFERRED",
    "FALSE",
    "OPERATORS",
    "TRUE",
    "UNKNOWN",
    "Condition",
    "combine",
    "compile_conditions",
    "lookup",
    "tri_name",
]

TRUE: Final = 1
FALSE: Final = 0
UNKNOWN: Final = 2
DEFERRED: Final = 3

_NAMES = {TRUE: "true", FALSE: "false", UNKNOWN: "unknown", DEFERRED: "deferred"}

CONDITION_KEYS: Final = frozenset(
    {
        "risk_tiers",
        "agents",
        "capabilities",
        "context_matches",
        "time_window",
        "roles",
        "not_roles",
        "params",
        "context",
    }
)
OPERATORS: Final = frozenset({"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "exists", "glob"})
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MISSING: Final = object()

Test = Callable[["EvalRequest"], int]


def tri_name(value: int) -> str:
    return _NAMES[value]


def combine(results: Sequence[int]) -> int:
    """AND of condition results: FALSE, then UNKNOWN, then DEFERRED win over TRUE."""
    if FALSE in results:
        return FALSE
    if UNKNOWN in results:
        return UNKNOWN
    if DEFERRED in results:
        return DEFERRED
    return TRUE


@dataclass(frozen=True, slots=True)
class Condition:
    """One compiled condition: its key, a description, and its test."""

    key: str
    text: str
    test: Test


def lookup(data: Mapping[str, Any], dotted: str) -> Any:
    """Follow a dotted key into nested objects (and arrays, by index)."""
    value: Any = data
    for part in dotted.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isascii() and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return "other"


def _is_number(value: Any) -> bool:
    """A JSON number: an int of any size, or a finite float (never a bool)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))


def _strict_eq(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True != 1 and "1" != 1."""
    ta, tb = _json_type(a), _json_type(b)
    if ta != tb:
        return False
    if ta == "array":
        return len(a) == len(b) and all(_strict_eq(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(_strict_eq(a[k], b[k]) for k in a)
    return bool(a == b)


def _operator(op: str, arg: Any, pointer: str, source: str | None) -> Callable[[Any], int]:
    """One operator as a function of the looked-up value (``_MISSING`` when absent)."""
    if op == "exists":
        if not isinstance(arg, bool):
            raise PolicyError(pointer, "'exists' takes true or false", source=source)
        want = arg
        return lambda v: TRUE if (v is not _MISSING) == want else FALSE
    if op in ("eq", "ne"):
        t = _json_type(arg)
        negate = op == "ne"

        def eq(v: Any) -> int:
            if v is _MISSING or _json_type(v) != t:
                return UNKNOWN
            return TRUE if _strict_eq(v, arg) != negate else FALSE

        return eq
    if op in ("in", "not_in"):
        if not isinstance(arg, list):
            raise PolicyError(pointer, f"{op!r} takes an array", source=source)
        types = {_json_type(x) for x in arg}
        items = list(arg)
        negate = op == "not_in"

        def member(v: Any) -> int:
            if v is _MISSING:
                return UNKNOWN
            if not items:  # nothing is in the empty list, whatever its type
                return TRUE if negate else FALSE
            if _json_type(v) not in types:
                return UNKNOWN
            return TRUE if any(_strict_eq(v, x) for x in items) != negate else FALSE

        return member
    if op in ("gt", "gte", "lt", "lte"):
        if not _is_number(arg):
            raise PolicyError(pointer, f"{op!r} takes a finite number", source=source)
        bound = arg
        compare: Callable[[Any], bool] = {
            "gt": lambda v: v > bound,
            "gte": lambda v: v >= bound,
            "lt": lambda v: v < bound,
            "lte": lambda v: v <= bound,
        }[op]
        return lambda v: (TRUE if compare(v) else FALSE) if _is_number(v) else UNKNOWN
    if op == "glob":
        if not isinstance(arg, str):
            raise PolicyError(pointer, "'glob' takes a string", source=source)
        match = compile_glob(arg)
        return lambda v: (TRUE if match(v) else FALSE) if isinstance(v, str) else UNKNOWN
    raise PolicyError(pointer, f"unknown operator {op!r}; known: {', '.join(sorted(OPERATORS))}", source=source)


def _attribute_test(where: str, key: str, ops: Mapping[str, Any], pointer: str, source: str | None) -> Condition:
    if not isinstance(ops, Mapping) or not ops:
        raise PolicyError(
            pointer,
            "must be an object of operators (eq, ne, in, not_in, gt, gte, lt, lte, exists, glob)",
            source=source,
        )
    if not key or any(not part for part in key.split(".")):
        raise PolicyError(pointer, f"{key!r} is not a valid dotted key", source=source)
    fns = tuple(_operator(op, arg, pointer + json_pointer([op]), source) for op, arg in ops.items())
    text = f"{where}.{key} " + " and ".join(f"{op} {arg!r}" for op, arg in ops.items())

    if where == "params":

        def test(req: EvalRequest) -> int:
            if req.params is None:
                return DEFERRED
            v = lookup(req.params, key)
            return combine([fn(v) for fn in fns])

    else:

        def test(req: EvalRequest) -> int:
            v = lookup(req.context, key)
            return combine([fn(v) for fn in fns])

    return Condition(f"{where}.{key}", text, test)


def _string_list(value: Any, pointer: str, source: str | None) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise PolicyError(pointer, "must be an array of strings", source=source)
    return value


def _parse_time(value: Any, pointer: str, source: str | None) -> time:
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}(:\d{2})?", value):
        raise PolicyError(pointer, "must be a time of day as HH:MM or HH:MM:SS", source=source)
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise PolicyError(pointer, f"{value!r} is not a valid time of day", source=source) from None


#: The shape of an IANA time zone name (``Asia/Riyadh``, ``America/Argentina/Buenos_Aires``, ``Etc/GMT+3``,
#: ``UTC``), checked before the tz database is asked: a name is never a path and never long.
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]{0,29}(?:/[A-Za-z0-9_+-]{1,30}){0,2}")
_ZONE_NAME_RULE = "must be an IANA time zone name such as Asia/Riyadh or UTC (letters, digits, _ + - and /)"


def _time_window(spec: Any, pointer: str, source: str | None) -> Condition:
    if not isinstance(spec, Mapping):
        raise PolicyError(pointer, "must be an object", source=source)
    extra = sorted(set(spec) - {"start", "end", "timezone", "days"})
    if extra:
        raise PolicyError(
            f"{pointer}/{extra[0]}", "is not a time_window key (start, end, timezone, days)", source=source
        )
    start = _parse_time(spec["start"], f"{pointer}/start", source) if "start" in spec else time(0, 0)
    end = _parse_time(spec["end"], f"{pointer}/end", source) if "end" in spec else None
    tz_name = spec.get("timezone", "UTC")
    if not isinstance(tz_name, str) or not _ZONE_NAME.fullmatch(tz_name):
        # Not echoed: it is not a zone name, and could be anything an author pasted.
        raise PolicyError(f"{pointer}/timezone", _ZONE_NAME_RULE, source=source)
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PolicyError(f"{pointer}/timezone", f"unknown time zone {tz_name!r}", source=source) from None
    days = _string_list(spec.get("days", list(_DAYS)), f"{pointer}/days", source)
    for i, d in enumerate(days):
        if d not in _DAYS:
            raise PolicyError(f"{pointer}/days/{i}", f"{d!r} is not one of {', '.join(_DAYS)}", source=source)
    day_set = frozenset(_DAYS.index(d) for d in days)

    def test(req: EvalRequest) -> int:
        if req.now is None or req.now.tzinfo is None:
            return UNKNOWN  # a clock without a zone could mean any local time
        local = req.now.astimezone(tz)
        t = local.time().replace(tzinfo=None)
        if end is None:
            inside, day = t >= start, local.weekday()
        elif start <= end:
            inside, day = start <= t < end, local.weekday()
        else:  # the window wraps past midnight; it belongs to the day it started on
            inside = t >= start or t < end
            day = local.weekday() if t >= start else (local.weekday() - 1) % 7
        return TRUE if inside and day in day_set else FALSE

    text = f"time in [{start.isoformat()}, {end.isoformat() if end else '24:00'}) {tz_name} on {','.join(days)}"
    return Condition("time_window", text, test)


def _risk_tiers(tiers: frozenset[str]) -> Condition:
    def test(r: EvalRequest) -> int:
        if r.risk_tier is None:
            return UNKNOWN
        return TRUE if r.risk_tier in tiers else FALSE

    return Condition("risk_tiers", f"risk tier in {sorted(tiers)}", test)


def _agents(patterns: list[str]) -> Condition:
    globs = tuple(compile_glob(g) for g in patterns)

    def test(r: EvalRequest) -> int:
        return TRUE if any(m(r.agent) for m in globs) else FALSE

    return Condition("agents", f"agent matches {patterns}", test)


def _roles(roles: frozenset[str], *, negate: bool) -> Condition:
    if negate:

        def test(r: EvalRequest) -> int:
            return FALSE if r.roles & roles else TRUE

        return Condition("not_roles", f"caller has no role in {sorted(roles)}", test)

    def test_any(r: EvalRequest) -> int:
        return TRUE if r.roles & roles else FALSE

    return Condition("roles", f"caller has a role in {sorted(roles)}", test_any)


def _capabilities(names: list[str], actions: frozenset[str]) -> Condition:
    def test(r: EvalRequest) -> int:
        return TRUE if r.action in actions else FALSE

    return Condition("capabilities", f"action belongs to capability {names}", test)


def compile_conditions(
    conditions: Mapping[str, Any],
    pointer: str,
    *,
    capabilities: Mapping[str, frozenset[str]],
    source: str | None = None,
) -> tuple[Condition, ...]:
    """Compile a ``conditions`` object. Unknown keys and bad values are load errors.

    ``capabilities`` maps each capability id of the atlas to its action ids.
    """
    out: list[Condition] = []
    for key, value in conditions.items():
        at = pointer + json_pointer([key])
        if key == "risk_tiers":
            out.append(_risk_tiers(frozenset(_string_list(value, at, source))))
        elif key == "agents":
            out.append(_agents(_string_list(value, at, source)))
        elif key in ("roles", "not_roles"):
            out.append(_roles(frozenset(_string_list(value, at, source)), negate=key == "not_roles"))
        elif key == "capabilities":
            members: set[str] = set()
            for i, cap in enumerate(_string_list(value, at, source)):
                if cap not in capabilities:
                    raise PolicyError(f"{at}/{i}", f"capability {cap!r} is not declared in this atlas", source=source)
                members |= capabilities[cap]
            out.append(_capabilities(value, frozenset(members)))
        elif key == "context_matches":
            if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
                raise PolicyError(at, "must be an object of strings", source=source)
            for ck, cv in value.items():
                out.append(_attribute_test("context", ck, {"eq": cv}, at + json_pointer([ck]), source))
        elif key == "time_window":
            out.append(_time_window(value, at, source))
        elif key in ("params", "context"):
            if not isinstance(value, Mapping):
                raise PolicyError(at, "must be an object of dotted keys to operators", source=source)
            for ak, ops in value.items():
                out.append(_attribute_test(key, ak, ops, at + json_pointer([ak]), source))
        else:
            raise PolicyError(
                at, f"unknown condition key {key!r}; known: {', '.join(sorted(CONDITION_KEYS))}", source=source
            )
    return tuple(out)


def evaluate_conditions(conditions: tuple[Condition, ...], req: EvalRequest) -> int:
    """The combined result of ``conditions`` for ``req`` (TRUE when there are none)."""
    return combine([c.test(req) for c in conditions]) if conditions else TRUE
