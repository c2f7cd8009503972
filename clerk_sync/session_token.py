"""Clerk session JWT → Firebase custom token: verify the session, then mint a token for its user.

Clerk's Firebase integration is closed to new apps, so the app exchanges its Clerk session token
here for a Firebase custom token whose uid is the Clerk user id; the Firestore rules then see
`request.auth.uid == <Clerk user id>`. PyJWT verifies (RS256 only) and firebase-admin mints: no
hand-written crypto. Both are imported inside the functions that need them, so the webhook
function, which imports this package, never loads them (tests/test_token_http.py checks it).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
    from firebase_admin import App
    from jwt import PyJWKClient

__all__ = [
    "ANY_PARTY_VALUE",
    "MAX_CLAIMS_BYTES",
    "KeysUnavailable",
    "MintFailed",
    "Misconfigured",
    "Organization",
    "Session",
    "TokenRejected",
    "TokenSettings",
    "bearer_token",
    "claims_size",
    "developer_claims",
    "mint_custom_token",
    "read_settings",
    "reset_app",
    "settings",
    "verify_session_token",
]

KEY_VARIABLE = "CLERK_JWT_KEY"
SECRET_KEY_VARIABLE = "CLERK_SECRET_KEY"  # noqa: S105 (a variable's name, not a secret)
JWKS_URL_VARIABLE = "CLERK_JWKS_URL"
DEFAULT_JWKS_URL = "https://api.clerk.com/v1/jwks"
JWKS_TIMEOUT_SECONDS = 3.0  # a browser is waiting; Clerk's API answers in well under a second
JWKS_CACHE_SECONDS = 3600.0  # Clerk rotates instance keys rarely; an unknown kid refetches anyway
PARTIES_VARIABLE = "CLERK_AUTHORIZED_PARTIES"
ANY_PARTY_VARIABLE = "ALLOW_ANY_AUTHORIZED_PARTY"
# Deliberately not "true" or "*": whoever sets it has read that it is for local development only.
ANY_PARTY_VALUE = "true-local-only"
LEEWAY_VARIABLE = "CLERK_TOKEN_LEEWAY_SECONDS"
PENDING_VARIABLE = "ALLOW_PENDING_SESSIONS"
DEFAULT_LEEWAY_SECONDS = 5.0
MAX_LEEWAY_SECONDS = 60.0
MIN_KEY_BITS = 2048
# Clerk session tokens are about 1-2 KB; anything far larger is not one and is not parsed.
MAX_TOKEN_CHARS = 8192
# Firebase refuses developer claims over 1,000 bytes; measured as ASCII-escaped JSON, which is never
# shorter than the UTF-8 encoding, so the check holds whichever way Firebase counts.
MAX_CLAIMS_BYTES = 1000
# Names firebase-admin refuses as developer claims (its RESERVED_CLAIMS); ours must never be one.
RESERVED_CLAIMS = frozenset(
    {"acr", "amr", "at_hash", "aud", "auth_time", "azp", "cnf", "c_hash", "exp", "firebase"}
    | {"iat", "iss", "jti", "nbf", "nonce", "sub"}
)
APP_NAME = "clerk-firestore-sync-token"

# A Firebase uid is at most 128 characters; Clerk user ids are `user_` + base62.
_USER_ID = re.compile(r"user_[A-Za-z0-9]{1,123}")
_ORG_ID = re.compile(r"org_[A-Za-z0-9]{1,60}")
# Role keys after the `org:` prefix: `admin`, `member`, custom keys such as `billing_manager`.
_ROLE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_LOOPBACK_HTTP = re.compile(r"http://(?:127\.0\.0\.1|localhost)(?::[0-9]{1,5})?/.*")
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.DOTALL)
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)

_app: App | None = None
_app_lock = threading.Lock()


class Misconfigured(ValueError):
    """A setting is missing or invalid; `variable` names it so the log line can say what to fix."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


class TokenRejected(Exception):
    """The request's session token is refused; `reason` is the short code the caller is told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeysUnavailable(Exception):
    """Clerk's JWKS could not be fetched (network, Clerk, or a wrong CLERK_SECRET_KEY): try again later."""


