"""`session-token`: a Clerk-shaped session token signed with the local development key.

Clerk signs session tokens with its instance's private key; locally `make dev` creates a key pair of
its own (`clerk-dev-key.pem`, next to `.env`) and hands its public half to the token function as
`CLERK_JWT_KEY`. A token minted here is then exactly what the exchange receives from a Clerk app:
RS256, the v2 claims (`sub`, `sid`, `iat`, `nbf`, `exp` = `iat` + 60, `azp`, `iss`, `v: 2`, `o` for
an active organization, `jti`, `fva`, `sts`), so the client side runs with no Clerk instance at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tools.common import ToolError, write_private

__all__ = [
    "DEFAULT_AZP",
    "DEFAULT_ISSUER",
    "KEY_FILE_NAME",
    "Organization",
    "ensure_key",
    "key_path",
    "mint",
    "public_pem",
    "session_claims",
]

KEY_FILE_NAME = "clerk-dev-key.pem"
KEY_BITS = 2048  # what Clerk's instance keys are
LIFETIME_SECONDS = 60  # Clerk's session tokens live 60 s; its SDKs refresh them in the background
CLOCK_SKEW_SECONDS = 5  # Clerk's default "Allowed Clock Skew": nbf lies this far before iat
DEFAULT_AZP = "http://localhost:3000"
# The Frontend API URL of an instance; `.invalid` can never resolve, so nobody mistakes it for one.
DEFAULT_ISSUER = "https://clerk.local-development.invalid"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_ROLE = re.compile(r"(?:org:)?([A-Za-z0-9_-]{1,64})")


@dataclass(frozen=True)
class Organization:
    """The session's active organization, as the v2 `o` claim carries it."""

    id: str
    role: str = "admin"
    slug: str = "acme"
    permissions: tuple[str, ...] = ("read", "manage")


def key_path(env_file: Path) -> Path:
    """The development key lives beside `.env`: private to this checkout, never committed."""
    return env_file.with_name(KEY_FILE_NAME)


def ensure_key(path: Path, out: TextIO) -> None:
    """Create the development key pair at `path` once (readable by its owner only)."""
    if path.exists():
        return
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 (only `dev` and `session-token`)
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    write_private(path, pem)
    out.write(f"created {_shown(path)}: the local stand-in for a Clerk instance's signing key (never commit it)\n")


def _private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ToolError(f"no development key at {_shown(path)}: `make dev` creates it when it starts") from None
    except OSError as error:
        raise ToolError(f"cannot read {_shown(path)}: {error.strerror}") from None
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ToolError(f"{_shown(path)} is not a PEM private key: delete it and restart `make dev`") from None


def public_pem(path: Path) -> str:
    """The public half, as Clerk Dashboard → API keys → JWKS Public Key shows an instance's."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    pem: str = _private_key(path).public_key().public_bytes(serialization.Encoding.PEM, spki).decode()
    return pem


def key_id(path: Path) -> str:
    """A `kid` shaped like Clerk's (`ins_...`), fixed for the key: a JWKS client could find it by this."""
    digest = hashlib.sha256(public_pem(path).encode()).digest()
    return "ins_local" + "".join(_BASE62[byte % 62] for byte in digest[:18])


def _clerk_id(prefix: str) -> str:
    return f"{prefix}_2" + "".join(secrets.choice(_BASE62) for _ in range(26))


def session_claims(
    user_id: str,
    *,
    organization: Organization | None = None,
    azp: str = DEFAULT_AZP,
    issuer: str = DEFAULT_ISSUER,
    lifetime: int = LIFETIME_SECONDS,
    pending: bool = False,
    session_id: str | None = None,
    now: int | None = None,
) -> dict[str, Any]:
    """The claims of a v2 session token issued `now`, as Clerk's Frontend API writes them."""
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "azp": azp,
        "exp": issued + lifetime,
        "fva": [0, -1],  # minutes since the first factor was verified; -1: no second factor
        "iat": issued,
        "iss": issuer,
        "jti": secrets.token_hex(10),
        "nbf": issued - CLOCK_SKEW_SECONDS,
        "sid": session_id or _clerk_id("sess"),
        "sts": "pending" if pending else "active",
        "sub": user_id,
        "v": 2,
    }
    if organization is not None:
        role = _ROLE.fullmatch(organization.role)
        if role is None:
            raise ToolError(f"--role {organization.role[:80]!r} is not a role key such as admin or org:member")
        claims["o"] = {
            "id": organization.id,
            "per": ",".join(organization.permissions),
            "rol": role.group(1),  # v2 drops the `org:` prefix
            "slg": organization.slug,
        }
    return claims


def mint(path: Path, claims: dict[str, Any]) -> str:
    """The RS256 JWT over `claims`, signed with the development key, with Clerk's header."""
    import jwt  # noqa: PLC0415 (only this command needs PyJWT)

    headers = {"kid": key_id(path), "typ": "JWT"}
    token: str = jwt.encode(claims, _private_key(path), algorithm="RS256", headers=headers)
    return token


def verifier_mismatch(path: Path) -> str | None:
    """Why the local token function would refuse these tokens, when CLERK_JWT_KEY names another key."""
    configured = os.environ.get("CLERK_JWT_KEY", "").strip()
    if not configured:
        return None
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    text = configured.strip("\"'").replace("\\n", "\n")
    try:
        theirs = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        return "CLERK_JWT_KEY is set but is not a PEM public key"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if theirs.public_bytes(serialization.Encoding.PEM, spki).decode() == public_pem(path):
        return None
    return (
        "CLERK_JWT_KEY (environment or .env) is another key, your Clerk instance's: `make dev` hands that one to "
        "the token function, which refuses this token (401 bad_signature); remove it from .env to use the local key"
    )


def describe(claims: dict[str, Any], path: Path) -> str:
    """One line for stderr: whose token, until when, signed with what (never the token itself)."""
    organization = claims.get("o")
    active = f", organization {organization['id']} as {organization['rol']}" if organization else ""
    until = time.strftime("%H:%M:%SZ", time.gmtime(claims["exp"]))
    status = " (pending)" if claims.get("sts") == "pending" else ""
    return (
        f"session token for {claims['sub']}{active}{status}, session {claims['sid']}, azp {claims['azp']}; "
        f"valid until {until} ({claims['exp'] - claims['iat']} s), signed with {_shown(path)}"
    )


def claims_json(claims: dict[str, Any]) -> str:
    """The claims as the token carries them, for `--claims`."""
    return json.dumps(claims, indent=2, sort_keys=True)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
