"""`send`: a realistic Clerk event, signed with the `svix` package exactly as Clerk's deliveries are.

This replaces the Clerk dashboard's "send example" when working offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import string
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tools import billing_events
from tools.common import ToolError

__all__ = [
    "EVENT_TYPES",
    "Built",
    "Options",
    "build",
    "checked_url",
    "new_clerk_id",
    "post",
    "send",
    "sign",
    "user_event",
]

USER_TYPES = ("user.created", "user.updated", "user.deleted")
ORGANIZATION_TYPES = ("organization.created", "organization.updated", "organization.deleted")
MEMBERSHIP_TYPES = (
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
)
EVENT_TYPES = USER_TYPES + ORGANIZATION_TYPES + MEMBERSHIP_TYPES + billing_events.BILLING_TYPES
DEFAULT_URL = "http://127.0.0.1:8080/"
BASE62 = string.ascii_letters + string.digits
MAX_SHOWN_BODY = 2000
SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,200}")


def new_clerk_id(prefix: str) -> str:
    """An id shaped like Clerk's and Svix's (`user_2abc…`, `msg_2abc…`): prefix and 27 base62 chars."""
    return f"{prefix}_2" + "".join(secrets.choice(BASE62) for _ in range(26))


def now_ms() -> int:
    """Epoch milliseconds, the unit of every Clerk timestamp."""
    return time.time_ns() // 1_000_000


def default_email(user_id: str, first_name: str, *, changed: bool) -> str:
    """A per-user address (so test users never fight over one email); `changed` gives a new one."""
    local = f"{first_name.lower() or 'user'}.{user_id[-8:].lower()}"
    suffix = f"+{secrets.token_hex(2)}" if changed else ""
    return f"{local}{suffix}@example.com"


def user_data(user_id: str, *, email: str, first_name: str, last_name: str, updated_at: int) -> dict[str, Any]:
    """A full Clerk User object, field for field as the `user.created` / `user.updated` webhooks carry it."""
    email_id = "idn_2" + hashlib.sha256(f"{user_id}:{email}".encode()).hexdigest()[:26]
    created_at = updated_at - 60_000
    return {
        "backup_code_enabled": False,
        "banned": False,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "created_at": created_at,
        "delete_self_enabled": True,
        "email_addresses": [
            {
                "created_at": created_at,
                "email_address": email,
                "id": email_id,
                "linked_to": [],
                "matches_sso_connection": False,
                "object": "email_address",
                "reserved": False,
                "updated_at": updated_at,
                "verification": {
                    "attempts": 1,
                    "expire_at": created_at + 600_000,
                    "status": "verified",
                    "strategy": "email_code",
                },
            }
        ],
        "enterprise_accounts": [],
        "external_accounts": [],
        "external_id": None,
        "first_name": first_name,
        "has_image": False,
        "id": user_id,
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
        "last_active_at": updated_at,
        "last_name": last_name,
        "last_sign_in_at": None,
        "legal_accepted_at": None,
        "locale": None,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "mfa_disabled_at": None,
        "mfa_enabled_at": None,
        "object": "user",
        "passkeys": [],
        "password_enabled": True,
        "password_last_updated_at": created_at,
        "phone_numbers": [],
        "primary_email_address_id": email_id,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "private_metadata": {},
        "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
        "public_metadata": {},
        "saml_accounts": [],
        "totp_enabled": False,
        "two_factor_enabled": False,
        "unsafe_metadata": {},
        "updated_at": updated_at,
        "username": None,
        "verification_attempts_remaining": 100,
        "web3_wallets": [],
    }


def user_event(
    event_type: str,
    user_id: str,
    *,
    email: str | None = None,
    first_name: str = "Ada",
    last_name: str = "Lovelace",
    updated_at: int | None = None,
) -> dict[str, Any]:
    """The envelope Clerk posts; `user.updated` moves the user to a new address unless `email` is given.

    Without `instance_id`, like every hand-made event: only real events record the Clerk instance
    the data belongs to (clerk_sync/instance.py), so a real instance can follow `send` locally.
    """
    updated_at = now_ms() if updated_at is None else updated_at
    if event_type == "user.deleted":
        data: dict[str, Any] = {"deleted": True, "id": user_id, "object": "user"}
        timestamp = updated_at  # deletions carry no updated_at; the store orders them by this
    else:
        address = email or default_email(user_id, first_name, changed=event_type == "user.updated")
        data = user_data(user_id, email=address, first_name=first_name, last_name=last_name, updated_at=updated_at)
        timestamp = now_ms()
    return {
        "data": data,
        "event_attributes": {"http_request": {"client_ip": "127.0.0.1", "user_agent": "clerk-sync send"}},
        "object": "event",
        "timestamp": timestamp,
        "type": event_type,
    }


def organization_data(organization_id: str, *, name: str, slug: str | None, updated_at: int) -> dict[str, Any]:
    """A full Clerk Organization object, as `organization.*` and membership webhooks carry it."""
    return {
        "admin_delete_enabled": True,
        "created_at": updated_at - 60_000,
        "created_by": None,
        "has_image": False,
        "id": organization_id,
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsImlpZCI6Im9yZyJ9",
        "max_allowed_memberships": 5,
        "members_count": 1,
        "missing_member_with_elevated_permissions": False,
        "name": name,
        "object": "organization",
        "pending_invitations_count": 0,
        "private_metadata": {},
        "public_metadata": {},
        "role_set_key": None,
        "slug": slug or name.lower().replace(" ", "-"),
        "updated_at": updated_at,
    }


def membership_data(
    membership_id: str, organization: dict[str, Any], user_id: str, *, role: str, first_name: str, last_name: str,
    updated_at: int,
) -> dict[str, Any]:  # fmt: skip
    """A full Clerk OrganizationMembership object: the same shape in created, updated and deleted."""
    admin = role == "org:admin"
    return {
        "created_at": updated_at - 30_000,
        "id": membership_id,
        "object": "organization_membership",
        "organization": organization,
        "permissions": ["org:sys_memberships:read", *(["org:sys_memberships:manage"] if admin else [])],
        "private_metadata": {},
        "public_metadata": {},
        "public_user_data": {
            "first_name": first_name,
            "has_image": False,
            "identifier": default_email(user_id, first_name, changed=False),
            "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
            "last_name": last_name,
            "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
            "user_id": user_id,
            "username": None,
        },
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "updated_at": updated_at,
    }


@dataclass(frozen=True)
class Options:
    """What `send` can set in a generated event; None means "a sensible default" (DEFAULTS)."""

    user_id: str | None = None
    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    organization_id: str | None = None
    name: str | None = None
    slug: str | None = None
    membership_id: str | None = None
    role: str | None = None
    updated_at: int | None = None
    # Billing events: the payer is --user-id or --org-id.
    plan: str = "pro"
    status: str | None = None
    trial: bool = False
    seats: int | None = None
    subscription_id: str | None = None
    item_id: str | None = None
    payment_id: str | None = None


# What a generated event carries where no option says otherwise, and the option that changes it.
DEFAULTS = {"first_name": "Ada", "last_name": "Lovelace", "name": "Analytical Engines", "role": "org:member"}
FLAGS = {"first_name": "--first-name", "last_name": "--last-name", "name": "--name", "role": "--role"}
# The defaulted fields each kind of event carries into Firestore.
CARRIED = {
    "user": ("first_name", "last_name"),
    "organization": ("name",),
    "membership": ("role", "first_name", "last_name"),
}


@dataclass(frozen=True)
class Built:
    """A generated event: its envelope, the id it is about, a detail for the report, the defaults it used."""

    envelope: dict[str, Any]
    about: str
    detail: str
    defaulted: tuple[str, ...] = ()


def _envelope(event_type: str, data: dict[str, Any], timestamp: int) -> dict[str, Any]:
    return {
        "data": data,
        "event_attributes": {"http_request": {"client_ip": "127.0.0.1", "user_agent": "clerk-sync send"}},
        "object": "event",
        "timestamp": timestamp,
        "type": event_type,
    }


def _require(event_type: str, needed: list[tuple[str | None, str, str]]) -> None:
    """Every missing id at once: (value, flag, where to get it)."""
    missing = [f"{flag} ({hint})" for value, flag, hint in needed if value is None]
    if missing:
        listed = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
        raise ToolError(f"{event_type} needs {listed}")


def _defaulted(options: Options, kind: str) -> tuple[str, ...]:
    return tuple(field for field in CARRIED[kind] if getattr(options, field) is None)


def _value(options: Options, field: str) -> str:
    given: str | None = getattr(options, field)
    return DEFAULTS[field] if given is None else given


def defaults_note(event_type: str, defaulted: tuple[str, ...]) -> str | None:
    """For an update: which stored values the defaults replace, since Clerk's updates carry the whole object."""
    if not event_type.endswith(".updated") or not defaulted:
        return None
    values = ", ".join(f"{field.replace('_', ' ')} {DEFAULTS[field]!r}" for field in defaulted)
    flags = ", ".join(FLAGS[field] for field in defaulted)
    why = "the defaults, not what Firestore holds; an update carries the whole object, so they replace the stored"
    return f"{values}: {why} values (choose with {flags})"


