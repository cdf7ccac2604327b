"""``cra keys``, ``cra ledger``, ``cra verify`` and the demo's ledger evidence, run as real processes."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from tests.e2e._process import cra


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory and the files one demo run left in it."""
    root = tmp_path_factory.mktemp("demo")
    result = cra("demo", "--out", root / "demo.trace.jsonl", "--data-dir", root / "data")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "signed checkpoint" in result.stdout
    return root


def data(root: Path) -> list[str]:
    return ["--data-dir", str(root / "data")]


def test_the_demo_bundle_and_proof_verify_with_only_the_verifier_key(demo: Path) -> None:
    bundle = cra("verify", demo / "demo.bundle.json", "--key", demo / "demo.vkey", "--json")
    assert bundle.returncode == 0, bundle.stdout + bundle.stderr
    report = json.loads(bundle.stdout)
    events = (demo / "demo.trace.jsonl").read_text().splitlines()
    assert report["verified"] is True
    assert report["events"] == len(events)
    assert report["attestations"]
    single = cra(
        "verify", "--proof", demo / "demo.tlog-proof", "--entry", demo / "demo.entry", "--key", demo / "demo.vkey"
    )
    assert single.returncode == 0, single.stderr


def test_the_demo_entry_is_a_line_of_its_trace_and_its_leaf_is_in_the_proof_checkpoint(demo: Path) -> None:
    entry = (demo / "demo.entry").read_bytes()
    assert entry.decode() in (demo / "demo.trace.jsonl").read_text().splitlines()
    event_id = json.loads(entry)["event_id"]
    printed = cra("ledger", "entry", event_id, *data(demo))
    assert printed.returncode == 0
    assert printed.stdout.encode() == entry


def test_a_tampered_entry_bundle_or_key_is_rejected_with_exit_1(demo: Path, tmp_path: Path) -> None:
    entry = tmp_path / "entry"
    entry.write_bytes((demo / "demo.entry").read_bytes().replace(b'"deny"', b'"allow"'))
    result = cra("verify", "--proof", demo / "demo.tlog-proof", "--entry", entry, "--key", demo / "demo.vkey")
    assert result.returncode == 1
    assert "does not reach the root" in result.stderr

    bundle = json.loads((demo / "demo.bundle.json").read_text())
    bundle["entries"][3]["entry"] = bundle["entries"][3]["entry"].replace('"sequence":3', '"sequence":4')
    tampered = tmp_path / "bundle.json"
    tampered.write_text(json.dumps(bundle))
    result = cra("verify", tampered, "--key", demo / "demo.vkey")
    assert result.returncode == 1
    assert "/entries/3" in result.stderr

    other = cra("keys", "generate", "--data-dir", tmp_path / "other")
    assert other.returncode == 0
    result = cra("verify", demo / "demo.bundle.json", "--key", other.stdout.strip())
    assert result.returncode == 1
    assert "no signature by a trusted key" in result.stderr


def test_malformed_inputs_exit_2_with_a_reason(demo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = cra("verify", broken, "--key", demo / "demo.vkey")
    assert result.returncode == 2
    assert "invalid JSON" in result.stderr
    result = cra("verify", demo / "demo.bundle.json", "--key", "not+a+key")
    assert result.returncode == 2
    assert "--key" in result.stderr
    assert cra("verify", demo / "demo.bundle.json").returncode == 2


def test_keys_generate_show_rotate(tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path)]
    first = cra("keys", "generate", "--origin", "example.com/cra/test", *where)
    assert first.returncode == 0, first.stderr
    vkey = first.stdout.strip()
    name, key_id, material = vkey.split("+", 2)
    raw = base64.b64decode(material)
    assert name == "example.com/cra/test"
    assert raw[0] == 1
    assert key_id == hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4].hex()
    key_file = tmp_path / "keys" / f"{key_id}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text() not in first.stdout + first.stderr
    assert cra("keys", "generate", *where).returncode == 2
    rotated = cra("keys", "rotate", *where)
    assert rotated.returncode == 0
    assert rotated.stdout.split() == [rotated.stdout.split()[0], vkey]
    listing = json.loads(cra("keys", "show", "--json", *where).stdout)
    assert [k["role"] for k in listing["keys"]] == ["cosigning", "primary"]