class MintFailed(Exception):
    """firebase-admin could not sign: `no_credentials` (nothing to sign with) or `sign_failed` (IAM)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenSettings:
    """How session tokens are verified on this instance."""

    public_key: RSAPublicKey | None  # CLERK_JWT_KEY: networkless, preferred
    jwks: PyJWKClient | None  # else Clerk's JWKS through CLERK_SECRET_KEY, fetched and cached
    authorized_parties: frozenset[str]  # empty only when any_authorized_party
    any_authorized_party: bool
    leeway_seconds: float
    allow_pending_sessions: bool

    def allows_origin(self, origin: str | None) -> bool:
        """Whether a browser at `origin` may call the exchange (CORS) and may have asked for the token."""
        return origin is not None and (self.any_authorized_party or origin in self.authorized_parties)


@dataclass(frozen=True)
class Organization:
    """The session's active organization, in the one stored form (`role` without `org:`)."""

    id: str
    role: str | None
    slug: str | None


@dataclass(frozen=True)
class Session:
    """What a verified session token says: whose session, and which organization is active."""

    user_id: str
    organization: Organization | None


def _pem_text(raw: str) -> str:
    """The PEM as pasted into an env var: real newlines, `\\n` escapes, quotes or one spaced line."""
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    text = text.replace("\\r\\n", "\n").replace("\\n", "\n").replace("\r\n", "\n")
    match = _PEM.fullmatch(text)
    if match is not None and "\n" not in match.group(1).strip():
        # Some dashboards turn newlines into spaces: rebuild the body as base64 lines.
        body = "".join(match.group(1).split())
        lines = [body[i : i + 64] for i in range(0, len(body), 64)]
        text = "\n".join(["-----BEGIN PUBLIC KEY-----", *lines, "-----END PUBLIC KEY-----"])
    return text + "\n"


def _public_key() -> RSAPublicKey:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 (only this function needs it)
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey  # noqa: PLC0415

    raw = os.environ.get(KEY_VARIABLE, "").strip()
    if not raw:
        raise Misconfigured(
            KEY_VARIABLE,
            "is not set: paste the PEM from Clerk Dashboard → API keys → JWKS Public Key "
            f"(or set {SECRET_KEY_VARIABLE} to fetch Clerk's JWKS)",
        )
    try:
        key = serialization.load_pem_public_key(_pem_text(raw).encode())
    except (ValueError, TypeError):
        raise Misconfigured(KEY_VARIABLE, "is not a PEM public key (-----BEGIN PUBLIC KEY-----...)") from None
    if not isinstance(key, RSAPublicKey):
        raise Misconfigured(KEY_VARIABLE, "is not an RSA public key (Clerk signs session tokens with RS256)")
    if key.key_size < MIN_KEY_BITS:
        raise Misconfigured(KEY_VARIABLE, f"is a {key.key_size}-bit key; at least {MIN_KEY_BITS} bits are required")
    return key


def _jwks_client() -> PyJWKClient:
    import jwt  # noqa: PLC0415 (kept off the webhook's import path)

    secret = os.environ.get(SECRET_KEY_VARIABLE, "").strip()
    if not secret.startswith("sk_"):
        raise Misconfigured(SECRET_KEY_VARIABLE, "must be the instance's secret key (sk_test_... or sk_live_...)")
    url = os.environ.get(JWKS_URL_VARIABLE, "").strip() or DEFAULT_JWKS_URL
    if not (url.startswith("https://") or _LOOPBACK_HTTP.fullmatch(url)):
        raise Misconfigured(JWKS_URL_VARIABLE, "must be an https:// URL (plain http only on loopback, for tests)")
    return jwt.PyJWKClient(
        url,
        cache_jwk_set=True,
        lifespan=JWKS_CACHE_SECONDS,
        headers={"Authorization": f"Bearer {secret}", "User-Agent": "clerk-firestore-sync"},
        timeout=JWKS_TIMEOUT_SECONDS,
    )


