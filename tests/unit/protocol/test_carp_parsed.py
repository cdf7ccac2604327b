"""One parse (issue #13): a request parsed at the edge is taken as it is below; one built by hand is checked."""

from __future__ import annotations

import dataclasses
import gc
from datetime import UTC, datetime
from typing import Any

import pytest
from tests.conftest import EXAMPLES

from cra import ManualClock, Resolver, SeededIds
from cra.errors import ProtocolError
from cra.protocol import carp
from cra.protocol.carp import CarpRequest, is_parsed, parse_carp_request

REQUEST: dict[str, Any] = {
    "carp_version": "1.0",
    "request_id": "00000000-0000-7000-8000-000000000001",
    "timestamp": "2026-03-01T09:00:00Z",
    "operation": "resolve",
    "requester": {"agent_id": "support-bot", "session_id": "00000000-0000-7000-8000-0000000000aa"},
    "task": {"goal": "Refund order 42"},
}


def test_only_what_parse_made_counts_as_parsed() -> None:
    parsed = parse_carp_request(REQUEST)
    assert is_parsed(parsed)
    assert not is_parsed(dataclasses.replace(parsed, goal="something else"))
    by_hand = CarpRequest("r", "t", "resolve", "a", "s", "g")
    assert not is_parsed(by_hand)


def test_a_parsed_request_is_forgotten_when_it_dies() -> None:
    before = len(carp._PARSED)
    parse_carp_request(REQUEST)
    gc.collect()
    assert len(carp._PARSED) == before


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The schemas validated from now on (a spy on the validator, which still validates)."""
    seen: list[str] = []
    real = carp.validate  # type: ignore[attr-defined]  # the module's own import, spied on here

    def counting(schema: Any, data: object) -> None:
        seen.append(schema)
        real(schema, data)

    monkeypatch.setattr(carp, "validate", counting)
    return seen


def _resolver() -> tuple[Resolver, dict[str, Any]]:
    clock = ManualClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    resolver = Resolver(clock=clock, ids=SeededIds(3, clock))
    resolver.load_atlas(EXAMPLES / "customer-support")
    sid = resolver.create_session("support-bot", "Refund order 42", roles=["agent"])
    return resolver, {**REQUEST, "requester": {"agent_id": "support-bot", "session_id": sid}}


def test_the_resolver_does_not_validate_a_parsed_request_again(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver, request = _resolver()
    parsed = parse_carp_request(request)
    seen = _counting(monkeypatch)
    resolver.resolve(parsed)
    assert seen == []
    resolver.resolve({**request, "request_id": "00000000-0000-7000-8000-000000000002"})
    assert seen == ["carp-request"]  # a JSON object is validated once


def test_a_request_built_by_hand_is_validated_like_json() -> None:
    resolver, request = _resolver()
    sid = request["requester"]["session_id"]
    forged = CarpRequest("not-a-uuid", "2026-03-01T09:00:00Z", "resolve", "support-bot", sid, "Refund order 42")
    with pytest.raises(ProtocolError) as info:
        resolver.resolve(forged)
    assert info.value.path == "/request_id"
