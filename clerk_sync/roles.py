"""Organization role events: `role.created` / `.updated` / `.deleted`, parsed, then their bodies.

Documents (names are part of the data contract), beside the users collection:
  organization_roles/{role_id}        a role and what it grants (`permissions`: keys), readable by signed-in users
  organization_role_keys/{role_key}   which role a key names: `{key, role_id, updated_at}`
  role_tombstones/{role_id}           deleted roles

Clerk sends no membership event when a role's permissions change, so a member's permissions are
not copied into its membership document: the rules read them from the role document
(`clerkSyncHasPermission`), which one event keeps right at once, whatever the number of members
(docs/data-model.md#roles-and-permissions measures both ways). A membership carries its role's key,
so each key has a document naming its role: written by the role's newest event that holds the key,
and kept when the role moves to another key (a member whose document still carries the old key
keeps its role) or is deleted (the key then grants nothing). A role's `permissions` are derived
from what its event carried and the permissions' own documents: a permission's newer key wins, and
a deleted permission is left out (`refresh_holders` derives them again when a permission changes).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from clerk_sync import documents, kind, payload, permissions, transaction
from clerk_sync.delivery import Delivery
from clerk_sync.kind import Admission, Snapshots, Upsert
from clerk_sync.outcome import FollowUpFailed, Outcome, StoreUnavailable
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import NO_RETRY, Attempt, remaining

__all__ = [
    "KIND",
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "granted_keys",
    "is_role_key",
    "key_reference",
    "parse_deletion",
    "parse_upsert",
    "refresh_holders",
    "role_fields",
    "role_id",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.ROLE.names_set_by("clerk")
# What the role grants, derived (never as sent): the field the rules and apps read.
GRANTED_FIELD = "permissions"
# Clerk's keys are `org:` and lowercase letters, digits and underscores; older instances have `admin`
# and `basic_member`. A key names a document, so it must be one (no `/`, not `.`, `..` or `__x__`).
ROLE_KEY = re.compile(r"[A-Za-z0-9_:.-]{1,128}")
RESERVED_KEY = re.compile(r"__.*__|\.{1,2}", re.DOTALL)
# Roles read per page while refreshing those that hold a changed permission (an instance has few).
REFRESH_PAGE = 100


def is_role_key(value: object) -> bool:
    """Whether `value` can be a role key (and so a document id as it is)."""
    return isinstance(value, str) and bool(ROLE_KEY.fullmatch(value)) and not RESERVED_KEY.fullmatch(value)


def role_id(value: object, where: str) -> str:
    """A Clerk role id (`role_…`), usable as a document id as it is."""
    return payload.clerk_id(value, where, "role")


def key_reference(db: firestore.Client, paths: Paths, key: str) -> firestore.DocumentReference:
    """The document naming the role that holds `key`."""
    return db.collection(paths.role_keys).document(key)


def _permission_references(
    db: firestore.Client, paths: Paths, permission_ids: list[str]
) -> list[firestore.DocumentReference]:
    """Each permission's document and tombstone: read with the role, in the same batched read."""
    found = []
    for permission in dict.fromkeys(permission_ids):
        found.append(db.collection(paths.permissions).document(permission))
        found.append(db.collection(paths.permission_tombstones).document(permission))
    return found


def granted_keys(
    carried: list[dict[str, Any]],
    lookup: Callable[[str], tuple[Mapping[str, Any] | None, bool]],
) -> list[str]:
    """The keys a role grants: each permission it carried, under the newer of the key it carried and
    its own document's, unless it is deleted. `lookup(id)` is (its stored document, whether tombstoned)."""
    keys: list[str] = []
    for entry in carried:
        stored, deleted = lookup(str(entry.get("id")))
        if deleted:
            continue
        key = entry.get("key")
        carried_at = entry.get("updated_at")
        stored_key = stored.get("key") if stored is not None else None
        stored_at = stored.get("updated_at") if stored is not None else None
        if isinstance(stored_key, str) and (
            not isinstance(carried_at, datetime) or (isinstance(stored_at, datetime) and stored_at >= carried_at)
        ):
            key = stored_key
        if isinstance(key, str) and key not in keys:
            keys.append(key)
    return keys


def _lookup(snapshots: Snapshots, paths: Paths) -> Callable[[str], tuple[Mapping[str, Any] | None, bool]]:
    def lookup(permission: str) -> tuple[Mapping[str, Any] | None, bool]:
        document = snapshots.get(f"{paths.permissions}/{permission}")
        tombstone = snapshots.get(f"{paths.permission_tombstones}/{permission}")
        stored = (document.to_dict() or {}) if document is not None and document.exists else None
        return stored, tombstone is not None and tombstone.exists

    return lookup


def _reads(db: firestore.Client, paths: Paths, change: Upsert) -> list[firestore.DocumentReference]:
    """The key's document and every permission the role carries, with the role's own batched read."""
    return [
        key_reference(db, paths, change.document["key"]),
        *_permission_references(db, paths, change.document["permission_ids"]),
    ]


def _takes_key(held: firestore.DocumentSnapshot[Any], change: Upsert) -> bool:
    """A key is the newest claimant's: Clerk gives a key to one role at a time, so a role that holds it
    in a newer event than the one that wrote the key's document took it after the other let it go."""
    if not held.exists:
        return True
    data = held.to_dict() or {}
    held_at = data.get("updated_at")
    return data.get("role_id") == change.clerk_id or not isinstance(held_at, datetime) or held_at < change.updated_at


