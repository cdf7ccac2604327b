"""``cra keys``, ``cra ledger`` and ``cra verify``: the audit ledger from the shell."""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from cra.errors import ChainError, CRAError, ProofError, ProtocolError, TraceError
from cra.ledger.bundle import ConsistencyProof, parse_bundle, parse_consistency, verify_bundle
from cra.ledger.checkpoint import checkpoint_of
from cra.ledger.note import NoteVerifier
from cra.ledger.tlog_proof import verify_tlog_proof
from cra.protocol.canonical import parse_json
from cra.runtime.ledger import AuditLedger, entry_of
from cra.store.datadir import open_ledger, resolve_data_dir
from cra.store.keys import Keyring
from cra.trace.chain import verify_chain
from cra.trace.jsonl import loads_trace

from ._output import EXIT_NEGATIVE, fail, print_json

__all__ = ["keys_app", "ledger_app", "verify"]

keys_app = typer.Typer(help="Create, show and rotate the ledger's signing keys.", no_args_is_help=True)
ledger_app = typer.Typer(help="Append to, checkpoint, prove from and export the audit ledger.", no_args_is_help=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="CRA's data directory (default: $CRA_DATA_DIR, else the per-user data dir)."),
]


def _keyring(data_dir: Path | None) -> Keyring:
    return Keyring(resolve_data_dir(data_dir) / "keys")


@contextmanager
def _ledger(data_dir: Path | None, *, as_json: bool) -> Iterator[AuditLedger]:
    try:
        # The same database as cra serve's: a PostgreSQL service keeps its ledger there.
        ledger = open_ledger(resolve_data_dir(data_dir), database_url=os.environ.get("CRA_DATABASE_URL"))
    except CRAError as exc:
        fail(exc, as_json=as_json)
    try:
        yield ledger
    except CRAError as exc:
        fail(exc, as_json=as_json)
    finally:
        ledger.close()


def _read_bytes(path: Path, *, as_json: bool) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}", as_json=as_json)


def _read_text(path: Path, *, as_json: bool) -> str:
    try:
        return _read_bytes(path, as_json=as_json).decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text (byte {exc.start})", as_json=as_json)


# -- keys ----------------------------------------------------------------------


def _print_keys(keyring: Keyring, *, as_json: bool) -> None:
    keys = keyring.keys()
    if as_json:
        print_json(
            {
                "origin": keyring.origin,
                "keys": [
                    {"key_id": k.key_id, "role": k.role, "vkey": k.vkey, "created_at": k.created_at} for k in keys
                ],
            }
        )
        return
    for role in ("primary", "cosigning"):
        for key in keys:
            if key.role == role:
                typer.echo(key.vkey)


