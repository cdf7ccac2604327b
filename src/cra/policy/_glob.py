"""Glob patterns over whole identifiers.

Only ``*`` is special: it matches any run of characters, dots included. Every
other character matches itself. A pattern always matches the whole identifier:
``payments.*`` matches ``payments.refund`` but not ``payments`` or
``x.payments.refund``.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["compile_glob", "glob_regex"]


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The anchored regular expression equivalent to ``pattern``."""
    return re.compile("".join(".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", pattern)), re.S)


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate that is true when a string matches ``pattern`` in full."""
    stars = pattern.count("*")
    if stars == 0:
        return pattern.__eq__
    if pattern == "*":
        return lambda s: True
    if stars == 1 and pattern.endswith("*"):
        prefix = pattern[:-1]
        return lambda s: s.startswith(prefix)
    if stars == 1 and pattern.startswith("*"):
        suffix = pattern[1:]
        return lambda s: s.endswith(suffix)
    fullmatch = glob_regex(pattern).fullmatch
    return lambda s: fullmatch(s) is not None