def _admit(
    attempt: Attempt, delivery: Delivery, change: Upsert, snapshots: Snapshots, stored: dict[str, Any] | None
) -> Admission:
    """The role's key names it (unless a newer role holds the key); what it grants is derived."""
    key_ref = key_reference(attempt.db, delivery.paths, change.document["key"])
    held = snapshots[key_ref.path]
    if _takes_key(held, change):
        attempt.set(
            key_ref,
            {
                "key": change.document["key"],
                "role_id": change.clerk_id,
                "updated_at": change.updated_at,
                "synced_at": firestore.SERVER_TIMESTAMP,
            },
        )
    else:
        delivery.warn("role key held by a newer role, left to it", key_held_by=(held.to_dict() or {}).get("role_id"))
    granted = granted_keys(change.document["clerk_permissions"], _lookup(snapshots, delivery.paths))
    return Admission(Outcome.APPLIED, {**change.document, GRANTED_FIELD: granted})


def role_fields(data: dict[str, Any]) -> dict[str, str | None]:
    """The role a membership or an invitation carries: its key (what the rules match) and its name."""
    return {"role": payload.optional_str(data, "role"), "role_name": payload.optional_str(data, "role_name")}


KIND = kind.Kind(
    family="role",
    synced_fields=SYNCED_FIELDS,
    reads=_reads,
    admit=_admit,
    extra_owned=(GRANTED_FIELD,),
)
OWNED_FIELDS = KIND.owned_fields


def document_from(data: dict[str, Any], where: str = "data") -> dict[str, Any]:
    """The role's synced fields from a Clerk Role object, its permissions as it carries them."""
    key = payload.optional_str(data, "key", where)
    if key is None or not is_role_key(key):
        raise MalformedEvent(f"{where}.key is not a role key" if key else f"missing {where}.key")
    carried = data.get("permissions")
    if carried is None:
        carried = []
    if not isinstance(carried, list) or not all(isinstance(entry, dict) for entry in carried):
        raise MalformedEvent(f"{where}.permissions is not a list of objects")
    entries = [permissions.document_from(entry, f"{where}.permissions[{index}]") for index, entry in enumerate(carried)]
    return {
        **permissions.described(role_id(data.get("id"), f"{where}.id"), key, data, where),
        "is_creator_eligible": payload.flag(data, "is_creator_eligible", where),
        "permission_ids": [entry["clerk_id"] for entry in entries],
        "clerk_permissions": [
            {"id": entry["clerk_id"], "key": entry["key"], "updated_at": entry["updated_at"]} for entry in entries
        ],
        "created_at": payload.optional_time(data, "created_at", where),
        "updated_at": payload.required_time(data, "updated_at", where),
    }


# role.* (`role.deleted` is `{object, id, deleted: true}`: no key)
parse_upsert, parse_deletion = kind.parsers_by_id(KIND, document_from, role_id)


def _holders(db: firestore.Client, paths: Paths, permission: str, deadline: float) -> Iterator[str]:
    """The ids of every role whose last event carried the permission, a bounded page at a time."""
    query = db.collection(paths.roles).where(filter=FieldFilter("permission_ids", "array_contains", permission))
    last: Any = None
    while True:
        page = query.select([]).order_by("__name__").limit(REFRESH_PAGE)
        if last is not None:
            page = page.start_after(last)
        found = list(page.stream(retry=NO_RETRY, timeout=remaining(deadline)))
        yield from (snapshot.id for snapshot in found)
        if len(found) < REFRESH_PAGE:
            return
        last = found[-1]


def _derive_again(attempt: Attempt, paths: Paths, role: str) -> bool:
    """One role's `permissions` derived again from its stored event and the permissions as stored now."""
    role_ref = attempt.db.collection(paths.roles).document(role)
    snapshot = attempt.read([role_ref])[role_ref.path]
    stored = (snapshot.to_dict() or {}) if snapshot.exists else {}
    carried = stored.get("clerk_permissions")
    if not isinstance(carried, list):
        return False  # gone since the query, or not a role this sync wrote
    entries = [entry for entry in carried if isinstance(entry, dict)]
    found = attempt.read(_permission_references(attempt.db, paths, [str(entry.get("id")) for entry in entries]))
    granted = granted_keys(entries, _lookup(found, paths))
    if granted == stored.get(GRANTED_FIELD):
        return False
    attempt.set(role_ref, {GRANTED_FIELD: granted}, merge=[GRANTED_FIELD])
    return True


def refresh_holders(db: firestore.Client, change: Any, delivery: Delivery, deadline: float) -> None:
    """The follow-up of a permission's new key or deletion (events.FOLLOW_UPS; `change` is the
    permission's): each role holding it derives its list again, in a transaction of its own. Raises
    FollowUpFailed (503: Svix's retry finds the event recorded and runs this again)."""
    refreshed = 0
    try:
        for role in _holders(db, delivery.paths, change.clerk_id, deadline):
            if transaction.run(db, deadline, functools.partial(_derive_again, paths=delivery.paths, role=role)):
                refreshed += 1
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError, StoreUnavailable) as error:
        delivery.notes["roles_refreshed"] = refreshed
        raise FollowUpFailed(f"role_permissions: {type(error).__name__}") from None
    delivery.notes["roles_refreshed"] = refreshed
