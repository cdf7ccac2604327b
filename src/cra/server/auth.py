"""Who is calling, and what they may do: API keys, service roles and the permission matrix.

An API key reads ``cra_<key id>_<secret>``. Only the SHA-256 of the secret is
stored; the key is shown once, when it is created, and can be revoked. Each
key belongs to one tenant and has one service role; an ``agent`` key is bound
to one agent id. A key also carries the *policy roles* its holder has — the
host's word about the caller that the policy engine sees — which default to
the service role's name. Nothing in a request body can add to them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from cra.errors import CRAError
from cra.store.state import ApiKeyRecord, SqlState
from cra.trace.event import format_timestamp

__all__ = [
    "PERMISSIONS",
    "ROLES",
    "AuthError",
    "Authenticator",
    "ForbiddenError",
    "Identity",
    "Permission",
    "issue_key",
]

ROLES: Final = ("admin", "policy_author", "agent", "approver", "auditor")
_PREFIX: Final = "cra_"


class Permission(StrEnum):
    READ_ATLASES = "atlases:read"
    WRITE_ATLASES = "atlases:write"
    EVALUATE = "evaluate"
    RUN_SESSIONS = "sessions:run"  # create, resolve, execute, end: an agent's own sessions
    READ_SESSIONS = "sessions:read"  # every session and trace of the tenant
    DECIDE_APPROVALS = "approvals:decide"
    READ_APPROVALS = "approvals:read"
    ATTACH_EVIDENCE = "evidence:attach"  # to sessions the caller may see
    READ_REPORTS = "reports:read"


#: The permission matrix (docs/service.md renders it). An ``agent`` acts only as its own agent
#: id and reads only its own sessions; nobody decides an approval their own agent asked for.
PERMISSIONS: Final[dict[str, frozenset[Permission]]] = {
    "admin": frozenset(Permission),
    "policy_author": frozenset({Permission.READ_ATLASES, Permission.WRITE_ATLASES, Permission.EVALUATE}),
    "agent": frozenset(
        {Permission.READ_ATLASES, Permission.EVALUATE, Permission.RUN_SESSIONS, Permission.ATTACH_EVIDENCE}
    ),
    "approver": frozenset(
        {
            Permission.READ_ATLASES,
            Permission.READ_SESSIONS,
            Permission.READ_APPROVALS,
            Permission.DECIDE_APPROVALS,
            Permission.ATTACH_EVIDENCE,
        }
    ),
    "auditor": frozenset(
        {
            Permission.READ_ATLASES,
            Permission.READ_SESSIONS,
            Permission.READ_APPROVALS,
            Permission.ATTACH_EVIDENCE,
            Permission.READ_REPORTS,
        }
    ),
}


class AuthError(CRAError):
    """No credentials, or credentials that are not valid (HTTP 401)."""

    code = "unauthenticated"


class ForbiddenError(CRAError):
    """Valid credentials without the permission an operation needs (HTTP 403)."""

    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller."""

    key_id: str
    tenant_id: str
    role: str
    agent_id: str | None
    policy_roles: tuple[str, ...]

    @property
    def principal(self) -> str:
        """The name recorded as the actor: the agent id, else ``key:<id>`` or ``jwt:<tenant>:<subject>``."""
        if self.agent_id:
            return self.agent_id
        return self.key_id if self.key_id.startswith("jwt:") else f"key:{self.key_id}"

    def can(self, permission: Permission) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())

    def require(self, permission: Permission) -> None:
        if not self.can(permission):
            raise ForbiddenError(f"the {self.role} role may not {permission.value}")

    def acting_as(self, agent_id: str) -> None:
        """Refuse to act as ``agent_id`` unless this identity may."""
        if self.agent_id is not None and agent_id != self.agent_id:
            raise ForbiddenError(f"this key acts only as agent {self.agent_id!r}")


_KEY_ID: Final = re.compile(r"[0-9a-f]{16}")


class _Lru:
    """A bounded map whose entries expire."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, tuple[float, tuple[ApiKeyRecord | None]]] = OrderedDict()

    def get(self, key: str, now: float) -> tuple[ApiKeyRecord | None] | None:
        item = self._items.get(key)
        if item is None or item[0] <= now:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: str, value: tuple[ApiKeyRecord | None], expires: float) -> None:
        self._items[key] = (expires, value)
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


async def issue_key(
    state: SqlState,
    *,
    tenant_id: str,
    role: str,
    now: datetime,
    agent_id: str | None = None,
    policy_roles: Sequence[str] = (),
    label: str | None = None,
) -> tuple[str, ApiKeyRecord]:
    """Create a key; returns the key text (shown once, never stored) and its record."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not tenant_id or len(tenant_id) > 255:
        raise ValueError("a tenant id is 1 to 255 characters")
    if role == "agent" and not agent_id:
        raise ValueError("an agent key needs the agent id it acts as")
    if role != "agent" and agent_id:
        raise ValueError("only agent keys are bound to an agent id")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    record = ApiKeyRecord(
        key_id=key_id,
        tenant_id=tenant_id,
        role=role,
        agent_id=agent_id,
        policy_roles=tuple(dict.fromkeys(policy_roles or (role,))),
        secret_hash=_hash(secret),
        label=label,
        created_at=format_timestamp(now),
        revoked_at=None,
    )
    await state.put_key(record)
    return f"{_PREFIX}{key_id}_{secret}", record


class Authenticator:
    """API keys to identities, with a small in-process cache of key records.

    A key's record is read from the store at most once per ``ttl_seconds``, so a
    revocation (``cra apikey revoke``, another process) takes effect within that time.
    Malformed key ids never reach the store, and unknown ones are cached apart from
    known keys, so invented keys can neither query the store on every request nor
    push real keys out of the cache.
    """

    def __init__(
        self,
        state: SqlState,
        *,
        ttl_seconds: float = 5.0,
        max_entries: int = 10_000,
        max_unknown: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._state = state
        self._clock = clock
        self._ttl = ttl_seconds
        # Known and unknown key ids are cached apart, so a flood of invented ids cannot evict real keys.
        self._known = _Lru(max_entries)
        self._unknown = _Lru(max_unknown)

    async def _record(self, key_id: str) -> ApiKeyRecord | None:
        now = self._clock()
        for cache in (self._known, self._unknown):
            hit = cache.get(key_id, now)
            if hit is not None:
                return hit[0]
        record = await self._state.key(key_id)
        (self._known if record is not None else self._unknown).put(key_id, (record,), now + self._ttl)
        return record

    async def identity(self, token: str) -> Identity:
        """The identity of an API key; :class:`AuthError` for anything else."""
        if not token.startswith(_PREFIX) or token.count("_") < 2 or len(token) > 200:
            raise AuthError("the API key is malformed")
        key_id, _, secret = token[len(_PREFIX) :].partition("_")
        if not _KEY_ID.fullmatch(key_id):
            raise AuthError("the API key is malformed")
        record = await self._record(key_id)
        # Compare even when the key is unknown, so timing does not tell which key ids exist.
        expected = record.secret_hash if record is not None else _hash("")
        if not hmac.compare_digest(expected, _hash(secret)) or record is None:
            raise AuthError("the API key is not valid")
        if record.revoked_at is not None:
            raise AuthError("the API key was revoked")
        return Identity(record.key_id, record.tenant_id, record.role, record.agent_id, record.policy_roles)
