"""The repository stands on its own and says the same thing everywhere: one licence, vendored
vectors that match their recorded digests, nothing that reaches outside the checkout, a light import."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from tests.conftest import EXAMPLES, ROOT, VECTORS

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]


def test_the_licence_file_is_the_one_pyproject_declares() -> None:
    assert PROJECT["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text


@pytest.mark.parametrize("atlas", sorted(p.parent.name for p in EXAMPLES.glob("*/atlas.json")))
def test_every_example_atlas_carries_the_projects_licence(atlas: str) -> None:
    manifest = json.loads((EXAMPLES / atlas / "atlas.json").read_text("utf-8"))
    assert manifest["license"] == PROJECT["license"]["text"]


def test_the_vendored_vectors_are_exactly_the_recorded_files() -> None:
    recorded = {}
    for line in (VECTORS / "SHA256SUMS").read_text("utf-8").splitlines():
        digest, name = line.split("  ", 1)
        recorded[name] = digest
    own = {"SHA256SUMS", "README.md", "cra-1.0/LICENSE", "tlog/LICENSE"}
    present = {p.relative_to(VECTORS).as_posix() for p in VECTORS.rglob("*") if p.is_file()} - own
    assert present == set(recorded)
    changed = [n for n, d in recorded.items() if hashlib.sha256((VECTORS / n).read_bytes()).hexdigest() != d]
    assert changed == []
    assert len(recorded) == 196 + 9  # the Merkle vectors, and the CRA 1.0 schemas, OpenAPI and golden case


def test_nothing_reaches_for_a_directory_beside_the_checkout() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "src", "tests", "tools", "docs", "README.md", "CONTRIBUTING.md", "pyproject.toml"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not tracked:
        pytest.fail("git ls-files listed nothing: not a checkout")
    this = Path(__file__).relative_to(ROOT).as_posix()
    needle = "../" + "shared"
    offenders = [f for f in tracked if f != this and needle in (ROOT / f).read_text("utf-8", errors="replace")]
    assert offenders == []


@pytest.mark.parametrize("package", ["cra", "cra.policy"])
def test_importing_the_core_loads_no_adapter(package: str) -> None:
    """Issue #13: ``import cra`` and ``import cra.policy`` load the pure core and the in-memory runtime
    alone; the ledger's cryptography, the database, the web framework, wasmtime and the package
    metadata (about 110 ms of zipfile and email parsing) are loaded when first used."""
    heavy = (
        "sqlalchemy", "alembic", "fastapi", "starlette", "wasmtime", "redis", "polars", "uvicorn",
        "cryptography", "cra.ledger", "cra.store", "cra.sandbox", "importlib.metadata",
    )  # fmt: skip
    probe = f"import sys, {package}; print([m for m in {heavy!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)  # noqa: S603
    assert done.stdout.strip() == "[]"


def test_the_adapters_the_package_root_names_load_when_first_used() -> None:
    import cra
    from cra.ledger.bundle import verify_bundle
    from cra.ledger.note import NoteSigner, NoteVerifier
    from cra.runtime.ledger import AuditLedger
    from cra.store.datadir import open_ledger

    assert (cra.AuditLedger, cra.NoteSigner, cra.NoteVerifier) == (AuditLedger, NoteSigner, NoteVerifier)
    assert (cra.open_ledger, cra.verify_bundle) == (open_ledger, verify_bundle)
    assert cra.__version__ == metadata.version("cra")
    assert set(cra.__all__) <= set(dir(cra))
    with pytest.raises(AttributeError, match="no attribute 'Resolverr'"):
        _ = cra.Resolverr
