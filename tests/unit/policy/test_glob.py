"""Glob patterns over whole action ids: ``*`` matches any run (dots included), all else is literal."""

from __future__ import annotations

from functools import cache

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cra.policy._glob import compile_glob


def reference_match(pattern: str, text: str) -> bool:
    """An independent matcher: recursion over (pattern position, text position)."""

    @cache
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        if pattern[i] == "*":
            # the star matches nothing, or swallows one more character and stays
            return match(i + 1, j) or (j < len(text) and match(i, j + 1))
        return j < len(text) and pattern[i] == text[j] and match(i + 1, j + 1)

    return match(0, 0)


# Regex metacharacters and a newline are in the alphabet: they must all be literal.
ALPHABET = ".*ab?[\\+\n"
patterns = st.text(alphabet=ALPHABET, max_size=8)
texts = st.text(alphabet=ALPHABET.replace("*", "") + "*", max_size=10)


@settings(max_examples=1500, derandomize=True, deadline=None)
@given(pattern=patterns, text=texts)
@example(pattern="a*", text="a.b")
@example(pattern="*b", text="a.b")
@example(pattern="a*b", text="ab")
@example(pattern="*.*", text=".")
@example(pattern="a.b", text="aXb")
@example(pattern="a?", text="ab")
def test_compile_glob_agrees_with_reference_matcher(pattern: str, text: str) -> None:
    assert compile_glob(pattern)(text) is reference_match(pattern, text)


@pytest.mark.timeout(60)  # a complexity guard, not a speed goal: the backtracking matcher needed about 15 minutes
@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("*@*.example.com", "@" * 1_000_000, False),
        ("*a*a*a*a*b", "a" * 1_000_000, False),
        ("*a*a*a*a*b", "a" * 1_000_000 + "b", True),
        ("x*y*z", "x" + "y" * 1_000_000, False),
    ],
)
def test_adversarial_texts_are_matched_in_one_pass(pattern: str, text: str, expected: bool) -> None:
    """Inputs that make a backtracking matcher quadratic (issue #12, finding 2): 100,000 characters took
    8.8 s, so these million-character texts would exceed the timeout by far; a linear matcher takes
    milliseconds."""
    assert compile_glob(pattern)(text) is expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("payments.*", "payments.refund", True),
        ("payments.*", "payments.refund.partial", True),
        ("payments.*", "payments.", True),
        ("payments.*", "payments", False),
        ("payments.*", "x.payments.refund", False),
        ("payments.*", "paymentsXrefund", False),
        ("*", "", True),
        ("*", "anything.at.all", True),
        ("*", "*", True),
        ("resource.get", "resource.get", True),
        ("resource.get", "resource.get.all", False),
        ("resource.get", "resource", False),
        ("*.delete", "resource.delete", True),
        ("*.delete", "resource.delete.soft", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.c.d", False),
        ("a.*.c", "a.b.x.c", True),
        ("a.*.c", "a.c", False),
        ("**", "x", True),
    ],
)
def test_examples(pattern: str, text: str, expected: bool) -> None:
    assert compile_glob(pattern)(text) is expected


@pytest.mark.parametrize(
    ("pattern", "text"),
    [
        ("pay*.refund", "payments.refund.extra"),
        ("a*b", "abc"),
        ("re*.get", "resource.get.all"),
        ("db.*.read", "db.users.read.all"),
    ],
)
def test_non_trailing_stars_are_not_prefix_matches(pattern: str, text: str) -> None:
    """A ``startswith`` on the part before the first star would accept these; the glob must not."""
    assert text.startswith(pattern.split("*", 1)[0])
    assert compile_glob(pattern)(text) is False


@pytest.mark.parametrize("pattern", ["a.b", "a|b", "(a)", "a+", "a{2}", "^a$", "[ab]", "a?"])
def test_regex_metacharacters_are_literal(pattern: str) -> None:
    match = compile_glob(pattern)
    assert match(pattern)
    assert not match("ab")
    assert not match("aa")
