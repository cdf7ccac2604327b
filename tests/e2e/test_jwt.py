"""Bearer JWTs: a token from the configured issuer is an identity; anything else is a 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from tests.e2e._service import Env, run

from cra.server.app import ServerSettings
from cra.server.tokens import JwtSettings, JwtVerifier

ISSUER, AUDIENCE = "https://id.example.test", "cra"
ED_KEY = ed25519.Ed25519PrivateKey.generate()
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = ed25519.Ed25519PrivateKey.generate()


def pem(key: Any) -> str:
    return str(
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


SETTINGS = ServerSettings(jwt=JwtSettings(ISSUER, AUDIENCE, (pem(ED_KEY), pem(RSA_KEY))))


def token(key: Any = ED_KEY, algorithm: str = "EdDSA", **overrides: Any) -> str:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-17",
        "exp": int(time.time()) + 300,
        "cra_tenant": "acme",
        "cra_role": "agent",
        "cra_agent": "support-bot",
        "cra_policy_roles": ["agent"],
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=algorithm)


def hs256_with_public_key() -> str:
    """The algorithm-confusion attack: an HS256 token whose secret is the (public) verification key."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(jwt.decode(token(), options={"verify_signature": False})).encode())
    signature = hmac.new(pem(RSA_KEY).encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def bearer(text: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {text}"}


def test_a_token_from_the_issuer_acts_as_its_agent_in_its_tenant(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        await env.support("acme")
        c = env.client
        for signed in (token(), token(RSA_KEY, "RS256")):
            made = await c.post("/v1/sessions", headers=bearer(signed), json={"agent_id": "support-bot", "goal": "g"})
            assert made.status_code == 201, made.text
            assert made.json()["roles"] == ["agent"]
        other = await c.post("/v1/sessions", headers=bearer(token()), json={"agent_id": "other-bot", "goal": "g"})
        assert other.status_code == 403
        decided = await c.post(
            "/v1/evaluate", headers=bearer(token()), json={"action": "order.lookup", "params": {"order_id": "4"}}
        )
        assert decided.json()["decision"] == "allow"
        # An approver token's subject is the recorded approver identity; another tenant sees nothing.
        auditor = token(cra_role="auditor", cra_agent=None, cra_policy_roles=None)
        listed = (await c.get("/v1/sessions", headers=bearer(auditor))).json()
        assert listed["total"] == 2
        elsewhere = token(cra_role="auditor", cra_agent=None, cra_tenant="globex")
        assert (await c.get("/v1/sessions", headers=bearer(elsewhere))).json()["total"] == 0

    run(tmp_path, body, SETTINGS)


@pytest.mark.parametrize(
    ("label", "signed"),
    [
        ("another issuer", token(iss="https://evil.test")),
        ("another audience", token(aud="someone-else")),
        ("expired", token(exp=int(time.time()) - 3600)),
        ("no expiry", token(exp=None)),
        ("no subject", token(sub=None)),
        ("an unknown key", token(OTHER_KEY)),
        ("HMAC with the public key as secret", hs256_with_public_key()),
        ("no signature", jwt.encode({"iss": ISSUER, "aud": AUDIENCE}, None, algorithm="none")),  # type: ignore[arg-type]  # deliberately unsigned
        ("no tenant", token(cra_tenant=None)),
        ("an unknown role", token(cra_role="root")),
        ("an agent role without an agent", token(cra_agent=None)),
        ("an agent named by another role", token(cra_role="admin")),
        ("policy roles that are not a list", token(cra_policy_roles="admin")),
        ("garbage", "not.a.token"),
    ],
)
def test_anything_else_is_refused_with_401(tmp_path: Path, label: str, signed: str) -> None:
    async def body(env: Env) -> None:
        r = await env.client.get("/v1/sessions", headers=bearer(signed))
        assert r.status_code == 401, (label, r.text)
        assert r.headers["content-type"] == "application/problem+json"

    run(tmp_path, body, SETTINGS)


def test_without_jwt_settings_a_bearer_token_is_not_accepted(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        r: httpx.Response = await env.client.get("/v1/sessions", headers=bearer(token()))
        assert r.status_code == 401

    run(tmp_path, body)


def test_unusable_verification_keys_are_refused_when_configured() -> None:
    private = ED_KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    for keys in ((private,), ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",), ()):
        with pytest.raises(ValueError, match=r"private key|PEM public key|at least one public key"):
            JwtVerifier(JwtSettings(ISSUER, AUDIENCE, keys))
    with pytest.raises(ValueError, match="algorithms"):
        JwtVerifier(JwtSettings(ISSUER, AUDIENCE, (pem(ED_KEY),), ("HS256",)))


def test_the_recorded_principal_names_the_tenant_and_the_subject() -> None:
    """Issue #12, finding 18: the docs said ``jwt:<sub>``; the principal is, and is documented as,
    ``jwt:<tenant>:<sub>``."""
    verifier = JwtVerifier(JwtSettings(ISSUER, AUDIENCE, (pem(ED_KEY),)))
    approver = verifier.identity(token(cra_role="approver", cra_agent=None, cra_policy_roles=["supervisor"]))
    assert approver.principal == "jwt:acme:user-17"
    assert verifier.identity(token(cra_role="approver", cra_agent=None, cra_tenant="globex")).principal == (
        "jwt:globex:user-17"
    )
    documented = (Path(__file__).resolve().parents[2] / "docs" / "service.md").read_text("utf-8")
    assert "`jwt:<tenant>:<sub>`" in documented
