"""WebAssembly policy modules: an atlas policy that hands its decision to a core wasm module.

The module ABI (core WebAssembly, not a component):

* the module imports nothing; any import refuses the load;
* it exports ``memory`` (a 32-bit, unshared linear memory), ``alloc(len: i32) -> i32``,
  which returns a pointer to ``len`` writable bytes, and ``evaluate(ptr: i32, len: i32) -> i64``,
  which reads the UTF-8 JSON request at ``[ptr, ptr + len)`` and returns ``(out_ptr << 32) | out_len``
  pointing at its UTF-8 JSON answer ``{"decision": "allow" | "deny", "reason": "<text>"}``.

The answer must be exactly that object: both keys, no others (unknown keys are refused, so a
module cannot smuggle in fields a later CRA version would read), no repeated key, a reason that
is valid Unicode text. Pointers are pointers: ``alloc`` returning 0 is a failed allocation.

Everything fails closed. A call that traps, runs out of fuel, returns a pointer or length outside
its memory, answers too much (more than :data:`MAX_ANSWER_BYTES`), answers anything but that
object, exhausts its memory cap, or runs past its deadline, ends as a deny whose
:attr:`ModuleVerdict.failure` names what went wrong (``trap``, ``out_of_fuel``, ``deadline``,
``bad_pointer``, ``too_large``, ``bad_json``, ``bad_shape``, ``memory``) and whose reason explains
it. Requests above :data:`MAX_REQUEST_BYTES` are denied (``request_too_large``) without calling the
module, and if a module that loaded once could not be instantiated again after a failure, its calls
are denied (``unavailable``). A ``deadline`` failure is the one outcome that depends on the machine
and its load rather than on the module and the request alone; its ``fuel_used`` is what wasmtime had
accounted when it stopped the call, which may be less than was burnt.

Limits. Every :meth:`PolicyModule.evaluate` starts with the same fuel budget and the same
wall-clock deadline (``alloc`` and ``evaluate`` share both), and so does every instantiation (a
start function runs under them too). Fuel is deterministic, but its cost in time is not bounded:
one unit is one cheap instruction here and a slow one there. The deadline is the hard bound. It is
epoch interruption: the engine is built with ``epoch_interruption``, each call sets its store's
deadline to ``deadline_ms`` in ticks of :data:`TICK_MS` after the current epoch (rounded up, plus
one, since the next tick may come at once), and a ticker thread advances the epoch every tick
while at least one call or instantiation is under way, and sleeps otherwise. A call is never
stopped before its deadline. It is stopped within about a tick after it on an idle machine, and
somewhat later on a busy one, where the ticker wakes late: ticks it missed are not made up for,
so that a pause of the calling thread that holds the GIL (a garbage collection, say) costs a call
at most one tick (see :class:`_Ticker`). Linear memory is capped by the store's limiter; past the
cap ``memory.grow`` returns -1, and a failure once the memory has grown to its cap is reported as
``memory``. The engine disables threads (no shared memories), multiple memories, GC, function
references, exceptions and stack switching, and canonicalises NaNs, so that the same module and
request give the same answer and the same fuel on every machine.

State. The instance lives from one call to the next (instantiating costs ~0.3 ms, a call a few
microseconds), so a module that keeps state between calls may answer differently over time; the
fixtures in ``tests/fixtures/policy_modules`` keep none. After any failure the instance is
thrown away and a fresh one made from the compiled module, in a new store: wasmtime leaves a
store usable after a trap, but the module's own memory may be half-updated or grown to its cap,
and a fresh instance keeps hostile calls deterministic too.

Speed. The fast path calls ``wasmtime_func_call_unchecked`` (and the fuel and memory-size
functions) through wasmtime-py's private ctypes bindings, ``wasmtime._bindings``, with argument
buffers allocated once and each export's signature checked once per instance with ``Func.type``.
It copies the request in and the answer out through a memoryview of the linear memory, after
checking each range against the memory's length; the engine sets ``memory_may_move = False`` so
the base address never changes, and since a memory never shrinks the length is read again only
when a range falls past the last length seen (slicing a memoryview costs ~0.1 us where
``ctypes.memmove`` and ``ctypes.string_at`` cost ~0.6 us each; a view also cannot be written past
its end). ``Memory.read`` is never trusted for bounds: it silently returns empty bytes out of
range. This private API is why wasmtime is pinned to 50.0.1 in ``pyproject.toml``; with any other
installed version the module uses the checked path, which needs only the public API
(``Func.__call__``, ``Memory.read``/``write``, ``Store.set_fuel``/``get_fuel``). ``checked=True``
asks for that path explicitly; both give identical verdicts and fuel.

Threads. A wasmtime ``Store`` must not be used from two threads at once, so each
:class:`PolicyModule` serialises its calls with a lock. Load one module per thread for parallel
evaluation. wasmtime-py's ctypes calls release the GIL while WebAssembly runs, so a host that
calls modules from worker threads (the service does) keeps its event loop free.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Final

import wasmtime
from wasmtime import _bindings as _raw

from cra.errors import PolicyError
from cra.policy.modules import (
    DEFAULT_DEADLINE_MS,
    DEFAULT_FUEL,
    DEFAULT_MEMORY_MB,
    ModuleAnswer,
    ModuleEvaluator,
    ModuleLimits,
)
from cra.sandbox._traps import trap_causes

__all__ = ["MAX_ANSWER_BYTES", "MAX_REQUEST_BYTES", "TICK_MS", "ModuleVerdict", "PolicyModule", "load_policy_module"]

#: Requests longer than this are denied without calling the module.
MAX_REQUEST_BYTES: Final = 1024 * 1024
#: Answers longer than this are denied (``too_large``).
MAX_ANSWER_BYTES: Final = 64 * 1024
#: The epoch advances every this many milliseconds while a module runs: deadlines are whole ticks.
TICK_MS: Final = 5

_PINNED_WASMTIME: Final = "50.0.1"
_FAST_PATH_AVAILABLE: Final = metadata.version("wasmtime") == _PINNED_WASMTIME

_U32: Final = 0xFFFF_FFFF
_U64: Final = 0xFFFF_FFFF_FFFF_FFFF
_TABLE_ELEMENTS: Final = 10_000
_TABLES: Final = 4
#: Answers this short are remembered once judged (a policy usually gives a handful of answers).
_CACHE_ANSWER_BYTES: Final = 512
_CACHE_ENTRIES: Final = 1024

# The raw ctypes functions behind wasmtime-py's wrappers (private, pinned API).
_call_unchecked = _raw._wasmtime_func_call_unchecked
_set_fuel = _raw._wasmtime_context_set_fuel
_set_deadline = _raw._wasmtime_context_set_epoch_deadline
_get_fuel = _raw._wasmtime_context_get_fuel
_memory_size = _raw._wasmtime_memory_data_size
_memory_data = _raw._wasmtime_memory_data


@dataclass(frozen=True, slots=True)
class ModuleVerdict:
    """What a policy module decided, or why it is taken as a deny.

    ``failure`` is None when the module answered; otherwise a short code (see the module
    docstring) and ``allow`` is False. ``fuel_used`` counts the fuel of ``alloc`` and
    ``evaluate`` together.
    """

    allow: bool
    reason: str
    fuel_used: int
    failure: str | None


# -- the engine ----------------------------------------------------------------------------------------------------

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def _shared_engine() -> wasmtime.Engine:
    global _engine
    with _engine_lock:
        if _engine is None:
            config = wasmtime.Config()
            config.consume_fuel = True
            config.epoch_interruption = True  # every store sets its deadline before it runs anything
            config.cranelift_nan_canonicalization = True
            config.wasm_relaxed_simd_deterministic = True
            config.memory_may_move = False  # the fast path keeps a view of each memory
            config.wasm_threads = False
            config.wasm_multi_memory = False
            config.wasm_gc = False
            config.wasm_function_references = False
            config.wasm_exceptions = False
            config.wasm_stack_switching = False
            _engine = wasmtime.Engine(config)
        return _engine


class _Ticker:
    """Advances the shared engine's epoch every :data:`TICK_MS` while a module call or instantiation runs.

    ``enter`` and ``leave`` bracket each of them, at the cost of a lock each. With nothing
    running, the thread waits on an event and costs nothing; the first ``enter`` wakes it.

    Each tick comes a whole :data:`TICK_MS` after the one before, never sooner: the ticker sleeps
    that long, then advances the epoch by one. A tick that comes late is not made up for with a
    burst. The ticker needs the GIL to tick, so while the calling thread holds it (a garbage
    collection, say, between setting a call's deadline and entering WebAssembly) no ticks pile
    up to be charged to the call at once; and no time from before a call began can count
    against it. So a deadline of ``n`` ticks never ends before ``(n - 1) * TICK_MS``; on a busy
    machine, where the ticker wakes late, it ends a little after.
    """

    __slots__ = ("_active", "_idle", "_lock", "_thread", "_wake")

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked child has no ticker thread

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._active = 0
        self._idle = False
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._lock:
            self._active += 1
            if self._idle:
                self._idle = False
                self._wake.set()
            elif self._thread is None:
                self._thread = threading.Thread(target=self._run, name="cra-policy-module-epoch", daemon=True)
                self._thread.start()

    def leave(self) -> None:
        with self._lock:
            self._active -= 1

    def _run(self) -> None:
        engine = _shared_engine()
        tick = TICK_MS / 1000
        while True:
            with self._lock:
                idle = self._idle = not self._active
                if idle:
                    self._wake.clear()
            if idle:
                self._wake.wait()  # enter() sets it, under the lock, once it has seen the ticker idle
            time.sleep(tick)
            engine.increment_epoch()


_ticker = _Ticker()


def _deadline_ticks(deadline_ms: int) -> int:
    """Epoch ticks from now that leave at least ``deadline_ms``: the next tick may come at once."""
    return -(-deadline_ms // TICK_MS) + 1


# -- messages ------------------------------------------------------------------------------------------------------


def _compile_message(message: str) -> str:
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    head = lines[0] if lines else "unknown error"
    where = next((line.removeprefix("--> ") for line in lines if line.startswith("--> ")), None)
    if where is not None:
        return f"{head} (at {where})"
    causes = trap_causes(message)
    return f"{head}: {causes[-1]}" if "Caused by:" in lines and causes else head


def _trap_failure(
    code: wasmtime.TrapCode | None, message: str, where: str, fuel: int, deadline_ms: int
) -> tuple[str, str]:
    if code is wasmtime.TrapCode.OUT_OF_FUEL:
        return "out_of_fuel", f"the policy module ran out of fuel in {where} (budget {fuel})"
    if code is wasmtime.TrapCode.INTERRUPT:
        return "deadline", f"the policy module ran past its deadline of {deadline_ms} ms in {where}"
    causes = trap_causes(message)
    text = causes[-1] if causes else "unknown trap"
    if len(causes) > 1:
        text += " (" + "; ".join(causes[:-1]) + ")"
    name = code.name.lower() if code is not None else "error"
    return "trap", f"the policy module trapped in {where} ({name}): {text}"


def _bad_alloc(n: int, ptr: int, size: int) -> str:
    if ptr == 0:
        return f"alloc({n}) returned a null pointer"
    return f"alloc({n}) returned {ptr:#x}, but {n} bytes from there do not fit in the module's {size}-byte memory"


def _bad_answer(out_ptr: int, out_len: int, size: int) -> tuple[str, str]:
    """Why an answer at ``[out_ptr, out_ptr + out_len)`` is refused, for one that is out of memory or too long."""
    if out_ptr + out_len > size:
        return (
            "bad_pointer",
            f"evaluate returned an answer of {out_len} bytes at {out_ptr:#x}, outside the module's {size}-byte memory",
        )
    return "too_large", f"the answer is {out_len} bytes, more than the {MAX_ANSWER_BYTES} allowed"


_JSON_KIND: Final = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
_KEYS: Final = frozenset(("decision", "reason"))


def _judge_answer(answer: bytes) -> tuple[str | None, bool, str]:
    """``(failure, allow, reason)`` for the bytes a module answered; ``failure`` is None when they are valid."""
    try:
        text = answer.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "bad_json", False, f"the answer is not UTF-8 ({exc.reason} at byte {exc.start})"
    try:
        doc = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit
        detail = f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        return "bad_json", False, f"the answer is not JSON: {detail}"
    except RecursionError:
        return "bad_json", False, "the answer nests too deeply to parse"
    if not isinstance(doc, dict):
        kind = "null" if doc is None else _JSON_KIND.get(type(doc), "value")
        return "bad_shape", False, f"the answer is a JSON {kind}, not an object"
    if doc.keys() != _KEYS:
        unknown = sorted(doc.keys() - _KEYS)
        if unknown:
            shown = ", ".join(json.dumps(k) for k in unknown[:5])
            return "bad_shape", False, f"the answer has keys other than decision and reason: {shown}"
        missing = " and ".join(sorted(_KEYS - doc.keys()))
        return "bad_shape", False, f"the answer lacks {missing}"
    decision = doc["decision"]
    reason = doc["reason"]
    if decision != "allow" and decision != "deny":
        return "bad_shape", False, f'the decision must be "allow" or "deny", not {json.dumps(decision)[:60]}'
    if not isinstance(reason, str):
        kind = "null" if reason is None else _JSON_KIND.get(type(reason), "object")
        return "bad_shape", False, f"the reason must be a string, not a JSON {kind}"
    if not reason.isascii():
        try:
            reason.encode("utf-8")
        except UnicodeEncodeError:
            return "bad_json", False, "the reason holds an unpaired surrogate escape, which is not Unicode text"
    # Without a backslash, a key can only be spelt literally, so one literal occurrence of each
    # means neither is repeated; otherwise look at the pairs themselves.
    if "\\" in text or text.count('"decision"') != 1 or text.count('"reason"') != 1:
        pairs: list[tuple[str, object]] = json.loads(text, object_pairs_hook=list)
        if len(pairs) != len(_KEYS):
            return "bad_shape", False, "the answer repeats a key"
    return None, decision == "allow", reason


# -- instances -----------------------------------------------------------------------------------------------------


def _check_func(name: str, ty: wasmtime.FuncType, params: tuple[str, ...], results: tuple[str, ...]) -> None:
    got_params = tuple(str(p) for p in ty.params)
    got_results = tuple(str(r) for r in ty.results)
    if (got_params, got_results) != (params, results):
        want = f"({', '.join(params)}) -> {', '.join(results)}"
        got = f"({', '.join(got_params)}) -> {', '.join(got_results) or 'nothing'}"
        raise PolicyError("", f"the export {name!r} must have type {want}, not {got}")


_ALLOC_TYPE: Final = (("i32",), ("i32",))
_EVALUATE_TYPE: Final = (("i32", "i32"), ("i64",))


class _Instance:
    """One store and instance; the checked path uses only wasmtime-py's public API on it."""

    __slots__ = ("alloc", "evaluate", "initial_size", "memory", "store")

    def __init__(
        self, engine: wasmtime.Engine, module: wasmtime.Module, fuel: int, memory_bytes: int, ticks: int
    ) -> None:
        store = wasmtime.Store(engine)
        store.set_limits(
            memory_size=memory_bytes, table_elements=_TABLE_ELEMENTS, instances=1, tables=_TABLES, memories=1
        )
        # A start function, if the module has one, runs under the same fuel and deadline as a call.
        store.set_fuel(fuel)
        _ticker.enter()
        try:
            store.set_epoch_deadline(ticks)
            instance = wasmtime.Instance(store, module, [])
        finally:
            _ticker.leave()
        exports = instance.exports(store)
        memory = exports["memory"]
        alloc = exports["alloc"]
        evaluate = exports["evaluate"]
        if not isinstance(memory, wasmtime.Memory):
            raise PolicyError("", "the export 'memory' must be a memory")
        if not isinstance(alloc, wasmtime.Func) or not isinstance(evaluate, wasmtime.Func):
            raise PolicyError("", "the exports 'alloc' and 'evaluate' must be functions")
        # The unchecked calls trust these signatures: check them on the live functions, once.
        _check_func("alloc", alloc.type(store), *_ALLOC_TYPE)
        _check_func("evaluate", evaluate.type(store), *_EVALUATE_TYPE)
        self.store = store
        self.memory = memory
        self.alloc = alloc
        self.evaluate = evaluate
        self.initial_size = memory.data_len(store)


class _FastInstance(_Instance):
    """An instance with what the unchecked path needs prepared once: raw pointers, buffers, a view of memory.

    ``view`` is a writable memoryview of the linear memory as long as it was when last measured.
    The engine sets ``memory_may_move = False``, so the memory's base address never changes, and
    wasm memories never shrink, so anything inside ``view`` is inside the memory; a range past its
    end makes the caller measure again (:meth:`track`) before it decides.
    """

    __slots__ = (
        "alloc_ref",
        "ctx",
        "evaluate_ref",
        "fuel_left",
        "fuel_ref",
        "memory_ref",
        "raw",
        "trap",
        "trap_ref",
        "view",
    )

    def __init__(
        self, engine: wasmtime.Engine, module: wasmtime.Module, fuel: int, memory_bytes: int, ticks: int
    ) -> None:
        super().__init__(engine, module, fuel, memory_bytes, ticks)
        self.ctx = self.store._context()
        self.memory_ref = ctypes.byref(self.memory._memory)
        self.alloc_ref = ctypes.byref(self.alloc._func)
        self.evaluate_ref = ctypes.byref(self.evaluate._func)
        self.raw = (_raw.wasmtime_val_raw_t * 2)()  # arguments in, results out
        self.trap = ctypes.POINTER(_raw.wasm_trap_t)()
        self.trap_ref = ctypes.byref(self.trap)
        self.fuel_left = ctypes.c_uint64(0)
        self.fuel_ref = ctypes.byref(self.fuel_left)
        self.view = memoryview(bytearray())
        self.track()

    def track(self) -> memoryview:
        """Measure the memory again and return a view of all of it."""
        size: int = _memory_size(self.ctx, self.memory_ref)
        if size != len(self.view):
            base = ctypes.cast(_memory_data(self.ctx, self.memory_ref), ctypes.c_void_p).value
            if base is not None:
                self.view = memoryview((ctypes.c_ubyte * size).from_address(base)).cast("B")
        return self.view

    def take_trap(self) -> wasmtime.Trap:
        """The trap the last unchecked call left, owned by the returned object; the slot is reset."""
        trap = wasmtime.Trap._from_ptr(self.trap)
        self.trap = ctypes.POINTER(_raw.wasm_trap_t)()
        self.trap_ref = ctypes.byref(self.trap)
        return trap


class _CallFailed(Exception):
    """A module call that trapped or failed: ``failure`` and ``reason`` say how."""

    def __init__(self, failure: str, reason: str) -> None:
        super().__init__(reason)
        self.failure = failure
        self.reason = reason


# -- the policy module ---------------------------------------------------------------------------------------------


class PolicyModule:
    """A compiled, instantiated policy module. Build one with :meth:`load`; call :meth:`evaluate`."""

    __slots__ = (
        "_answers",
        "_deadline_ms",
        "_engine",
        "_fuel",
        "_instance",
        "_instance_class",
        "_lock",
        "_memory_bytes",
        "_module",
        "_page",
        "_sha256",
        "_ticks",
    )

    def __init__(
        self,
        engine: wasmtime.Engine,
        module: wasmtime.Module,
        sha256: str,
        *,
        fuel: int,
        memory_bytes: int,
        deadline_ms: int,
        checked: bool,
    ) -> None:
        """Private: use :meth:`load`. Raises what instantiating the module raises."""
        self._engine = engine
        self._module = module
        self._sha256 = sha256
        self._fuel = fuel
        self._memory_bytes = memory_bytes
        self._deadline_ms = deadline_ms
        self._ticks = _deadline_ticks(deadline_ms)
        self._instance_class = _Instance if checked or not _FAST_PATH_AVAILABLE else _FastInstance
        instance = self._instance_class(engine, module, fuel, memory_bytes, self._ticks)
        self._instance: _Instance | None = instance
        self._page = instance.memory.page_size(instance.store)
        self._lock = threading.Lock()
        self._answers: dict[bytes, tuple[bool, str]] = {}

    @classmethod
    def load(
        cls,
        source: bytes | str,
        *,
        fuel: int = DEFAULT_FUEL,
        memory_bytes: int = DEFAULT_MEMORY_MB * 1024 * 1024,
        deadline_ms: int = DEFAULT_DEADLINE_MS,
        checked: bool = False,
    ) -> PolicyModule:
        """Compile ``source`` (a wasm binary, or WAT text as ``str`` or ``bytes``) and instantiate it.

        ``fuel`` is the budget of every call; ``memory_bytes`` caps the module's linear memory;
        ``deadline_ms`` is the wall-clock deadline of every call and of the instantiation (the
        start function); ``checked`` selects the public-API call path. Raises :class:`~cra.errors.PolicyError`
        (path ``""``) when the module does not compile, imports anything, lacks an export or
        has one of the wrong type, or cannot be instantiated within its limits.
        """
        if isinstance(fuel, bool) or not isinstance(fuel, int) or fuel < 1:
            raise ValueError(f"fuel must be a positive integer, not {fuel!r}")
        if isinstance(memory_bytes, bool) or not isinstance(memory_bytes, int) or memory_bytes < 1:
            raise ValueError(f"memory_bytes must be a positive integer, not {memory_bytes!r}")
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, int) or deadline_ms < 1:
            raise ValueError(f"deadline_ms must be a positive integer, not {deadline_ms!r}")
        data = source.encode("utf-8") if isinstance(source, str) else bytes(source)
        engine = _shared_engine()
        try:
            module = wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as exc:
            raise PolicyError("", f"the module does not compile: {_compile_message(str(exc))}") from None
        _check_interface(module, memory_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            return cls(
                engine, module, sha256, fuel=fuel, memory_bytes=memory_bytes, deadline_ms=deadline_ms, checked=checked
            )
        except wasmtime.Trap as exc:
            _, reason = _trap_failure(exc.trap_code, exc.message, "its start function", fuel, deadline_ms)
            raise PolicyError("", f"the module cannot be instantiated: {reason}") from None
        except wasmtime.WasmtimeError as exc:
            raise PolicyError("", f"the module cannot be instantiated: {_compile_message(str(exc))}") from None

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the module's source bytes as given to :meth:`load` (``str`` as UTF-8)."""
        return self._sha256

    def evaluate(self, request_json: bytes) -> ModuleVerdict:
        """Run the module on one UTF-8 JSON request. Never raises for anything the module does."""
        if type(request_json) is not bytes:
            raise TypeError(f"request_json must be bytes, not {type(request_json).__name__}")
        if len(request_json) > MAX_REQUEST_BYTES:
            return ModuleVerdict(
                False,
                f"the request is {len(request_json)} bytes, more than the {MAX_REQUEST_BYTES} allowed",
                0,
                "request_too_large",
            )
        with self._lock:
            inst = self._instance
            if inst is None:
                inst = self._renew()
                if inst is None:
                    return ModuleVerdict(False, "the policy module could not be instantiated again", 0, "unavailable")
            _ticker.enter()
            try:
                if isinstance(inst, _FastInstance):
                    return self._evaluate_fast(inst, request_json)
                return self._evaluate_checked(inst, request_json)
            finally:
                _ticker.leave()

    # -- the two call paths ----------------------------------------------------------------------------------------

    def _evaluate_fast(self, inst: _FastInstance, request: bytes) -> ModuleVerdict:
        ctx = inst.ctx
        budget = self._fuel
        err = _set_fuel(ctx, budget)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        _set_deadline(ctx, self._ticks)
        raw = inst.raw
        n = len(request)
        raw[0].i32 = n
        err = _call_unchecked(ctx, inst.alloc_ref, raw, 1, inst.trap_ref)
        if err or inst.trap:
            return self._fast_call_failed(inst, err, "alloc")
        sptr = raw[0].i32
        ptr = sptr & _U32
        end = ptr + n
        view = inst.view
        if ptr == 0 or end > len(view):
            view = inst.track()  # alloc may have grown the memory
            if ptr == 0 or end > len(view):
                return self._failed(inst, "bad_pointer", _bad_alloc(n, ptr, len(view)))
        view[ptr:end] = request
        raw[0].i32 = sptr
        raw[1].i32 = n
        err = _call_unchecked(ctx, inst.evaluate_ref, raw, 2, inst.trap_ref)
        if err or inst.trap:
            return self._fast_call_failed(inst, err, "evaluate")
        packed = raw[0].i64 & _U64
        out_ptr = packed >> 32
        out_len = packed & _U32
        out_end = out_ptr + out_len
        view = inst.view
        if out_end > len(view):
            view = inst.track()  # evaluate may have grown the memory
        if out_end > len(view) or out_len > MAX_ANSWER_BYTES:
            failure, reason = _bad_answer(out_ptr, out_len, len(view))
            return self._failed(inst, failure, reason)
        answer = view[out_ptr:out_end].tobytes()
        err = _get_fuel(ctx, inst.fuel_ref)
        if err:
            raise wasmtime.WasmtimeError._from_ptr(err)
        fuel_used = budget - inst.fuel_left.value
        known = self._answers.get(answer)
        if known is not None:
            return ModuleVerdict(known[0], known[1], fuel_used, None)
        return self._judged(inst, answer, fuel_used)

    def _fast_call_failed(self, inst: _FastInstance, err: object, where: str) -> ModuleVerdict:
        if err:
            error = wasmtime.WasmtimeError._from_ptr(err)  # type: ignore[arg-type]
            message = str(error)
            error.close()
            failure, reason = _trap_failure(None, message, where, self._fuel, self._deadline_ms)
        else:
            trap = inst.take_trap()
            failure, reason = _trap_failure(trap.trap_code, trap.message, where, self._fuel, self._deadline_ms)
            trap.close()
        return self._failed(inst, failure, reason)

    def _evaluate_checked(self, inst: _Instance, request: bytes) -> ModuleVerdict:
        store = inst.store
        memory = inst.memory
        budget = self._fuel
        store.set_fuel(budget)
        store.set_epoch_deadline(self._ticks)
        n = len(request)
        try:
            ptr = self._checked_call(inst.alloc, store, "alloc", n) & _U32
            size = memory.data_len(store)
            if ptr == 0 or ptr + n > size:
                raise _CallFailed("bad_pointer", _bad_alloc(n, ptr, size))
            if n:
                memory.write(store, request, ptr)
            packed = self._checked_call(inst.evaluate, store, "evaluate", ptr, n) & _U64
            out_ptr = packed >> 32
            out_len = packed & _U32
            size = memory.data_len(store)
            if out_ptr + out_len > size or out_len > MAX_ANSWER_BYTES:
                raise _CallFailed(*_bad_answer(out_ptr, out_len, size))
        except _CallFailed as failed:
            return self._failed(inst, failed.failure, failed.reason)
        answer = bytes(memory.read(store, out_ptr, out_ptr + out_len))
        fuel_used = budget - store.get_fuel()
        known = self._answers.get(answer)
        if known is not None:
            return ModuleVerdict(known[0], known[1], fuel_used, None)
        return self._judged(inst, answer, fuel_used)

    def _checked_call(self, func: wasmtime.Func, store: wasmtime.Store, where: str, *args: int) -> int:
        try:
            result = func(store, *args)
        except wasmtime.Trap as trap:
            raise _CallFailed(
                *_trap_failure(trap.trap_code, trap.message, where, self._fuel, self._deadline_ms)
            ) from None
        except wasmtime.WasmtimeError as error:
            raise _CallFailed(*_trap_failure(None, str(error), where, self._fuel, self._deadline_ms)) from None
        assert isinstance(result, int)
        return result

    # -- shared endings --------------------------------------------------------------------------------------------

    def _judged(self, inst: _Instance, answer: bytes, fuel_used: int) -> ModuleVerdict:
        failure, allow, reason = _judge_answer(answer)
        if failure is not None:
            return self._failed(inst, failure, reason)
        if len(answer) <= _CACHE_ANSWER_BYTES and len(self._answers) < _CACHE_ENTRIES:
            self._answers[answer] = (allow, reason)
        return ModuleVerdict(allow, reason, fuel_used, None)

    def _failed(self, inst: _Instance, failure: str, reason: str) -> ModuleVerdict:
        """A deny for a call that went wrong; the instance is replaced by a fresh one.

        A failure once the memory has grown to its cap (it cannot take one more page) is put
        down to memory: past the cap ``memory.grow`` returns -1, and what a module does next
        (trap, loop, answer garbage) is the symptom.
        """
        fuel_used = self._fuel - inst.store.get_fuel()
        size = inst.memory.data_len(inst.store)
        if size > inst.initial_size and size + self._page > self._memory_bytes:
            reason = f"the policy module used all the memory it may have ({self._memory_bytes} bytes), then: {reason}"
            failure = "memory"
        self._instance = None
        self._renew()
        return ModuleVerdict(False, reason, fuel_used, failure)

    def _renew(self) -> _Instance | None:
        """A fresh instance in a fresh store, or None when the module cannot be instantiated again."""
        try:
            self._instance = self._instance_class(
                self._engine, self._module, self._fuel, self._memory_bytes, self._ticks
            )
        except (wasmtime.WasmtimeError, wasmtime.Trap, PolicyError):
            self._instance = None
        return self._instance


def _check_interface(module: wasmtime.Module, memory_bytes: int) -> None:
    """Refuse a module that imports anything or lacks (or mistypes) an export of the ABI."""
    imports = module.imports
    if imports:
        names = ", ".join(f"{imp.module}.{imp.name} ({_kind(imp.type)})" for imp in imports[:5])
        more = f" and {len(imports) - 5} more" if len(imports) > 5 else ""
        raise PolicyError("", f"a policy module may import nothing, but this one imports {names}{more}")
    exports = {export.name: export.type for export in module.exports}
    missing = [name for name in ("memory", "alloc", "evaluate") if name not in exports]
    if missing:
        raise PolicyError("", f"the module does not export {', '.join(missing)}")
    memory = exports["memory"]
    if not isinstance(memory, wasmtime.MemoryType):
        raise PolicyError("", f"the export 'memory' must be a memory, not a {_kind(memory)}")
    if memory.is_64:
        raise PolicyError("", "the export 'memory' must be a 32-bit memory, not a 64-bit one")
    if memory.limits.min * memory.page_size > memory_bytes:
        raise PolicyError(
            "",
            f"the module's memory starts at {memory.limits.min * memory.page_size} bytes, "
            f"more than the cap of {memory_bytes} bytes",
        )
    for name, (params, results) in (("alloc", _ALLOC_TYPE), ("evaluate", _EVALUATE_TYPE)):
        ty = exports[name]
        if not isinstance(ty, wasmtime.FuncType):
            raise PolicyError("", f"the export {name!r} must be a function, not a {_kind(ty)}")
        _check_func(name, ty, params, results)


def _kind(ty: object) -> str:
    kinds = {
        wasmtime.FuncType: "function",
        wasmtime.MemoryType: "memory",
        wasmtime.TableType: "table",
        wasmtime.GlobalType: "global",
    }
    return next((kind for cls, kind in kinds.items() if isinstance(ty, cls)), "tag")


def load_policy_module(source: bytes, limits: ModuleLimits) -> ModuleEvaluator:
    """The :data:`~cra.policy.modules.ModuleLoader` that CRA's hosts give the engine for ``wasm`` policies."""
    module = PolicyModule.load(
        source, fuel=limits.fuel, memory_bytes=limits.memory_bytes, deadline_ms=limits.deadline_ms
    )

    def evaluate(request: bytes) -> ModuleAnswer:
        verdict = module.evaluate(request)
        return ModuleAnswer(verdict.allow, verdict.reason, verdict.failure)

    return evaluate
