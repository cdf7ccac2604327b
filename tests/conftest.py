"""Fixtures shared by every test suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "atlases"


def shared_dir() -> Path:
    """The shared conformance data: ``$CRA_SHARED_DIR`` or ``../shared`` beside the repository."""
    path = Path(os.environ.get("CRA_SHARED_DIR", ROOT.parent / "shared"))
    if not (path / "conformance" / "cra-1.0").is_dir():
        pytest.fail(f"the shared conformance data is missing at {path}; set CRA_SHARED_DIR", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared() -> Path:
    return shared_dir()


@pytest.fixture(scope="session")
def cra10(shared: Path) -> Path:
    return shared / "conformance" / "cra-1.0"


@pytest.fixture(scope="session")
def wasm_sandbox():  # type: ignore[no-untyped-def]
    """One real WebAssembly sandbox for the session, built into the user's cache on first use."""
    from cra.sandbox import WasmSandbox

    sandbox = WasmSandbox()
    sandbox.prepare()
    return sandbox
