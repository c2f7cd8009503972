"""What reconcile needs to know about each kind of Clerk object, in one place: users, organizations,
memberships, roles and permissions.

How a listed object is keyed, which webhook event repairs it, where Firestore keeps it and its
tombstone, and how Firestore's copies of it are found.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

from google.cloud import firestore

from clerk_sync import events, memberships, organizations, permissions, roles, users
from clerk_sync.config import Settings
from clerk_sync.kind import Kind
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.payload import EPOCH

__all__ = [
    "DELETE_TYPE",
    "KINDS",
    "UPSERT_TYPE",
    "deletion",
    "document",
    "envelope",
    "key",
    "kind_of_deletion",
    "ms",
    "now_ms",
    "stored_key",
    "stored_query",
    "synced",
    "tombstone",
    "tombstones",
    "waiting",
]

# Each reconciled kind's declaration: where its documents and tombstones live, how it is keyed and
# which events carry it come from there, so a kind added here needs only its listing call.
DECLARED: dict[str, Kind] = {
    "users": users.KIND,
    "organizations": organizations.KIND,
    "memberships": memberships.KIND,
    "roles": roles.KIND,
    "permissions": permissions.KIND,
}
KINDS = tuple(DECLARED)
# Kept by their own id in a collection of their own, with no rule beyond the shared bodies'.
DEFINITIONS = {"roles": "role", "permissions": "permission"}

UPSERT_TYPE = {name: declared.upsert_type for name, declared in DECLARED.items()}
DELETE_TYPE = {name: declared.deletion_type for name, declared in DECLARED.items()}


def now_ms() -> int:
    """Our clock in epoch milliseconds, as Clerk's times are."""
    return time.time_ns() // 1_000_000


def envelope(event_type: str, data: dict[str, Any]) -> bytes:
    """The webhook body that would have carried `data`."""
    return json.dumps({"data": data, "object": "event", "type": event_type, "timestamp": now_ms()}).encode()


def key(kind: str, data: dict[str, Any]) -> str:
    """The id reconcile compares by: the object's id, or organization/user for a membership."""
    if kind == "memberships":
        return f"{data['organization']['id']}/{data['public_user_data']['user_id']}"
    return str(data["id"])


def stored_key(kind: str, stored: dict[str, Any]) -> str:
    """The same id, from what Firestore holds."""
    return DECLARED[kind].key(stored)


def deletion(kind: str, stored: dict[str, Any]) -> bytes:
    """The deletion the webhook would have carried, built from what Firestore holds."""
    if kind == "users":
        return envelope(DELETE_TYPE[kind], {"id": stored["clerk_id"], "deleted": True, "object": "user"})
    if kind == "organizations":
        return envelope(DELETE_TYPE[kind], {"id": stored["clerk_id"], "deleted": True, "object": "organization"})
    if kind in DEFINITIONS:
        return envelope(DELETE_TYPE[kind], {"id": stored["clerk_id"], "deleted": True, "object": DEFINITIONS[kind]})
    data = {
        "id": stored["membership_id"],
        "object": "organization_membership",
        "organization": {"id": stored["organization_id"]},
        "public_user_data": {"user_id": stored["user_id"]},
    }
    return envelope(DELETE_TYPE[kind], data)


def document(db: firestore.Client, settings: Settings, kind: str, object_key: str) -> firestore.DocumentReference:
    """Where Firestore keeps the object with this key."""
    declared = DECLARED[kind]
    ids = dict(zip(declared.place, object_key.split("/", len(declared.place) - 1), strict=True))
    return declared.document(db, settings.paths, ids)


def tombstones(paths: Paths, kind: str) -> str:
    """The collection of this kind's tombstones (keyed by the object's own id)."""
    return DECLARED[kind].tombstone_collection(paths)


def tombstone(
    db: firestore.Client, settings: Settings, kind: str, change: events.Change
) -> firestore.DocumentReference:
    """Where the object's tombstone would be."""
    return db.collection(tombstones(settings.paths, kind)).document(change.clerk_id)


def kind_of_deletion(event_type: object) -> str | None:
    """The kind a deletion event type is about (None for any other type)."""
    return next((kind for kind, deletion_type in DELETE_TYPE.items() if deletion_type == event_type), None)


def stored_query(db: firestore.Client, paths: Paths, kind: str) -> Any:
    """Every Firestore document of this kind, with only the fields reconcile compares by."""
    if kind == "memberships":
        return db.collection_group(MEMBERSHIPS).select(["membership_id", "organization_id", "user_id"])
    return db.collection(paths.top_level(DECLARED[kind].family)).select(["clerk_id", "updated_at"])


def synced(paths: Paths, kind: str, path: str, data: dict[str, Any]) -> bool:
    """Whether a document is one the sync wrote (an app's own documents stay out of reconcile)."""
    if kind == "memberships":
        return paths.is_membership(path) and isinstance(data.get("membership_id"), str)
    return isinstance(data.get("clerk_id"), str) and "updated_at" in data


def waiting(stored: dict[str, Any]) -> bool:
    """Whether a stored user's address move is parked (another user held the address when it came)."""
    return bool(stored.get(users.PENDING_FIELD))


def ms(moment: object) -> int | None:
    """A datetime as epoch milliseconds (None for anything else)."""
    return (moment - EPOCH) // timedelta(milliseconds=1) if isinstance(moment, datetime) else None
