"""Organization events: `organization.created` / `.updated` / `.deleted`, parsed, then their transaction bodies.

Documents (names are part of the data contract):
  {ORGANIZATIONS_COLLECTION}/{org_id}                        the synced organization
  {ORGANIZATIONS_COLLECTION}/{org_id}/memberships/{user_id}  its members (see memberships.py)
  {ORGANIZATIONS_COLLECTION}/{org_id}/invitations/{inv_id}   its pending invitations (see invitations.py)
  organization_tombstones/{org_id}                           deleted organizations

An organization's deletion also sweeps its billing ({ORGANIZATIONS_COLLECTION}/{org_id}/billing, billing.py).
"""

from __future__ import annotations

from typing import Any

from google.cloud import firestore

from clerk_sync import billing, documents, kind, payload
from clerk_sync.cascade import Sweep
from clerk_sync.kind import Ids
from clerk_sync.paths import Paths

__all__ = [
    "KIND",
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "organization_id",
    "parse_deletion",
    "parse_upsert",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.ORGANIZATION.names_set_by("clerk")


def organization_id(value: object, where: str) -> str:
    """A Clerk organization id (`org_…`), usable as a document id as it is."""
    return payload.clerk_id(value, where, "organization")


def _belongings(db: firestore.Client, paths: Paths, organization_ids: Ids) -> list[Sweep]:
    """Its billing, its pending invitations, and every membership of the organization, however many (in
    batches, after the tombstone).

    The members go last: the delivery that finishes a cut-off sweep is then the one that removed the
    last of them (`applied`, not `duplicate`).
    """
    organization_id = organization_ids["clerk_id"]
    invited = Sweep(query=db.collection(paths.invitations(organization_id)), ours=lambda _path: True)
    members = Sweep(query=db.collection(paths.memberships(organization_id)), ours=lambda _path: True)
    return [*billing.payer_sweeps(db, paths, "organization", organization_id), invited, members]


# An organization's own rule is its cascade: its members, its invitations and its billing go with it.
KIND = kind.Kind(family="organization", synced_fields=SYNCED_FIELDS, sweeps=_belongings)
OWNED_FIELDS = KIND.owned_fields


def document_from(data: dict[str, Any], where: str = "data") -> dict[str, Any]:
    """The organization's synced fields from a Clerk Organization object (never `private_metadata`)."""
    created_by = payload.optional_str(data, "created_by", where)
    return {
        "clerk_id": organization_id(data.get("id"), f"{where}.id"),
        "name": payload.optional_str(data, "name", where),
        "slug": payload.optional_str(data, "slug", where),
        "image_url": payload.optional_str(data, "image_url", where),
        "public_metadata": payload.metadata(data, "public_metadata", where),
        "max_allowed_memberships": payload.optional_int(data, "max_allowed_memberships", where),
        "created_by": created_by or None,
        "created_at": payload.optional_time(data, "created_at", where),
        "updated_at": payload.required_time(data, "updated_at", where),
    }


# organization.created / .updated / .deleted (`{id, slug, deleted: true}`)
parse_upsert, parse_deletion = kind.parsers_by_id(KIND, document_from, organization_id)
