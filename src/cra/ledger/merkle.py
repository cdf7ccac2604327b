"""RFC 6962 / RFC 9162 Merkle trees: hashing, append, proofs and their verification.

Hashing (RFC 9162 §2.1.1): a leaf is ``SHA-256(0x00 ‖ entry)``, an interior node
``SHA-256(0x01 ‖ left ‖ right)``, and a tree of ``n`` leaves splits at the
largest power of two smaller than ``n``.

Storage model. A log keeps the hash of every *perfect* subtree it has completed:
the subtree at level ``L`` and position ``k`` covers leaves ``[k·2^L, (k+1)·2^L)``.
They are numbered in the order an appending log completes them (the numbering
of Go's ``sumdb/tlog``), so the log writes them sequentially and never rewrites
one: appending leaf ``n`` stores its leaf hash at :func:`stored_index` ``(0, n)``
and then every subtree that leaf completes. Any other subtree hash, a root at
any past size included, is a fold of O(log n) stored ones.

This module is sans-I/O. Proof generation is split in two so that a store can
fetch every hash it needs in one read: :func:`inclusion_plan` and
:func:`consistency_plan` say which stored hashes a proof needs, and
:func:`assemble` folds what the store returned into the proof.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from cra.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "Plan",
    "assemble",
    "consistency_plan",
    "inclusion_plan",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion",
    "root_plan",
    "stored_count",
    "stored_index",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
"""The root of the empty tree (RFC 9162 §2.1.1)."""

_sha256 = hashlib.sha256


def leaf_hash(entry: bytes) -> bytes:
    """The hash of a leaf whose entry is ``entry``: ``SHA-256(0x00 ‖ entry)``."""
    return _sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: ``SHA-256(0x01 ‖ left ‖ right)``."""
    return _sha256(b"\x01" + left + right).digest()


def stored_index(level: int, k: int) -> int:
    """Where the hash of the perfect subtree ``(level, k)`` sits in a log's hash sequence."""
    last = ((k + 1) << level) - 1  # the leaf that completes the subtree
    return stored_count(last) + level