def test_ledger_append_prove_consistency_and_check(demo: Path, tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path)]
    assert cra("ledger", "checkpoint", *where).returncode == 2  # no keys yet: says so
    assert cra("keys", "generate", *where).returncode == 0
    appended = cra("ledger", "append", demo / "demo.trace.jsonl", "--json", *where)
    assert appended.returncode == 0, appended.stderr
    lines = (demo / "demo.trace.jsonl").read_text().splitlines()
    assert json.loads(appended.stdout)["appended"] == len(lines)
    again = json.loads(cra("ledger", "append", demo / "demo.trace.jsonl", "--json", *where).stdout)
    assert again["appended"] == 0
    assert again["already_logged"] == len(lines)

    checkpoint = cra("ledger", "checkpoint", *where).stdout
    assert checkpoint.split("\n")[1] == str(len(lines))
    event_id = json.loads(lines[5])["event_id"]
    proof = cra("ledger", "prove", event_id, *where)
    assert proof.returncode == 0
    assert proof.stdout.startswith("c2sp.org/tlog-proof@v1\nindex 5\n")
    assert proof.stdout.endswith(checkpoint)
    consistency = json.loads(cra("ledger", "consistency", "3", *where).stdout)
    assert (consistency["size1"], consistency["size2"]) == (3, len(lines))
    assert cra("ledger", "consistency", "0", *where).returncode == 2
    assert cra("ledger", "prove", "no-such-event", *where).returncode == 2
    check = cra("ledger", "check", "--json", *where)
    assert check.returncode == 0
    assert json.loads(check.stdout)["size"] == len(lines)


def test_verify_with_a_previous_checkpoint_needs_the_log_to_have_grown_from_it(demo: Path, tmp_path: Path) -> None:
    where = ["--data-dir", str(tmp_path)]
    assert cra("keys", "generate", *where).returncode == 0
    trace = (demo / "demo.trace.jsonl").read_text().splitlines(keepends=True)
    first, rest = tmp_path / "first.trace.jsonl", tmp_path / "all.trace.jsonl"
    first.write_text("".join(trace[:10]))
    rest.write_text("".join(trace))
    assert cra("ledger", "append", first, *where).returncode == 0
    old = tmp_path / "old.checkpoint"
    old.write_text(cra("ledger", "checkpoint", *where).stdout)
    session = json.loads(trace[0])["session_id"]
    early = tmp_path / "early.json"
    assert cra("ledger", "export", session, "--out", early, *where).returncode == 0
    assert cra("ledger", "append", rest, *where).returncode == 0
    bundle = tmp_path / "bundle.json"
    assert cra("ledger", "export", session, "--since", "10", "--out", bundle, *where).returncode == 0
    vkey = cra("keys", "show", *where).stdout.strip()
    ok = cra("verify", bundle, "--key", vkey, "--previous", old)
    assert ok.returncode == 0, ok.stderr
    assert "extends the previous checkpoint" in ok.stdout

    plain = tmp_path / "plain.json"
    assert cra("ledger", "export", session, "--out", plain, *where).returncode == 0
    missing = cra("verify", plain, "--key", vkey, "--previous", old)
    assert missing.returncode == 1
    assert "no consistency proof" in missing.stderr
    proof = tmp_path / "consistency.json"
    proof.write_text(cra("ledger", "consistency", "10", *where).stdout)
    assert cra("verify", plain, "--key", vkey, "--previous", old, "--consistency", proof).returncode == 0

    newer = tmp_path / "newer.checkpoint"
    newer.write_text(json.loads(bundle.read_text())["checkpoint"])
    assert cra("verify", early, "--key", vkey).returncode == 0
    rollback = cra("verify", early, "--key", vkey, "--previous", newer)
    assert rollback.returncode == 1
    assert "rolls the log back" in rollback.stderr
