"""Realistic Clerk event bodies and Svix-signed headers for tests (signed by the `svix` package)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BASE_MS = 1_756_382_400_000
_ids = itertools.count(1)


def new_message_id() -> str:
    """A fresh Svix-style message id (`msg_...`), unique within the test run."""
    return f"msg_test{next(_ids):08d}"


def new_user_id() -> str:
    """A fresh Clerk-style user id, unique within the test run."""
    return f"user_test{next(_ids):08d}"


def new_organization_id() -> str:
    """A fresh Clerk-style organization id, unique within the test run."""
    return f"org_test{next(_ids):08d}"


def new_membership_id() -> str:
    """A fresh Clerk-style membership id, unique within the test run."""
    return f"orgmem_test{next(_ids):08d}"


def email_entry(address: str, entry_id: str, *, verified: bool = True) -> dict[str, Any]:
    """One `email_addresses[]` entry as Clerk sends it."""
    return {
        "id": entry_id,
        "object": "email_address",
        "email_address": address,
        "linked_to": [],
        "reserved": False,
        "verification": {"status": "verified" if verified else "unverified", "strategy": "email_code"},
    }


def user_data(
    user_id: str,
    *,
    emails: list[str] | None = None,
    primary: int | None = 0,
    phones: list[str] | None = None,
    updated_at: int = BASE_MS,
    first_name: str | None = "Alice",
    last_name: str | None = "Anders",
    **extra: Any,
) -> dict[str, Any]:
    """A full Clerk User object; `primary` indexes `emails` (None: no primary email)."""
    emails = ["alice@example.com"] if emails is None else emails
    email_entries = [email_entry(address, f"idn_{user_id}_{index}") for index, address in enumerate(emails)]
    phone_entries = [
        {"id": f"idn_{user_id}_phone{index}", "object": "phone_number", "phone_number": number}
        for index, number in enumerate(phones or [])
    ]
    data: dict[str, Any] = {
        "id": user_id,
        "object": "user",
        "external_id": None,
        "email_addresses": email_entries,
        "primary_email_address_id": email_entries[primary]["id"] if primary is not None and emails else None,
        "phone_numbers": phone_entries,
        "primary_phone_number_id": phone_entries[0]["id"] if phone_entries else None,
        "username": None,
        "first_name": first_name,
        "last_name": last_name,
        "image_url": "https://img.clerk.com/example",
        "public_metadata": {},
        "private_metadata": {"stripe_customer": "cus_secret"},
        "unsafe_metadata": {},
        "banned": False,
        "locked": False,
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
        "last_sign_in_at": None,
        "web3_wallets": [],
    }
    data.update(extra)
    return data


def envelope(event_type: str, data: dict[str, Any], *, timestamp: int | None = None) -> dict[str, Any]:
    """The Clerk event envelope around `data`."""
    return {
        "data": data,
        "object": "event",
        "type": event_type,
        "timestamp": timestamp if timestamp is not None else BASE_MS,
        "instance_id": "ins_test",
        "event_attributes": {"http_request": {"client_ip": "203.0.113.10", "user_agent": "pytest"}},
    }


def user_event(event_type: str, user_id: str, **fields: Any) -> str:
    """A `user.created` / `user.updated` body as a JSON string."""
    return json.dumps(envelope(event_type, user_data(user_id, **fields)))


def deletion_event(user_id: str, *, timestamp: int = BASE_MS + 1_000_000) -> str:
    """A `user.deleted` body: Clerk sends only the id."""
    return json.dumps(envelope("user.deleted", {"deleted": True, "id": user_id, "object": "user"}, timestamp=timestamp))


def organization_data(
    organization_id: str, *, name: Any = "Acme", slug: str | None = None, updated_at: Any = BASE_MS, **extra: Any
) -> dict[str, Any]:
    """A full Clerk Organization object, as `organization.*` events carry it."""
    data: dict[str, Any] = {
        "object": "organization",
        "id": organization_id,
        "name": name,
        "slug": slug or organization_id.lower().replace("_", "-"),
        "image_url": "https://img.clerk.com/org",
        "has_image": False,
        "members_count": 1,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {},
        "private_metadata": {"billing": "org_secret"},
        "created_by": "user_creator",
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
    }
    data.update(extra)
    return data


def organization_event(event_type: str, organization_id: str, **fields: Any) -> str:
    """An `organization.created` / `.updated` body."""
    return json.dumps(envelope(event_type, organization_data(organization_id, **fields)))


def organization_deletion_event(organization_id: str, *, timestamp: int = BASE_MS + 1_000_000) -> str:
    """An `organization.deleted` body: id, slug and `deleted: true`, no `updated_at`."""
    data = {"object": "organization", "id": organization_id, "slug": organization_id.lower(), "deleted": True}
    return json.dumps(envelope("organization.deleted", data, timestamp=timestamp))


def membership_data(
    membership_id: str,
    organization_id: str,
    user_id: str,
    *,
    role: str = "org:member",
    updated_at: Any = BASE_MS,
    first_name: str | None = "Alice",
    **extra: Any,
) -> dict[str, Any]:
    """A full Clerk OrganizationMembership object: the same shape in created, updated and deleted."""
    data: dict[str, Any] = {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": ["org:sys_memberships:read"],
        "public_metadata": {},
        "private_metadata": {"seat": "member_secret"},
        "organization": organization_data(organization_id),
        "public_user_data": {
            "user_id": user_id,
            "identifier": f"{user_id}@example.com",
            "first_name": first_name,
            "last_name": "Anders",
            "image_url": "https://img.clerk.com/user",
            "has_image": False,
            "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
            "username": None,
        },
        "created_at": BASE_MS - 30_000,
        "updated_at": updated_at,
    }
    data.update(extra)
    return data


def membership_event(
    event_type: str,
    membership_id: str,
    organization_id: str,
    user_id: str,
    *,
    timestamp: int | None = None,
    **fields: Any,
) -> str:
    """An `organizationMembership.*` body."""
    data = membership_data(membership_id, organization_id, user_id, **fields)
    return json.dumps(envelope(event_type, data, timestamp=timestamp))


def signed_headers(
    body: str,
    *,
    message_id: str | None = None,
    secret: str = SECRET,
    timestamp: datetime | None = None,
    prefix: str = "svix",
) -> dict[str, str]:
    """Headers exactly as Svix sends them, signed now unless `timestamp` is given."""
    message_id = message_id or new_message_id()
    when = timestamp or datetime.now(UTC)
    return {
        f"{prefix}-id": message_id,
        f"{prefix}-timestamp": str(int(when.timestamp())),
        f"{prefix}-signature": Webhook(secret).sign(message_id, when, body),
        "content-type": "application/json",
    }


def session_event(
    event_type: str, session_id: str, user_id: str, *, status: str | None = None, updated_at: int = BASE_MS
) -> str:
    """A `session.*` body: the Session (Clerk also nests the whole user, which nothing here reads)."""
    data = {
        "object": "session",
        "id": session_id,
        "user_id": user_id,
        "client_id": "client_test",
        "status": status if status is not None else event_type.removeprefix("session."),
        "last_active_at": updated_at,
        "expire_at": updated_at + 7 * 86_400_000,
        "abandon_at": updated_at + 30 * 86_400_000,
        "updated_at": updated_at,
        "created_at": updated_at - 3_600_000,
        "user": user_data(user_id),
    }
    return json.dumps(envelope(event_type, data))


def new_role_id() -> str:
    """A fresh Clerk-style role id, unique within the test run."""
    return f"role_test{next(_ids):08d}"


def new_permission_id() -> str:
    """A fresh Clerk-style permission id, unique within the test run."""
    return f"perm_test{next(_ids):08d}"


def permission_data(permission_id: str, key: str, *, updated_at: int = BASE_MS, **extra: Any) -> dict[str, Any]:
    """A Clerk Permission object, as `permission.*` events carry it and roles nest it."""
    data: dict[str, Any] = {
        "object": "permission",
        "id": permission_id,
        "name": key.rsplit(":", 1)[-1].title(),
        "key": key,
        "description": f"Lets a member {key}",
        "type": "system" if key.startswith("org:sys_") else "user",
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
    }
    data.update(extra)
    return data


def permission_event(event_type: str, permission_id: str, key: str, **fields: Any) -> str:
    """A `permission.created` / `.updated` body."""
    return json.dumps(envelope(event_type, permission_data(permission_id, key, **fields)))


def role_data(
    role_id: str,
    key: str,
    permissions: list[dict[str, Any]] | None = None,
    *,
    updated_at: int = BASE_MS,
    **extra: Any,
) -> dict[str, Any]:
    """A Clerk Role object: its permissions nested whole (`permission_data`)."""
    data: dict[str, Any] = {
        "object": "role",
        "id": role_id,
        "name": key.removeprefix("org:").replace("_", " ").title(),
        "key": key,
        "description": None,
        "is_creator_eligible": False,
        "permissions": permissions or [],
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
    }
    data.update(extra)
    return data


def role_event(
    event_type: str, role_id: str, key: str, permissions: list[dict[str, Any]] | None = None, **fields: Any
) -> str:
    """A `role.created` / `.updated` body."""
    return json.dumps(envelope(event_type, role_data(role_id, key, permissions, **fields)))


def deleted_object_event(
    event_type: str, object_name: str, object_id: str, *, timestamp: int = BASE_MS + 1_000_000
) -> str:
    """A deletion carrying Clerk's DeletedObject (`role.deleted`, `permission.deleted`): no key, no `updated_at`."""
    data = {"object": object_name, "id": object_id, "slug": None, "deleted": True}
    return json.dumps(envelope(event_type, data, timestamp=timestamp))