def build(event_type: str, options: Options) -> Built:
    """A generated event, with the fields no option set taken from DEFAULTS."""
    if event_type in USER_TYPES:
        if event_type != "user.created":
            _require(event_type, [(options.user_id, "--user-id", "the id `send user.created` printed")])
        user_id = options.user_id or new_clerk_id("user")
        envelope = user_event(
            event_type,
            user_id,
            email=options.email,
            first_name=_value(options, "first_name"),
            last_name=_value(options, "last_name"),
            updated_at=options.updated_at,
        )
        addresses = envelope["data"].get("email_addresses") or []
        detail = f"  ({addresses[0]['email_address']})" if addresses else ""
        defaulted = () if event_type == "user.deleted" else _defaulted(options, "user")
        return Built(envelope, user_id, detail, defaulted)
    updated_at = now_ms() if options.updated_at is None else options.updated_at
    if event_type in billing_events.BILLING_TYPES:
        billing = billing_events.Billing(
            user_id=options.user_id,
            organization_id=options.organization_id,
            plan=options.plan,
            status=options.status,
            trial=options.trial,
            seats=options.seats,
            subscription_id=options.subscription_id,
            item_id=options.item_id,
            payment_id=options.payment_id,
        )
        data, about, detail = billing_events.build(event_type, billing, updated_at)
        return Built(_envelope(event_type, data, now_ms()), about, detail)
    name = _value(options, "name")
    if event_type in ORGANIZATION_TYPES:
        if event_type != "organization.created":
            _require(event_type, [(options.organization_id, "--org-id", "the id `send organization.created` printed")])
        organization_id = options.organization_id or new_clerk_id("org")
        if event_type == "organization.deleted":
            data = {"deleted": True, "id": organization_id, "object": "organization", "slug": options.slug or ""}
            return Built(_envelope(event_type, data, updated_at), organization_id, "")
        data = organization_data(organization_id, name=name, slug=options.slug, updated_at=updated_at)
        return Built(
            _envelope(event_type, data, now_ms()), organization_id, f"  ({name})", _defaulted(options, "organization")
        )
    needed = [
        (options.organization_id, "--org-id", "the organization joined"),
        (options.user_id, "--user-id", "the member"),
    ]
    if event_type != "organizationMembership.created":
        needed.append(
            (options.membership_id, "--membership-id", "the id `send organizationMembership.created` printed")
        )
    _require(event_type, needed)
    assert options.organization_id is not None
    assert options.user_id is not None
    membership_id = options.membership_id or new_clerk_id("orgmem")
    role = _value(options, "role")
    organization = organization_data(options.organization_id, name=name, slug=options.slug, updated_at=updated_at)
    data = membership_data(
        membership_id,
        organization,
        options.user_id,
        role=role,
        first_name=_value(options, "first_name"),
        last_name=_value(options, "last_name"),
        updated_at=updated_at,
    )
    detail = f"  ({options.user_id} in {options.organization_id}, {role})"
    return Built(_envelope(event_type, data, now_ms()), membership_id, detail, _defaulted(options, "membership"))


