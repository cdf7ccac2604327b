"""``cra serve`` and ``cra apikey``: the service from the shell."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cra.errors import CRAError
from cra.store.datadir import resolve_data_dir
from cra.trace.event import format_timestamp

from ._output import fail, print_json

if TYPE_CHECKING:
    from cra.server.tokens import JwtSettings
    from cra.store.state import ApiKeyRecord, SqlState

# The service's modules (FastAPI, SQLAlchemy, uvicorn) are imported by the commands that
# use them, so that every other command starts as fast as before.
_ROLES = "admin, policy_author, agent, approver, auditor"

__all__ = ["apikey_app", "serve"]

apikey_app = typer.Typer(help="Create, list and revoke the service's API keys.", no_args_is_help=True)

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="CRA's data directory (default: $CRA_DATA_DIR, else the per-user data dir)."),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar="CRA_DATABASE_URL",
        help="The state database (default: SQLite in the data dir), e.g. postgresql+asyncpg://host/db.",
    ),
]
RedisUrl = Annotated[
    str | None,
    typer.Option(
        "--redis-url",
        envvar="CRA_REDIS_URL",
        help="Redis for shared rate-limit and budget counters and the atlas cache, e.g. redis://host:6379/0.",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def serve(
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    redis_url: RedisUrl = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on.")] = 8420,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, help="Worker processes.")] = 1,
    executor_threads: Annotated[
        int, typer.Option("--executor-threads", min=1, max=1024, help="Threads that run executors, per worker.")
    ] = 8,
    executor_queue: Annotated[
        int,
        typer.Option(
            "--executor-queue", min=0, max=100_000, help="Calls that may wait for an executor thread (503 past that)."
        ),
    ] = 32,
    call_lease: Annotated[
        float,
        typer.Option(
            "--call-lease",
            min=1.0,
            max=3600.0,
            help="Seconds a running call's lease lasts; a call whose process stopped is recorded as failed after it.",
        ),
    ] = 30.0,
    demo: Annotated[
        bool, typer.Option("--demo/--no-demo", help="Load the example atlases into tenant 'default' if it has none.")
    ] = True,
    sandbox: Annotated[
        bool,
        typer.Option("--sandbox/--no-sandbox", help="Run code.execute calls in the WebAssembly sandbox."),
    ] = True,
    sealing: Annotated[
        str,
        typer.Option(
            "--sealing",
            help="When events are sealed into the ledger: 'background' (in batches, after the answer) "
            "or 'answer' (before each answer).",
        ),
    ] = "background",
    max_body: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Largest request body.")] = 1_048_576,
    key_rate: Annotated[
        float, typer.Option("--key-rate", min=0, help="Requests per second per API key (0: unlimited).")
    ] = 1000.0,
    cors_origin: Annotated[
        list[str] | None, typer.Option("--cors-origin", help="An origin CORS allows (repeatable; none by default).")
    ] = None,
    openapi: Annotated[
        bool,
        typer.Option("--openapi/--no-openapi", help="Serve the OpenAPI document at /openapi.json, unauthenticated."),
    ] = True,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error.", case_sensitive=False)
    ] = "info",
    log_format: Annotated[str, typer.Option("--log-format", help="text, or json (one object per line).")] = "text",
    request_timeout: Annotated[
        float, typer.Option("--request-timeout", min=0.1, help="Seconds a request may take (streams excepted).")
    ] = 30.0,
    jwt_issuer: Annotated[
        str | None, typer.Option("--jwt-issuer", envvar="CRA_JWT_ISSUER", help="Accept bearer JWTs from this issuer.")
    ] = None,
    jwt_audience: Annotated[
        str | None, typer.Option("--jwt-audience", envvar="CRA_JWT_AUDIENCE", help="The audience JWTs must name.")
    ] = None,
    jwt_key: Annotated[
        list[Path] | None,
        typer.Option("--jwt-key", help="A PEM public key (or a JWK as JSON) that signs JWTs (repeatable)."),
    ] = None,
    jwt_algorithm: Annotated[
        list[str] | None,
        typer.Option("--jwt-algorithm", help="An accepted JWT algorithm (default RS256, ES256, EdDSA)."),
    ] = None,
) -> None:
    """Serve the CRA API on embedded defaults: state, ledger and keys in the data directory."""
    import logging.config
    import os

    import uvicorn

    from cra.server.app import ServerSettings, create_app
    from cra.server.boot import DEMO_ATLASES, Booted, boot, ensure_admin_key, load_atlas_dirs
    from cra.server.logs import log_config
    from cra.server.workers import CONFIG_ENV, worker_config

    if log_level.lower() not in ("debug", "info", "warning", "error"):
        fail(f"--log-level must be debug, info, warning or error, not {log_level!r}")
    if sealing not in ("background", "answer"):
        fail(f"--sealing must be background or answer, not {sealing!r}")
    background = sealing == "background"
    if log_format not in ("text", "json"):
        fail(f"--log-format must be text or json, not {log_format!r}")
    logging_config = log_config(log_level.lower(), log_format)
    logging.config.dictConfig(logging_config)
    root = resolve_data_dir(data_dir)
    jwt = _jwt_settings(jwt_issuer, jwt_audience, jwt_key, jwt_algorithm)
    settings = ServerSettings(
        max_body_bytes=max_body,
        key_requests_per_second=key_rate,
        cors_origins=tuple(cors_origin or ()),
        public_openapi=openapi,
        jwt=jwt,
        request_timeout_seconds=request_timeout,
    )

    async def prepare() -> Booted:
        booted = await boot(
            root,
            database_url=database_url,
            redis_url=redis_url,
            sandbox=sandbox,
            seal_in_background=background,
            executor_threads=executor_threads,
            executor_queue=executor_queue,
            call_lease_seconds=call_lease,
        )
        try:
            token = await ensure_admin_key(booted.state)
            if token is not None:
                typer.secho("A new admin API key for tenant 'default' (shown once; keep it):", fg="yellow", err=True)
                typer.echo(token)
            if demo and not await booted.state.atlas_digests("default") and DEMO_ATLASES.is_dir():
                paths = sorted(p for p in DEMO_ATLASES.iterdir() if (p / "atlas.json").is_file())
                loaded = await load_atlas_dirs(booted.service, "default", paths)
                typer.echo(f"loaded the example atlases: {', '.join(loaded)}", err=True)
        except BaseException:
            await booted.close()
            raise
        return booted

    async def run_one() -> None:
        booted = await prepare()
        try:
            app = create_app(booted.service, booted.state, settings=settings)
            config = uvicorn.Config(
                app, host=host, port=port, log_config=logging_config, log_level=log_level.lower(), access_log=False
            )
            typer.echo(f"CRA serving http://{host}:{port} (data dir {root})", err=True)
            await uvicorn.Server(config).serve()
        finally:
            await booted.close()

    async def prepare_only() -> None:
        booted = await prepare()
        await booted.close()

    try:
        if workers == 1:
            asyncio.run(run_one())
            return
        asyncio.run(prepare_only())
    except CRAError as exc:
        fail(exc)
    os.environ[CONFIG_ENV] = worker_config(
        root,
        database_url,
        redis_url,
        settings,
        sandbox=sandbox,
        seal_in_background=background,
        executor_threads=executor_threads,
        executor_queue=executor_queue,
        call_lease_seconds=call_lease,
    )
    typer.echo(f"CRA serving http://{host}:{port} with {workers} workers (data dir {root})", err=True)
    uvicorn.run(
        "cra.server.workers:app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=logging_config,
        log_level=log_level.lower(),
        access_log=False,
        timeout_worker_healthcheck=_WORKER_START_SECONDS,
    )


#: How long uvicorn's supervisor waits for a worker to answer its health check. A new worker
#: imports the whole service before it can answer, which takes seconds on a loaded machine;
#: uvicorn's 5 s default killed every replacement of a dead worker under load.
_WORKER_START_SECONDS = 60


def _jwt_settings(
    issuer: str | None, audience: str | None, keys: list[Path] | None, algorithms: list[str] | None
) -> JwtSettings | None:
    """Bearer-token settings from the options; all of issuer, audience and a key, or none."""
    from cra.server.tokens import JwtSettings, JwtVerifier

    if not (issuer or audience or keys):
        return None
    if not (issuer and audience and keys):
        fail("bearer JWTs need --jwt-issuer, --jwt-audience and at least one --jwt-key")
    texts = []
    for path in keys:
        try:
            texts.append(path.read_text("utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{path}: cannot read the JWT key: {exc}")
    settings = JwtSettings(issuer=issuer, audience=audience, public_keys=tuple(texts))
    if algorithms:
        settings = JwtSettings(issuer, audience, tuple(texts), tuple(algorithms))
    try:
        JwtVerifier(settings)
    except (ValueError, TypeError) as exc:
        fail(f"the JWT settings are not usable: {exc}")
    return settings


async def _with_state(data_dir: Path | None, database_url: str | None) -> SqlState:
    from cra.store.database import open_state, sqlite_url

    root = resolve_data_dir(data_dir)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    return await open_state(database_url or sqlite_url(root / "cra.sqlite3"))


def _key_json(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "key_id": record.key_id,
        "tenant_id": record.tenant_id,
        "role": record.role,
        "agent_id": record.agent_id,
        "policy_roles": list(record.policy_roles),
        "label": record.label,
        "created_at": record.created_at,
        "revoked_at": record.revoked_at,
    }


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key belongs to.")],
    role: Annotated[str, typer.Option("--role", help=f"The service role: {_ROLES}.")],
    agent: Annotated[str | None, typer.Option("--agent", help="The agent id an agent key acts as.")] = None,
    policy_role: Annotated[
        list[str] | None,
        typer.Option("--policy-role", help="A role the policy engine sees for this key (repeatable; default: --role)."),
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="A note saying what the key is for.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from cra.server.auth import issue_key

    async def run() -> tuple[str, ApiKeyRecord]:
        state = await _with_state(data_dir, database_url)
        try:
            return await issue_key(
                state,
                tenant_id=tenant,
                role=role,
                agent_id=agent,
                policy_roles=policy_role or (),
                label=label,
                now=datetime.now(UTC),
            )
        finally:
            await state.close()

    try:
        token, record = asyncio.run(run())
    except ValueError as exc:
        fail(str(exc), as_json=as_json)
    if as_json:
        print_json({"key": token, **_key_json(record)})
    else:
        typer.echo(token)
        typer.echo(f"key {record.key_id}: tenant {record.tenant_id}, role {record.role}; shown once", err=True)


@apikey_app.command("list")
def apikey_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """List API keys (never their secrets)."""

    async def run() -> list[ApiKeyRecord]:
        state = await _with_state(data_dir, database_url)
        try:
            return await state.keys(tenant)
        finally:
            await state.close()

    records = asyncio.run(run())
    if as_json:
        print_json([_key_json(r) for r in records])
        return
    for r in records:
        status = f"revoked {r.revoked_at}" if r.revoked_at else "active"
        agent = f" agent {r.agent_id}" if r.agent_id else ""
        typer.echo(f"{r.key_id}  {r.tenant_id}  {r.role}{agent}  {status}  {r.label or ''}".rstrip())


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: Annotated[str, typer.Argument(help="The key id (the part after cra_ and before the next _).")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke an API key; requests with it are refused from then on."""

    async def run() -> bool:
        state = await _with_state(data_dir, database_url)
        try:
            return await state.revoke_key(key_id, format_timestamp(datetime.now(UTC)))
        finally:
            await state.close()

    if not asyncio.run(run()):
        fail(f"no active API key {key_id!r}", as_json=as_json, code=1)
    if as_json:
        print_json({"key_id": key_id, "revoked": True})
    else:
        typer.echo(f"revoked {key_id}")
