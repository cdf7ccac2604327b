"""CRA's engine as a WebAssembly component: built by ``cra build-wasm``, called under wasmtime.

The component holds the pure core (protocol, policy, context, trace) and the
in-memory runtime that :mod:`cra.runtime.portable` needs, with fastjsonschema
and the tzdata time zones, inside CPython compiled to wasm32 by componentize-py. It exports ``evaluate``
and ``resolve`` over JSON: the protocol's "policy engine compiled to
WebAssembly", which any wasmtime host can embed.

Which modules go in is worked out when building, by importing
``cra.runtime.portable`` in a child interpreter with CRA's package facade set
aside; the build fails if that reaches anything outside the core (the ledger's
``cryptography`` cannot be compiled to WebAssembly).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime
from wasmtime import component as wc

from cra.errors import SandboxError
from cra.sandbox._traps import trap_causes
from cra.sandbox.artifacts import GUEST_DIR, componentize

__all__ = ["EngineBuild", "EngineComponent", "build_engine"]

_MB = 1024 * 1024
_ROOT_DOC = '"""CRA\'s engine, as packaged into a WebAssembly component by ``cra build-wasm``."""\n'
_OUTSIDE_THE_CORE = ("cryptography", "yaml", "sqlalchemy", "fastapi", "redis", "wasmtime", "typer", "polars")
_LIST_MODULES = (
    "import json, sys, types\n"
    "package = types.ModuleType('cra')\n"
    "package.__path__ = [sys.argv[1]]\n"
    "sys.modules['cra'] = package\n"
    "import cra.runtime.portable\n"
    "outside = set(sys.argv[2].split(','))\n"
    "print(json.dumps({\n"
    "    'modules': sorted(n for n in sys.modules if n.startswith('cra.')),\n"
    "    'outside': sorted(n for n in sys.modules if n.split('.')[0] in outside),\n"
    "}))\n"
)


@dataclass(frozen=True, slots=True)
class EngineBuild:
    """A built engine component."""

    path: Path
    size_bytes: int
    modules: tuple[str, ...]
    build_s: float


def _engine_modules(root: Path) -> list[str]:
    command = [sys.executable, "-I", "-c", _LIST_MODULES, str(root), ",".join(_OUTSIDE_THE_CORE)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)  # noqa: S603
    if done.returncode != 0:
        raise SandboxError(f"the engine's modules cannot be imported on their own: {done.stderr[-2000:]}")
    found = json.loads(done.stdout)
    if found["outside"]:
        raise SandboxError(f"the engine reaches beyond the pure core: {', '.join(found['outside'])}")
    return list(found["modules"])


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SandboxError(f"the engine needs the {name} package, which is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _stage(staging: Path) -> list[str]:
    """Copy the engine's modules, its schemas, fastjsonschema and the guest app into ``staging``."""
    root = Path(__file__).resolve().parents[1]  # the cra package
    modules = _engine_modules(root)
    (staging / "cra").mkdir(parents=True)
    (staging / "cra" / "__init__.py").write_text(_ROOT_DOC, "utf-8")
    for name in modules:
        relative = Path(*name.split(".")[1:])
        package_init = root / relative / "__init__.py"
        source = package_init if package_init.is_file() else (root / relative).with_suffix(".py")
        target = staging / "cra" / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    shutil.copytree(root / "protocol" / "schemas", staging / "cra" / "protocol" / "schemas")
    for package in ("fastjsonschema", "tzdata"):  # tzdata: there are no system time zones inside WebAssembly
        shutil.copytree(_package_dir(package), staging / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("cra_engine.py", "engine.wit"):
        shutil.copyfile(GUEST_DIR / name, staging / name)
    return modules


def build_engine(output: Path) -> EngineBuild:
    """Build the engine component into ``output`` (about half a minute)."""
    started = time.perf_counter()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cra-build-wasm-") as work:
        staging = Path(work) / "src"
        modules = _stage(staging)
        built = Path(work) / "engine.wasm"
        componentize(staging, staging / "engine.wit", "engine", "cra_engine", built)
        shutil.move(built, output)
    return EngineBuild(output, output.stat().st_size, tuple(modules), time.perf_counter() - started)


class EngineComponent:
    """Calls a built engine component under wasmtime: a fresh instance per call, with fuel and a memory cap.

    Compiling the component takes several seconds; do it once and keep the object.
    """

    def __init__(self, path: Path, *, fuel: int = 10**11, memory_mb: int = 1024) -> None:
        config = wasmtime.Config()
        config.consume_fuel = True
        config.cranelift_nan_canonicalization = True
        self._engine = wasmtime.Engine(config)
        try:
            self._component = wc.Component.from_file(self._engine, str(path))
        except wasmtime.WasmtimeError as exc:
            raise SandboxError(f"{path} is not a loadable component: {exc}") from None
        self._linker = wc.Linker(self._engine)
        self._linker.add_wasip2()
        self._fuel = fuel
        self._memory = memory_mb * _MB

    def evaluate(self, text: str) -> str:
        return self._call("evaluate", text)

    def resolve(self, text: str) -> str:
        return self._call("resolve", text)

    def _call(self, name: str, text: str) -> str:
        store = wasmtime.Store(self._engine)
        store.set_fuel(self._fuel)
        store.set_limits(memory_size=self._memory)
        store.set_wasi(wasmtime.WasiConfig())
        try:
            instance = self._linker.instantiate(store, self._component)
            func = instance.get_func(store, name)
            if func is None:
                raise SandboxError(f"the component exports no {name} function")
            answer = func(store, text)
        except wasmtime.WasmtimeError as exc:
            cause = "; ".join(trap_causes(str(exc))) or type(exc).__name__
            raise SandboxError(f"the engine component trapped in {name}: {cause[:500]}") from None
        if not isinstance(answer, str):
            raise SandboxError(f"the engine component's {name} answered {type(answer).__name__}, not text")
        return answer
