"""Membership events: `organizationMembership.created` / `.updated` / `.deleted`, parsed, then their bodies.

Documents (names are part of the data contract):
  {ORGANIZATIONS_COLLECTION}/{org_id}/memberships/{user_id}  one member of one organization
  membership_tombstones/{membership_id}                      deleted memberships

A member's document names its role by key, as Clerk sends it, and by id (`role_id`, from the key's
document when the role is stored): the rules read what the role grants from the role's document,
never from `permissions` (Clerk's list when the membership last changed, which a role's change
leaves behind), unless the role is not known to the sync yet.

Each membership writes only its own documents (never the organization's), so a bulk import of
thousands of members into one organization has no hot document to fight over. Upserts are
ordered by the membership's `updated_at`; a delete is not (Clerk's delete can carry an older
`updated_at` than the last update): it tombstones the membership id instead, and removes the
document only while it still holds that id, so a late delete of an old membership never removes
the member who left and joined again under a new id.
"""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from clerk_sync import documents, kind, payload, roles
from clerk_sync.delivery import Delivery
from clerk_sync.kind import Admission, Deletion, Snapshots, Upsert
from clerk_sync.organizations import organization_id
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = [
    "KIND",
    "OWNED_FIELDS",
    "ROLE_ID_FIELD",
    "SYNCED_FIELDS",
    "parse_deletion",
    "parse_upsert",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.MEMBERSHIP.names_set_by("clerk")

# The id of the role the member's key names, when the role is stored (the rules read it from there).
ROLE_ID_FIELD = "role_id"


def _role_key_read(db: firestore.Client, paths: Paths, change: Upsert) -> list[firestore.DocumentReference]:
    """The document naming the role of the member's key, read in the membership's one batched read."""
    key = change.document["role"]
    return [roles.key_reference(db, paths, key)] if roles.is_role_key(key) else []


def _with_role_id(
    attempt: Attempt, delivery: Delivery, change: Upsert, snapshots: Snapshots, _stored: dict[str, Any] | None
) -> Admission:
    """The member's role by id too, so a later move of the key to another role leaves the member its own."""
    read = _role_key_read(attempt.db, delivery.paths, change)
    held = snapshots[read[0].path] if read else None
    named = (held.to_dict() or {}).get("role_id") if held is not None and held.exists else None
    if not isinstance(named, str):
        return Admission(Outcome.APPLIED, change.document)  # role_id goes: the rules look the key up
    return Admission(Outcome.APPLIED, {**change.document, ROLE_ID_FIELD: named})


# A member's document is keyed by user id, its tombstone by membership id: a late delete of an old
# membership only removes the document while it still holds that id (`Kind.holds`).
KIND = kind.Kind(
    family="organizationMembership",
    id_field="membership_id",
    id_fields=("membership_id", "organization_id", "user_id"),
    place=("organization_id", "user_id"),
    collection=lambda paths, ids: paths.memberships(ids["organization_id"]),
    synced_fields=SYNCED_FIELDS,
    # Stored even when the organization or the user has not arrived yet (order is not guaranteed),
    # but never once either is deleted.
    guards=lambda paths, ids: (
        f"{paths.organization_tombstones}/{ids['organization_id']}",
        f"{paths.user_tombstones}/{ids['user_id']}",
    ),
    reads=_role_key_read,
    admit=_with_role_id,
    extra_owned=(ROLE_ID_FIELD,),
)
OWNED_FIELDS = KIND.owned_fields


def _parse(envelope: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    data = payload.data_of(envelope)
    membership_id = payload.clerk_id(data.get("id"), "data.id", "membership")
    organization = data.get("organization")
    if not isinstance(organization, dict):
        raise MalformedEvent("data.organization is not an object")
    user = data.get("public_user_data")
    if not isinstance(user, dict):
        raise MalformedEvent("data.public_user_data is not an object")
    user_id = payload.clerk_id(user.get("user_id"), "data.public_user_data.user_id", "user")
    membership = {
        "membership_id": membership_id,
        "organization_id": organization_id(organization.get("id"), "data.organization.id"),
        "user_id": user_id,
    }
    return data, membership, user


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The member's document from an `organizationMembership.created` / `.updated` body."""
    data, membership, user = _parse(envelope)
    payload.check_encodable(body, data)
    updated_at = payload.required_time(data, "updated_at")
    document: dict[str, Any] = {
        **membership,
        **roles.role_fields(data),
        "permissions": payload.string_list(data, "permissions"),
        "public_metadata": payload.metadata(data, "public_metadata"),
        "identifier": payload.optional_str(user, "identifier", "data.public_user_data"),
        "first_name": payload.optional_str(user, "first_name", "data.public_user_data"),
        "last_name": payload.optional_str(user, "last_name", "data.public_user_data"),
        "image_url": payload.optional_str(user, "image_url", "data.public_user_data"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
    }
    payload.check_document_size(document, "membership", len(body))
    return kind.parsed_upsert(KIND, event_type, membership, document, updated_at)


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> Deletion:
    """`organizationMembership.deleted`: only the ids matter (its `updated_at` cannot order it)."""
    _, membership, _ = _parse(envelope)
    return Deletion(KIND, event_type, membership, payload.lenient_time(envelope.get("timestamp")))