def stored_count(size: int) -> int:
    """How many hashes a log of ``size`` leaves has stored: every perfect subtree it holds."""
    total = 0
    while size:
        total += size
        size >>= 1
    return total


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtrees(lo: int, hi: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(level, k)`` that tile ``[lo, hi)``, left to right.

    Every range a proof or a root needs starts at a multiple of a power of two
    at least as large as the range, so the tiles shrink from left to right and
    their right fold is exactly the RFC's hash of the range.
    """
    tiles = []
    while lo < hi:
        level = (hi - lo).bit_length() - 1
        if lo:
            level = min(level, (lo & -lo).bit_length() - 1)
        tiles.append((level, lo >> level))
        lo += 1 << level
    return tiles


class Plan(NamedTuple):
    """The stored hashes a proof needs (``indexes``) and how to fold them (``ranges``):
    each range is a list of positions in ``indexes`` whose right fold is one proof node."""

    indexes: tuple[int, ...]
    ranges: tuple[tuple[int, ...], ...]


def _plan(ranges: Sequence[tuple[int, int]]) -> Plan:
    order: dict[int, int] = {}
    folds = []
    for lo, hi in ranges:
        positions = []
        for level, k in _subtrees(lo, hi):
            positions.append(order.setdefault(stored_index(level, k), len(order)))
        folds.append(tuple(positions))
    return Plan(tuple(order), tuple(folds))


def assemble(plan: Plan, hashes: Mapping[int, bytes]) -> list[bytes]:
    """The proof (or root) ``plan`` describes, from the stored hashes a store read for it.

    Raises :class:`KeyError` if the store did not return a hash the plan needs.
    """
    values = [hashes[i] for i in plan.indexes]
    out = []
    for positions in plan.ranges:
        acc = values[positions[-1]]
        for p in reversed(positions[:-1]):
            acc = node_hash(values[p], acc)
        out.append(acc)
    return out


def root_plan(size: int) -> Plan:
    """The stored hashes whose fold is the root of the tree of ``size`` leaves (``size >= 1``)."""
    if size < 1:
        raise ValueError("the empty tree has no stored hashes; its root is EMPTY_ROOT")
    return _plan([(0, size)])


def inclusion_plan(index: int, size: int) -> Plan:
    """The plan of the inclusion proof of leaf ``index`` in the tree of ``size`` leaves
    (RFC 9162 §2.1.3.1), nodes ordered from the leaf's sibling up to the root's child."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    ranges: list[tuple[int, int]] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo += k
    ranges.reverse()
    return _plan(ranges)


def consistency_plan(size1: int, size2: int) -> Plan:
    """The plan of the consistency proof between tree sizes ``size1`` and ``size2``
    (RFC 9162 §2.1.4.1). Equal sizes need no proof; size 0 proves nothing and is refused."""
    if not 0 < size1 <= size2:
        raise ProofError(f"no consistency proof exists from size {size1} to size {size2}: need 0 < size1 <= size2")
    ranges: list[tuple[int, int]] = []
    if size1 == size2:
        return _plan(ranges)
    lo, hi, m, whole = 0, size2, size1, True
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                ranges.append((lo, hi))
            break
        k = _split(n)
        if m <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    ranges.reverse()
    return _plan(ranges)


class CompactRange:
    """The right edge of a growing tree: the roots of the perfect subtrees that tile
    ``[0, size)``, largest first. Appending touches only these, so memory is
    O(log size) however long the log grows."""

    __slots__ = ("_nodes", "size")

    def __init__(self, size: int = 0, nodes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"a tree cannot have {size} leaves")
        expected = len(_subtrees(0, size))
        if len(nodes) != expected:
            raise ValueError(f"a tree of size {size} has {expected} edge subtrees, got {len(nodes)}")
        self.size = size
        self._nodes = list(nodes)

    @staticmethod
    def plan(size: int) -> Plan:
        """The stored hashes to read to resume a log at ``size``: one range per edge subtree."""
        return _plan([(lo << level, (lo + 1) << level) for level, lo in _subtrees(0, size)])

    def copy(self) -> CompactRange:
        return CompactRange(self.size, self._nodes)

    def append(self, leaf: bytes) -> list[tuple[int, bytes]]:
        """Add a leaf hash; returns what to store: ``(stored index, hash)`` of the leaf
        and of every subtree it completes, in storage order."""
        n = self.size
        out = [(stored_count(n), leaf)]
        node, level, k = leaf, 0, n
        while k & 1:
            node = node_hash(self._nodes.pop(), node)
            level, k = level + 1, k >> 1
            out.append((stored_index(level, k), node))
        self._nodes.append(node)
        self.size = n + 1
        return out

    def root(self) -> bytes:
        """The root of the tree as it stands (``EMPTY_ROOT`` when empty)."""
        if not self._nodes:
            return EMPTY_ROOT
        acc = self._nodes[-1]
        for node in reversed(self._nodes[:-1]):
            acc = node_hash(node, acc)
        return acc


def _check_nodes(proof: Sequence[bytes]) -> None:
    for i, node in enumerate(proof):
        if len(node) != HASH_SIZE:
            raise ProofError(f"proof node {i} is {len(node)} bytes, not {HASH_SIZE}")


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that an inclusion proof for ``leaf`` at ``index`` leads to (RFC 9162 §2.1.3.2)."""
    if size < 1 or not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"the leaf hash is {len(leaf)} bytes, not {HASH_SIZE}")
    _check_nodes(proof)
    fn, sn, r = index, size - 1, leaf
    for node in proof:
        if sn == 0:
            raise ProofError(f"the inclusion proof is too long for index {index} in a tree of size {size}")
        if fn & 1 or fn == sn:
            r = node_hash(node, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, node)
        fn, sn = fn >> 1, sn >> 1
    if sn:
        raise ProofError(f"the inclusion proof is too short for index {index} in a tree of size {size}")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Return only if ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree
    of ``size`` leaves whose root is ``root``; raise :class:`~cra.errors.ProofError` otherwise."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise ProofError(f"the inclusion proof for index {index} does not reach the root of the tree of size {size}")


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]) -> None:
    """Return only if ``proof`` shows the tree of ``size1`` leaves and root ``root1`` is a
    prefix of the tree of ``size2`` leaves and root ``root2`` (RFC 9162 §2.1.4.2).

    A consistency check from the empty tree proves nothing and is refused, as
    are a larger first size and any proof for equal sizes other than the empty one.
    """
    if size1 < 0 or size2 < 0:
        raise ProofError("tree sizes cannot be negative")
    if size1 > size2:
        raise ProofError(f"size {size1} is larger than size {size2}: a log cannot shrink")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree proves nothing")
    _check_nodes(proof)
    if size1 == size2:
        if proof:
            raise ProofError(f"the sizes are equal, so the proof must be empty; it has {len(proof)} nodes")
        if root1 != root2:
            raise ProofError(f"the roots of two trees of size {size1} differ")
        return
    if not proof:
        raise ProofError(f"the consistency proof from size {size1} to size {size2} is empty")
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is itself a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for node in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof from size {size1} to size {size2} is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(node, fr), node_hash(node, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, node)
        fn, sn = fn >> 1, sn >> 1
    if sn:
        raise ProofError(f"the consistency proof from size {size1} to size {size2} is too short")
    if fr != root1:
        raise ProofError(f"the consistency proof does not reach the root of size {size1}")
    if sr != root2:
        raise ProofError(f"the consistency proof does not reach the root of size {size2}")
