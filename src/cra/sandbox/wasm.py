"""The tier 1 sandbox: CPython compiled to a WebAssembly component, run by wasmtime.

Every run gets a fresh store and instance, so nothing survives from one run to
the next, and hard limits that the code cannot reach:

* fuel, counted per instruction;
* a wall-clock deadline, by epoch interruption: each run has an engine of its
  own (a lane), whose ticker thread advances the epoch once per ``tick_ms`` of
  the run's real time, and the deadline is set before every instantiation;
* a cap on linear memory;
* bounded stdout and stderr;
* one scratch directory, mounted as ``/work``, as the whole filesystem;
* no network: every socket interface traps.

The clocks and randomness WASI offers are replaced by :mod:`cra.sandbox.virtual`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import wasmtime
from wasmtime import component as wc

from cra.errors import SandboxError
from cra.runtime.code import CodeResult, CodeRun, Limits
from cra.sandbox._traps import trap_causes
from cra.sandbox.artifacts import Artifact, built_artifact, default_cache_dir, ensure_artifact
from cra.sandbox.scratch import Scratch, sweep
from cra.sandbox.virtual import RunState, StopRun

__all__ = ["WasmSandbox"]

_WASI = "0.2.9"
_MB = 1024 * 1024
#: Changing anything in ``_engine_config`` must change this, so that cached artifacts are rebuilt.
_ENGINE_SETTINGS = "fuel,epoch,nan-canonical,relaxed-simd-deterministic"

_current = threading.local()
_log = logging.getLogger(__name__)


def _engine_config() -> wasmtime.Config:
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_nan_canonicalization = True
    config.wasm_relaxed_simd_deterministic = True
    return config


class _Ticker:
    """Advances an engine's epoch by one every ``tick`` seconds of a run's wall-clock time, while the
    run is active, and can end the run at once.

    The ticks are counted from the moment the run began, not from the ticker's wake-ups: a ticker
    thread that was not scheduled for a while catches up, so a deadline is kept in real time even
    on a loaded machine. The count starts again with each run (a lane runs one at a time), so time
    that passed between runs is never charged to the next one.
    """

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._active = 0
        self._since = 0.0  # when the current run began
        self._counted = 0  # ticks given to the current run so far
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
            self._since, self._counted = time.monotonic(), 0
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cra-sandbox-epoch", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1

    def interrupt(self, ticks: int) -> None:
        """Advance the epoch past a deadline set ``ticks`` ahead: the engine's running code traps now."""
        for _ in range(ticks + 1):
            self._engine.increment_epoch()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self._tick)
            with self._cond:  # under the lock: a run that begins now starts its own count
                if self._active == 0:
                    continue
                due = int((time.monotonic() - self._since) / self._tick) - self._counted
                self._counted += due
                for _ in range(due):
                    self._engine.increment_epoch()


class _Lane:
    """An engine with the component loaded into it, for one run at a time.

    Each concurrent run has a lane of its own, so that the scratch watchdog can
    interrupt one run (by advancing its engine's epoch) without touching the others.
    """

    def __init__(self, artifact: Path, tick: float) -> None:
        self.engine = wasmtime.Engine(_engine_config())
        try:
            self.component = wc.Component.deserialize_file(self.engine, str(artifact))
        except wasmtime.WasmtimeError as exc:
            raise SandboxError(f"the compiled sandbox cannot be loaded: {exc}") from None
        self.linker = wc.Linker(self.engine)
        self.linker.add_wasip2()
        self.linker.allow_shadowing = True
        with self.linker.root() as root:
            _define_host(root)
        self.ticker = _Ticker(self.engine, tick)


