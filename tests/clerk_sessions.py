"""Clerk-shaped session tokens signed with an RSA key made for this run, forgeries, and a service account.

Tokens are real RS256 JWTs (PyJWT + cryptography), shaped like Clerk's v2 session tokens (and v1
on request). The service-account key file is what `GOOGLE_APPLICATION_CREDENTIALS` points at in
production too, only with a key generated here, so firebase-admin signs custom tokens locally.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

APP_ORIGIN = "https://app.example.com"
LOCAL_ORIGIN = "http://localhost:3000"
AUTHORIZED_PARTIES = f"{APP_ORIGIN},{LOCAL_ORIGIN}"
ISSUER = "https://clerk.example.com"
KEY_ID = "ins_test_key"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def new_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (Clerk's instance keys are 2048-bit RSA)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    """The PEM public key, as Clerk Dashboard → API keys → JWKS Public Key shows it."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return key.public_key().public_bytes(serialization.Encoding.PEM, spki).decode()


def private_pem(key: rsa.RSAPrivateKey) -> str:
    """The PKCS#8 PEM private key, as a Google service-account key file holds it."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


# One instance key for the run (generating one takes a noticeable moment); another to forge with.
CLERK_KEY = new_key()
CLERK_PUBLIC_PEM = public_pem(CLERK_KEY)
OTHER_KEY = new_key()


def _id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_BASE62) for _ in range(27))


def new_clerk_user_id() -> str:
    """A Clerk-shaped user id, different each call."""
    return _id("user_")


def new_session_id() -> str:
    """A Clerk-shaped session id, different each call."""
    return _id("sess_")


def new_org_id() -> str:
    """A Clerk-shaped organization id, different each call."""
    return _id("org_")


def session_claims(user_id: str, *, azp: str | None = APP_ORIGIN, lifetime: int = 60, **extra: Any) -> dict[str, Any]:
    """The claims of a v2 session token issued now (`extra` adds or replaces claims; None removes one)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "azp": azp,
        "exp": now + lifetime,
        "fva": [0, -1],
        "iat": now,
        "iss": ISSUER,
        "jti": secrets.token_hex(10),
        "nbf": now - 10,
        "sid": new_session_id(),
        "sts": "active",
        "sub": user_id,
        "v": 2,
    }
    claims.update(extra)
    return {name: value for name, value in claims.items() if value is not None}


def v2_organization(org_id: str, role: str = "admin", slug: str = "acme") -> dict[str, Any]:
    """The v2 `o` claim of an active organization (`rol` without the `org:` prefix)."""
    return {"o": {"id": org_id, "rol": role, "slg": slug, "per": "manage,read", "fpm": "3"}}


def v1_organization(org_id: str, role: str = "org:admin", slug: str = "acme") -> dict[str, Any]:
    """The v1 organization claims (`org_role` with the `org:` prefix); v1 tokens have no `v`."""
    return {"org_id": org_id, "org_role": role, "org_slug": slug, "org_permissions": [], "v": None, "fva": None}


def sign(claims: dict[str, Any], key: rsa.RSAPrivateKey = CLERK_KEY, **headers: Any) -> str:
    """An RS256 JWT over `claims`, with Clerk's `kid` header."""
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KEY_ID, **headers})


def session_token(user_id: str, **extra: Any) -> str:
    """A valid v2 session token for `user_id`, signed with the run's Clerk key."""
    return sign(session_claims(user_id, **extra))


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _json_segment(value: dict[str, Any]) -> str:
    return _segment(json.dumps(value, separators=(",", ":")).encode())


def unsigned_token(claims: dict[str, Any]) -> str:
    """`alg: none`: no signature at all (the classic bypass)."""
    return f"{_json_segment({'alg': 'none', 'typ': 'JWT'})}.{_json_segment(claims)}."


def hs256_with_public_key(claims: dict[str, Any], public_key_pem: str = CLERK_PUBLIC_PEM) -> str:
    """HS256 keyed with the PEM public key: the algorithm-confusion forgery (PyJWT refuses to make it)."""
    signing_input = f"{_json_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_json_segment(claims)}"
    mac = hmac.new(public_key_pem.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_segment(mac)}"


SERVICE_ACCOUNT_EMAIL = "token-minter@demo-clerk-sync-test.iam.gserviceaccount.com"


def write_service_account(directory: Path, key: rsa.RSAPrivateKey) -> Path:
    """A Google service-account key file (the JSON the console downloads) for a key made here."""
    path = directory / "service-account.json"
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "demo-clerk-sync-test",
                "private_key_id": secrets.token_hex(20),
                "private_key": private_pem(key),
                "client_email": SERVICE_ACCOUNT_EMAIL,
                "client_id": "100000000000000000001",
                "auth_uri": "https://accounts.google.com/o/oauth2/auth",
                "token_uri": "https://oauth2.googleapis.com/token",
                "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
                "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/token-minter",
                "universe_domain": "googleapis.com",
            }
        )
    )
    return path
