"""Who may start a reconcile run: Cloud Scheduler's Google-signed OIDC token, checked again here.

`--no-allow-unauthenticated` already makes Cloud Run refuse calls without a valid token for the
function; checking it here too (signature, audience, an allowed service account) keeps the function
closed if that flag is ever lost in a redeploy, and when it runs anywhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["Refused", "verify_invoker"]

TIMEOUT_SECONDS = 10.0


class Refused(Exception):
    """The caller is not an allowed invoker; `status` is 401 (who?) or 403 (not you)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def verify_invoker(authorization: str | None, *, audience: str, invokers: frozenset[str], certs_url: str) -> str:
    """The verified caller's email; raises Refused. google-auth loads only when a call arrives."""
    from google.auth import exceptions as auth_exceptions  # noqa: PLC0415
    from google.auth.transport import requests as auth_requests  # noqa: PLC0415
    from google.oauth2 import id_token  # noqa: PLC0415

    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Refused(401, "no_token")

    class BoundedRequest(auth_requests.Request):
        """google-auth's HTTP transport with a bounded timeout on the certificate fetch."""

        def __call__(self, url: str, method: str = "GET", body: Any = None, headers: Any = None,
                     timeout: Any = None, **kwargs: Any) -> Any:  # fmt: skip
            return super().__call__(url, method, body, headers, timeout or TIMEOUT_SECONDS, **kwargs)  # type: ignore[no-untyped-call]

    try:
        claims: Mapping[str, Any] = id_token.verify_token(
            token.strip(), BoundedRequest(), audience=audience, certs_url=certs_url
        )
    except (ValueError, auth_exceptions.GoogleAuthError) as error:
        raise Refused(401, f"invalid_token: {type(error).__name__}") from None
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True or email not in invokers:
        raise Refused(403, "not_an_invoker")
    return email