class _Watch:
    """Measures a run's scratch directory while the run goes on, and ends the run once it passes a bound.

    It measures every ``interval`` seconds, or twice as long as the last measure
    took if that is longer, so that watching never costs more than a third of a core.
    """

    def __init__(self, scratch: Scratch, limits: Limits, stop: Callable[[], None], interval: float) -> None:
        self._scratch = scratch
        self._limits = limits
        self._stop_run = stop
        self._interval = interval
        self._done = threading.Event()
        self.excess: str | None = None
        self._thread = threading.Thread(target=self._loop, name="cra-sandbox-scratch", daemon=True)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def check(self) -> str | None:
        usage = self._scratch.usage(most_bytes=self._limits.disk_bytes, most_entries=self._limits.disk_entries)
        return usage.excess(most_bytes=self._limits.disk_bytes, most_entries=self._limits.disk_entries)

    def _loop(self) -> None:
        wait = self._interval
        while not self._done.wait(wait):
            started = time.perf_counter()
            try:
                excess = self.check()
            except OSError as exc:
                excess = f"the scratch directory could not be measured: {exc.strerror or type(exc).__name__}"
            if excess is not None:
                self.excess = excess
                self._stop_run()
                return
            wait = max(self._interval, 2 * (time.perf_counter() - started))


def _state() -> RunState:
    state: RunState | None = getattr(_current, "state", None)
    if state is None:
        raise wasmtime.WasmtimeError("no sandbox run is active on this thread")
    return state