def _verification_keys() -> tuple[RSAPublicKey | None, PyJWKClient | None]:
    """The PEM key when CLERK_JWT_KEY is set (no network), else a JWKS client for CLERK_SECRET_KEY."""
    if os.environ.get(KEY_VARIABLE, "").strip() or not os.environ.get(SECRET_KEY_VARIABLE, "").strip():
        return _public_key(), None
    return None, _jwks_client()


def _authorized_parties() -> tuple[frozenset[str], bool]:
    raw = os.environ.get(PARTIES_VARIABLE, "").strip()
    any_party = os.environ.get(ANY_PARTY_VARIABLE, "").strip()
    if any_party:
        if any_party != ANY_PARTY_VALUE:
            raise Misconfigured(ANY_PARTY_VARIABLE, f"must be exactly {ANY_PARTY_VALUE} or unset")
        if os.environ.get("K_SERVICE"):
            raise Misconfigured(ANY_PARTY_VARIABLE, "is for local development only and refused on Cloud Functions")
        if raw:
            raise Misconfigured(ANY_PARTY_VARIABLE, f"and {PARTIES_VARIABLE} are both set: choose one")
        return frozenset(), True
    parties = [party.strip() for party in raw.split(",") if party.strip()]
    if not parties:
        raise Misconfigured(
            PARTIES_VARIABLE,
            "is not set: list the app's origins, comma-separated, e.g. https://app.example.com,http://localhost:3000",
        )
    for party in parties:
        if not _ORIGIN.fullmatch(party):
            raise Misconfigured(
                PARTIES_VARIABLE,
                f"holds {party[:80]!r}: each entry must be an origin such as https://app.example.com "
                f"(lower-case, no path, no trailing slash; no wildcards: {ANY_PARTY_VARIABLE} is for local runs)",
            )
    return frozenset(parties), False


