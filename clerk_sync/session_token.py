"""A Clerk session token, verified: whose session it is, which session, and its active organization.

Only session tokens are exchanged. A JWT-template token is signed with the same instance key but
has no `sid`, any lifetime its template sets, and is meant to be handed to third parties: it must
never become a Firebase session. So a token needs a `sid` (`sess_...`) and a lifetime (`exp - iat`)
of at most a few minutes (Clerk's session tokens live 60 s). PyJWT verifies (RS256 only): no
hand-written crypto, and it is imported inside the functions, off the webhook's import path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clerk_sync.token_settings import TokenSettings

__all__ = [
    "MAX_LIFETIME_SECONDS",
    "Organization",
    "Session",
    "TokenRejected",
    "bearer_token",
    "verify_session_token",
]

# Clerk session tokens are about 1-2 KB; anything far larger is not one and is not parsed.
MAX_TOKEN_CHARS = 8192
# Clerk's session tokens live 60 s; a template token may be set to live for days.
MAX_LIFETIME_SECONDS = 300

# A Firebase uid is at most 128 characters; Clerk user ids are `user_` + base62.
_USER_ID = re.compile(r"user_[A-Za-z0-9]{1,123}")
# The session id goes into the Firebase token and names a document when the session ends.
_SESSION_ID = re.compile(r"sess_[A-Za-z0-9]{1,64}")
_ORG_ID = re.compile(r"org_[A-Za-z0-9]{1,60}")
# Role keys after the `org:` prefix: `admin`, `member`, custom keys such as `billing_manager`.
_ROLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Clerk's billing claims: comma-separated `u:slug` / `o:slug` entries.
_BILLING_HINT = re.compile(r"[A-Za-z0-9_:,.-]{1,512}")
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)
_V1_VERSIONS = (None, 1)  # v1 tokens carry no `v`


class TokenRejected(Exception):
    """The request's session token is refused; `reason` is the short code the caller is told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Organization:
    """The session's active organization, in the one stored form (`role` without `org:`)."""

    id: str
    role: str | None
    slug: str | None


