"""``cra ledger export`` then ``cra verify``: a bundle cut short, or stripped of an attestation,
exits 1 with the reason; a whole one says what it proved (issue #12, finding 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.e2e._process import cra


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Any]]:
    """A demo's data directory, its verifier key, and the session bundle `cra ledger export` wrote."""
    root = tmp_path_factory.mktemp("complete")
    where = ["--data-dir", str(root / "data")]
    demo = cra("demo", "--out", root / "demo.trace.jsonl", *where)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    session = json.loads((root / "demo.trace.jsonl").read_text().splitlines()[0])["session_id"]
    out = root / "session.bundle.json"
    export = cra("ledger", "export", session, "--out", out, *where)
    assert export.returncode == 0, export.stderr
    vkey = cra("keys", "show", *where).stdout.strip()
    return root, vkey, json.loads(out.read_text())


def _write(tmp_path: Path, bundle: dict[str, Any]) -> Path:
    path = tmp_path / "tampered.bundle.json"
    path.write_text(json.dumps(bundle))
    return path


def test_a_whole_exported_session_verifies_and_says_it_is_complete(
    exported: tuple[Path, str, dict[str, Any]],
) -> None:
    root, vkey, bundle = exported
    path = root / "session.bundle.json"
    human = cra("verify", path, "--key", vkey)
    assert human.returncode == 0, human.stderr
    assert ": complete and ended: sequences 0-" in human.stdout
    assert "every decision the log attested is here" in human.stdout
    report = json.loads(cra("verify", path, "--key", vkey, "--json").stdout)
    (session,) = report["sessions"]
    assert report["format"] == bundle["format"] == "cra.dev/trace-bundle/v2"
    assert (session["complete"], session["state"]) == (True, "ended")
    assert session["events"] == len(bundle["entries"]) == session["last_sequence"] + 1
    assert len(session["attestations"]) == len(bundle["attestations"]) > 0
    assert session["unattested_decisions"] == []


def test_the_first_3_events_and_no_attestations_exit_1_as_truncated(
    exported: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    _, vkey, bundle = exported
    total = len(bundle["entries"])
    cut = _write(tmp_path, {**bundle, "entries": bundle["entries"][:3], "attestations": []})
    result = cra("verify", cut, "--key", vkey)
    assert result.returncode == 1
    assert f"the bundle is truncated: it holds 3 of the {total} events" in result.stderr
    assert f"sequences 3 to {total - 1} are missing" in result.stderr
    as_json = cra("verify", cut, "--key", vkey, "--json")
    assert as_json.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["verified"] is False
    assert "truncated" in answer["reason"]


def test_a_dropped_last_event_or_attestation_or_statement_exits_1_naming_it(
    exported: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    _, vkey, bundle = exported
    last = _write(tmp_path, {**bundle, "entries": bundle["entries"][:-1]})
    result = cra("verify", last, "--key", vkey)
    assert result.returncode == 1
    assert f"sequence {len(bundle['entries']) - 1} is missing" in result.stderr

    dropped = bundle["attestations"][0]
    event_id = json.loads(dropped.split("\n")[1])["attestation_id"]
    stripped = _write(tmp_path, {**bundle, "attestations": bundle["attestations"][1:]})
    result = cra("verify", stripped, "--key", vkey)
    assert result.returncode == 1
    assert f"the attestation of decision event {event_id} (" in result.stderr

    unstated = _write(tmp_path, {**bundle, "sessions": []})
    result = cra("verify", unstated, "--key", vkey)
    assert result.returncode == 1
    assert "holds no signed statement of the session" in result.stderr


def test_a_v1_bundle_exits_1_saying_it_cannot_show_it_is_complete(
    exported: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    _, vkey, bundle = exported
    old = {k: v for k, v in bundle.items() if k != "sessions"}
    result = cra("verify", _write(tmp_path, {**old, "format": "cra.dev/trace-bundle/v1"}), "--key", vkey)
    assert result.returncode == 1
    assert "cannot show that it holds whole sessions" in result.stderr


def test_an_open_session_sealed_from_a_file_verifies_as_open_with_its_decisions_unattested(
    exported: tuple[Path, str, dict[str, Any]], tmp_path: Path
) -> None:
    root, _, _ = exported
    where = ["--data-dir", str(tmp_path / "data")]
    vkey = cra("keys", "generate", *where).stdout.strip()
    lines = (root / "demo.trace.jsonl").read_text().splitlines(keepends=True)
    head = tmp_path / "head.trace.jsonl"
    head.write_text("".join(lines[:20]))
    assert cra("ledger", "append", head, *where).returncode == 0
    session = json.loads(lines[0])["session_id"]
    out = tmp_path / "open.bundle.json"
    assert cra("ledger", "export", session, "--out", out, *where).returncode == 0
    human = cra("verify", out, "--key", vkey)
    assert human.returncode == 0, human.stderr
    assert "complete up to tree size 20, still open there: sequences 0-19 (20 events" in human.stdout
    assert "sealed without an attestation" in human.stdout
    (report,) = json.loads(cra("verify", out, "--key", vkey, "--json").stdout)["sessions"]
    assert (report["state"], report["events"], report["attestations"]) == ("open", 20, [])
    assert report["unattested_decisions"]
