"""The pure core imports only itself, the standard library and fastjsonschema (DESIGN §2)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cra"
CORE = ("protocol", "policy", "context", "trace", "ledger")
FORBIDDEN_INSIDE_CRA = ("cra.runtime", "cra.store", "cra.cli")


def absolute(package: str, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` inside ``package``."""
    if not level:
        assert module is not None
        return module
    parts = package.split(".")
    base = parts[: len(parts) - level + 1]
    return ".".join([*base, module] if module else base)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, with line numbers. ``from m import n`` yields ``m`` and ``m.n``
    (``n`` may be a submodule, as in ``from cra import runtime``)."""
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = absolute(package, node.level, node.module)
            found.append((node.lineno, module))
            found.extend((node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*")
    return found


def is_cra(module: str) -> bool:
    return module == "cra" or module.startswith("cra.")


def violation(module: str, *, allow_cryptography: bool) -> str | None:
    top = module.split(".")[0]
    if is_cra(module):
        if any(module == f or module.startswith(f + ".") for f in FORBIDDEN_INSIDE_CRA):
            return "the core never imports the runtime or the CLI"
        return None
    if top in sys.stdlib_module_names or top == "fastjsonschema":
        return None
    if top == "cryptography" and allow_cryptography:
        return None
    return "not the standard library, fastjsonschema or (in cra.ledger) cryptography"


def core_files() -> list[Path]:
    files = sorted(p for name in CORE for p in (SRC / name).rglob("*.py"))
    assert len(files) >= 4 * 2, "the core packages were not found"
    return files


@pytest.mark.parametrize("path", core_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_core_modules_import_only_what_the_core_may(path: Path) -> None:
    in_ledger = SRC / "ledger" in path.parents
    bad = [
        f"line {line}: {module} ({why})"
        for line, module in imported_modules(path)
        if (why := violation(module, allow_cryptography=in_ledger))
    ]
    assert not bad, "\n".join(bad)


def test_only_the_ledger_may_import_cryptography() -> None:
    """Within the core; the service's token verification (cra.server) may use it too."""
    ledger = SRC / "ledger"
    offenders = []
    for path in sorted(p for package in CORE for p in (SRC / package).rglob("*.py")):
        inside_ledger = ledger in path.parents
        for line, module in imported_modules(path):
            if module.split(".")[0] == "cryptography" and not inside_ledger:
                offenders.append(f"{path.relative_to(SRC)}:{line}")
            if inside_ledger and (why := violation(module, allow_cryptography=True)):
                offenders.append(f"{path.relative_to(SRC)}:{line}: {module} ({why})")
    assert not offenders, "\n".join(offenders)


def test_the_checker_catches_what_it_must() -> None:
    assert violation("cra.runtime.engine", allow_cryptography=False)
    assert violation("cra.cli", allow_cryptography=False)
    assert violation("cra.store.ledger", allow_cryptography=True)
    assert violation("yaml", allow_cryptography=False)
    assert violation("typer", allow_cryptography=False)
    assert violation("cryptography.hazmat", allow_cryptography=False)
    assert violation("cryptography.hazmat", allow_cryptography=True) is None
    assert violation("cra.runtimes", allow_cryptography=False) is None
    assert violation("cra.policy.compiler", allow_cryptography=False) is None
    assert violation("json", allow_cryptography=False) is None
    assert violation("__future__", allow_cryptography=False) is None
    assert violation("fastjsonschema", allow_cryptography=False) is None


def test_relative_imports_are_resolved() -> None:
    assert absolute("cra.policy", 0, "json") == "json"
    assert absolute("cra.policy", 1, "_glob") == "cra.policy._glob"
    assert absolute("cra.policy", 1, None) == "cra.policy"
    assert absolute("cra.policy", 2, "runtime") == "cra.runtime"
    assert violation(absolute("cra.policy", 2, "runtime"), allow_cryptography=False)
