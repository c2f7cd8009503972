"""Organization permission events: `permission.created` / `.updated` / `.deleted`, parsed, then their bodies.

Documents (names are part of the data contract), beside the users collection:
  organization_permissions/{permission_id}   a permission of the instance, readable by signed-in users
  permission_tombstones/{permission_id}      deleted permissions

Roles list their permissions by key (roles.py), and Clerk sends no role event when a permission's
key changes or the permission is deleted. So a change that can alter those lists (a permission seen
for the first time, a new key, a deletion) names a follow-up: every role that holds the permission
derives its list again, in its own transaction (`roles.refresh_holders`, by ROLES_FOLLOW_UP).
"""

from __future__ import annotations

from typing import Any

from clerk_sync import documents, kind, payload
from clerk_sync.kind import Deletion, Upsert
from clerk_sync.payload import MalformedEvent

__all__ = [
    "KIND",
    "OWNED_FIELDS",
    "ROLES_FOLLOW_UP",
    "SYNCED_FIELDS",
    "described",
    "document_from",
    "parse_deletion",
    "parse_upsert",
    "permission_id",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.PERMISSION.names_set_by("clerk")
# The follow-up that makes every role holding a changed permission list it as it now is (events.FOLLOW_UPS).
ROLES_FOLLOW_UP = "role_permissions"


def permission_id(value: object, where: str) -> str:
    """A Clerk permission id (`perm_…`), usable as a document id as it is."""
    return payload.clerk_id(value, where, "permission")


def _roles_follow_up(change: Upsert | Deletion, stored: dict[str, Any] | None) -> tuple[str, ...]:
    """A deletion, a new key or a permission not stored before can change what roles grant."""
    if isinstance(change, Deletion) or stored is None or stored.get("key") != change.document["key"]:
        return (ROLES_FOLLOW_UP,)
    return ()


KIND = kind.Kind(family="permission", synced_fields=SYNCED_FIELDS, follow_ups=_roles_follow_up)
OWNED_FIELDS = KIND.owned_fields


def described(clerk_id: str, key: str, data: dict[str, Any], where: str) -> dict[str, Any]:
    """What roles and permissions both are: an id, the key an app checks, and words for people."""
    return {
        "clerk_id": clerk_id,
        "key": key,
        "name": payload.optional_str(data, "name", where),
        "description": payload.optional_str(data, "description", where),
    }


def document_from(data: dict[str, Any], where: str = "data") -> dict[str, Any]:
    """The permission's synced fields from a Clerk Permission object (also nested in a Role)."""
    key = payload.optional_str(data, "key", where)
    if not key:
        raise MalformedEvent(f"missing {where}.key")
    return {
        **described(permission_id(data.get("id"), f"{where}.id"), key, data, where),
        "type": payload.optional_str(data, "type", where),
        "created_at": payload.optional_time(data, "created_at", where),
        "updated_at": payload.required_time(data, "updated_at", where),
    }


# permission.* (`permission.deleted` is `{object, id, deleted: true}`)
parse_upsert, parse_deletion = kind.parsers_by_id(KIND, document_from, permission_id)
