"""Redaction of context before it leaves CRA: builtin kinds, Luhn, false positives, custom patterns."""

from __future__ import annotations

import re

import pytest

from cra.context.redact import BUILTIN_KINDS, compile_redactor
from cra.errors import AtlasError


def luhn_valid(number: str) -> bool:
    """The Luhn check, written independently: double every second digit from the right."""
    digits = [int(c) for c in number if c.isdigit()]
    checksum = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2:
            digit = sum(divmod(digit * 2, 10))
        checksum += digit
    return checksum % 10 == 0


VALID_CARD = "4111 1111 1111 1111"
INVALID_CARD = "4111 1111 1111 1112"
DEFAULT = compile_redactor(None)


def test_card_fixtures_are_what_they_claim() -> None:
    assert luhn_valid(VALID_CARD)
    assert luhn_valid("5500-0000-0000-0004")
    assert luhn_valid("378282246310005")
    assert not luhn_valid(INVALID_CARD)
    assert not luhn_valid("1234567890123")


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("Write to jane.doe+refunds@example.co.uk today.", "Write to [REDACTED:email] today.", "email"),
        ("Call +966 50 123 4567 now", "Call [REDACTED:phone] now", "phone"),
        ("Call (555) 123-4567 now", "Call [REDACTED:phone] now", "phone"),
        ("Call 050-123-4567 now", "Call [REDACTED:phone] now", "phone"),
        (f"Card {VALID_CARD} on file", "Card [REDACTED:card] on file", "card"),
        ("Card 5500-0000-0000-0004 on file", "Card [REDACTED:card] on file", "card"),
        ("Amex 378282246310005.", "Amex [REDACTED:card].", "card"),
        ("key AKIAIOSFODNN7EXAMPLE here", "key [REDACTED:secret] here", "secret"),
        ("token sk-abcdefghijklmnopqrstuvwx1234 end", "token [REDACTED:secret] end", "secret"),
        ("gh ghp_" + "a1B2" * 9 + " end", "gh [REDACTED:secret] end", "secret"),
        ("slack xoxb-123456789012-abcdefghij end", "slack [REDACTED:secret] end", "secret"),
        ("google AIza" + "x" * 35 + " end", "google [REDACTED:secret] end", "secret"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
            "jwt [REDACTED:secret] end",
            "secret",
        ),
        (
            "k\n-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY-----\nafter",
            "k\n[REDACTED:secret]\nafter",
            "secret",
        ),
    ],
)
def test_builtin_kinds(text: str, expected: str, kind: str) -> None:
    assert DEFAULT.redact(text) == (expected, {kind: 1})


@pytest.mark.parametrize(
    "text",
    [
        f"Card {INVALID_CARD} fails the Luhn check",
        "Shipped on 2024-12-28.",
        "Between 2024-12-28 and 2025-01-15.",
        "Created 2024-12-28T10:30:00Z",
        "Order #10482 is late",
        "Order 123456789012 is late",
        "Invoice INV-2024-0042 is paid",
        "Refund 250.00 SAR within 14 days",
        "Version 1.2.3 of the atlas",
        "not an address: user@localhost",
        "sk-short",
        "AKIA123",
        "nothing sensitive here",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert DEFAULT.redact(text) == (text, {})


@pytest.mark.parametrize(
    "text",
    ["Created 2024-12-28 10:30:00 by the agent", "Order ORD-2024-000123 is late"],
    ids=["iso-date-time-with-space", "prefixed-order-number"],
)
def test_dates_with_times_and_dashed_order_numbers_are_left_alone(text: str) -> None:
    """Dates and order ids with dashes are not phone numbers, even when followed by a time or prefixed."""
    assert DEFAULT.redact(text) == (text, {})


def test_counts_every_match_of_every_kind() -> None:
    text = f"a@example.com, b@example.com, {VALID_CARD}, +966 50 123 4567, AKIAIOSFODNN7EXAMPLE"
    redacted, counts = DEFAULT.redact(text)
    assert counts == {"email": 2, "card": 1, "phone": 1, "secret": 1}
    assert redacted == ("[REDACTED:email], [REDACTED:email], [REDACTED:card], [REDACTED:phone], [REDACTED:secret]")


def test_without_a_redaction_key_every_builtin_kind_is_on() -> None:
    assert set(BUILTIN_KINDS) == {"email", "phone", "card", "secret"}
    assert {kind for kind, _, _ in compile_redactor(None).rules} == set(BUILTIN_KINDS)
    assert {kind for kind, _, _ in compile_redactor({}).rules} == set(BUILTIN_KINDS)


def test_an_atlas_can_narrow_the_builtin_kinds() -> None:
    redactor = compile_redactor({"builtin": ["email"]})
    text = "a@example.com or +966 50 123 4567"
    assert redactor.redact(text) == ("[REDACTED:email] or +966 50 123 4567", {"email": 1})
    assert compile_redactor({"builtin": []}).redact(text) == (text, {})


def test_custom_patterns() -> None:
    redactor = compile_redactor({"builtin": [], "custom": [{"name": "employee_id", "pattern": r"EMP-\d{5}"}]})
    assert redactor.redact("EMP-12345 and EMP-99999, not EMP-1") == (
        "[REDACTED:employee_id] and [REDACTED:employee_id], not EMP-1",
        {"employee_id": 2},
    )


def test_custom_patterns_add_to_the_builtins() -> None:
    redactor = compile_redactor({"custom": [{"name": "iban", "pattern": r"SA\d{22}"}]})
    text = "IBAN SA0380000000608010167519, mail a@example.com"
    assert redactor.redact(text) == ("IBAN [REDACTED:iban], mail [REDACTED:email]", {"iban": 1, "email": 1})


@pytest.mark.parametrize("pattern", ["(unclosed", "[a-", "*x", "a{2,1}"])
def test_a_bad_custom_regex_is_an_atlas_error(pattern: str) -> None:
    with pytest.raises(re.error):
        re.compile(pattern)
    config = {"custom": [{"name": "ok", "pattern": "fine"}, {"name": "bad", "pattern": pattern}]}
    with pytest.raises(AtlasError) as info:
        compile_redactor(config, source="atlas.json")
    assert info.value.path == "/redaction/custom/1/pattern"
    assert str(info.value).startswith("atlas.json: /redaction/custom/1/pattern: ")


@pytest.mark.parametrize("pattern", ["x*", "(a|)", "^"])
def test_a_custom_pattern_matching_the_empty_string_is_refused(pattern: str) -> None:
    with pytest.raises(AtlasError) as info:
        compile_redactor({"custom": [{"name": "empty", "pattern": pattern}]})
    assert info.value.path == "/redaction/custom/0/pattern"


@pytest.mark.parametrize("pattern", ["\\b", "(?=EMP)", "$"])
def test_a_zero_width_custom_pattern_never_inserts_markers(pattern: str) -> None:
    """A pattern that matches only empty strings must be refused, or at least redact nothing."""
    try:
        redactor = compile_redactor({"builtin": [], "custom": [{"name": "zero", "pattern": pattern}]})
    except AtlasError as error:
        refused_at: str | None = error.path
    else:
        refused_at = None
        assert redactor.redact("EMP-12345 joined") == ("EMP-12345 joined", {})
    assert refused_at in (None, "/redaction/custom/0/pattern")
