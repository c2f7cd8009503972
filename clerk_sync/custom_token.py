"""The Firebase custom token for a verified Clerk session: its developer claims, and reuse for a few minutes.

The claims carry the Clerk session id (`clerk_sid`), so the rules can deny a Firebase session whose
Clerk session has ended, and the active organization (`org_id`, `org_role`, `org_slug`). On Cloud
Functions every new token costs one IAM signBlob call; apps exchange often (on every session or
organization change, and their SDKs retry), so a token minted for the same session and claims is
handed out again for `REUSE_SECONDS`. It is valid for an hour, so a reused one still has 55 minutes.
"""

from __future__ import annotations

import collections
import json
import threading
import time

from clerk_sync import firebase_auth
from clerk_sync.session_token import Session

__all__ = [
    "MAX_CLAIMS_BYTES",
    "RESERVED_CLAIMS",
    "REUSE_SECONDS",
    "SESSION_CLAIM",
    "claims_size",
    "developer_claims",
    "forget_minted",
    "mint",
]

SESSION_CLAIM = "clerk_sid"
# Firebase refuses developer claims over 1,000 bytes; measured as ASCII-escaped JSON, which is never
# shorter than the UTF-8 encoding, so the check holds whichever way Firebase counts.
MAX_CLAIMS_BYTES = 1000
# Names firebase-admin refuses as developer claims (its RESERVED_CLAIMS); ours must never be one.
RESERVED_CLAIMS = frozenset(
    {"acr", "amr", "at_hash", "aud", "auth_time", "azp", "cnf", "c_hash", "exp", "firebase"}
    | {"iat", "iss", "jti", "nbf", "nonce", "sub"}
)
REUSE_SECONDS = 300.0
MAX_REUSED = 1000  # about 1 KB each: a megabyte at most

_minted: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()
_minted_lock = threading.Lock()


def claims_size(claims: dict[str, str]) -> int:
    """Bytes the developer claims take, counted as Firebase's 1,000-byte limit needs (see above)."""
    return len(json.dumps(claims, ensure_ascii=True, separators=(",", ":")).encode())


def developer_claims(session: Session) -> dict[str, str]:
    """`clerk_sid`; `org_id`, `org_role`, `org_slug` of the active organization; `clerk_pla`, `clerk_fea`.

    The session id, org id and role are bounded (they always fit). The slug, then Clerk Billing's
    `pla` and `fea` hints (as fresh as the session token: up to an hour old in a refreshed Firebase
    ID token; the rules read the subscription documents instead) are each left out when they would
    take the claims over 1,000 bytes, so an odd value costs that value, never the sign-in.
    """
    claims = {SESSION_CLAIM: session.session_id}
    organization = session.organization
    optional: list[tuple[str, str | None]] = [("clerk_pla", session.plans), ("clerk_fea", session.features)]
    if organization is not None:
        claims["org_id"] = organization.id
        if organization.role is not None:
            claims["org_role"] = organization.role
        optional.insert(0, ("org_slug", organization.slug))
    for name, value in optional:
        if value is not None and claims_size({**claims, name: value}) <= MAX_CLAIMS_BYTES:
            claims[name] = value
    return claims


def mint(session: Session) -> str:
    """A Firebase custom token for the session's user (reused for the same session and claims for a
    few minutes); raises `firebase_auth.AuthFailed`."""
    claims = developer_claims(session)
    assert not claims.keys() & RESERVED_CLAIMS
    key = json.dumps([session.user_id, claims], sort_keys=True)
    now = time.monotonic()
    with _minted_lock:
        found = _minted.get(key)
        if found is not None and now - found[0] < REUSE_SECONDS:
            return found[1]
    token = firebase_auth.create_custom_token(session.user_id, claims)
    with _minted_lock:
        _minted[key] = (now, token)
        _minted.move_to_end(key)
        while len(_minted) > MAX_REUSED:
            _minted.popitem(last=False)
    return token


def forget_minted() -> None:
    """Mint afresh from now on (tests switch signing keys; a key rotation needs no call: tokens expire)."""
    with _minted_lock:
        _minted.clear()