def _hostcall(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A host function that ends the run with a recorded reason, and never lets any exception
    (a ``BaseException`` included, which wasmtime-py would not convert) escape into wasmtime."""

    def call(store: wasmtime.StoreContext, *args: Any) -> Any:
        try:
            return fn(store, *args)
        except StopRun as stop:
            _current.stop = stop
            raise wasmtime.WasmtimeError(stop.message) from None
        except wasmtime.WasmtimeError:
            raise
        except BaseException as exc:  # noqa: BLE001 - nothing may unwind through wasmtime's frames
            _current.stop = StopRun("trap", f"a host function failed: {type(exc).__name__}")
            raise wasmtime.WasmtimeError(_current.stop.message) from None

    return call


def _fuel_left(store: wasmtime.StoreContext) -> int:
    return wasmtime.Store.get_fuel(store)  # type: ignore[arg-type]  # a StoreContext reads the same fuel


def _datetime(ns: int) -> wc.Record:
    record = wc.Record()
    record.__dict__.update(seconds=ns // 1_000_000_000, nanoseconds=ns % 1_000_000_000)
    return record


def _refuse(what: str) -> Callable[..., Any]:
    def refuse(store: wasmtime.StoreContext, *args: Any) -> Any:
        raise StopRun("trap", what)

    return refuse


def _define_host(root: wc.LinkerInstance) -> None:
    """The virtual clocks, the seeded randomness, the sleep and the refused network."""
    with root.add_instance(f"wasi:clocks/monotonic-clock@{_WASI}") as monotonic:
        monotonic.add_func("now", _hostcall(lambda s: _state().monotonic_ns(_fuel_left(s))))
        monotonic.add_func("resolution", _hostcall(lambda s: 1))
        blocked = "blocking waits are not available in the sandbox (time.sleep and asyncio are virtual)"
        monotonic.add_func("subscribe-instant", _hostcall(_refuse(blocked)))
        monotonic.add_func("subscribe-duration", _hostcall(_refuse(blocked)))
    with root.add_instance(f"wasi:clocks/wall-clock@{_WASI}") as wall:
        wall.add_func("now", _hostcall(lambda s: _datetime(_state().wall_ns(_fuel_left(s)))))
        wall.add_func("resolution", _hostcall(lambda s: _datetime(1)))
    with root.add_instance(f"wasi:random/random@{_WASI}") as rand:
        rand.add_func("get-random-bytes", _hostcall(lambda s, n: _state().random.take(n)))
        rand.add_func("get-random-u64", _hostcall(lambda s: int.from_bytes(_state().random.take(8), "little")))
    no_network = "the sandbox has no network"
    with root.add_instance(f"wasi:sockets/instance-network@{_WASI}") as network:
        network.add_func("instance-network", _hostcall(_refuse(no_network)))
    with root.add_instance(f"wasi:sockets/tcp-create-socket@{_WASI}") as tcp:
        tcp.add_func("create-tcp-socket", _hostcall(_refuse(no_network)))
    with root.add_instance(f"wasi:sockets/udp-create-socket@{_WASI}") as udp:
        udp.add_func("create-udp-socket", _hostcall(_refuse(no_network)))
    with root.add_instance("cra:sandbox/host@1.0.0") as host:
        host.add_func("sleep", _hostcall(lambda s, ns: _state().sleep(ns)))


def _classify(exc: wasmtime.WasmtimeError) -> tuple[str, str]:
    """The reason and message of a run that wasmtime stopped."""
    stop: StopRun | None = getattr(_current, "stop", None)
    if stop is not None:
        return stop.reason, stop.message
    text = str(exc)
    causes = trap_causes(text)
    cause_line = causes[-1] if causes else type(exc).__name__
    if "all fuel consumed" in text:
        return "out_of_fuel", "the code used all its fuel"
    if "wasm trap: interrupt" in text:
        return "timeout", "the code ran past its deadline"
    if "exceeds memory limits" in text:
        return "memory", f"the memory cap is below what the interpreter needs to start ({cause_line})"
    if "call stack exhausted" in text:
        return "trap", "the code exhausted the WebAssembly call stack (recursion too deep)"
    return "trap", f"the code trapped: {cause_line}"[:1000]


class WasmSandbox:
    """The :class:`~cra.runtime.code.Sandbox` port on wasmtime. Thread-safe: each concurrent
    run gets an engine of its own (a lane, reused by later runs) and its own store.

    The component is built on first use (about half a minute, once per cache
    key) into ``cache_dir`` (:func:`~cra.sandbox.artifacts.default_cache_dir`);
    later processes load the compiled artifact in milliseconds.
    """

    def __init__(
        self,
        cache_dir: Path | None = None,
        *,
        tick_ms: float = 10.0,
        scratch_parent: Path | None = None,
        watch_ms: float = 20.0,
    ):
        self._cache_dir = cache_dir or default_cache_dir()
        self._scratch_parent = scratch_parent
        self._tick = tick_ms / 1000
        self._watch = watch_ms / 1000
        self._lock = threading.Lock()
        self._idle: list[_Lane] = []
        self._preparing = False
        self.artifact: Artifact | None = None

    def built(self) -> bool:
        """Whether the cache already holds this sandbox's compiled component (so :meth:`prepare` only loads)."""
        return built_artifact(self._cache_dir, _ENGINE_SETTINGS) is not None

    def prepare(self, progress: Callable[[str], None] | None = None) -> Artifact:
        """Build or load the component now, rather than on the first run, and remove the scratch
        directories that runs of dead processes left behind (:func:`~cra.sandbox.scratch.sweep`).

        ``progress`` is told each step of a build, in words."""
        with self._lock:
            if self.artifact is None:
                artifact = ensure_artifact(self._cache_dir, _ENGINE_SETTINGS, self._compile, progress)
                self._idle.append(_Lane(artifact.path, self._tick))
                sweep(self._scratch_parent)
                self.artifact = artifact
            return self.artifact

    def prepare_in_background(self) -> None:
        """Start :meth:`prepare` on a thread of its own, logging the build's start, steps and end.
        Until it is done, :meth:`warming` says so, and a server refuses runs rather than hold them."""
        with self._lock:
            if self.artifact is not None or self._preparing:
                return
            self._preparing = True
        threading.Thread(target=self._prepare_logged, name="cra-sandbox-build", daemon=True).start()

    def _prepare_logged(self) -> None:
        started = time.perf_counter()
        _log.info("preparing the WebAssembly sandbox (a first build on this machine takes about a minute)")
        try:
            artifact = self.prepare(progress=_log.info)
        except SandboxError:
            _log.exception("the WebAssembly sandbox cannot be built; code.execute calls will fail until it can")
        else:
            verb = "built" if artifact.built else "loaded"
            _log.info("the WebAssembly sandbox is ready: %s in %.1f s", verb, time.perf_counter() - started)
        finally:
            self._preparing = False

    def warming(self) -> str | None:
        """Why a run cannot start now, while :meth:`prepare_in_background` is still at work; else None."""
        if self._preparing:
            return "the sandbox is still being built (about a minute, once per machine); retry shortly"
        return None

    def _compile(self, wasm: Path) -> bytes:
        return bytes(wc.Component.from_file(wasmtime.Engine(_engine_config()), str(wasm)).serialize())

    @contextmanager
    def _lane(self) -> Iterator[_Lane]:
        artifact = self.prepare()
        with self._lock:
            lane = self._idle.pop() if self._idle else None
        if lane is None:
            lane = _Lane(artifact.path, self._tick)
        try:
            yield lane
        finally:
            with self._lock:
                self._idle.append(lane)

    def run(self, request: CodeRun) -> CodeResult:
        limits = request.limits
        state = RunState(
            fuel=limits.fuel,
            seed=request.seed,
            sleep_budget_ns=int(limits.sleep_s * 1e9),
            output_bytes=limits.output_bytes,
        )
        ticks = max(1, math.ceil(limits.timeout_s / self._tick))
        with Scratch(request.files, self._scratch_parent) as scratch:
            with self._lane() as lane:
                watch = _Watch(scratch, limits, lambda: lane.ticker.interrupt(ticks), self._watch)
                with lane.ticker.running(), watch:
                    reason, exit_code, message, fuel_left, took = self._execute(lane, request, state, scratch, ticks)
            excess = watch.excess or watch.check()
            if excess is not None:
                reason, message = "disk", excess
            files, files_left_out = scratch.outputs(limits.files_bytes, limits.disk_entries)
        return CodeResult(
            reason=reason,
            exit_code=exit_code,
            stdout=state.stdout.value(),
            stderr=state.stderr.value(),
            stdout_truncated=state.stdout.truncated,
            stderr_truncated=state.stderr.truncated,
            files=files,
            files_truncated=files_left_out,
            fuel_used=limits.fuel - fuel_left,
            duration_ms=took * 1000,
            message=message,
        )

    def _execute(
        self, lane: _Lane, request: CodeRun, state: RunState, scratch: Scratch, ticks: int
    ) -> tuple[str, int | None, str, int, float]:
        limits = request.limits
        store = wasmtime.Store(lane.engine)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_mb * _MB)
        wasi = wasmtime.WasiConfig()
        wasi.argv = [request.filename]
        wasi.stdout_custom = state.stdout.write
        wasi.stderr_custom = state.stderr.write
        wasi.preopen_dir(str(scratch.path), "/work", True)
        store.set_wasi(wasi)
        _current.state, _current.stop = state, None
        started = time.perf_counter()
        store.set_epoch_deadline(ticks)
        try:
            instance = lane.linker.instantiate(store, lane.component)
            run = instance.get_func(store, "run")
            if run is None:
                raise SandboxError("the sandbox component exports no run function")
            outcome = run(store, request.code, request.filename)
        except wasmtime.ExitTrap as exc:
            exit_code = exc.code
            reason, message = ("ok", "") if exit_code == 0 else ("exit_code", "the code exited the interpreter")
            return reason, exit_code, message, store.get_fuel(), time.perf_counter() - started
        except wasmtime.WasmtimeError as exc:
            reason, message = _classify(exc)
            return reason, None, message, store.get_fuel(), time.perf_counter() - started
        finally:
            _current.state = _current.stop = None
        took = time.perf_counter() - started
        exit_code = int(getattr(outcome, "exit-code"))
        exception = outcome.exception
        if exit_code == 0:
            return "ok", 0, "", store.get_fuel(), took
        if exception == "MemoryError":
            return "memory", exit_code, "the code ran out of memory (MemoryError)", store.get_fuel(), took
        if exception == "RecursionError":
            return "exit_code", exit_code, "the code recursed too deeply (RecursionError)", store.get_fuel(), took
        return "exit_code", exit_code, "", store.get_fuel(), took