@dataclass(frozen=True)
class Session:
    """What a verified session token says: whose session, which one, and which organization is active."""

    user_id: str
    session_id: str
    organization: Organization | None
    # Clerk Billing's `pla` / `fea` (v2 only): hints for an app's UI, as fresh as the session token.
    plans: str | None = None
    features: str | None = None


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; raises `TokenRejected` otherwise."""
    if authorization is None or not authorization.strip():
        raise TokenRejected("missing_token")
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise TokenRejected("not_bearer")
    return match.group(1)


def _jwks_key(token: str, config: TokenSettings) -> Any:
    """The instance key the token names (`kid`), from the shared key set; only RS256 tokens get that far."""
    import jwt  # noqa: PLC0415

    assert config.key_set is not None
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise TokenRejected("malformed_token") from None
    if header.get("alg") != "RS256":
        raise TokenRejected("bad_algorithm")  # before any fetch: junk never costs a request to Clerk
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > 200:
        raise TokenRejected("unknown_key")
    key = config.key_set.key(kid)  # raises jwks.KeysUnavailable
    if key is None:
        raise TokenRejected("unknown_key")
    return key


def _decoded_claims(token: str, config: TokenSettings) -> dict[str, Any]:
    import jwt  # noqa: PLC0415 (kept off the webhook's import path)

    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected("malformed_token")
    key: Any = config.public_key if config.key_set is None else _jwks_key(token, config)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["RS256"],
            leeway=config.leeway_seconds,
            options={"require": ["exp", "iat"]},
        )
    except jwt.InvalidAlgorithmError:
        raise TokenRejected("bad_algorithm") from None
    except jwt.InvalidSignatureError:
        raise TokenRejected("bad_signature") from None
    except jwt.ExpiredSignatureError:
        raise TokenRejected("expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenRejected("not_yet_valid") from None
    except jwt.exceptions.InvalidSubjectError:
        raise TokenRejected("bad_subject") from None
    except jwt.DecodeError:
        raise TokenRejected("malformed_token") from None
    except jwt.PyJWTError:  # a required claim missing, a malformed iat, an audience, a JWKS key not RSA...
        raise TokenRejected("invalid_token") from None
    return claims


def _organization(claims: dict[str, Any]) -> Organization | None:
    """The active organization: v2 `o` ({id, slg, rol}) when `v` is 2, else v1 `org_id`/`org_slug`/`org_role`.

    Each version's claims are read only in tokens of that version, so a claim of the other version
    that some template or future token carries can never decide the organization.
    """
    version = claims.get("v")
    if version == 2:
        compact = claims.get("o")
        if compact is None:
            return None
        if not isinstance(compact, dict):
            raise TokenRejected("bad_organization")
        org_id, role, slug = compact.get("id"), compact.get("rol"), compact.get("slg")
    elif version in _V1_VERSIONS and not isinstance(version, bool):
        if claims.get("org_id") is None:
            return None
        org_id, role, slug = claims.get("org_id"), claims.get("org_role"), claims.get("org_slug")
    else:
        raise TokenRejected("unsupported_version")
    if not isinstance(org_id, str) or not _ORG_ID.fullmatch(org_id):
        raise TokenRejected("bad_organization")
    if role is not None:
        # v1 says `org:admin`, v2 `admin`: one stored form, without the prefix.
        role = role.removeprefix("org:") if isinstance(role, str) else role
        if not isinstance(role, str) or not _ROLE.fullmatch(role):
            raise TokenRejected("bad_organization")
    if slug is not None and not isinstance(slug, str):
        raise TokenRejected("bad_organization")
    return Organization(id=org_id, role=role, slug=slug or None)


def _check_party(claims: dict[str, Any], config: TokenSettings) -> None:
    """`azp` must be an authorized party; absent only with ALLOW_MISSING_AZP (native clients send no Origin)."""
    if config.any_authorized_party:
        return
    party = claims.get("azp")
    if party is None or party == "":
        if not config.allow_missing_azp:
            raise TokenRejected("missing_azp")
        return
    if party not in config.authorized_parties:
        raise TokenRejected("bad_azp")


def verify_session_token(token: str, config: TokenSettings) -> Session:
    """Verify a Clerk session token (RS256, exp/nbf with leeway, a session's `sid` and lifetime, `v`, `iss`,
    azp, sub, sts); raises `TokenRejected`, or `jwks.KeysUnavailable` when the JWKS is needed and cannot be had."""
    claims = _decoded_claims(token, config)
    session_id = claims.get("sid")
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise TokenRejected("not_a_session_token")  # a JWT template's token, or something else signed by Clerk
    issued, expires = claims["iat"], claims["exp"]
    if not all(isinstance(value, int | float) and not isinstance(value, bool) for value in (issued, expires)):
        raise TokenRejected("invalid_token")  # PyJWT accepts "123" as well as 123; Clerk never sends text
    lifetime = expires - issued
    if not lifetime <= MAX_LIFETIME_SECONDS:  # NaN too
        raise TokenRejected("lifetime_too_long")
    if config.issuer is not None and claims.get("iss") != config.issuer:
        raise TokenRejected("bad_issuer")
    _check_party(claims, config)
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise TokenRejected("bad_subject")
    # `pending`: signed in, but a required step (such as choosing an organization) is not done yet.
    if claims.get("sts") == "pending" and not config.allow_pending_sessions:
        raise TokenRejected("pending_session")
    return Session(
        user_id=user_id,
        session_id=session_id,
        organization=_organization(claims),
        plans=_billing_hint(claims, "pla"),
        features=_billing_hint(claims, "fea"),
    )


def _billing_hint(claims: dict[str, Any], name: str) -> str | None:
    """`pla` / `fea` of a v2 token as Clerk sent them (`u:free`, `o:pro,o:dashboard`), or None.

    A hint never fails a sign-in: an odd value is dropped, not refused.
    """
    value = claims.get(name)
    if claims.get("v") != 2 or not isinstance(value, str) or not _BILLING_HINT.fullmatch(value):
        return None
    return value