def new_invitation_id() -> str:
    """A fresh Clerk-style organization invitation id, unique within the test run."""
    return f"orginv_test{next(_ids):08d}"


def invitation_event(
    event_type: str,
    invitation_id: str,
    organization_id: str,
    *,
    email: str = "invitee@example.com",
    updated_at: int = BASE_MS,
    **extra: Any,
) -> str:
    """An `organizationInvitation.*` body (`accepted` also names the user who accepted)."""
    status = {"created": "pending"}.get(event_type.rsplit(".", 1)[-1], event_type.rsplit(".", 1)[-1])
    data: dict[str, Any] = {
        "object": "organization_invitation",
        "id": invitation_id,
        "email_address": email,
        "role": "org:member",
        "role_name": "Member",
        "organization_id": organization_id,
        "inviter_id": "user_inviter",
        "public_inviter_data": {"user_id": "user_inviter", "first_name": "Ina", "identifier": "ina@example.com"},
        "status": status,
        "public_metadata": {"team": "blue"},
        "private_metadata": {"referral": "invitation_secret"},
        "url": "https://accounts.example.com/accept-invitation?__clerk_ticket=ticket_secret",
        "expires_at": updated_at + 7 * 86_400_000,
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
    }
    if event_type.endswith(".accepted"):
        data["user_id"] = "user_accepted"
    data.update(extra)
    return json.dumps(envelope(event_type, data))
