"""RFC 6962 / RFC 9162 Merkle trees, checked against a reference written here.

The reference transcribes RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and §2.1.4.1
(PROOF / SUBPROOF) literally, recursing over ``D[lo:hi]``; it only memoises
subtree hashes per range, which does not change what it computes. It is itself
pinned to the published Certificate Transparency roots of the eight test leaves.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import ProofError
from cra.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    Plan,
    assemble,
    consistency_plan,
    inclusion_plan,
    leaf_hash,
    node_hash,
    root_from_inclusion,
    root_plan,
    stored_count,
    stored_index,
    verify_consistency,
    verify_inclusion,
)

# --- the reference -----------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_leaf(entry: bytes) -> bytes:
    return _sha256(b"\x00" + entry)


def ref_node(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right)


def ref_split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n > 1``)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class RefTree:
    """RFC 9162 over a list of entries; every method works on the range ``D[lo:hi]``."""

    def __init__(self, entries: list[bytes]) -> None:
        self.entries = entries
        self._memo: dict[tuple[int, int], bytes] = {}

    def mth(self, lo: int, hi: int) -> bytes:
        n = hi - lo
        if n == 0:
            return _sha256(b"")
        if n == 1:
            return ref_leaf(self.entries[lo])
        if (lo, hi) not in self._memo:
            k = ref_split(n)
            self._memo[lo, hi] = ref_node(self.mth(lo, lo + k), self.mth(lo + k, hi))
        return self._memo[lo, hi]

    def root(self, n: int) -> bytes:
        return self.mth(0, n)

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        """PATH(m, D[lo:hi]), ``m`` relative to ``lo``."""
        n = hi - lo
        if n == 1:
            return []
        k = ref_split(n)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m, D[lo:hi], b)."""
        n = hi - lo
        if m == n:
            return [] if whole else [self.mth(lo, hi)]
        k = ref_split(n)
        if m <= k:
            return [*self.subproof(m, lo, lo + k, whole), self.mth(lo + k, hi)]
        return [*self.subproof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]

    def consistency(self, m: int, n: int) -> list[bytes]:
        """PROOF(m, D[n])."""
        return self.subproof(m, 0, n, True)


def perfect_subtrees_in_completion_order(size: int) -> list[tuple[int, int]]:
    """Every perfect subtree ``(level, k)`` inside ``[0, size)``, in the order an appending
    log completes them: by the leaf that completes it, then smaller subtrees first."""
    trees = [
        (level, k)
        for level in range(size.bit_length() + 1)
        for k in range(size)
        if (k + 1) << level <= size  # subtree (level, k) covers [k·2^level, (k+1)·2^level)
    ]
    return sorted(trees, key=lambda t: (((t[1] + 1) << t[0]) - 1, t[0]))


def expected_store(ref: RefTree, size: int) -> dict[int, bytes]:
    """What a log of ``size`` leaves must have stored: number -> subtree hash."""
    return {
        number: ref.mth(k << level, (k + 1) << level)
        for number, (level, k) in enumerate(perfect_subtrees_in_completion_order(size))
    }


def entries_for(seed: int, size: int) -> list[bytes]:
    """Distinct entries of varied lengths, so distinct ranges have distinct hashes."""
    return [b"entry %d of log %d " % (i, seed) + b"x" * (i % 7) for i in range(size)]


def build(entries: list[bytes]) -> tuple[CompactRange, dict[int, bytes]]:
    """Append every entry to a fresh log; the store is what ``append`` asked to write."""
    tree = CompactRange()
    store: dict[int, bytes] = {}
    for entry in entries:
        for number, value in tree.append(ref_leaf(entry)):
            assert number not in store
            store[number] = value
    return tree, store


def fetch(plan: Plan, store: dict[int, bytes]) -> dict[int, bytes]:
    """Only the hashes the plan asks for, as a store read would return them."""
    assert len(set(plan.indexes)) == len(plan.indexes)
    return {number: store[number] for number in plan.indexes}


