"""Loading atlases from disk: packages, single files, and what is refused."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cra import AtlasError, load_atlas
from cra.runtime.atlas_files import MAX_FILE_BYTES

MANIFEST: dict[str, Any] = {
    "atlas_version": "1.0",
    "atlas_id": "org.test.files",
    "version": "0.1.0",
    "name": "Files",
    "description": "Loading from disk",
    "context_packs": [{"pack_id": "guide", "name": "Guide", "files": ["context/guide.md"]}],
    "actions": [{"action_id": "a.read", "name": "Read", "description": "Read"}],
    "policies": [{"policy_id": "allow-read", "type": "allow", "actions": ["a.read"]}],
}


def write_package(root: Path, manifest: dict[str, Any] = MANIFEST, guide: str | None = "# Guide\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "atlas.json").write_text(json.dumps(manifest))
    if guide is not None:
        (root / "context").mkdir(exist_ok=True)
        (root / "context" / "guide.md").write_text(guide)
    return root


def test_package_directory_with_policy_files(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg")
    (root / "policies").mkdir()
    (root / "policies" / "10-deny.json").write_text(
        json.dumps({"policy_id": "no-x", "type": "deny", "actions": ["x.*"]})
    )
    atlas = load_atlas(root)
    assert [p.policy_id for p in atlas.policies] == ["allow-read", "no-x"]
    assert atlas.files == {"context/guide.md": "# Guide\n"}


def test_single_json_file_resolves_context_next_to_it(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg")
    os.rename(root / "atlas.json", root / "support.json")
    assert load_atlas(root / "support.json").atlas_id == "org.test.files"


def test_missing_context_file_is_a_load_error(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", guide=None)
    with pytest.raises(AtlasError) as info:
        load_atlas(root)
    assert info.value.path == "/context_packs/0/files/0"
    assert "does not exist" in info.value.reason


def test_symlink_out_of_the_package_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.md"
    secret.write_text("root password")
    root = write_package(tmp_path / "pkg", guide=None)
    (root / "context").mkdir()
    (root / "context" / "guide.md").symlink_to(secret)
    with pytest.raises(AtlasError, match="does not exist"):
        load_atlas(root)


def test_oversized_files_are_refused(tmp_path: Path) -> None:
    root = write_package(tmp_path / "pkg", guide="x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(AtlasError, match="limit"):
        load_atlas(root)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{", "invalid JSON"),
        ('{"a": NaN}', "NaN"),
        ('{"a": 1, "a": 2}', "duplicate key"),
        ("[]", "must be a JSON object"),
    ],
)
def test_malformed_manifests(tmp_path: Path, content: str, reason: str) -> None:
    path = tmp_path / "atlas.json"
    path.write_text(content)
    with pytest.raises(AtlasError, match=reason):
        load_atlas(path)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(AtlasError, match=r"no atlas\.json"):
        load_atlas(tmp_path)
    with pytest.raises(AtlasError, match="not an atlas package directory"):
        load_atlas(tmp_path / "nope")


def test_dict_source_takes_its_files_explicitly() -> None:
    with pytest.raises(AtlasError, match="does not exist"):
        load_atlas(MANIFEST)
    assert load_atlas(MANIFEST, files={"context/guide.md": b"# Guide"}).files["context/guide.md"] == "# Guide"