def _leeway() -> float:
    raw = os.environ.get(LEEWAY_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_LEEWAY_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise Misconfigured(LEEWAY_VARIABLE, f"must be a number of seconds, not {raw[:40]!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_LEEWAY_SECONDS:
        raise Misconfigured(LEEWAY_VARIABLE, f"must be between 0 and {MAX_LEEWAY_SECONDS:g} seconds")
    return value


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw not in {"", "true", "false"}:
        raise Misconfigured(name, "must be true or false")
    return raw == "true"


def read_settings() -> TokenSettings:
    """Read and validate the settings now; raises `Misconfigured` naming the first bad variable."""
    parties, any_party = _authorized_parties()
    public_key, jwks = _verification_keys()
    return TokenSettings(
        public_key=public_key,
        jwks=jwks,
        authorized_parties=parties,
        any_authorized_party=any_party,
        leeway_seconds=_leeway(),
        allow_pending_sessions=_flag(PENDING_VARIABLE),
    )


@functools.cache
def settings() -> TokenSettings:
    """Settings for this instance, read on first use (a failure is not cached; tests `cache_clear()`)."""
    return read_settings()


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header; raises `TokenRejected` otherwise."""
    if authorization is None or not authorization.strip():
        raise TokenRejected("missing_token")
    match = _BEARER.fullmatch(authorization)
    if match is None:
        raise TokenRejected("not_bearer")
    return match.group(1)


def _jwks_key(token: str, jwks: PyJWKClient) -> Any:
    """The instance key the token names (`kid`), from the cached JWKS; only RS256 tokens get that far."""
    import jwt  # noqa: PLC0415

    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise TokenRejected("malformed_token") from None
    if header.get("alg") != "RS256":
        raise TokenRejected("bad_algorithm")  # before any fetch: junk never costs a request to Clerk
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenRejected("unknown_key")
    try:
        return jwks.get_signing_key(kid).key
    except jwt.PyJWKClientConnectionError:
        raise KeysUnavailable from None
    except jwt.PyJWKClientError:
        raise TokenRejected("unknown_key") from None
    except jwt.PyJWKSetError:  # the endpoint answered, but with no usable keys
        raise KeysUnavailable from None


def _decoded_claims(token: str, config: TokenSettings) -> dict[str, Any]:
    import jwt  # noqa: PLC0415 (kept off the webhook's import path)

    if len(token) > MAX_TOKEN_CHARS:
        raise TokenRejected("malformed_token")
    key: Any = config.public_key if config.jwks is None else _jwks_key(token, config.jwks)
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
    """The active organization from v2 `o` ({id, slg, rol}) or v1 `org_id`/`org_slug`/`org_role`."""
    compact = claims.get("o")
    if compact is not None:
        if not isinstance(compact, dict):
            raise TokenRejected("bad_organization")
        org_id, role, slug = compact.get("id"), compact.get("rol"), compact.get("slg")
    elif claims.get("org_id") is not None:
        org_id, role, slug = claims.get("org_id"), claims.get("org_role"), claims.get("org_slug")
    else:
        return None
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


def verify_session_token(token: str, config: TokenSettings) -> Session:
    """Verify a Clerk session token (RS256, exp/nbf with leeway, azp, sub, sts); raises `TokenRejected`,
    or `KeysUnavailable` when the JWKS is needed and cannot be fetched."""
    claims = _decoded_claims(token, config)
    if not config.any_authorized_party:
        party = claims.get("azp")
        if not party:
            raise TokenRejected("missing_azp")
        if party not in config.authorized_parties:
            raise TokenRejected("bad_azp")
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not _USER_ID.fullmatch(user_id):
        raise TokenRejected("bad_subject")
    # `pending`: signed in, but a required step (such as choosing an organization) is not done yet.
    if claims.get("sts") == "pending" and not config.allow_pending_sessions:
        raise TokenRejected("pending_session")
    return Session(user_id=user_id, organization=_organization(claims))


def claims_size(claims: dict[str, str]) -> int:
    """Bytes the developer claims take, counted as Firebase's 1,000-byte limit needs (see above)."""
    return len(json.dumps(claims, ensure_ascii=True, separators=(",", ":")).encode())


def developer_claims(session: Session) -> dict[str, str]:
    """`org_id`, `org_role`, `org_slug` of the active organization; none without one.

    The id and role are bounded (they always fit); the slug is left out when it would take the
    claims over 1,000 bytes, so an odd slug costs the slug, never the sign-in.
    """
    organization = session.organization
    if organization is None:
        return {}
    claims = {"org_id": organization.id}
    if organization.role is not None:
        claims["org_role"] = organization.role
    if organization.slug is not None:
        with_slug = {**claims, "org_slug": organization.slug}
        if claims_size(with_slug) <= MAX_CLAIMS_BYTES:
            return with_slug
    return claims


def _firebase_app() -> App:
    """The firebase-admin app, created once per instance on first use (cold start stays cheap)."""
    global _app
    import firebase_admin  # noqa: PLC0415 (kept off the webhook's import path)

    with _app_lock:
        if _app is None:
            # Application Default Credentials: a key file from GOOGLE_APPLICATION_CREDENTIALS signs
            # locally; on Cloud Functions the runtime service account signs through IAM signBlob.
            _app = firebase_admin.initialize_app(name=APP_NAME)
        return _app


def reset_app() -> None:
    """Drop the firebase-admin app so the next mint reads credentials again (tests switch key files)."""
    global _app
    import firebase_admin  # noqa: PLC0415

    with _app_lock:
        if _app is not None:
            firebase_admin.delete_app(_app)
            _app = None


def mint_custom_token(session: Session) -> str:
    """A Firebase custom token for the session's user; raises `MintFailed` when signing is impossible."""
    import google.auth.exceptions  # noqa: PLC0415
    from firebase_admin import auth  # noqa: PLC0415

    claims = developer_claims(session)
    assert not claims.keys() & RESERVED_CLAIMS
    try:
        token: bytes = auth.create_custom_token(session.user_id, claims or None, app=_firebase_app())
    except auth.TokenSignError:
        raise MintFailed("sign_failed") from None
    except (ValueError, google.auth.exceptions.GoogleAuthError):
        # No key file and no service account to sign with (firebase-admin wraps this in ValueError).
        raise MintFailed("no_credentials") from None
    return token.decode()
