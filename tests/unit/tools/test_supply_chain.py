"""The supply-chain gates (tools/supply_chain.py) fail on what they must: a licence outside the policy,
a malformed licence expression, an advisory nobody accepted, an acceptance that has run out."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from supply_chain import (
    Accepted,
    LicensePolicy,
    audit_problems,
    declared_licenses,
    license_problems,
    spdx_permits,
)

ALLOWED = frozenset({"MIT", "Apache-2.0", "BSD-3-Clause"})
EXCEPTIONS = frozenset({"LLVM-exception"})
POLICY = LicensePolicy(
    ALLOWED,
    EXCEPTIONS,
    frozenset({"LGPL-3.0-only"}),
    {"odd": {"license": "MIT", "reason": "read from its LICENSE"}, "lgpl": {"license": "LGPL-3.0-only", "reason": "r"}},
)


@pytest.mark.parametrize(
    ("expression", "permitted"),
    [
        ("MIT", True),
        ("GPL-3.0-only", False),
        ("MIT OR GPL-3.0-only", True),
        ("GPL-3.0-only OR MIT", True),
        ("MIT AND GPL-3.0-only", False),
        ("(MIT OR GPL-3.0-only) AND Apache-2.0", True),
        ("MIT AND (BSD-3-Clause OR GPL-2.0-only)", True),
        ("MIT AND (GPL-3.0-only OR GPL-2.0-only)", False),
        ("Apache-2.0 WITH LLVM-exception", True),
        ("Apache-2.0 WITH Classpath-exception-2.0", False),
        ("GPL-2.0-only WITH LLVM-exception", False),
        ("mit", False),  # identifiers are matched exactly
        ("", False),
        ("MIT OR", False),
        ("OR MIT", False),
        ("(MIT", False),
        ("MIT)", False),
        ("MIT MIT", False),
        ("MIT WITH", False),
        ("MIT, BSD-3-Clause", False),
    ],
)
def test_spdx_expressions(expression: str, permitted: bool) -> None:
    assert spdx_permits(expression, ALLOWED, EXCEPTIONS) is permitted


def component(name: str, *licenses: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "version": "1.0", "licenses": list(licenses)}


def spdx(identifier: str) -> dict[str, Any]:
    return {"license": {"id": identifier}}


def test_declared_licenses_are_ids_and_expressions_never_bare_names() -> None:
    c = component(
        "p",
        spdx("MIT"),
        {"expression": "MIT OR Apache-2.0"},
        {"license": {"name": "License :: OSI Approved :: BSD License"}},
    )
    assert declared_licenses(c) == ["MIT", "MIT OR Apache-2.0"]


def test_every_declared_licence_must_be_allowed() -> None:
    good = component("good", spdx("MIT"), {"expression": "Apache-2.0 OR GPL-3.0-only"})
    bad = component("bad", spdx("MIT"), spdx("GPL-3.0-only"))
    problems = license_problems([good, bad], POLICY)
    assert problems == ["bad 1.0: 'GPL-3.0-only' is not an allowed licence"]


def test_a_package_with_no_spdx_licence_fails_until_recorded() -> None:
    bare = component("bare", {"license": {"name": "BSD"}})
    (problem,) = license_problems([bare], POLICY)
    assert problem.startswith("bare 1.0: declares no SPDX licence")
    assert license_problems([component("odd", {"license": {"name": "BSD"}})], POLICY) == []


def test_a_recorded_licence_may_use_the_record_only_list_and_nothing_else() -> None:
    assert license_problems([component("lgpl", spdx("LGPL-3.0-only"))], POLICY) == []
    # The same licence, unrecorded, fails.
    (problem,) = license_problems([component("other", spdx("LGPL-3.0-only"))], POLICY)
    assert "'LGPL-3.0-only' is not an allowed licence" in problem
    # A record may not wave through a licence outside both lists.
    strict = LicensePolicy(ALLOWED, EXCEPTIONS, frozenset(), {"gpl": {"license": "GPL-3.0-only", "reason": "r"}})
    (problem,) = license_problems([component("gpl", spdx("MIT"))], strict)
    assert "recorded licence 'GPL-3.0-only' is not allowed" in problem


TODAY = dt.date(2026, 12, 2)


def report(*deps: dict[str, Any]) -> dict[str, Any]:
    return {"dependencies": list(deps), "fixes": []}


def vuln(vid: str, *aliases: str) -> dict[str, Any]:
    return {"id": vid, "aliases": list(aliases), "fix_versions": ["9.9"], "description": "d"}


def test_an_advisory_nobody_accepted_is_found() -> None:
    found, excused, unaudited = audit_problems(
        report({"name": "lib", "version": "1.0", "vulns": [vuln("PYSEC-1", "CVE-1")]}), {}
    )
    assert found == ["lib 1.0: PYSEC-1 (fixed in: 9.9)"]
    assert (excused, unaudited) == ([], [])


def test_an_accepted_advisory_is_excused_by_its_id_or_an_alias_and_only_for_its_package() -> None:
    accepted = {("lib", "CVE-1"): Accepted("CVE-1", "lib", "not reachable from CRA", TODAY)}
    found, excused, _ = audit_problems(
        report(
            {"name": "Lib", "version": "1.0", "vulns": [vuln("PYSEC-1", "CVE-1")]},
            {"name": "other", "version": "2.0", "vulns": [vuln("PYSEC-2", "CVE-1")]},
        ),
        accepted,
    )
    assert found == ["other 2.0: PYSEC-2 (fixed in: 9.9)"]
    assert len(excused) == 1
    assert "not reachable from CRA" in excused[0]


def test_a_package_that_could_not_be_audited_is_reported_not_passed_over() -> None:
    found, _, unaudited = audit_problems(report({"name": "lib", "skip_reason": "not found on PyPI"}), {})
    assert found == []
    assert unaudited == ["lib: not found on PyPI"]
