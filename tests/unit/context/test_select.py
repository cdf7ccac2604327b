"""Choosing context blocks: eligibility, the selection rules, ordering, truncation and redaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from cra.context.select import ContextCatalog, ContextSelection, compile_context, estimate_tokens, words
from cra.errors import AtlasError, PolicyError
from cra.policy.decision import EvalRequest
from cra.protocol.atlas import parse_atlas


def pack(pack_id: str, files: Sequence[str] = (), **rest: Any) -> dict[str, Any]:
    return {"pack_id": pack_id, "name": rest.pop("name", pack_id), "files": list(files) or [f"{pack_id}.md"], **rest}


def catalog(
    packs: Sequence[Mapping[str, Any]],
    files: Mapping[str, str] | None = None,
    declared_capabilities: Sequence[Mapping[str, Any]] = (),
    **extra: Any,
) -> ContextCatalog:
    contents = {path: f"content of {path}\n" for p in packs for path in p["files"]}
    contents.update(files or {})
    manifest = {
        "atlas_version": "1.0",
        "atlas_id": "org.test.context",
        "version": "1.0.0",
        "name": "Context",
        "description": "Context tests",
        "actions": [{"action_id": "refund.create", "name": "Refund", "description": "Refund"}],
        "capabilities": list(declared_capabilities),
        "context_packs": list(packs),
        **extra,
    }
    return compile_context(parse_atlas(manifest, contents))


def select(
    packs: Sequence[Mapping[str, Any]],
    goal: str = "unrelated words only",
    *,
    request: EvalRequest | None = None,
    hints: Sequence[str] = (),
    capabilities: Sequence[str] = (),
    **atlas: Any,
) -> ContextSelection:
    request = request or EvalRequest("refund.create", "support-bot", frozenset({"agent"}), params=None)
    return catalog(packs, **atlas).select(request, goal=goal, hints=hints, capabilities=capabilities)


def chosen(selection: ContextSelection) -> list[str]:
    return [b.metadata["pack_id"] for b in selection.blocks]


# -- words -----------------------------------------------------------------------------------------------------------


def test_words_are_whole_casefolded_and_skip_stopwords() -> None:
    assert words("I need the Refund-Policy for my ORDER, please") == {"refund", "policy", "order"}
    assert words("أريد استرداد المبلغ") == {"أريد", "استرداد", "المبلغ"}
    assert words("a I x") == set()


def test_token_estimate_is_a_quarter_of_the_utf8_bytes_rounded_up() -> None:
    # "استرداد" is 7 Arabic letters of 2 bytes each; "line\n" * 7 is 35 bytes
    expected = {"": 0, "a": 1, "abcd": 1, "abcde": 2, "استرداد": 4, "line\n" * 7: 9}
    assert {text: estimate_tokens(text) for text in expected} == expected


# -- the rules -------------------------------------------------------------------------------------------------------


def test_an_always_pack_is_chosen_whatever_the_goal() -> None:
    s = select([pack("basics", always=True), pack("other")])
    assert chosen(s) == ["basics"]
    assert s.reasons == {"basics": "always included", "other": "not relevant to the goal"}


def test_a_hint_naming_the_pack_chooses_it() -> None:
    assert chosen(select([pack("refund-policy"), pack("shipping")], hints=["refund-policy"])) == ["refund-policy"]


def test_a_hint_whose_words_are_all_keywords_chooses_the_pack() -> None:
    packs = [pack("p1", name="Refund rules", keywords=["returns"]), pack("p2", name="Shipping")]
    assert chosen(select(packs, hints=["refund returns"])) == ["p1"]
    assert chosen(select(packs, hints=["refund window"])) == []
    assert chosen(select(packs, hints=["", "   "])) == []


def test_a_required_capability_listing_the_pack_chooses_it() -> None:
    caps = [{"capability_id": "refunds", "name": "Refunds", "actions": ["refund.create"], "context_packs": ["p1"]}]
    packs = [pack("p1"), pack("p2")]
    s = select(packs, capabilities=["refunds"], declared_capabilities=caps)
    assert chosen(s) == ["p1"]
    assert s.reasons["p1"] == "listed by a required capability"
    assert chosen(select(packs, capabilities=["payroll"], declared_capabilities=caps)) == []


def test_the_goal_sharing_a_keyword_chooses_the_pack() -> None:
    packs = [
        pack("refund-policy", name="Refund policy"),
        pack("p2", name="Arabic", keywords=["استرداد"]),
        pack("p3", name="Shipping", description="Couriers and delivery times"),
    ]
    s = select(packs, goal="How do I REFUND an order?")
    assert chosen(s) == ["refund-policy"]
    assert s.reasons["refund-policy"] == "goal mentions refund"
    assert chosen(select(packs, goal="أريد استرداد المبلغ")) == ["p2"]
    assert chosen(select(packs, goal="delivery is late")) == ["p3"]


def test_words_are_not_stemmed() -> None:
    """The golden case: 'resources' does not select 'Resource Overview'."""
    packs = [pack("overview", name="Resource Overview", files=["context/overview.md"])]
    assert chosen(select(packs, goal="Manage resources in the test environment")) == []
    assert chosen(select(packs, goal="I need to read and manage data")) == []
    assert chosen(select(packs, goal="resource")) == ["overview"]


@pytest.mark.parametrize(
    ("conditions", "request_"),
    [
        ({"roles": ["finance"]}, EvalRequest("refund.create", "bot", frozenset({"agent"}), params=None)),
        ({"context": {"region": {"eq": "sa"}}}, EvalRequest("refund.create", "bot", params=None)),
        ({"risk_tiers": ["high"]}, EvalRequest("refund.create", "bot", params=None)),
        ({"params": {"amount": {"gt": 5}}}, EvalRequest("refund.create", "bot", params=None)),
        ({"params": {"amount": {"gt": 5}}}, EvalRequest("refund.create", "bot", params={"amount": "9"})),
    ],
    ids=["false", "unknown-context", "unknown-tier", "deferred", "wrong-type"],
)
def test_conditions_that_do_not_hold_exclude_even_always_packs(
    conditions: dict[str, Any], request_: EvalRequest
) -> None:
    s = select([pack("gated", always=True, conditions=conditions)], goal="gated", hints=["gated"], request=request_)
    assert chosen(s) == []
    assert s.reasons == {"gated": "conditions do not hold"}


def test_conditions_that_hold_admit() -> None:
    request = EvalRequest("refund.create", "bot", frozenset({"finance"}), context={"region": "sa"}, params=None)
    s = select(
        [pack("gated", always=True, conditions={"roles": ["finance"], "context_matches": {"region": "sa"}})],
        request=request,
    )
    assert chosen(s) == ["gated"]


def test_bad_pack_conditions_are_load_errors() -> None:
    with pytest.raises(PolicyError) as info:
        catalog([pack("p"), pack("q", conditions={"time_window": {"timezone": "Mars/Olympus"}})])
    assert info.value.path == "/context_packs/1/conditions/time_window/timezone"


def test_capabilities_is_not_a_pack_condition() -> None:
    with pytest.raises(AtlasError) as info:
        catalog([pack("p"), pack("q", conditions={"capabilities": ["refunds"]})])
    assert info.value.path == "/context_packs/1/conditions/capabilities"


# -- ordering --------------------------------------------------------------------------------------------------------


def test_blocks_follow_priority_then_declaration_order() -> None:
    packs = [
        pack("low", ["low.md"], priority=10, always=True),
        pack("tie-a", ["a1.md", "a2.md"], priority=500, always=True),
        pack("high", ["high.md"], priority=900, always=True),
        pack("tie-b", ["b.md"], priority=500, always=True),
        pack("default", ["d.md"], always=True),  # priority 100
    ]
    s = select(packs)
    assert [b.block_id for b in s.blocks] == [
        "high:high.md",
        "tie-a:a1.md",
        "tie-a:a2.md",
        "tie-b:b.md",
        "default:d.md",
        "low:low.md",
    ]
    assert [b.priority for b in s.blocks] == [900, 500, 500, 500, 100, 10]


def test_blocks_carry_source_content_type_and_estimate() -> None:
    files = {"a.md": "# Title\n", "b.json": '{"a": 1}', "c.txt": "plain", "d": "no suffix", "e.MARKDOWN": "x"}
    tokens = {"a.md": 2, "b.json": 2, "c.txt": 2, "d": 3, "e.MARKDOWN": 1}  # a quarter of the bytes, rounded up
    s = select([pack("p", list(files), always=True)], files=files)
    by_file = {b.metadata["file"]: b for b in s.blocks}
    assert {f: b.content_type for f, b in by_file.items()} == {
        "a.md": "text/markdown",
        "b.json": "application/json",
        "c.txt": "text/plain",
        "d": "text/plain",
        "e.MARKDOWN": "text/markdown",
    }
    for path, block in by_file.items():
        assert (block.source, block.content, block.token_estimate) == (
            "org.test.context",
            files[path],
            tokens[path],
        )
        assert block.to_dict()["metadata"] == {"pack_id": "p", "file": path}


# -- truncation ------------------------------------------------------------------------------------------------------


def test_max_tokens_truncates_at_line_ends_and_marks_instead_of_dropping() -> None:
    files = {
        "a.md": "a" * 39 + "\n",  # 40 bytes = 10 tokens, fits
        "b.md": "first line\nsecond line that is long\n",  # 36 bytes = 9 tokens, 5 left: cut to 'first line\n'
        "c.md": "xyz\nabcdefgh\n",  # 2 tokens left = 8 bytes: cut to 'xyz\n'
        "d.md": "nothing left for this one\n",  # 1 token left = 4 bytes, no line end before it
    }
    s = select([pack("p", list(files), always=True, max_tokens=15)], files=files)
    blocks = {b.metadata["file"]: b for b in s.blocks}
    assert list(blocks) == ["a.md", "b.md", "c.md", "d.md"]
    assert (blocks["a.md"].content, "truncated" in blocks["a.md"].metadata) == (files["a.md"], False)
    assert blocks["b.md"].content == "first line\n"
    assert blocks["b.md"].metadata["truncated"] is True
    assert blocks["b.md"].metadata["omitted_tokens"] == 9 - 3
    assert blocks["b.md"].token_estimate == 3
    assert blocks["c.md"].content == "xyz\n"
    assert blocks["c.md"].metadata["omitted_tokens"] == 4 - 1
    assert blocks["d.md"].content == "noth"
    assert blocks["d.md"].metadata["truncated"] is True
    assert sum(b.token_estimate for b in s.blocks) <= 15


def test_max_tokens_zero_keeps_empty_marked_blocks() -> None:
    files = {"a.md": "some text\n", "b.md": "more\n"}
    s = select([pack("p", list(files), always=True, max_tokens=0)], files=files)
    assert [(b.content, b.metadata["truncated"]) for b in s.blocks] == [("", True), ("", True)]


def test_truncation_never_splits_a_character() -> None:
    word = "استرداد"
    files = {"a.md": "a" + word}  # 1 + 7 * 2 bytes; 1 token is 4 bytes, which ends inside the third letter
    s = select([pack("p", ["a.md"], always=True, max_tokens=1)], files=files)
    assert s.blocks[0].content == "a" + word[0]


def test_max_tokens_is_per_pack() -> None:
    files = {"a.md": "a" * 40, "b.md": "b" * 40}
    s = select(
        [pack("p", ["a.md"], always=True, max_tokens=10), pack("q", ["b.md"], always=True, max_tokens=10)], files=files
    )
    assert [b.content for b in s.blocks] == ["a" * 40, "b" * 40]


# -- redaction -------------------------------------------------------------------------------------------------------


def test_blocks_are_redacted_and_the_redactions_recorded() -> None:
    files = {"a.md": "Mail ops@example.com or card 4111 1111 1111 1111.\n", "b.md": "clean\n"}
    s = select([pack("p", list(files), always=True)], files=files)
    a, b = s.blocks
    assert a.content == "Mail [REDACTED:email] or card [REDACTED:card].\n"
    assert a.metadata["redactions"] == {"card": 1, "email": 1}
    assert "redactions" not in b.metadata
    assert [(r.block_id, r.source, dict(r.counts)) for r in s.redactions] == [
        ("p:a.md", "org.test.context", {"card": 1, "email": 1})
    ]


def test_the_atlas_redaction_settings_apply() -> None:
    files = {"a.md": "Mail ops@example.com, staff EMP-12345\n"}
    redaction = {"builtin": [], "custom": [{"name": "employee", "pattern": r"EMP-\d{5}"}]}
    s = select([pack("p", ["a.md"], always=True)], files=files, redaction=redaction)
    assert s.blocks[0].content == "Mail ops@example.com, staff [REDACTED:employee]\n"