def sign(body: str, secret: str, message_id: str) -> dict[str, str]:
    """Svix's headers for `body`, signed now by the `svix` package (the same code Clerk's sender runs)."""
    from svix.webhooks import Webhook  # noqa: PLC0415 (svix loads pydantic and httpx: only when signing)

    try:
        webhook = Webhook(secret)
    except Exception as error:  # svix raises several types for a bad secret; all mean the same here
        raise ToolError("the signing secret is not a valid whsec_ value") from error
    when = datetime.now(UTC)
    return {
        "svix-id": message_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": webhook.sign(message_id, when, body),
        "content-type": "application/json",
        "user-agent": "clerk-sync-send/1",
    }


def checked_url(url: str) -> str:
    """`url` when it is http(s) with a host; else a ToolError showing what one looks like."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ToolError(
            f"--url must be an http:// or https:// URL, such as {DEFAULT_URL} or https://1a2b.ngrok-free.app/, "
            f"not {url[:200]!r}"
        )
    return url


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> tuple[int, str, str]:
    """POST once and return status, reason and body text; raises ToolError when nothing answered."""
    checked_url(url)
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            return int(response.status), str(response.reason), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), str(error.reason), error.read().decode(errors="replace")
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ToolError(f"no answer from {url} ({reason}); is `make dev` running, or is --url right?") from None


def _body_from_file(path: Path) -> tuple[str, str, str]:
    """A JSON file sent byte for byte as written; returns body, type and user id for the report."""
    try:
        body = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ToolError(f"cannot read {path}: {error}") from None
    try:
        parsed = json.loads(body)
    except ValueError:
        return body, "(not JSON)", "-"
    event_type = parsed.get("type") if isinstance(parsed, dict) else None
    data = parsed.get("data") if isinstance(parsed, dict) else None
    user_id = data.get("id") if isinstance(data, dict) else None
    return body, str(event_type or "(no type)"), str(user_id or "-")


def _save(body: str, message_id: str) -> Path | None:
    """Keep the exact body, so a duplicate delivery can repeat it byte for byte as Svix does.

    In `CLERK_SYNC_SENT_DIR`, by default `clerk-sync-sent` in the temporary directory.
    """
    if not SAFE_FILE_NAME.fullmatch(message_id):
        return None
    folder = Path(os.environ.get("CLERK_SYNC_SENT_DIR") or Path(tempfile.gettempdir()) / "clerk-sync-sent")
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / f"{message_id}.json"
        path.write_text(body, encoding="utf-8")
    except OSError:
        return None
    return path


def send(
    what: str,
    options: Options,
    *,
    secret: str | None,
    url: str,
    svix_id: str | None,
    timeout: float,
    out: TextIO,
) -> int:
    """Build (or read), sign and post one event; 0 when the answer is 2xx."""
    if not secret:
        raise ToolError(
            "no signing secret: set CLERK_WEBHOOK_SIGNING_SECRET in the environment or .env (`make dev` creates one)"
        )
    checked_url(url)  # before anything is saved or printed as if it could be sent
    note = None
    if what in EVENT_TYPES:
        built = build(what, options)
        body = json.dumps(built.envelope, ensure_ascii=False)
        event_type, about, detail = what, built.about, built.detail
        note = defaults_note(what, built.defaulted)
    else:
        path = Path(what)
        if not path.exists():
            if what.endswith(".json") or "/" in what:
                raise ToolError(f"no such file: {what}")
            raise ToolError(f"{what!r} is neither a JSON file nor one of: {', '.join(EVENT_TYPES)}")
        if not path.is_file():
            raise ToolError(f"{what} is not a file")
        if options != Options():
            raise ToolError("the event options apply to generated events; edit the file instead")
        body, event_type, about = _body_from_file(path)
        detail = f"  (from {path})"
    message_id = svix_id or new_clerk_id("msg")
    headers = sign(body, secret, message_id)
    out.write(f"POST {url}\n")
    out.write(f"  event    {event_type}  {about}{detail}\n")
    if note:
        out.write(f"  note     {note}\n")
    out.write(f"  svix-id  {message_id}\n")
    saved = _save(body, message_id) if what in EVENT_TYPES else None
    if saved is not None:
        # Same id and same bytes: exactly what a Svix retry of this delivery looks like.
        out.write(f"  resend   python3 -m clerk_sync send {saved} --svix-id {message_id}{_url_flag(url)}\n")
    status, reason, answer = post(url, body.encode(), headers, timeout)
    shown = answer if len(answer) <= MAX_SHOWN_BODY else answer[:MAX_SHOWN_BODY] + "…"
    out.write(f"{status} {reason}\n{shown.rstrip()}\n")
    return 0 if 200 <= status < 300 else 1


def _url_flag(url: str) -> str:
    return "" if url == DEFAULT_URL else f" --url {url}"
