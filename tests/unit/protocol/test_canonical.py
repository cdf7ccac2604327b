"""Strict JSON parsing: what JSON does not mean, or means twice, or is not text, is refused with a path."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cra.errors import ProtocolError
from cra.protocol.canonical import canonical_json, parse_json


def parsed(text: str | bytes) -> object:
    return parse_json(text, source=None, error=ProtocolError)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('{"goal": "x\\ud800"}', "/goal"),
        ('{"goal": "\\udc00 low alone"}', "/goal"),
        ('{"a": ["fine", "\\uDFFF"]}', "/a/1"),
        ('{"execution": {"parameters": {"code": "print(1)\\ud800"}}}', "/execution/parameters/code"),
        ('{"a/b": {"c~d": "\\ud800"}}', "/a~1b/c~0d"),
        ('{"\\ud800key": 1}', "/\\ud800key"),
        ('"\\ud800"', ""),
        ('{"reversed": "\\ude00\\ud83d"}', "/reversed"),
    ],
)
def test_a_lone_surrogate_is_refused_with_its_path(text: str, path: str) -> None:
    """Issue #12, finding 6: such strings were accepted, then made the service fail with a 500."""
    with pytest.raises(ProtocolError) as info:
        parsed(text)
    assert info.value.path == path
    assert "lone surrogate" in info.value.reason
    str(info.value).encode("utf-8")  # the error itself is printable text


@pytest.mark.parametrize(
    "text",
    ['{"emoji": "\\ud83d\\ude00"}', '{"escaped": "\\\\ud800"}', '{"arabic": "\\u0627\\u0633\\u062a"}', '"plain"'],
)
def test_pairs_and_escaped_backslashes_are_text(text: str) -> None:
    assert parsed(text) == json.loads(text)


#: Text with surrogates in it, alone and in pairs: Python strings may hold them, JSON text may escape them.
SOME_TEXT = st.text(alphabet=st.sampled_from(["a", "/", "~", "\\", "\u0627", "\ud83d", "\ude00", "\udfff"]), max_size=6)
_LONE = re.compile("[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]")


@settings(max_examples=400, derandomize=True, deadline=None)
@given(value=st.recursive(SOME_TEXT, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(SOME_TEXT, inner)))
def test_a_value_is_refused_exactly_when_a_string_in_it_holds_a_lone_surrogate(value: object) -> None:
    """Property, against the standard library's parser: the same value, unless some key or string holds a
    surrogate that is not half of a pair, which is refused."""
    text = canonical_json(value)
    if any(_LONE.search(s) for s in _strings(value)):
        with pytest.raises(ProtocolError):
            parsed(text)
    else:
        assert parsed(text) == json.loads(text)


def _strings(value: object) -> list[str]:
    """Every key and string in ``value``."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []
