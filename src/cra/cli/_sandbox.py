"""``cra sandbox`` runs a Python file in the WebAssembly sandbox; ``cra build-wasm`` packages the engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from cra.errors import SandboxError, ValidationError
from cra.policy.modules import ModuleEvaluator, ModuleLimits
from cra.runtime.code import CodeRun, Limits, check_file_path

from ._output import EXIT_NEGATIVE, fail, print_json

sandbox_app = typer.Typer(help="Run untrusted Python in the WebAssembly sandbox.", no_args_is_help=True)

_DEFAULTS = Limits()
_MAX_INPUT_BYTES = 256 * 1024 * 1024
CacheOption = Annotated[
    Path | None,
    typer.Option("--cache-dir", help="Where the compiled sandbox is kept (default: $CRA_CACHE_DIR or ~/.cache/cra)."),
]


def policy_modules(source: bytes, limits: ModuleLimits) -> ModuleEvaluator:
    """The loader of wasm policies for every command; wasmtime is imported only when an atlas has one."""
    from cra.sandbox.policy_module import load_policy_module

    return load_policy_module(source, limits)


def _inputs(paths: list[Path], *, as_json: bool) -> dict[str, bytes]:
    """Each --input file under its own name; each directory under its name, recursively."""
    files: dict[str, bytes] = {}
    total = 0
    for given in paths:
        if given.is_dir():
            found = [(p, f"{given.name}/{p.relative_to(given).as_posix()}") for p in sorted(given.rglob("*"))]
            pairs = [(p, name) for p, name in found if p.is_file() and not p.is_symlink()]
        elif given.is_file():
            pairs = [(given, given.name)]
        else:
            fail(f"--input {given}: no such file or directory", as_json=as_json)
        for path, name in pairs:
            try:
                check_file_path(name, f"--input {given}")
                data = path.read_bytes()
            except ValidationError as exc:
                fail(exc, as_json=as_json)
            except OSError as exc:
                fail(f"--input {path}: {exc.strerror}", as_json=as_json)
            if name in files:
                fail(f"--input {path}: two inputs are both named {name!r}", as_json=as_json)
            total += len(data)
            if total > _MAX_INPUT_BYTES:
                fail(f"the inputs are larger than {_MAX_INPUT_BYTES >> 20} MiB in all", as_json=as_json)
            files[name] = data
    return files


def _write_outputs(out: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        target = out.joinpath(*name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


@sandbox_app.command("run")
def sandbox_run(
    file: Annotated[Path, typer.Argument(help="The Python file to run.")],
    timeout: Annotated[float, typer.Option("--timeout", help="Wall-clock deadline, seconds.")] = _DEFAULTS.timeout_s,
    memory: Annotated[int, typer.Option("--memory", help="Memory cap, MiB.")] = _DEFAULTS.memory_mb,
    fuel: Annotated[int, typer.Option("--fuel", help="Fuel: about one unit per instruction.")] = _DEFAULTS.fuel,
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random source the code sees.")] = 0,
    inputs: Annotated[
        list[Path] | None,
        typer.Option("--input", help="A file or directory to place in the scratch directory (repeatable)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the files the run created or changed here.")] = None,
    cache_dir: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Run FILE in the sandbox. Exits 0 when the run succeeded, 1 when it did not, 2 on bad input."""
    try:
        code = file.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"{file}: {getattr(exc, 'strerror', None) or exc}", as_json=as_json)
    try:
        limits = Limits.from_json({"timeout_s": timeout, "memory_mb": memory, "fuel": fuel})
        request = CodeRun(code=code, files=_inputs(inputs or [], as_json=as_json), seed=seed, limits=limits)
    except ValidationError as exc:
        option = {"/timeout_s": "--timeout", "/memory_mb": "--memory", "/fuel": "--fuel", "/seed": "--seed"}
        fail(f"{option.get(exc.path, exc.path)}: {exc.reason}", as_json=as_json)
    from cra.sandbox import WasmSandbox

    sandbox = WasmSandbox(cache_dir)
    try:
        sandbox.prepare(progress=lambda step: typer.echo(step, err=True))  # a cold cache builds, with progress shown
        result = sandbox.run(request)
    except SandboxError as exc:
        fail(exc, as_json=as_json)
    if out is not None:
        try:
            _write_outputs(out, dict(result.files))
        except OSError as exc:
            fail(f"--out {out}: the run's files cannot be written there: {exc.strerror or exc}", as_json=as_json)
    if as_json:
        shown = result.to_json(with_files=False)
        shown["files"] = sorted(result.files)
        print_json(shown)
    else:
        sys.stdout.buffer.write(result.stdout)
        sys.stdout.flush()
        sys.stderr.buffer.write(result.stderr)
        if not result.ok:
            detail = f": {result.message}" if result.message else ""
            code_part = f" (exit code {result.exit_code})" if result.exit_code is not None else ""
            typer.secho(f"sandbox: {result.reason}{code_part}{detail}", err=True, fg=typer.colors.RED)
        sys.stderr.flush()
    if not result.ok:
        raise typer.Exit(EXIT_NEGATIVE)


@sandbox_app.command("build")
def sandbox_build(
    cache_dir: CacheOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the artifact as JSON.")] = False,
) -> None:
    """Build and compile the sandbox now (it is otherwise built on first use)."""
    from cra.sandbox import WasmSandbox

    try:
        artifact = WasmSandbox(cache_dir).prepare()
    except SandboxError as exc:
        fail(exc, as_json=as_json)
    shown = {
        "path": str(artifact.path),
        "key": artifact.key,
        "built": artifact.built,
        "build_s": artifact.build_s,
        "compile_s": artifact.compile_s,
    }
    if as_json:
        print_json(shown)
    elif artifact.built:
        typer.echo(f"built {artifact.path} (componentize {artifact.build_s:.1f} s, compile {artifact.compile_s:.1f} s)")
    else:
        typer.echo(f"up to date: {artifact.path}")


def build_wasm(
    out: Annotated[Path, typer.Option("--out", help="Where to write the component.")] = Path("cra-engine.wasm"),
    as_json: Annotated[bool, typer.Option("--json", help="Print what was built as JSON.")] = False,
) -> None:
    """Package CRA's engine as a WebAssembly component exporting evaluate and resolve over JSON."""
    from cra.sandbox.engine_component import build_engine

    try:
        built = build_engine(out)
    except SandboxError as exc:
        fail(exc, as_json=as_json)
    shown = {
        "path": str(built.path),
        "size_bytes": built.size_bytes,
        "build_s": round(built.build_s, 2),
        "modules": list(built.modules),
        "exports": ["evaluate", "resolve"],
    }
    if as_json:
        print_json(shown)
    else:
        size = built.size_bytes / (1 << 20)
        typer.echo(f"built {built.path} ({size:.1f} MiB, {len(built.modules)} modules, {built.build_s:.1f} s)")
