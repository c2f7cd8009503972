"""The token exchange's settings: read once per instance, validated, a bad one named by its variable.

The exchange (docs/reading-from-your-app.md) verifies a Clerk session token with the instance's
PEM key (`CLERK_JWT_KEY`, networkless) or Clerk's JWKS (`CLERK_SECRET_KEY`), checks who asked for it
(`CLERK_AUTHORIZED_PARTIES`) and, optionally, who issued it (`CLERK_ISSUER`).
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clerk_sync import config, jwks

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

__all__ = [
    "ANY_PARTY_VALUE",
    "Misconfigured",
    "TokenSettings",
    "read_settings",
    "settings",
]

KEY_VARIABLE = "CLERK_JWT_KEY"
SECRET_KEY_VARIABLE = "CLERK_SECRET_KEY"  # noqa: S105 (a variable's name, not a secret)
JWKS_URL_VARIABLE = "CLERK_JWKS_URL"
DEFAULT_JWKS_URL = "https://api.clerk.com/v1/jwks"
PARTIES_VARIABLE = "CLERK_AUTHORIZED_PARTIES"
ANY_PARTY_VARIABLE = "ALLOW_ANY_AUTHORIZED_PARTY"
# Deliberately not "true" or "*": whoever sets it has read that it is for local development only.
ANY_PARTY_VALUE = "true-local-only"
MISSING_AZP_VARIABLE = "ALLOW_MISSING_AZP"
ISSUER_VARIABLE = "CLERK_ISSUER"
LEEWAY_VARIABLE = "CLERK_TOKEN_LEEWAY_SECONDS"
PENDING_VARIABLE = "ALLOW_PENDING_SESSIONS"
DEFAULT_LEEWAY_SECONDS = 5.0
MAX_LEEWAY_SECONDS = 60.0
MIN_KEY_BITS = 2048

_ORIGIN = re.compile(r"https?://(?:[a-z0-9-]+(?:\.[a-z0-9-]+)*|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?")
_LOOPBACK_HTTP = re.compile(r"http://(?:127\.0\.0\.1|localhost)(?::[0-9]{1,5})?(?:/.*)?")
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.DOTALL)


class Misconfigured(ValueError):
    """A setting is missing or invalid; `variable` names it so the log line can say what to fix."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable} {problem}")
        self.variable = variable


@dataclass(frozen=True)
class TokenSettings:
    """How session tokens are verified on this instance."""

    public_key: RSAPublicKey | None  # CLERK_JWT_KEY: networkless, preferred
    key_set: jwks.KeySet | None  # else Clerk's JWKS through CLERK_SECRET_KEY, fetched and cached
    authorized_parties: frozenset[str]  # empty only when any_authorized_party
    any_authorized_party: bool
    allow_missing_azp: bool  # native clients send no Origin, so Clerk leaves azp out
    issuer: str | None  # CLERK_ISSUER: when set, `iss` must be exactly this
    leeway_seconds: float
    allow_pending_sessions: bool

    def allows_origin(self, origin: str | None) -> bool:
        """Whether a browser at `origin` may call the exchange (CORS) and may have asked for the token."""
        return origin is not None and (self.any_authorized_party or origin in self.authorized_parties)


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


def _key_set() -> jwks.KeySet:
    secret = os.environ.get(SECRET_KEY_VARIABLE, "").strip()
    if not secret.startswith("sk_"):
        raise Misconfigured(SECRET_KEY_VARIABLE, "must be the instance's secret key (sk_test_... or sk_live_...)")
    url = os.environ.get(JWKS_URL_VARIABLE, "").strip() or DEFAULT_JWKS_URL
    if not (url.startswith("https://") or _LOOPBACK_HTTP.fullmatch(url)):
        raise Misconfigured(JWKS_URL_VARIABLE, "must be an https:// URL (plain http only on loopback, for tests)")
    return jwks.KeySet(url=url, secret_key=secret)


def _verification_keys() -> tuple[RSAPublicKey | None, jwks.KeySet | None]:
    """The PEM key when CLERK_JWT_KEY is set (no network), else Clerk's JWKS for CLERK_SECRET_KEY."""
    if os.environ.get(KEY_VARIABLE, "").strip() or not os.environ.get(SECRET_KEY_VARIABLE, "").strip():
        return _public_key(), None
    return None, _key_set()


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


def _issuer() -> str | None:
    raw = os.environ.get(ISSUER_VARIABLE, "").strip()
    if not raw:
        return None
    secure = raw.startswith("https://") or _LOOPBACK_HTTP.fullmatch(raw)
    if not _ORIGIN.fullmatch(raw) or not secure:
        raise Misconfigured(
            ISSUER_VARIABLE,
            "must be the instance's Frontend API URL, e.g. https://clerk.example.com "
            "(https, lower-case, no path, no trailing slash)",
        )
    return raw


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
    public_key, key_set = _verification_keys()
    emulator = config.auth_emulator_problem()
    if emulator is not None:
        raise Misconfigured(*emulator)
    return TokenSettings(
        public_key=public_key,
        key_set=key_set,
        authorized_parties=parties,
        any_authorized_party=any_party,
        allow_missing_azp=_flag(MISSING_AZP_VARIABLE),
        issuer=_issuer(),
        leeway_seconds=_leeway(),
        allow_pending_sessions=_flag(PENDING_VARIABLE),
    )


@functools.cache
def settings() -> TokenSettings:
    """Settings for this instance, read on first use (a failure is not cached; tests `cache_clear()`)."""
    return read_settings()
