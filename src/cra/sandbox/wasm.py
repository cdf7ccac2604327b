"""The tier 1 sandbox: CPython compiled to a WebAssembly component, run by wasmtime.

Every run gets a fresh store and instance, so nothing survives from one run to
the next, and hard limits that the code cannot reach:

* fuel, counted per instruction;
* a wall-clock deadline, by epoch interruption: a ticker thread advances the
  engine's epoch every ``tick_ms`` while any run is active, and the deadline is
  set before every instantiation;
* a cap on linear memory;
* bounded stdout and stderr;
* one scratch directory, mounted as ``/work``, as the whole filesystem;
* no network: every socket interface traps.

The clocks and randomness WASI offers are replaced by :mod:`cra.sandbox.virtual`.
"""

from __future__ import annotations

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
from cra.runtime.code import CodeResult, CodeRun
from cra.sandbox._traps import trap_causes
from cra.sandbox.artifacts import Artifact, built_artifact, default_cache_dir, ensure_artifact
from cra.sandbox.scratch import Scratch
from cra.sandbox.virtual import RunState, StopRun

__all__ = ["WasmSandbox"]

_WASI = "0.2.9"
_MB = 1024 * 1024
#: Changing anything in ``_engine_config`` must change this, so that cached artifacts are rebuilt.
_ENGINE_SETTINGS = "fuel,epoch,nan-canonical,relaxed-simd-deterministic"

_current = threading.local()


def _engine_config() -> wasmtime.Config:
    config = wasmtime.Config()
    config.consume_fuel = True
    config.epoch_interruption = True
    config.cranelift_nan_canonicalization = True
    config.wasm_relaxed_simd_deterministic = True
    return config


class _Ticker:
    """Advances an engine's epoch every ``tick`` seconds while at least one run is active."""

    def __init__(self, engine: wasmtime.Engine, tick: float) -> None:
        self._engine = engine
        self._tick = tick
        self._active = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cra-sandbox-epoch", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._active == 0:
                    self._cond.wait()
            time.sleep(self._tick)
            self._engine.increment_epoch()


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
    """The :class:`~cra.runtime.code.Sandbox` port on wasmtime. Thread-safe: runs on several
    threads at once each get their own store.

    The component is built on first use (about half a minute, once per cache
    key) into ``cache_dir`` (:func:`~cra.sandbox.artifacts.default_cache_dir`);
    later processes load the compiled artifact in milliseconds.
    """

    def __init__(self, cache_dir: Path | None = None, *, tick_ms: float = 10.0, scratch_parent: Path | None = None):
        self._cache_dir = cache_dir or default_cache_dir()
        self._scratch_parent = scratch_parent
        self._engine = wasmtime.Engine(_engine_config())
        self._tick = tick_ms / 1000
        self._ticker = _Ticker(self._engine, self._tick)
        self._lock = threading.Lock()
        self._component: wc.Component | None = None
        self._linker: wc.Linker | None = None
        self.artifact: Artifact | None = None

    def built(self) -> bool:
        """Whether the cache already holds this sandbox's compiled component (so :meth:`prepare` only loads)."""
        return built_artifact(self._cache_dir, _ENGINE_SETTINGS) is not None

    def prepare(self) -> Artifact:
        """Build or load the component now, rather than on the first run."""
        with self._lock:
            if self._component is None:
                artifact = ensure_artifact(self._cache_dir, _ENGINE_SETTINGS, self._compile)
                try:
                    component = wc.Component.deserialize_file(self._engine, str(artifact.path))
                except wasmtime.WasmtimeError as exc:
                    raise SandboxError(f"the compiled sandbox at {artifact.path} cannot be loaded: {exc}") from None
                linker = wc.Linker(self._engine)
                linker.add_wasip2()
                linker.allow_shadowing = True
                with linker.root() as root:
                    _define_host(root)
                self._component, self._linker, self.artifact = component, linker, artifact
            assert self.artifact is not None
            return self.artifact

    def _compile(self, wasm: Path) -> bytes:
        return bytes(wc.Component.from_file(self._engine, str(wasm)).serialize())

    def run(self, request: CodeRun) -> CodeResult:
        self.prepare()
        assert self._component is not None
        assert self._linker is not None
        limits = request.limits
        state = RunState(
            fuel=limits.fuel,
            seed=request.seed,
            sleep_budget_ns=int(limits.sleep_s * 1e9),
            output_bytes=limits.output_bytes,
        )
        with Scratch(request.files, self._scratch_parent) as scratch, self._ticker.running():
            reason, exit_code, message, fuel_left, took = self._execute(request, state, scratch)
            files, files_left_out = scratch.outputs(limits.files_bytes)
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

    def _execute(self, request: CodeRun, state: RunState, scratch: Scratch) -> tuple[str, int | None, str, int, float]:
        assert self._component is not None
        assert self._linker is not None
        limits = request.limits
        store = wasmtime.Store(self._engine)
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
        store.set_epoch_deadline(max(1, math.ceil(limits.timeout_s / self._tick)))
        try:
            instance = self._linker.instantiate(store, self._component)
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
