"""JWT bearer tokens from an identity provider, as an alternative to API keys.

The service verifies a token's signature with the configured public keys (RS256,
ES256 or EdDSA; HMAC secrets are refused, so a leaked verification key cannot mint
tokens), its issuer, its audience, and its expiry (which it requires). CRA reads its
identity from claims:

- ``cra_tenant``: the tenant (required);
- ``cra_role``: the service role (required; one of the roles in :mod:`cra.server.auth`);
- ``cra_agent``: the agent id an ``agent`` token acts as (required for that role, refused for others);
- ``cra_policy_roles``: the policy roles (a list; default: the service role);
- ``sub``: who it is (required), recorded as the principal ``jwt:<tenant>:<sub>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from cra.server.auth import ROLES, AuthError, Identity

__all__ = ["ALGORITHMS", "JwtSettings", "JwtVerifier"]

#: The accepted algorithms, with the kind of key that verifies each.
_FAMILIES: Final[dict[str, tuple[type, ...]]] = {
    "RS256": (rsa.RSAPublicKey,),
    "RS384": (rsa.RSAPublicKey,),
    "RS512": (rsa.RSAPublicKey,),
    "PS256": (rsa.RSAPublicKey,),
    "ES256": (ec.EllipticCurvePublicKey,),
    "ES384": (ec.EllipticCurvePublicKey,),
    "EdDSA": (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey),
}
ALGORITHMS: Final = tuple(_FAMILIES)
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
_PUBLIC: Final = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


@dataclass(frozen=True, slots=True)
class JwtSettings:
    issuer: str
    audience: str
    #: PEM public keys; a token verifies if one of them verifies it.
    public_keys: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway_seconds: int = 30
    #: Extra claims a token must carry, e.g. ``{"azp": "cra"}``.
    required_claims: dict[str, str] = field(default_factory=dict)


class JwtVerifier:
    def __init__(self, settings: JwtSettings) -> None:
        unknown = [a for a in settings.algorithms if a not in ALGORITHMS]
        if unknown or not settings.algorithms:
            raise ValueError(f"JWT algorithms must be among {', '.join(ALGORITHMS)}; not {unknown or 'none'}")
        if not settings.public_keys:
            raise ValueError("JWT verification needs at least one public key")
        self._settings = settings
        self._keys: list[PublicKey] = [_public_key(k) for k in settings.public_keys]

    def identity(self, token: str) -> Identity:
        """The identity a valid token carries; :class:`AuthError` for anything else."""
        conf = self._settings
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise AuthError(f"the bearer token is not valid: {exc}") from None
        if algorithm not in conf.algorithms:
            raise AuthError(f"the bearer token's algorithm {algorithm!r} is not accepted")
        family = _FAMILIES[algorithm]
        claims: dict[str, Any] | None = None
        for key in [k for k in self._keys if isinstance(k, family)]:
            try:
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=[algorithm],
                    audience=conf.audience,
                    issuer=conf.issuer,
                    leeway=conf.leeway_seconds,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                raise AuthError(f"the bearer token is not valid: {exc}") from None
        if claims is None:
            raise AuthError("the bearer token's signature does not verify with any configured key")
        for name, value in conf.required_claims.items():
            if claims.get(name) != value:
                raise AuthError(f"the bearer token's {name} claim is not {value!r}")
        return _identity(claims)


def _public_key(text: str) -> PublicKey:
    """A verification key from PEM or JWK text; :class:`ValueError` if it is neither, or is private."""
    if text.lstrip().startswith("{"):
        try:
            key = jwt.PyJWK.from_json(text).key
        except jwt.PyJWTError as exc:
            raise ValueError(f"not a usable JWK: {exc}") from None
        if not isinstance(key, _PUBLIC):
            raise ValueError("a JWK must hold a public RSA, EC or Ed25519/Ed448 key")
        return key
    if "PRIVATE KEY" in text:
        raise ValueError("a private key was given where a public key belongs")
    try:
        key = serialization.load_pem_public_key(text.encode("utf-8"))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"not a usable PEM public key: {exc}") from None
    if not isinstance(key, _PUBLIC):
        raise ValueError("a JWT key must be an RSA, EC or Ed25519/Ed448 public key")
    return key


def _identity(claims: dict[str, Any]) -> Identity:
    sub, tenant, role = claims.get("sub"), claims.get("cra_tenant"), claims.get("cra_role")
    agent, roles = claims.get("cra_agent"), claims.get("cra_policy_roles", [role])
    if not isinstance(sub, str) or not sub:
        raise AuthError("the bearer token has no subject")
    if not isinstance(tenant, str) or not 1 <= len(tenant) <= 255:
        raise AuthError("the bearer token names no tenant (cra_tenant)")
    if role not in ROLES:
        raise AuthError(f"the bearer token's cra_role must be one of {', '.join(ROLES)}")
    if (role == "agent") != isinstance(agent, str) or (agent is not None and not agent):
        raise AuthError("an agent token names its agent (cra_agent); other roles name none")
    if not isinstance(roles, Sequence) or isinstance(roles, str) or not all(isinstance(r, str) and r for r in roles):
        raise AuthError("the bearer token's cra_policy_roles must be a list of names")
    # The tenant is part of the id, so one subject in two tenants has two rate-limit buckets.
    return Identity(f"jwt:{tenant}:{sub}", tenant, role, agent, tuple(dict.fromkeys(roles)))
