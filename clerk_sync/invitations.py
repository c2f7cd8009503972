"""Invitation events: `organizationInvitation.created` / `.accepted` / `.revoked`, parsed, then their bodies.

Documents (names are part of the data contract):
  {ORGANIZATIONS_COLLECTION}/{org_id}/invitations/{invitation_id}  a pending invitation, readable by
                                                                    members who may manage members
  invitation_tombstones/{invitation_id}                            invitations accepted or revoked

Only pending invitations are kept: accepting or revoking one ends it for good (a new invitation of
the same address gets a new id), so both are its deletion, tombstoned like any other, and a late
`created` never brings it back. Clerk sends nothing when an invitation expires: `expires_at` says
when (an app lists `where("expires_at", ">", now)`). The invitation's `url` carries its ticket and
is never stored, nor is `private_metadata`.
"""

from __future__ import annotations

from typing import Any

from clerk_sync import documents, kind, payload, roles
from clerk_sync.kind import Deletion, Upsert

__all__ = ["ENDING_TYPES", "KIND", "OWNED_FIELDS", "SYNCED_FIELDS", "parse_end", "parse_upsert"]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.INVITATION.names_set_by("clerk")
ENDING_TYPES = ("organizationInvitation.accepted", "organizationInvitation.revoked")

KIND = kind.Kind(
    family="organizationInvitation",
    id_field="invitation_id",
    id_fields=("invitation_id", "organization_id"),
    place=("organization_id", "invitation_id"),
    collection=lambda paths, ids: paths.invitations(ids["organization_id"]),
    synced_fields=SYNCED_FIELDS,
    # Never stored under a deleted organization (its deletion sweeps the invitations it had).
    guards=lambda paths, ids: (f"{paths.organization_tombstones}/{ids['organization_id']}",),
)
OWNED_FIELDS = KIND.owned_fields


def _ids(envelope: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    data = payload.data_of(envelope)
    return data, {
        "invitation_id": payload.clerk_id(data.get("id"), "data.id", "invitation"),
        "organization_id": payload.clerk_id(data.get("organization_id"), "data.organization_id", "organization"),
    }


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The pending invitation's document from an `organizationInvitation.created` body."""
    data, invitation = _ids(envelope)
    payload.check_encodable(body, data)
    updated_at = payload.required_time(data, "updated_at")
    document: dict[str, Any] = {
        **invitation,
        "email_address": payload.optional_str(data, "email_address"),
        **roles.role_fields(data),
        "status": payload.optional_str(data, "status"),
        "public_metadata": payload.metadata(data, "public_metadata"),
        "inviter_id": payload.optional_str(data, "inviter_id"),
        "expires_at": payload.optional_time(data, "expires_at"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
    }
    payload.check_document_size(document, "invitation")
    return kind.parsed_upsert(KIND, event_type, invitation, document, updated_at)


def parse_end(event_type: str, envelope: dict[str, Any], body: bytes) -> Deletion:
    """`organizationInvitation.accepted` / `.revoked`: the invitation is over (only its ids matter)."""
    data, invitation = _ids(envelope)
    when = data.get("updated_at")
    ended_at = payload.lenient_time(when if when is not None else envelope.get("timestamp"))
    return Deletion(KIND, event_type, invitation, ended_at)
