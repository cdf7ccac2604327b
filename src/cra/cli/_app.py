"""Command definitions. Each command parses its input, calls the library, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cra import __version__
from cra.errors import CRAError, ProtocolError, TraceError
from cra.policy.lint import lint_atlas
from cra.protocol.canonical import parse_json
from cra.protocol.carp import parse_carp_request, parse_timestamp
from cra.protocol.validation import validate
from cra.runtime.atlas_files import load_atlas
from cra.runtime.atlas_tests import load_tests, run_tests
from cra.runtime.clock import ManualClock
from cra.runtime.engine import Engine
from cra.runtime.resolver import Resolver
from cra.trace.chain import check_chain
from cra.trace.diff import diff_traces
from cra.trace.event import TraceEvent
from cra.trace.jsonl import dumps_trace, loads_trace
from cra.trace.replay import replay

from ._ledger import keys_app, ledger_app, verify
from ._output import EXIT_INVALID, EXIT_NEGATIVE, fail, print_json
from ._sandbox import build_wasm, policy_modules, sandbox_app
from ._serve import apikey_app, serve

app = typer.Typer(
    name="cra",
    help="CRA: decide what AI agents may see and do, and prove what they did.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
atlas_app = typer.Typer(help="Validate, lint, test and inspect atlases.", no_args_is_help=True)
trace_app = typer.Typer(help="Verify, replay and compare TRACE files.", no_args_is_help=True)
app.add_typer(atlas_app, name="atlas")
app.add_typer(trace_app, name="trace")
app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.command("verify")(verify)
app.command("serve")(serve)
app.add_typer(apikey_app, name="apikey")
app.add_typer(sandbox_app, name="sandbox")
app.command("build-wasm")(build_wasm)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cra {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print CRA's version and exit."),
    ] = False,
) -> None:
    """Options that come before any command."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AtlasArg = Annotated[Path, typer.Argument(help="An atlas package directory or a single atlas JSON file.")]


def main() -> None:
    app()


def _read(path: Path, *, as_json: bool = False) -> str:
    try:
        return path.read_text("utf-8")
    except FileNotFoundError:
        fail(f"{path}: no such file", as_json=as_json)
    except IsADirectoryError:
        fail(f"{path}: is a directory", as_json=as_json)
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text (byte {exc.start})", as_json=as_json)
    except OSError as exc:
        fail(f"{path}: {exc.strerror}", as_json=as_json)


def _json_value(text: str, what: str, *, as_json: bool) -> Any:
    try:
        return parse_json(text, source=what, error=ProtocolError)
    except ProtocolError as exc:
        fail(exc, as_json=as_json)


def _json_object(text: str, what: str, *, as_json: bool) -> dict[str, Any]:
    value = _json_value(text, what, as_json=as_json)
    if not isinstance(value, dict):
        fail(f"{what}: must be a JSON object", as_json=as_json)
    return value


def _trace(path: Path, *, as_json: bool) -> list[TraceEvent]:
    try:
        return loads_trace(_read(path, as_json=as_json))
    except TraceError as exc:
        fail(f"{path}: {exc}", as_json=as_json)


# -- atlas ---------------------------------------------------------------------


@atlas_app.command("validate")
def atlas_validate(path: AtlasArg, as_json: JsonFlag = False) -> None:
    """Check that an atlas loads and compiles: schema, references, files, policies."""
    try:
        atlas = Resolver(modules=policy_modules).load_atlas(
            path
        )  # the full load: schema, references, policies, context, parameter schemas
    except CRAError as exc:
        if as_json:
            print_json(
                {
                    "valid": False,
                    "path": getattr(exc, "path", ""),
                    "reason": getattr(exc, "reason", str(exc)),
                    "source": getattr(exc, "source", None),
                }
            )
        typer.secho(f"invalid: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_INVALID) from None
    if as_json:
        print_json({"valid": True, "atlas_id": atlas.atlas_id, "version": atlas.version, "digest": atlas.digest})
    else:
        typer.echo(f"valid: {atlas.atlas_id} {atlas.version} ({atlas.digest})")


@atlas_app.command("lint")
def atlas_lint(path: AtlasArg, as_json: JsonFlag = False) -> None:
    """Report shadowed policies, ungrantable actions, dead patterns and priority traps."""
    try:
        atlas = load_atlas(path)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    findings = lint_atlas(atlas, policy_modules)
    if any(f.code == "invalid" for f in findings):
        fail(f"{path}: {findings[0].path or '/'}: {findings[0].message}", as_json=as_json)
    if as_json:
        print_json({"atlas_id": atlas.atlas_id, "findings": [f.to_dict() for f in findings]})
    else:
        for f in findings:
            typer.echo(f"{f.severity}: {f.code} at {f.path or '/'}: {f.message}")
        typer.echo(f"{atlas.atlas_id}: {len(findings)} finding(s)")
    if findings:
        raise typer.Exit(EXIT_NEGATIVE)


@atlas_app.command("test")
def atlas_test(path: AtlasArg, as_json: JsonFlag = False) -> None:
    """Run the atlas's own test cases (tests/*.json, tests/*.yaml)."""
    try:
        atlas = load_atlas(path)
        cases = load_tests(path if path.is_dir() else path.parent)
        results = run_tests(atlas, cases, policy_modules)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    failed = [r for r in results if not r.passed]
    if as_json:
        print_json(
            {
                "atlas_id": atlas.atlas_id,
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "results": [
                    {"file": r.case.file, "name": r.case.name, "passed": r.passed, "failures": list(r.failures)}
                    for r in results
                ],
            }
        )
    else:
        for r in results:
            mark = "PASS" if r.passed else "FAIL"
            typer.secho(f"{mark} {Path(r.case.file).name}: {r.case.name}", fg=None if r.passed else typer.colors.RED)
            for failure in r.failures:
                typer.echo(f"     {failure}")
        typer.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if not results:
        typer.secho("no test cases found", err=True, fg=typer.colors.YELLOW)
        raise typer.Exit(EXIT_NEGATIVE)
    if failed:
        raise typer.Exit(EXIT_NEGATIVE)


@atlas_app.command("show")
def atlas_show(path: AtlasArg, as_json: JsonFlag = False) -> None:
    """Summarise an atlas: actions, policies in evaluation order, context packs."""
    try:
        engine = Engine.from_atlas(path, modules=policy_modules)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    atlas = engine.atlas
    summary: dict[str, Any] = {
        "atlas_id": atlas.atlas_id,
        "version": atlas.version,
        "name": atlas.name,
        "digest": atlas.digest,
        "actions": [
            {
                "action_id": a.action_id,
                "risk_tier": a.risk_tier,
                "policies": [r.policy_id for r in engine.compiled.rules_for(a.action_id)],
            }
            for a in atlas.actions
        ],
        "policies": [
            {"policy_id": p.policy_id, "type": p.type, "priority": p.priority, "actions": list(p.actions or ["*"])}
            for p in atlas.policies
        ],
        "context_packs": [
            {"pack_id": c.pack_id, "files": list(c.files), "priority": c.priority} for c in atlas.context_packs
        ],
    }
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{atlas.name} ({atlas.atlas_id} {atlas.version})")
    typer.echo(f"digest {atlas.digest}")
    typer.echo("actions (policies that apply, in evaluation order):")
    for a in summary["actions"]:
        typer.echo(f"  {a['action_id']} [{a['risk_tier']}]: {', '.join(a['policies']) or '(none: default deny)'}")
    typer.echo("context packs:")
    for c in summary["context_packs"]:
        typer.echo(f"  {c['pack_id']} (priority {c['priority']}): {', '.join(c['files'])}")


# -- evaluate and resolve ------------------------------------------------------


@app.command("evaluate")
def evaluate(
    atlas: Annotated[Path, typer.Option("--atlas", help="Atlas directory or JSON file.")],
    agent: Annotated[str | None, typer.Option("--agent", help="Agent id.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Action id.")] = None,
    role: Annotated[list[str] | None, typer.Option("--role", help="A role of the caller (repeatable).")] = None,
    risk_tier: Annotated[str | None, typer.Option("--risk-tier", help="low, medium, high or critical.")] = None,
    params: Annotated[str, typer.Option("--params", help="Call arguments as a JSON object.")] = "{}",
    context: Annotated[str, typer.Option("--context", help="Request context as a JSON object.")] = "{}",
    batch: Annotated[Path | None, typer.Option("--batch", help="A JSON Lines file of requests.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Do not consume rate limits or budgets.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Show every policy considered.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Decide one proposed call, or one per line of a --batch file (in order)."""
    try:
        engine = Engine.from_atlas(atlas, modules=policy_modules)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    if batch is not None:
        _evaluate_batch(engine, batch, dry_run=dry_run)
        return
    if agent is None or action is None:
        fail("--agent and --action are required without --batch", as_json=as_json)
    request: dict[str, Any] = {
        "agent": agent,
        "action": action,
        "roles": role or [],
        "params": _json_object(params, "--params", as_json=as_json),
        "context": _json_object(context, "--context", as_json=as_json),
        "dry_run": dry_run,
    }
    if risk_tier is not None:
        request["risk_tier"] = risk_tier
    try:
        decision = engine.evaluate_request(request)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    if as_json:
        out = decision.to_dict()
        if explain:
            out["steps"] = [
                {"policy_id": s.policy_id, "type": s.policy_type, "outcome": s.outcome, "detail": s.detail}
                for s in decision.steps
            ]
        print_json(out)
    elif explain:
        typer.echo(decision.explain())
    else:
        who = f", policy {decision.policy_id}" if decision.policy_id else ""
        typer.echo(f"{decision.effect.value}: {decision.reason} ({decision.reason_code}{who})")


def _evaluate_batch(engine: Engine, path: Path, *, dry_run: bool) -> None:
    invalid = 0
    for number, line in enumerate(_read(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            request = parse_json(line, source=None, error=ProtocolError)
            if isinstance(request, dict) and dry_run:
                request.setdefault("dry_run", True)
            decision = engine.evaluate_request(request)
            out: dict[str, Any] = {
                "decision": decision.effect.value,
                "policy_id": decision.policy_id,
                "reason": decision.reason,
            }
        except ProtocolError as exc:
            invalid += 1
            out = {"decision": "deny", "policy_id": None, "reason": f"line {number}: {exc}", "error": "invalid_request"}
        typer.echo(json.dumps(out, ensure_ascii=False))
    if invalid:
        typer.secho(f"{invalid} invalid request line(s), each answered with a deny", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_INVALID)


@app.command("resolve")
def resolve(
    atlas: Annotated[list[Path], typer.Option("--atlas", help="Atlas directory or JSON file (repeatable).")],
    request: Annotated[Path, typer.Option("--request", help="A CARP resolve request (JSON).")],
    role: Annotated[
        list[str] | None, typer.Option("--role", help="A role the host grants the agent (repeatable).")
    ] = None,
    trace_out: Annotated[Path | None, typer.Option("--trace", help="Write the session's trace here.")] = None,
) -> None:
    """Resolve a CARP request: which context and actions the agent gets.

    The request's own timestamp is the clock, so a stored request resolves the
    same way later; a session is opened for its agent with the given roles.
    """
    doc = _json_object(_read(request), str(request), as_json=False)
    try:
        parsed = parse_carp_request(doc)
        clock = ManualClock(parse_timestamp(parsed.timestamp, "/timestamp"))
        resolver = Resolver(clock=clock, modules=policy_modules)
        for a in atlas:
            resolver.load_atlas(a)
        session_id = resolver.create_session(parsed.agent_id, parsed.goal, roles=role or [])
        doc["requester"] = {**doc["requester"], "session_id": session_id}
        resolution = resolver.resolve(doc)
        validate("carp-resolution", resolution)
    except CRAError as exc:
        fail(exc)
    print_json(resolution)
    if trace_out is not None:
        trace_out.write_text(dumps_trace(resolver.get_trace(session_id)), "utf-8")


# -- traces ----------------------------------------------------------------------


@trace_app.command("verify")
def trace_verify(path: Annotated[Path, typer.Argument(help="A .trace.jsonl file.")], as_json: JsonFlag = False) -> None:
    """Verify a trace's hash chain. Exit 0 when valid, 1 when not."""
    try:
        events = loads_trace(_read(path, as_json=as_json))
    except TraceError as exc:
        if as_json:
            print_json({"valid": False, "error": "invalid_event", "index": None, "line": exc.line, "detail": str(exc)})
        else:
            typer.secho(f"invalid: line {exc.line}: {exc.path or '/'}: {exc.reason}", fg=typer.colors.RED)
        raise typer.Exit(EXIT_NEGATIVE) from None
    report = check_chain(events)
    if as_json:
        print_json({**report.to_dict(), "event_count": report.event_count, "detail": report.detail})
    elif report.valid:
        typer.echo(f"valid: {report.event_count} events, chain intact")
    else:
        typer.secho(f"invalid: {report.error} at event {report.index}: {report.detail}", fg=typer.colors.RED)
    if not report.valid:
        raise typer.Exit(EXIT_NEGATIVE)


@trace_app.command("replay")
def trace_replay(
    path: Annotated[Path, typer.Argument(help="A .trace.jsonl file.")],
    atlas: Annotated[list[Path], typer.Option("--atlas", help="Atlas directory or JSON file (repeatable).")],
    as_json: JsonFlag = False,
) -> None:
    """Recompute every decision in a trace with an atlas. Exit 0 when all are identical."""
    events = _trace(path, as_json=as_json)
    try:
        compiled = [Engine.from_atlas(a, modules=policy_modules).compiled for a in atlas]
    except CRAError as exc:
        fail(exc, as_json=as_json)
    report = replay(events, compiled)
    if as_json:
        print_json(report.to_dict())
    else:
        for item in report.items:
            if item.status != "identical":
                typer.secho(
                    f"event {item.sequence} {item.action_id}: recorded {item.recorded_result} "
                    f"by {item.recorded_policy}, replayed {item.replayed_result} by {item.replayed_policy}",
                    fg=typer.colors.RED,
                )
        for problem in report.problems:
            typer.secho(problem, fg=typer.colors.RED)
        verdict = "identical" if report.identical else "DIFFERENT"
        typer.echo(f"{verdict}: {len(report.items)} decisions replayed")
    if not report.identical:
        raise typer.Exit(EXIT_NEGATIVE)


@trace_app.command("diff")
def trace_diff(
    a: Annotated[Path, typer.Argument(help="The first trace.")],
    b: Annotated[Path, typer.Argument(help="The second trace.")],
    as_json: JsonFlag = False,
) -> None:
    """Compare two traces semantically (ids, timestamps and hashes ignored)."""
    result = diff_traces(_trace(a, as_json=as_json), _trace(b, as_json=as_json))
    if as_json:
        print_json(result.to_dict())
    else:
        for d in result.differences:
            typer.echo(f"{d.significance} {d.type} {d.path}: {d.a!r} -> {d.b!r}")
        typer.echo(result.compatibility)
    if result.compatibility == "different":
        raise typer.Exit(EXIT_NEGATIVE)


# -- demo ----------------------------------------------------------------------------


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option("--out", help="Where to write the session's trace.")] = Path(
        "cra-demo.trace.jsonl"
    ),
    atlas: Annotated[Path | None, typer.Option("--atlas", help="The customer-support example atlas.")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="CRA's data directory (default: $CRA_DATA_DIR, else the per-user data dir)."),
    ] = None,
) -> None:
    """Run a scripted support-agent session, seal it into the audit ledger, and prove it."""
    from cra.cli._demo import run_demo
    from cra.store.datadir import resolve_data_dir

    try:
        code = run_demo(out, atlas, resolve_data_dir(data_dir))
    except CRAError as exc:
        fail(exc)
    if code:
        raise typer.Exit(code)


__all__ = ["EXIT_INVALID", "app", "main"]
