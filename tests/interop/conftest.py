"""Fixtures for the interoperability tests: Go's golang.org/x/mod/sumdb verifies CRA's ledger output.

The Go side is our own small CLI in ``go/cra_go_verify``, built once per session
in GOPATH mode against Debian's ``golang-golang-x-mod-dev`` (no network, no Go
modules). Without Go the tests are skipped, unless ``CRA_REQUIRE_SERVICES=1`` (set by
``.ci/run``), which turns a missing toolchain into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from tests import tiers

GO_SOURCE = Path(__file__).resolve().parent / "go" / "cra_go_verify"
GOPATH = Path(os.environ.get("CRA_GOPATH", "/usr/share/gocode"))
XMOD_PACKAGES = ("golang.org/x/mod/sumdb/note", "golang.org/x/mod/sumdb/tlog")
INSTALL_HINT = (
    "install Go and golang.org/x/mod from Debian: "
    "apt-get install golang-go golang-golang-x-mod-dev "
    "(or set CRA_GOPATH to a GOPATH holding golang.org/x/mod)"
)

GoVerify = Callable[..., subprocess.CompletedProcess[str]]


def _missing() -> str | None:
    """Why the Go verifier cannot be built here, or ``None`` if it can."""
    if shutil.which("go") is None:
        return "the `go` command is not on PATH"
    for package in XMOD_PACKAGES:
        if not (GOPATH / "src" / package).is_dir():
            return f"the Go package {package} is missing from GOPATH {GOPATH}"
    return None


@pytest.fixture(scope="session")
def go_verify(tmp_path_factory: pytest.TempPathFactory) -> GoVerify:
    """A callable running the Go verifier: ``go_verify("proof", vkeys, proof_file, entry_file)``."""
    reason = _missing()
    if reason is not None:
        tiers.unavailable(f"the Go interop tests need Go: {reason}; {INSTALL_HINT}")
    go = shutil.which("go")
    assert go is not None
    workdir = tmp_path_factory.mktemp("go-verify")
    binary = workdir / "cra-go-verify"
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GOPATH),
        "GOCACHE": str(workdir / "gocache"),
        "GOFLAGS": "",
        "GOPROXY": "off",
    }
    build = subprocess.run(  # noqa: S603 - the Go toolchain building our own test tool
        [go, "build", "-o", str(binary), "."],
        cwd=GO_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"building the Go verifier failed:\n{build.stdout}{build.stderr}", pytrace=False)

    def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - our own test tool, with test arguments
            [str(binary), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    return run
