"""Supply-chain gates for CI: the SBOM of what CRA ships, its licences, and known vulnerabilities.

    uv run python tools/supply_chain.py sbom OUT.json     # CycloneDX 1.6 SBOM of the locked runtime dependencies
    uv run python tools/supply_chain.py licenses SBOM     # every runtime dependency's licence is allowed
    uv run python tools/supply_chain.py audit             # pip-audit of every package in uv.lock

The policies live in ``supply-chain/``: ``licenses.toml`` (the allowed SPDX licences and
per-package decisions) and ``vulnerabilities.toml`` (advisories accepted for now, each
with a reason and a date to look again). See docs/supply-chain.md.

Exit codes: 0 the gate passed; 1 it found a problem (each printed with its reason);
2 the gate could not run (a tool failed, a policy file is malformed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
POLICY = ROOT / "supply-chain"
#: With this set to 1, packages that could not be audited (the vulnerability service did not answer) fail the audit.
AUDIT_REQUIRED_ENV = "CRA_AUDIT_REQUIRED"


class GateError(Exception):
    """The gate could not run: exit 2."""


def _run(command: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(command, capture_output=True, text=True, check=False, **kw)  # noqa: S603 - fixed tools
    except OSError as exc:
        raise GateError(f"{command[0]}: {exc}") from None


def _policy(name: str) -> dict[str, Any]:
    path = POLICY / name
    try:
        return tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GateError(f"{path}: {exc}") from None


# -- the SBOM --------------------------------------------------------------------------------------------------------


def sbom(out: Path) -> None:
    """Install exactly the locked runtime dependencies into a scratch environment and describe it."""
    with tempfile.TemporaryDirectory(prefix="cra-sbom-") as scratch:
        env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(Path(scratch) / "venv")}
        synced = _run(["uv", "sync", "--frozen", "--no-dev", "--quiet"], cwd=ROOT, env=env)
        if synced.returncode != 0:
            raise GateError(f"uv sync of the runtime dependencies failed:\n{synced.stderr}")
        made = _run(
            [
                sys.executable,
                "-m",
                "cyclonedx_py",
                "environment",
                "--pyproject",
                str(ROOT / "pyproject.toml"),
                "--spec-version",
                "1.6",
                "--output-reproducible",
                "--output-file",
                str(out),
                str(Path(scratch) / "venv"),
            ],
            cwd=ROOT,
        )
        if made.returncode != 0:
            raise GateError(f"cyclonedx-py failed:\n{made.stderr}")
    components = json.loads(out.read_text("utf-8")).get("components", [])
    print(f"SBOM: {out} ({len(components)} runtime components, CycloneDX 1.6)")


# -- licences ----------------------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\(|\)|[A-Za-z0-9.+:-]+")


def spdx_permits(expression: str, allowed: frozenset[str], exceptions: frozenset[str]) -> bool:
    """Whether an SPDX expression lets CRA use the package: OR needs one allowed branch, AND needs all,
    and ``X WITH E`` needs both X and the exception E allowed. Anything malformed is refused."""
    tokens = _TOKEN.findall(expression)
    if not tokens or "".join(tokens) != re.sub(r"\s+", "", expression):
        return False

    def either(at: int) -> tuple[bool, int]:
        value, at = both(at)
        while at < len(tokens) and tokens[at].upper() == "OR":
            other, at = both(at + 1)
            value = value or other
        return value, at

    def both(at: int) -> tuple[bool, int]:
        value, at = term(at)
        while at < len(tokens) and tokens[at].upper() == "AND":
            other, at = term(at + 1)
            value = value and other
        return value, at

    def term(at: int) -> tuple[bool, int]:
        if at >= len(tokens) or tokens[at] in (")", "OR", "AND", "WITH"):
            return False, len(tokens) + 1  # a missing operand: malformed
        if tokens[at] == "(":
            value, at = either(at + 1)
            return (value, at + 1) if at < len(tokens) and tokens[at] == ")" else (False, len(tokens) + 1)
        value, at = tokens[at] in allowed, at + 1
        if at < len(tokens) and tokens[at].upper() == "WITH":
            value = value and at + 1 < len(tokens) and tokens[at + 1] in exceptions
            at += 2
        return value, at

    value, end = either(0)
    return value and end == len(tokens)


@dataclass(frozen=True, slots=True)
class LicensePolicy:
    allowed: frozenset[str]
    exceptions: frozenset[str]
    recorded_only: frozenset[str]
    packages: Mapping[str, Mapping[str, str]]

    @classmethod
    def load(cls) -> LicensePolicy:
        data = _policy("licenses.toml")
        packages = data.get("packages", {})
        for name, decision in packages.items():
            if not {"license", "reason"} <= set(decision) or not str(decision["reason"]).strip():
                raise GateError(f"licenses.toml: [packages.{name}] needs both license and reason")
        return cls(
            frozenset(data["allowed"]),
            frozenset(data.get("allowed_exceptions", [])),
            frozenset(data.get("recorded_only", [])),
            packages,
        )

    def permits(self, expression: str, *, recorded: bool = False) -> bool:
        """Whether ``expression`` is allowed; ``recorded`` also admits the licences allowed only by record."""
        allowed = self.allowed | self.recorded_only if recorded else self.allowed
        return spdx_permits(expression, allowed, self.exceptions)


def declared_licenses(component: Mapping[str, Any]) -> list[str]:
    """The SPDX identifiers and expressions a component declares; bare names (trove classifiers) are not SPDX."""
    found = []
    for entry in component.get("licenses", []):
        if "expression" in entry:
            found.append(entry["expression"])
        elif "id" in entry.get("license", {}):
            found.append(entry["license"]["id"])
    return found


def license_problems(components: Iterable[Mapping[str, Any]], policy: LicensePolicy) -> list[str]:
    problems = []
    for component in components:
        name, version = component["name"], component.get("version", "?")
        decided = policy.packages.get(name.lower())
        if decided is not None:
            if not policy.permits(decided["license"], recorded=True):
                problems.append(f"{name} {version}: the recorded licence {decided['license']!r} is not allowed")
            continue
        declared = declared_licenses(component)
        if not declared:
            problems.append(
                f"{name} {version}: declares no SPDX licence; read its licence and record it in licenses.toml"
            )
        for expression in declared:
            if not policy.permits(expression):
                problems.append(f"{name} {version}: {expression!r} is not an allowed licence")
    return problems


def licenses(sbom_path: Path) -> int:
    policy = LicensePolicy.load()
    try:
        components = json.loads(sbom_path.read_text("utf-8"))["components"]
    except (OSError, ValueError, KeyError) as exc:
        raise GateError(f"{sbom_path}: not a CycloneDX SBOM: {exc}") from None
    unused = set(policy.packages) - {c["name"].lower() for c in components}
    problems = license_problems(components, policy)
    problems += [f"licenses.toml: [packages.{name}] names no runtime dependency; remove it" for name in sorted(unused)]
    for problem in problems:
        print(f"licence: {problem}")
    print(f"licences: {len(components)} runtime components checked, {len(problems)} problems")
    return 1 if problems else 0


# -- vulnerabilities -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    package: str
    reason: str
    review_by: dt.date


def accepted_advisories(today: dt.date) -> tuple[dict[tuple[str, str], Accepted], list[str]]:
    """The accepted advisories still in force, by (package, id); and the problems with the file."""
    accepted: dict[tuple[str, str], Accepted] = {}
    problems = []
    for n, raw in enumerate(_policy("vulnerabilities.toml").get("accepted", [])):
        where = f"vulnerabilities.toml: accepted[{n}]"
        if not isinstance(raw, dict) or not {"id", "package", "reason", "review_by"} <= set(raw):
            raise GateError(f"{where} needs id, package, reason and review_by")
        if not isinstance(raw["review_by"], dt.date) or not str(raw["reason"]).strip():
            raise GateError(f"{where}: review_by must be a date and reason must say why")
        entry = Accepted(raw["id"], raw["package"].lower(), raw["reason"], raw["review_by"])
        if entry.review_by < today:
            problems.append(f"{entry.package} {entry.id}: accepted until {entry.review_by}, which has passed")
            continue
        accepted[(entry.package, entry.id)] = entry
    return accepted, problems


def audit_problems(
    report: Mapping[str, Any], accepted: Mapping[tuple[str, str], Accepted]
) -> tuple[list[str], list[str], list[str]]:
    """From pip-audit's JSON report: (vulnerabilities not accepted, accepted ones seen, packages not audited)."""
    found, excused, unaudited = [], [], []
    for dep in report.get("dependencies", []):
        name, version = dep["name"], dep.get("version", "")
        if "skip_reason" in dep:
            unaudited.append(f"{name}: {dep['skip_reason']}")
            continue
        for vuln in dep.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            hit = next((accepted[(name.lower(), i)] for i in ids if (name.lower(), i) in accepted), None)
            fixes = ", ".join(vuln.get("fix_versions", [])) or "none yet"
            line = f"{name} {version}: {vuln['id']} (fixed in: {fixes})"
            if hit is None:
                found.append(line)
            else:
                excused.append(f"{line}; accepted until {hit.review_by}: {hit.reason}")
    return found, excused, unaudited


