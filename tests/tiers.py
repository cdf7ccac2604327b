"""The expensive test tiers, what each needs, and what a missing need does.

| marker     | what the tests need                                   | applied by                              |
|------------|-------------------------------------------------------|-----------------------------------------|
| `services` | PostgreSQL, Redis or NATS at `CRA_TEST_*_URL`         | the fixtures that hand out those URLs   |
| `wasm`     | the built WebAssembly sandbox or engine component     | the fixtures that load them             |
| `interop`  | Go and golang.org/x/mod (Go's sumdb verifies ours)    | `tests/interop/`                        |
| `e2e`      | nothing more, but real processes, HTTP and the CLI    | `tests/e2e/`                            |
| `slow`     | nothing more, but several seconds each                | the test itself                         |

On a laptop, a test whose need is missing is skipped with a one-line reason
that ``-ra`` prints in the summary. With ``CRA_REQUIRE_SERVICES=1`` (which
``.ci/run`` sets) the same test fails instead: CI proves every tier or goes red.
A service whose URL is set but which does not answer is always a failure.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ENV = "CRA_REQUIRE_SERVICES"
POSTGRES_ENV = "CRA_TEST_POSTGRES_URL"
REDIS_ENV = "CRA_TEST_REDIS_URL"
WASM_ENV = "CRA_TEST_WASM"

EXAMPLE_URLS = {
    POSTGRES_ENV: "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    REDIS_ENV: "redis://127.0.0.1:6379/0",
}


def required() -> bool:
    """Whether a missing tier is a failure (CI) rather than a skip (a laptop)."""
    return os.environ.get(REQUIRE_ENV) == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip the running test because ``reason``; under ``CRA_REQUIRE_SERVICES=1``, fail it."""
    if required():
        pytest.fail(f"{REQUIRE_ENV}=1, but {reason}", pytrace=False)
    pytest.skip(reason)


def wasm_builds() -> bool:
    """Whether the WebAssembly tier may build its components (tens of seconds each) during the tests."""
    return required() or os.environ.get(WASM_ENV) == "1"


def service_url(env: str) -> str:
    """The URL in ``env``, or :func:`unavailable` when it is not set."""
    url = os.environ.get(env)
    if not url:
        unavailable(f"{env} is not set (e.g. {EXAMPLE_URLS[env]})")
    return url


def unreachable(env: str, url: str, error: BaseException) -> NoReturn:
    """A service that was named but does not answer: always a failure, never a skip."""
    pytest.fail(f"{env}={url} is set, but the service does not answer: {error}", pytrace=False)