def flip_bit(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# The Certificate Transparency test leaves and their published roots (RFC 6962 test data).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]

ENTRIES = 600  # entries behind the mutation cases: room for sizes past the largest drawn one
SIZES = st.integers(min_value=1, max_value=300)
SEEDS = st.integers(min_value=0, max_value=2**16)
PROPERTY = settings(max_examples=25, derandomize=True, deadline=None)
MUTATION = settings(max_examples=60, derandomize=True, deadline=None)


# --- the reference and the hashing primitives ----------------------------------


def test_the_reference_reproduces_the_published_ct_roots() -> None:
    ref = RefTree(CT_LEAVES)
    assert [ref.root(n).hex() for n in range(1, 9)] == CT_ROOTS


def test_compact_range_reproduces_the_published_ct_roots() -> None:
    tree = CompactRange()
    roots = []
    for entry in CT_LEAVES:
        tree.append(ref_leaf(entry))
        roots.append(tree.root().hex())
    assert roots == CT_ROOTS


def test_empty_root_is_the_hash_of_nothing() -> None:
    assert hashlib.sha256(b"").digest() == EMPTY_ROOT
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert CompactRange().root() == EMPTY_ROOT
    assert CompactRange().size == 0


@pytest.mark.parametrize("entry", [b"", b"\x00", b"abc", bytes(range(256))])
def test_leaf_and_node_hashes_are_domain_separated(entry: bytes) -> None:
    assert leaf_hash(entry) == hashlib.sha256(b"\x00" + entry).digest()
    left, right = ref_leaf(entry), ref_leaf(entry + b"!")
    assert node_hash(left, right) == hashlib.sha256(b"\x01" + left + right).digest()
    assert node_hash(left, right) != node_hash(right, left)


# --- appending and the stored-hash numbering -----------------------------------


@PROPERTY
@given(size=SIZES, seed=SEEDS)
def test_appends_give_the_reference_root_at_every_size(size: int, seed: int) -> None:
    entries = entries_for(seed, size)
    ref = RefTree(entries)
    tree = CompactRange()
    store: dict[int, bytes] = {}
    for n, entry in enumerate(entries, 1):
        written = tree.append(ref_leaf(entry))
        numbers = [number for number, _ in written]
        # Written sequentially, never rewriting: the next free numbers, in order.
        assert numbers == list(range(len(store), len(store) + len(written)))
        store.update(written)
        assert tree.size == n
        assert tree.root() == ref.root(n)
    # Numbered 0..stored_count(n)-1, no gap, no duplicate, each number holding its subtree.
    assert store == expected_store(ref, size)
    assert stored_count(size) == len(store)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(size=st.integers(min_value=0, max_value=1000))
def test_stored_numbering_follows_completion_order(size: int) -> None:
    order = perfect_subtrees_in_completion_order(size)
    assert stored_count(size) == len(order)
    assert [stored_index(level, k) for level, k in order] == list(range(len(order)))


def test_stored_numbering_small_cases_by_hand() -> None:
    # leaf0=0, leaf1=1, (1,0)=2, leaf2=3, leaf3=4, (1,1)=5, (2,0)=6, leaf4=7
    assert [stored_index(0, k) for k in range(5)] == [0, 1, 3, 4, 7]
    assert [stored_index(1, 0), stored_index(1, 1), stored_index(2, 0)] == [2, 5, 6]
    assert [stored_count(n) for n in range(9)] == [0, 1, 3, 4, 7, 8, 10, 11, 15]


# --- proofs assembled from the store ---------------------------------------------


@PROPERTY
@given(size=SIZES, seed=SEEDS)
def test_inclusion_proofs_equal_the_reference_path_and_verify(size: int, seed: int) -> None:
    entries = entries_for(seed, size)
    ref = RefTree(entries)
    _, store = build(entries)
    root = ref.root(size)
    assert assemble(root_plan(size), fetch(root_plan(size), store)) == [root]
    for index in range(size):
        plan = inclusion_plan(index, size)
        proof = assemble(plan, fetch(plan, store))
        assert proof == ref.inclusion(index, size)
        leaf = ref_leaf(entries[index])
        verify_inclusion(index, size, leaf, proof, root)
        assert root_from_inclusion(index, size, leaf, proof) == root


@PROPERTY
@given(size=SIZES, seed=SEEDS)
def test_consistency_proofs_equal_the_reference_subproof_and_verify(size: int, seed: int) -> None:
    entries = entries_for(seed, size)
    ref = RefTree(entries)
    _, store = build(entries)
    for old in range(1, size + 1):
        plan = consistency_plan(old, size)
        proof = assemble(plan, fetch(plan, store))
        assert proof == ref.consistency(old, size)
        verify_consistency(old, size, ref.root(old), ref.root(size), proof)


@PROPERTY
@given(size=SIZES, seed=SEEDS, data=st.data())
def test_proofs_need_only_what_the_log_had_at_that_size(size: int, seed: int, data: st.DataObject) -> None:
    # A proof about size n must be answerable by a log that has only n leaves.
    entries = entries_for(seed, size)
    ref = RefTree(entries)
    _, store = build(entries)
    later = data.draw(st.integers(min_value=size, max_value=size + 50), label="later")
    bigger = expected_store(RefTree(entries_for(seed, later)), later)
    assert all(number < stored_count(size) for number in root_plan(size).indexes)
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    for plan, want in [
        (inclusion_plan(index, size), ref.inclusion(index, size)),
        (consistency_plan(index + 1, size), ref.consistency(index + 1, size)),
    ]:
        assert all(number < stored_count(size) for number in plan.indexes)
        # Reading from a log that has grown since gives the same proof.
        assert assemble(plan, fetch(plan, bigger)) == want == assemble(plan, fetch(plan, store))


@PROPERTY
@given(size=st.integers(min_value=0, max_value=300), more=st.integers(min_value=1, max_value=40), seed=SEEDS)
def test_compact_range_resumes_from_the_store(size: int, more: int, seed: int) -> None:
    entries = entries_for(seed, size + more)
    ref = RefTree(entries)
    store = expected_store(ref, size)
    plan = CompactRange.plan(size)
    resumed = CompactRange(size, assemble(plan, fetch(plan, store)))
    assert resumed.size == size
    assert resumed.root() == ref.root(size)
    for n in range(size, size + more):
        written = resumed.append(ref_leaf(entries[n]))
        assert [number for number, _ in written] == list(range(len(store), len(store) + len(written)))
        store.update(written)
        assert resumed.root() == ref.root(n + 1)
    assert store == expected_store(ref, size + more)


def test_assemble_reports_a_hash_the_store_did_not_return() -> None:
    _, store = build(entries_for(0, 13))
    plan = inclusion_plan(5, 13)
    partial = fetch(plan, store)
    del partial[plan.indexes[0]]
    with pytest.raises(KeyError):
        assemble(plan, partial)


# --- mutated inclusion proofs ----------------------------------------------------


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[RefTree, int, int, list[bytes]]:
    size = draw(st.integers(min_value=2, max_value=300), label="size")
    index = draw(st.integers(min_value=0, max_value=size - 1), label="index")
    ref = RefTree(entries_for(draw(SEEDS, label="seed"), ENTRIES))
    proof = ref.inclusion(index, size)
    verify_inclusion(index, size, ref_leaf(ref.entries[index]), proof, ref.root(size))  # the unmutated proof is good
    return ref, index, size, proof


def _rejects_inclusion(ref: RefTree, index: int, size: int, proof: list[bytes], root: bytes | None = None) -> None:
    leaf = ref_leaf(ref.entries[index]) if 0 <= index < len(ref.entries) else ref_leaf(b"no such leaf")
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, proof, ref.root(size) if root is None else root)


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_a_flipped_bit(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, index, size, proof = case
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="node")
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    proof[at] = flip_bit(proof[at], bit)
    _rejects_inclusion(ref, index, size, proof)


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_a_dropped_node(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, index, size, proof = case
    del proof[data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="node")]
    _rejects_inclusion(ref, index, size, proof)


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_an_added_node(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, index, size, proof = case
    at = data.draw(st.integers(min_value=0, max_value=len(proof)), label="at")
    node = data.draw(st.sampled_from([*proof, ref.root(size)]) | st.binary(min_size=32, max_size=32), label="node")
    proof.insert(at, node)
    _rejects_inclusion(ref, index, size, proof)


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_swapped_nodes(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, index, size, proof = case
    if len(proof) < 2:
        # One node: size 2, or the last leaf right of a perfect subtree (2^k + 1 leaves).
        # Two more leaves put a subtree of at least three leaves around it.
        size += 2
        proof = ref.inclusion(index, size)
    i, j = data.draw(st.lists(st.integers(0, len(proof) - 1), min_size=2, max_size=2, unique=True), label="nodes")
    assert proof[i] != proof[j]
    proof[i], proof[j] = proof[j], proof[i]
    _rejects_inclusion(ref, index, size, proof)


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_a_wrong_index(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, index, size, proof = case
    other = (index + data.draw(st.integers(min_value=1, max_value=size - 1), label="offset")) % size
    assert other != index
    leaf = ref_leaf(ref.entries[index])
    with pytest.raises(ProofError):
        verify_inclusion(other, size, leaf, proof, ref.root(size))
    with pytest.raises(ProofError):  # the other leaf with this leaf's path
        verify_inclusion(other, size, ref_leaf(ref.entries[other]), proof, ref.root(size))


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_a_wrong_size(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    # The claimed size comes with the true root of that size, as a checkpoint would give:
    # the path of another size must not lead to it.
    ref, index, size, proof = case
    other = data.draw(st.integers(min_value=index + 1, max_value=ENTRIES).filter(lambda n: n != size), label="other")
    with pytest.raises(ProofError):
        verify_inclusion(index, other, ref_leaf(ref.entries[index]), proof, ref.root(other))


@MUTATION
@given(case=inclusion_cases(), data=st.data())
def test_inclusion_rejects_a_wrong_root_or_leaf(
    case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject
) -> None:
    ref, index, size, proof = case
    leaf = ref_leaf(ref.entries[index])
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    other_size = data.draw(st.integers(min_value=1, max_value=ENTRIES).filter(lambda n: n != size), label="other size")
    for root in [flip_bit(ref.root(size), bit), ref.root(other_size), EMPTY_ROOT, leaf]:
        with pytest.raises(ProofError):
            verify_inclusion(index, size, leaf, proof, root)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, flip_bit(leaf, bit), proof, ref.root(size))
    with pytest.raises(ProofError):  # the entry itself instead of its leaf hash
        verify_inclusion(index, size, _sha256(ref.entries[index]), proof, ref.root(size))


# --- mutated consistency proofs --------------------------------------------------


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[RefTree, int, int, list[bytes]]:
    size2 = draw(st.integers(min_value=2, max_value=300), label="size2")
    size1 = draw(st.integers(min_value=1, max_value=size2 - 1), label="size1")
    ref = RefTree(entries_for(draw(SEEDS, label="seed"), ENTRIES))
    proof = ref.consistency(size1, size2)
    verify_consistency(size1, size2, ref.root(size1), ref.root(size2), proof)  # the unmutated proof is good
    return ref, size1, size2, proof


def _rejects_consistency(ref: RefTree, size1: int, size2: int, proof: list[bytes]) -> None:
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, ref.root(size1), ref.root(size2), proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_a_flipped_bit(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, size1, size2, proof = case
    at = data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="node")
    proof[at] = flip_bit(proof[at], data.draw(st.integers(min_value=0, max_value=255), label="bit"))
    _rejects_consistency(ref, size1, size2, proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_a_dropped_node(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, size1, size2, proof = case
    del proof[data.draw(st.integers(min_value=0, max_value=len(proof) - 1), label="node")]
    _rejects_consistency(ref, size1, size2, proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_an_added_node(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, size1, size2, proof = case
    at = data.draw(st.integers(min_value=0, max_value=len(proof)), label="at")
    candidates = st.sampled_from([*proof, ref.root(size1), ref.root(size2)]) | st.binary(min_size=32, max_size=32)
    proof.insert(at, data.draw(candidates, label="node"))
    _rejects_consistency(ref, size1, size2, proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_swapped_nodes(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, size1, size2, proof = case
    while len(proof) < 2:  # one node when size1 is the left subtree of size2; grow size2 past it
        size2 += 1
        proof = ref.consistency(size1, size2)
    i, j = data.draw(st.lists(st.integers(0, len(proof) - 1), min_size=2, max_size=2, unique=True), label="nodes")
    assert proof[i] != proof[j]
    proof[i], proof[j] = proof[j], proof[i]
    _rejects_consistency(ref, size1, size2, proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_wrong_sizes(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    # Each claimed size comes with the true root of that size: the proof must still fail.
    ref, size1, size2, proof = case
    other1 = data.draw(st.integers(min_value=1, max_value=size2 - 1), label="size1")
    other2 = data.draw(st.integers(min_value=size1 + 1, max_value=ENTRIES).filter(lambda n: n != size2), label="size2")
    if other1 != size1:  # with size2 == 2 there is no other size1
        _rejects_consistency(ref, other1, size2, proof)
    _rejects_consistency(ref, size1, other2, proof)


@MUTATION
@given(case=consistency_cases(), data=st.data())
def test_consistency_rejects_wrong_roots(case: tuple[RefTree, int, int, list[bytes]], data: st.DataObject) -> None:
    ref, size1, size2, proof = case
    root1, root2 = ref.root(size1), ref.root(size2)
    bit = data.draw(st.integers(min_value=0, max_value=255), label="bit")
    for wrong1, wrong2 in [
        (flip_bit(root1, bit), root2),
        (root1, flip_bit(root2, bit)),
        (root2, root1),
        (root1, root1),
        (root2, root2),
        (ref.root(size1 + 1), root2),
        (root1, ref.root(size2 + 1)),
    ]:
        with pytest.raises(ProofError):
            verify_consistency(size1, size2, wrong1, wrong2, proof)


# --- edge cases ------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref13() -> RefTree:
    return RefTree(entries_for(7, 13))


@pytest.mark.parametrize(("index", "size"), [(13, 13), (14, 13), (-1, 13), (0, 0), (5, 0), (0, -1)])
def test_inclusion_outside_the_tree_is_refused(ref13: RefTree, index: int, size: int) -> None:
    leaf = ref_leaf(ref13.entries[0])
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, ref13.inclusion(12, 13), ref13.root(13))
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, [], EMPTY_ROOT)
    with pytest.raises(ProofError):
        inclusion_plan(index, size)


def test_the_empty_tree_has_no_stored_root() -> None:
    with pytest.raises(ValueError, match="empty"):
        root_plan(0)
    assert CompactRange.plan(0) == Plan((), ())


def test_single_leaf_tree(ref13: RefTree) -> None:
    leaf = ref_leaf(ref13.entries[0])
    verify_inclusion(0, 1, leaf, [], leaf)
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, leaf, [leaf], leaf)
    assert assemble(inclusion_plan(0, 1), {0: leaf}) == []


@pytest.mark.parametrize("size", [1, 2, 7, 13])
def test_equal_sizes_need_an_empty_proof(ref13: RefTree, size: int) -> None:
    root = ref13.root(size)
    verify_consistency(size, size, root, root, [])
    assert consistency_plan(size, size) == Plan((), ())
    for proof in ([root], [ref13.root(1)], ref13.inclusion(0, size) or [root]):
        with pytest.raises(ProofError, match="empty"):
            verify_consistency(size, size, root, root, proof)
    with pytest.raises(ProofError):
        verify_consistency(size, size, root, ref13.root(size - 1) if size > 1 else EMPTY_ROOT, [])


@pytest.mark.parametrize("size2", [0, 1, 5])
def test_consistency_from_the_empty_tree_is_refused(ref13: RefTree, size2: int) -> None:
    root2 = ref13.root(size2)
    for proof in ([], [root2]):
        with pytest.raises(ProofError):
            verify_consistency(0, size2, EMPTY_ROOT, root2, proof)
    with pytest.raises(ProofError):
        consistency_plan(0, size2)


@pytest.mark.parametrize(("size1", "size2"), [(2, 1), (13, 12), (1, 0), (-1, 3), (3, -1)])
def test_a_shrinking_or_negative_size_is_refused(ref13: RefTree, size1: int, size2: int) -> None:
    proof = ref13.consistency(min(size1, size2), max(size1, size2)) if min(size1, size2) > 0 else []
    root1, root2 = ref13.root(max(size1, 0)), ref13.root(max(size2, 0))
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, root1, root2, proof)
    with pytest.raises(ProofError):
        consistency_plan(size1, size2)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_proof_nodes_must_be_32_bytes(ref13: RefTree, length: int) -> None:
    bad = b"\x5a" * length
    leaf = ref_leaf(ref13.entries[4])
    proof = ref13.inclusion(4, 13)
    for at in range(len(proof)):
        mutated = [*proof[:at], bad, *proof[at + 1 :]]
        with pytest.raises(ProofError, match="bytes"):
            verify_inclusion(4, 13, leaf, mutated, ref13.root(13))
    with pytest.raises(ProofError, match="bytes"):
        verify_inclusion(4, 13, bad, proof, ref13.root(13))
    consistency = ref13.consistency(5, 13)
    for at in range(len(consistency)):
        mutated = [*consistency[:at], bad, *consistency[at + 1 :]]
        with pytest.raises(ProofError, match="bytes"):
            verify_consistency(5, 13, ref13.root(5), ref13.root(13), mutated)


def test_an_empty_consistency_proof_between_different_sizes_is_refused(ref13: RefTree) -> None:
    for size1 in (1, 2, 4, 8):  # powers of two included: the old root alone is not a proof
        with pytest.raises(ProofError):
            verify_consistency(size1, 13, ref13.root(size1), ref13.root(13), [])


@pytest.mark.parametrize(("size", "count"), [(1, 0), (3, 1), (5, 1), (13, 2)])
def test_compact_range_checks_its_edge(ref13: RefTree, size: int, count: int) -> None:
    with pytest.raises(ValueError, match="edge subtrees"):
        CompactRange(size, [ref13.root(1)] * count)


def test_compact_range_refuses_a_negative_size() -> None:
    # A negative size has an empty edge like size 0, but is no tree; appending to it
    # would loop forever in stored_count.
    with pytest.raises(ValueError):  # noqa: PT011 - any ValueError; the point is that it is refused
        CompactRange(-1, [])
