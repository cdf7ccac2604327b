"""The service's settings."""

from __future__ import annotations

from dataclasses import dataclass

from cra.server.tokens import JwtSettings

__all__ = ["ServerSettings"]


@dataclass(frozen=True, slots=True)
class ServerSettings:
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 1_048_576
    #: Deepest JSON nesting accepted in a body.
    max_json_depth: int = 64
    #: Requests per second each API key may make (a burst of twice that is allowed); 0 turns it off.
    key_requests_per_second: float = 1000.0
    #: How long a process trusts an API key record it read, in seconds: a revocation
    #: made elsewhere takes effect within this time.
    key_cache_seconds: float = 5.0
    #: Bearer JWTs from an identity provider, accepted beside API keys when set.
    jwt: JwtSettings | None = None
    #: Seconds a request may take before it is answered 503 (event streams have their own bound).
    request_timeout_seconds: float = 30.0
    #: Origins allowed by CORS; none by default.
    cors_origins: tuple[str, ...] = ()
    #: Serve the OpenAPI document at ``/openapi.json`` without authentication. It describes the API and
    #: holds no data. No documentation UI is served: Swagger UI and ReDoc load their code from a CDN.
    public_openapi: bool = True
