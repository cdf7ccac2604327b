"""The transparency-dev Merkle inclusion and consistency vectors (DESIGN.md §4).

Every vector must pass, ``wantErr`` cases included: a vector that wants an error
must make the verifier raise :class:`~cra.errors.ProofError`, and any other must
verify without raising.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import VECTORS

from cra.errors import ProofError
from cra.ledger.merkle import root_from_inclusion, verify_consistency, verify_inclusion

MERKLE = VECTORS / "tlog" / "merkle-testdata"
INCLUSION = sorted((MERKLE / "inclusion").rglob("*.json"))
CONSISTENCY = sorted((MERKLE / "consistency").rglob("*.json"))

# The full transparency-dev set: a missing or partly copied directory must not pass vacuously.
EXPECTED_INCLUSION = 98
EXPECTED_CONSISTENCY = 98


def _id(path: Path) -> str:
    return path.relative_to(MERKLE).as_posix()


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return data


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _proof(vector: dict[str, Any]) -> list[bytes]:
    return [_b64(node) for node in vector["proof"] or []]


def test_the_whole_vector_set_is_present() -> None:
    assert len(INCLUSION) == EXPECTED_INCLUSION
    assert len(CONSISTENCY) == EXPECTED_CONSISTENCY
    assert len(INCLUSION) + len(CONSISTENCY) == 196


def test_the_set_has_both_outcomes() -> None:
    wants = [_load(path)["wantErr"] for path in INCLUSION + CONSISTENCY]
    assert wants.count(False) == 12
    assert wants.count(True) == 184


@pytest.mark.parametrize("path", INCLUSION, ids=_id)
def test_inclusion_vector(path: Path) -> None:
    vector = _load(path)
    index, size = vector["leafIdx"], vector["treeSize"]
    leaf, root, proof = _b64(vector["leafHash"]), _b64(vector["root"]), _proof(vector)
    if vector["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, proof, root)
    else:
        verify_inclusion(index, size, leaf, proof, root)
        assert root_from_inclusion(index, size, leaf, proof) == root


@pytest.mark.parametrize("path", CONSISTENCY, ids=_id)
def test_consistency_vector(path: Path) -> None:
    vector = _load(path)
    size1, size2 = vector["size1"], vector["size2"]
    root1, root2, proof = _b64(vector["root1"]), _b64(vector["root2"]), _proof(vector)
    if vector["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, root1, root2, proof)
    else:
        verify_consistency(size1, size2, root1, root2, proof)
