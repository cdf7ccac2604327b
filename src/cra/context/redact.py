"""Redaction of sensitive text before context leaves CRA.

Builtin kinds:

* ``email`` - addresses such as ``name@example.com``;
* ``phone`` - numbers of 9 to 15 digits written with ``+``, spaces, dots,
  dashes or parentheses (ISO dates are left alone);
* ``card`` - 13 to 19 digit numbers that pass the Luhn check;
* ``secret`` - private key blocks, AWS access key ids, JWTs, and API tokens
  with well-known prefixes (``sk-``, ``ghp_`` and the other GitHub prefixes,
  ``xox?-`` Slack tokens, ``AIza`` Google keys).

An atlas chooses builtin kinds and adds its own patterns in ``redaction``;
without that key every builtin kind is on. Matches become ``[REDACTED:kind]``.
These are heuristics: they catch the common shapes, not every secret.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cra.errors import AtlasError

__all__ = ["BUILTIN_KINDS", "Redactor", "compile_redactor"]

BUILTIN_KINDS: Final = ("secret", "card", "email", "phone")

_SECRET = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
    r"|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\bAIza[0-9A-Za-z_-]{35}",
    re.S,
)
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<![\w+-])\+?\(?\d[\d\s().-]{6,20}\d(?![\w])")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DECIMAL = re.compile(r"\d\.\d{2}(?!\d)")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2 == 1:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if not 9 <= len(digits) <= 15 or _ISO_DATE.match(text.strip()) or _DECIMAL.search(text):
        return False  # too short or long, a date (and time), or an amount such as "100.00 (10000)"
    return text.startswith(("+", "(", "0")) or bool(re.search(r"[\s().-]", text))


_BUILTIN: Final[dict[str, tuple[re.Pattern[str], Callable[[str], bool] | None]]] = {
    "secret": (_SECRET, None),
    "card": (_CARD, _card_ok),
    "email": (_EMAIL, None),
    "phone": (_PHONE, _phone_ok),
}


@dataclass(frozen=True, slots=True)
class Redactor:
    """Applies an ordered list of (kind, pattern, check) rules to text."""

    rules: tuple[tuple[str, re.Pattern[str], Callable[[str], bool] | None], ...]

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """Return the redacted text and how many matches of each kind were replaced."""
        counts: dict[str, int] = {}
        for kind, pattern, check in self.rules:

            def replace(m: re.Match[str], kind: str = kind, check: Callable[[str], bool] | None = check) -> str:
                if not m.group(0) or (check is not None and not check(m.group(0))):
                    return m.group(0)  # an empty match (a custom \b, a lookahead) redacts nothing
                counts[kind] = counts.get(kind, 0) + 1
                return f"[REDACTED:{kind}]"

            text = pattern.sub(replace, text)
        return text, counts


def compile_redactor(config: Mapping[str, Any] | None, *, source: str | None = None) -> Redactor:
    """Build the redactor an atlas's ``redaction`` object asks for.

    ``None`` (no ``redaction`` key) turns on every builtin kind. A custom
    pattern that is not a valid regular expression is an :class:`AtlasError`.
    """
    config = config or {}
    builtin = config.get("builtin", list(BUILTIN_KINDS))
    rules = [(kind, *_BUILTIN[kind]) for kind in BUILTIN_KINDS if kind in builtin]
    for i, custom in enumerate(config.get("custom", [])):
        try:
            pattern = re.compile(custom["pattern"])
        except re.error as exc:
            raise AtlasError(
                f"/redaction/custom/{i}/pattern", f"not a valid regular expression: {exc}", source=source
            ) from None
        if pattern.fullmatch(""):
            raise AtlasError(f"/redaction/custom/{i}/pattern", "must not match the empty string", source=source)
        rules.append((custom["name"], pattern, None))
    return Redactor(tuple(rules))
