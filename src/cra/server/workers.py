"""Worker processes for ``cra serve --workers N``: uvicorn imports :func:`app` in each one.

The parent process prepares the data directory (schema, keys, first admin key, example
atlases), then hands each worker its configuration in ``CRA_SERVE_CONFIG``. Every worker
opens the same state database and the same ledger: the database referees races between
them (ADR 0005) and the ledger appends idempotently, so each worker may seal what it finds.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Final

from fastapi import FastAPI

from cra.server.app import serving_app
from cra.server.boot import Booted, boot
from cra.server.settings import ServerSettings
from cra.server.tokens import JwtSettings

__all__ = ["CONFIG_ENV", "app", "worker_config"]

CONFIG_ENV: Final = "CRA_SERVE_CONFIG"


def worker_config(
    data_dir: Path,
    database_url: str | None,
    redis_url: str | None,
    settings: ServerSettings,
    *,
    sandbox: bool,
    seal_in_background: bool,
    executor_threads: int = 8,
    executor_queue: int = 32,
    call_lease_seconds: float = 30.0,
) -> str:
    return json.dumps(
        {
            "data_dir": str(data_dir),
            "database_url": database_url,
            "redis_url": redis_url,
            "sandbox": sandbox,
            "seal_in_background": seal_in_background,
            "executor_threads": executor_threads,
            "executor_queue": executor_queue,
            "call_lease_seconds": call_lease_seconds,
            "settings": asdict(settings),
        }
    )


def app() -> FastAPI:
    """The app of one worker, configured by ``CRA_SERVE_CONFIG``."""
    config = json.loads(os.environ[CONFIG_ENV])
    values = dict(config["settings"])
    values["cors_origins"] = tuple(values.get("cors_origins") or ())
    if values.get("jwt") is not None:
        jwt = dict(values["jwt"])
        values["jwt"] = JwtSettings(
            **{**jwt, "public_keys": tuple(jwt["public_keys"]), "algorithms": tuple(jwt["algorithms"])}
        )
    settings = ServerSettings(**values)
    data_dir, database_url, redis_url = Path(config["data_dir"]), config["database_url"], config["redis_url"]

    async def open_service() -> Booted:
        return await boot(
            data_dir,
            database_url=database_url,
            redis_url=redis_url,
            sandbox=config["sandbox"],
            seal_in_background=config["seal_in_background"],
            executor_threads=config["executor_threads"],
            executor_queue=config["executor_queue"],
            call_lease_seconds=config["call_lease_seconds"],
        )

    return serving_app(open_service, settings=settings)
