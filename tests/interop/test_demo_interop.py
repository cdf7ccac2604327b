"""The issue's acceptance check: what ``cra demo`` proves, Go's sumdb packages accept."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e._process import cra
from tests.interop.conftest import GoVerify


def test_the_demo_checkpoint_and_decision_proof_verify_in_go(go_verify: GoVerify, tmp_path: Path) -> None:
    result = cra("demo", "--out", tmp_path / "demo.trace.jsonl", "--data-dir", tmp_path / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    vkeys = ",".join((tmp_path / "demo.vkey").read_text().split())
    proof = tmp_path / "demo.tlog-proof"
    entry = tmp_path / "demo.entry"
    checked = go_verify("proof", vkeys, proof, entry)
    assert checked.returncode == 0, checked.stderr

    checkpoint = tmp_path / "demo.checkpoint"
    checkpoint.write_text(json.loads((tmp_path / "demo.bundle.json").read_text())["checkpoint"])
    assert go_verify("note", vkeys, checkpoint).returncode == 0

    entry.write_bytes(entry.read_bytes().replace(b'"deny"', b'"allow"'))
    assert go_verify("proof", vkeys, proof, entry).returncode == 1
