"""Membership events: `organizationMembership.created` / `.updated` / `.deleted`, parsed, then their bodies.

Documents (names are part of the data contract):
  {ORGANIZATIONS_COLLECTION}/{org_id}/memberships/{user_id}  one member of one organization
  membership_tombstones/{membership_id}                      deleted memberships

Each membership writes only its own documents (never the organization's), so a bulk import of
thousands of members into one organization has no hot document to fight over. Upserts are
ordered by the membership's `updated_at`; a delete is not (Clerk's delete can carry an older
`updated_at` than the last update): it tombstones the membership id instead, and removes the
document only while it still holds that id, so a late delete of an old membership never removes
the member who left and joined again under a new id.
"""

from __future__ import annotations

from typing import Any

from clerk_sync import documents, kind, payload
from clerk_sync.kind import Deletion, Upsert
from clerk_sync.organizations import organization_id
from clerk_sync.payload import MalformedEvent

__all__ = [
    "KIND",
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "parse_deletion",
    "parse_upsert",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.MEMBERSHIP.names_set_by("clerk")

# A member's document is keyed by user id, its tombstone by membership id: a late delete of an old
# membership only removes the document while it still holds that id (`Kind.holds`).
KIND = kind.Kind(
    family="organizationMembership",
    id_field="membership_id",
    id_fields=("membership_id", "organization_id", "user_id"),
    place=("organization_id", "user_id"),
    collection=lambda paths, ids: paths.memberships(ids["organization_id"]),
    tombstones=lambda paths: paths.membership_tombstones,
    synced_fields=SYNCED_FIELDS,
    # Stored even when the organization or the user has not arrived yet (order is not guaranteed),
    # but never once either is deleted.
    guards=lambda paths, ids: (
        f"{paths.organization_tombstones}/{ids['organization_id']}",
        f"{paths.user_tombstones}/{ids['user_id']}",
    ),
)
OWNED_FIELDS = KIND.owned_fields


def _parse(envelope: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
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
        "role": payload.optional_str(data, "role"),
        "role_name": payload.optional_str(data, "role_name"),
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