@keys_app.command("generate")
def keys_generate(
    data_dir: DataDir = None,
    origin: Annotated[
        str | None, typer.Option("--origin", help="The log's name, e.g. example.com/cra/prod (default: a random one).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create the ledger's first signing key (and name the log)."""
    keyring = _keyring(data_dir)
    try:
        keyring.generate(origin)
    except CRAError as exc:
        fail(exc, as_json=as_json)
    _print_keys(keyring, as_json=as_json)


@keys_app.command("show")
def keys_show(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Print the verifier keys that sign checkpoints (primary first); --json lists every key."""
    keyring = _keyring(data_dir)
    try:
        _print_keys(keyring, as_json=as_json)
    except CRAError as exc:
        fail(exc, as_json=as_json)


@keys_app.command("rotate")
def keys_rotate(
    data_dir: DataDir = None,
    retire_previous: Annotated[
        bool, typer.Option("--retire-previous", help="Stop signing with the old key now, not at the next rotation.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Make a new primary key; the old one co-signs until the next rotation."""
    keyring = _keyring(data_dir)
    try:
        keyring.rotate(retire_previous=retire_previous)
        _print_keys(keyring, as_json=as_json)
    except CRAError as exc:
        fail(exc, as_json=as_json)


# -- ledger --------------------------------------------------------------------


@ledger_app.command("append")
def ledger_append(
    path: Annotated[Path, typer.Argument(help="A .trace.jsonl file; its hash chain must verify.")],
    data_dir: DataDir = None,
    as_json: JsonFlag = False,
) -> None:
    """Append a trace's events (those not yet logged) and sign a checkpoint."""
    try:
        events = loads_trace(_read_text(path, as_json=as_json))
    except TraceError as exc:
        fail(f"{path}: {exc}", as_json=as_json)
    try:
        verify_chain(events)
    except ChainError as exc:
        fail(f"{path}: the hash chain does not verify: {exc}", as_json=as_json)
    with _ledger(data_dir, as_json=as_json) as ledger:
        before = ledger.size
        indexes = ledger.append_entries([entry_of(e) for e in events])
        note = ledger.checkpoint()
        added = ledger.size - before
        if as_json:
            print_json(
                {"appended": added, "already_logged": len(events) - added, "indexes": indexes, "checkpoint": note}
            )
        else:
            typer.echo(f"appended {added} events ({len(events) - added} were already logged); log size {ledger.size}")


@ledger_app.command("checkpoint")
def ledger_checkpoint(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Print a signed checkpoint of the whole log (signing a new one if the log grew)."""
    with _ledger(data_dir, as_json=as_json) as ledger:
        note = ledger.checkpoint()
        if as_json:
            cp = checkpoint_of(note)
            print_json({"origin": cp.origin, "size": cp.size, "root": base64.b64encode(cp.root).decode(), "note": note})
        else:
            typer.echo(note, nl=False)


@ledger_app.command("prove")
def ledger_prove(
    event_id: Annotated[str, typer.Argument(help="The event to prove.")], data_dir: DataDir = None
) -> None:
    """Print a C2SP tlog-proof of one event against the newest checkpoint."""
    with _ledger(data_dir, as_json=False) as ledger:
        typer.echo(ledger.prove(event_id), nl=False)


@ledger_app.command("entry")
def ledger_entry(event_id: Annotated[str, typer.Argument(help="The event.")], data_dir: DataDir = None) -> None:
    """Write the event's exact leaf bytes to stdout (its leaf hash is SHA-256(0x00 || bytes))."""
    with _ledger(data_dir, as_json=False) as ledger:
        data = ledger.entry(event_id)
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@ledger_app.command("consistency")
def ledger_consistency(
    old_size: Annotated[int, typer.Argument(help="The older tree size.")],
    new_size: Annotated[int | None, typer.Argument(help="The newer size (default: the newest checkpoint's).")] = None,
    data_dir: DataDir = None,
) -> None:
    """Print a consistency proof between two tree sizes as JSON."""
    with _ledger(data_dir, as_json=True) as ledger:
        print_json(ledger.consistency(old_size, new_size).to_dict())


@ledger_app.command("export")
def ledger_export(
    session_id: Annotated[str, typer.Argument(help="The session whose events to export.")],
    out: Annotated[Path | None, typer.Option("--out", help="Write the bundle here instead of stdout.")] = None,
    since: Annotated[
        int | None, typer.Option("--since", help="Include a consistency proof from this older tree size.")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Export a whole session: its events with inclusion proofs, its attestations, the checkpoint,
    and the log's signed statement of the session at that checkpoint."""
    with _ledger(data_dir, as_json=False) as ledger:
        text = json.dumps(ledger.export(session_id, since=since).to_dict(), ensure_ascii=False, indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, "utf-8")


@ledger_app.command("attestation")
def ledger_attestation(
    attestation_id: Annotated[str, typer.Argument(help="The attestation (the id of its decision event).")],
    data_dir: DataDir = None,
) -> None:
    """Print an attestation with its event's bytes and a tlog-proof, as JSON."""
    with _ledger(data_dir, as_json=True) as ledger:
        evidence = ledger.attestation(attestation_id)
        print_json(
            {"attestation": evidence.attestation, "entry": evidence.entry.decode("utf-8"), "proof": evidence.proof}
        )


@ledger_app.command("check")
def ledger_check(data_dir: DataDir = None, as_json: JsonFlag = False) -> None:
    """Recompute the whole stored log: every Merkle hash and every checkpoint."""
    with _ledger(data_dir, as_json=as_json) as ledger:
        report = ledger.audit()
    root = base64.b64encode(report.root).decode()
    if as_json:
        print_json({"ok": True, "size": report.size, "root": root, "checkpoints": report.checkpoints})
    else:
        typer.echo(f"ok: {report.size} entries, root {root}, {report.checkpoints} checkpoints verified")


# -- verify --------------------------------------------------------------------


def _verifiers(keys: list[str], *, as_json: bool) -> list[NoteVerifier]:
    """Verifier keys given as strings or as files holding one per line."""
    texts: list[str] = []
    for key in keys:
        path = Path(key)
        if "+" not in key and path.is_file():
            texts.extend(line.strip() for line in _read_text(path, as_json=as_json).splitlines() if line.strip())
        else:
            texts.append(key)
    out = []
    for text in texts:
        try:
            out.append(NoteVerifier.parse(text))
        except ProofError as exc:
            fail(f"--key {text!r}: {exc}", as_json=as_json)
    if not out:
        fail("give at least one verifier key with --key", as_json=as_json)
    return out


def _negative(message: str, *, as_json: bool) -> None:
    if as_json:
        print_json({"verified": False, "reason": message})
    typer.secho(f"FAILED: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(EXIT_NEGATIVE)


def verify(
    bundle: Annotated[
        Path | None, typer.Argument(help="A trace export bundle (from 'cra ledger export' or 'cra demo').")
    ] = None,
    key: Annotated[
        list[str], typer.Option("--key", help="A trusted verifier key, or a file of them (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default; it is never mutated
    previous: Annotated[
        Path | None, typer.Option("--previous", help="A signed checkpoint seen earlier: the log must extend it.")
    ] = None,
    consistency: Annotated[
        Path | None, typer.Option("--consistency", help="A consistency proof (JSON) from --previous's size.")
    ] = None,
    proof: Annotated[Path | None, typer.Option("--proof", help="Verify one tlog-proof instead of a bundle.")] = None,
    entry: Annotated[Path | None, typer.Option("--entry", help="The exact entry bytes --proof proves.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Verify offline, with only verifier keys: a bundle (signed checkpoint, every event
    included, every hash chain, each session whole as the log's signed statement counts
    it, every attestation the log made, consistency with --previous), or one tlog-proof
    of one entry. Exit 0 only when everything verifies."""
    verifiers = _verifiers(key, as_json=as_json)
    if proof is not None:
        if bundle is not None or entry is None:
            fail("--proof needs --entry and no bundle", as_json=as_json)
        try:
            tlog, cp = verify_tlog_proof(
                _read_bytes(proof, as_json=as_json), _read_bytes(entry, as_json=as_json), verifiers
            )
        except ProofError as exc:
            _negative(str(exc), as_json=as_json)
        result = {"verified": True, "origin": cp.origin, "tree_size": cp.size, "index": tlog.index}
        if as_json:
            print_json(result)
        else:
            typer.secho(f"verified: entry {tlog.index} is in {cp.origin} at tree size {cp.size}", fg="green")
        return
    if bundle is None:
        fail("give a bundle to verify, or --proof and --entry", as_json=as_json)
    try:
        data = parse_json(_read_text(bundle, as_json=as_json), source=str(bundle), error=ProtocolError)
        extra: list[ConsistencyProof] = []
        if consistency is not None:
            text = _read_text(consistency, as_json=as_json)
            extra.append(parse_consistency(parse_json(text, source=str(consistency), error=ProtocolError)))
    except ProtocolError as exc:
        fail(exc, as_json=as_json)
    try:
        before = _read_text(previous, as_json=as_json) if previous is not None else None
        report = verify_bundle(parse_bundle(data), verifiers, previous=before, consistency=extra)
    except ProofError as exc:
        _negative(str(exc), as_json=as_json)
    if as_json:
        print_json(report.to_dict())
        return
    cp = report.checkpoint
    typer.secho(f"verified: {report.events} events of {len(report.sessions)} session(s)", fg="green")
    typer.echo(f"  checkpoint  {cp.origin} size {cp.size}, signed by a trusted key")
    typer.echo("  inclusion   every event is in the log; every hash chain is intact")
    for s in report.sessions:
        span = f"sequences 0-{s.events - 1} ({s.events} events, log indexes {s.first_index}-{s.last_index})"
        if s.ended:
            typer.echo(f"  session     {s.session_id}: complete and ended: {span}")
        else:
            typer.echo(
                f"  session     {s.session_id}: complete up to tree size {cp.size}, still open there: {span}; "
                "the log's signed statement says it held no later event of the session"
            )
    typer.echo(f"  attestations {len(report.attestations)} verified: every decision the log attested is here")
    for s in report.sessions:
        if s.unattested_decisions:
            typer.secho(
                f"  unattested  {s.session_id}: {len(s.unattested_decisions)} decision event(s) the log sealed "
                f"without an attestation (a trace appended from a file, say): {', '.join(s.unattested_decisions)}",
                fg="yellow",
            )
    if report.previous is not None:
        typer.echo(f"  consistency the log extends the previous checkpoint (size {report.previous.size})")
