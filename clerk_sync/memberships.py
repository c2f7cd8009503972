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

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from clerk_sync import event_log, ids, payload, versions
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.organizations import organization_id
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = [
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "MembershipDeletion",
    "MembershipUpsert",
    "parse_deletion",
    "parse_upsert",
]

SYNCED_FIELDS = (
    "membership_id",
    "organization_id",
    "user_id",
    "role",
    "role_name",
    "permissions",
    "public_metadata",
    "identifier",
    "first_name",
    "last_name",
    "image_url",
    "created_at",
    "updated_at",
)
OWNED_FIELDS = (*SYNCED_FIELDS, "synced_at", versions.DIGEST_FIELD)


@dataclass(frozen=True)
class Membership:
    """Who a membership joins: the ids every membership event carries."""

    membership_id: str
    organization_id: str
    user_id: str

    def refs(self, db: firestore.Client, paths: Paths) -> tuple[firestore.DocumentReference, ...]:
        """The member's document, and the three tombstones that can forbid it."""
        return (
            db.collection(paths.memberships(self.organization_id)).document(self.user_id),
            db.collection(paths.membership_tombstones).document(self.membership_id),
            db.collection(paths.organization_tombstones).document(self.organization_id),
            db.collection(paths.user_tombstones).document(self.user_id),
        )


@dataclass(frozen=True)
class MembershipUpsert:
    """`organizationMembership.created` / `.updated`: the member's document, ordered by `updated_at`."""

    event_type: str
    membership: Membership
    updated_at: datetime
    document: dict[str, Any]
    digest: str

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.membership.membership_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one member of one organization take turns in an instance."""
        return f"membership/{self.membership.organization_id}/{self.membership.user_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """An upsert leaves nothing behind to delete."""
        return []

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Store the member unless the membership, its organization or its user is deleted, or it is older.

        Stored even when the organization or the user has not arrived yet: order is not guaranteed.
        """
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        member_ref, *tombstone_refs = self.membership.refs(db, paths)
        snapshots = attempt.read([event_ref, member_ref, *tombstone_refs])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE
        stored = snapshots[member_ref.path]
        outcome = Outcome.APPLIED
        if any(snapshots[ref.path].exists for ref in tombstone_refs) or versions.is_older(
            self.updated_at, self.digest, stored.to_dict() if stored.exists else None
        ):
            outcome = Outcome.STALE
        else:
            attempt.set(
                member_ref,
                {**self.document, "synced_at": firestore.SERVER_TIMESTAMP, versions.DIGEST_FIELD: self.digest},
                merge=OWNED_FIELDS,
            )
        return event_log.record(
            attempt,
            event_ref,
            message_id=delivery.message_id,
            event_type=self.event_type,
            clerk_id=self.membership.membership_id,
            outcome=outcome,
            ttl=delivery.event_ttl,
            extra={"organization_id": self.membership.organization_id, "user_id": self.membership.user_id},
        )


@dataclass(frozen=True)
class MembershipDeletion:
    """`organizationMembership.deleted`: the whole membership, but its `updated_at` cannot order it."""

    event_type: str
    membership: Membership
    deleted_at: datetime | None

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.membership.membership_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one member of one organization take turns in an instance."""
        return f"membership/{self.membership.organization_id}/{self.membership.user_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """The membership's own document is removed in the transaction."""
        return []

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Tombstone the membership id; remove the member's document only if it still holds that id."""
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        member_ref, tombstone_ref, *_ = self.membership.refs(db, paths)
        snapshots = attempt.read([event_ref, member_ref, tombstone_ref])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE
        outcome = Outcome.STALE if snapshots[tombstone_ref.path].exists else Outcome.APPLIED
        stored = snapshots[member_ref.path]
        if stored.exists and (stored.to_dict() or {}).get("membership_id") == self.membership.membership_id:
            attempt.delete(member_ref)
            outcome = Outcome.APPLIED
        if not snapshots[tombstone_ref.path].exists:
            attempt.set(
                tombstone_ref,
                {
                    "membership_id": self.membership.membership_id,
                    "organization_id": self.membership.organization_id,
                    "user_id": self.membership.user_id,
                    "deleted_at": self.deleted_at,
                    "recorded_at": firestore.SERVER_TIMESTAMP,
                },
            )
        return event_log.record(
            attempt,
            event_ref,
            message_id=delivery.message_id,
            event_type=self.event_type,
            clerk_id=self.membership.membership_id,
            outcome=outcome,
            ttl=delivery.event_ttl,
            extra={"organization_id": self.membership.organization_id, "user_id": self.membership.user_id},
        )


def _parse(envelope: dict[str, Any]) -> tuple[dict[str, Any], Membership, dict[str, Any]]:
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    membership_id = data.get("id")
    if not isinstance(membership_id, str) or not membership_id:
        raise MalformedEvent("missing data.id")
    if not ids.is_clerk_id(membership_id):
        raise MalformedEvent("data.id is not a Clerk membership id")
    organization = data.get("organization")
    if not isinstance(organization, dict):
        raise MalformedEvent("data.organization is not an object")
    user = data.get("public_user_data")
    if not isinstance(user, dict):
        raise MalformedEvent("data.public_user_data is not an object")
    user_id = user.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise MalformedEvent("missing data.public_user_data.user_id")
    if not ids.is_clerk_id(user_id):
        raise MalformedEvent("data.public_user_data.user_id is not a Clerk user id")
    membership = Membership(
        membership_id=membership_id,
        organization_id=organization_id(organization.get("id"), "data.organization.id"),
        user_id=user_id,
    )
    return data, membership, user


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> MembershipUpsert:
    """The member's document from an `organizationMembership.created` / `.updated` body."""
    data, membership, user = _parse(envelope)
    payload.check_encodable(body, data)
    updated_at = payload.required_time(data, "updated_at")
    document: dict[str, Any] = {
        "membership_id": membership.membership_id,
        "organization_id": membership.organization_id,
        "user_id": membership.user_id,
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
    payload.check_document_size(document, "membership")
    return MembershipUpsert(
        event_type=event_type,
        membership=membership,
        updated_at=updated_at,
        document=document,
        digest=versions.content_digest(document),
    )


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> MembershipDeletion:
    """`organizationMembership.deleted`: only the ids matter; the time is informational."""
    _, membership, _ = _parse(envelope)
    return MembershipDeletion(
        event_type=event_type, membership=membership, deleted_at=payload.lenient_time(envelope.get("timestamp"))
    )