def audit() -> int:
    accepted, problems = accepted_advisories(dt.datetime.now(dt.UTC).date())
    with tempfile.TemporaryDirectory(prefix="cra-audit-") as scratch:
        requirements = Path(scratch) / "requirements.txt"
        exported = _run(
            ["uv", "export", "--frozen", "--all-groups", "--no-emit-project", "--format", "requirements-txt"],
            cwd=ROOT,
        )
        if exported.returncode != 0:
            raise GateError(f"uv export failed:\n{exported.stderr}")
        requirements.write_text(exported.stdout, "utf-8")
        command = [sys.executable, "-m", "pip_audit", "--requirement", str(requirements), "--disable-pip"]
        ran = _run([*command, "--format", "json", "--progress-spinner", "off"], cwd=ROOT)
    try:
        report = json.loads(ran.stdout)
    except ValueError:
        raise GateError(f"pip-audit failed (exit {ran.returncode}):\n{ran.stderr[-3000:]}") from None
    found, excused, unaudited = audit_problems(report, accepted)
    total = len(report.get("dependencies", []))
    for line in excused:
        print(f"accepted: {line}")
    for line in found:
        print(f"VULNERABLE: {line}")
    for line in problems:
        print(f"vulnerabilities.toml: {line}")
    if unaudited:
        print(f"NOT AUDITED: {len(unaudited)} of {total} locked packages; the first: {unaudited[0]}")
    print(f"audit: {total} locked packages, {len(found)} known vulnerabilities, {len(excused)} accepted")
    if found or problems:
        return 1
    if unaudited and os.environ.get(AUDIT_REQUIRED_ENV) == "1":
        print(f"{AUDIT_REQUIRED_ENV}=1: every package must be audited")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("sbom", help="write the runtime SBOM").add_argument("out", type=Path)
    commands.add_parser("licenses", help="check the SBOM's licences").add_argument("sbom", type=Path)
    commands.add_parser("audit", help="pip-audit every locked package")
    args = parser.parse_args(argv)
    try:
        if args.command == "sbom":
            sbom(args.out)
            return 0
        if args.command == "licenses":
            return licenses(args.sbom)
        return audit()
    except GateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
