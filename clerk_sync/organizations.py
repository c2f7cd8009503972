"""Organization events: `organization.created` / `.updated` / `.deleted`, parsed, then their transaction bodies.

Documents (names are part of the data contract):
  {ORGANIZATIONS_COLLECTION}/{org_id}                        the synced organization
  {ORGANIZATIONS_COLLECTION}/{org_id}/memberships/{user_id}  its members (see memberships.py)
  organization_tombstones/{org_id}                           deleted organizations
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from clerk_sync import event_log, ids, payload, versions
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = [
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "OrganizationDeletion",
    "OrganizationUpsert",
    "organization_id",
    "parse_deletion",
    "parse_upsert",
]

SYNCED_FIELDS = (
    "clerk_id",
    "name",
    "slug",
    "image_url",
    "public_metadata",
    "max_allowed_memberships",
    "created_by",
    "created_at",
    "updated_at",
)
OWNED_FIELDS = (*SYNCED_FIELDS, "synced_at", versions.DIGEST_FIELD)


def organization_id(value: object, where: str) -> str:
    """A Clerk organization id (`org_…`), usable as a document id as it is."""
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"missing {where}")
    if not ids.is_clerk_id(value):
        raise MalformedEvent(f"{where} is not a Clerk organization id")
    return value


@dataclass(frozen=True)
class OrganizationUpsert:
    """`organization.created` / `.updated`: the organization's synced fields, ordered by `updated_at`."""

    event_type: str
    organization_id: str
    updated_at: datetime
    document: dict[str, Any]
    digest: str

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.organization_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one organization take turns in an instance."""
        return f"organization/{self.organization_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """An upsert leaves nothing behind to delete."""
        return []

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Store the organization unless the event was seen, is older, or the organization is deleted."""
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        organization_ref = db.collection(paths.organizations).document(self.organization_id)
        tombstone_ref = db.collection(paths.organization_tombstones).document(self.organization_id)
        snapshots = attempt.read([event_ref, organization_ref, tombstone_ref])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE
        stored = snapshots[organization_ref.path]
        outcome = Outcome.APPLIED
        if snapshots[tombstone_ref.path].exists or versions.is_older(
            self.updated_at, self.digest, stored.to_dict() if stored.exists else None
        ):
            outcome = Outcome.STALE
        else:
            attempt.set(
                organization_ref,
                {**self.document, "synced_at": firestore.SERVER_TIMESTAMP, versions.DIGEST_FIELD: self.digest},
                merge=OWNED_FIELDS,
            )
        return event_log.record(
            attempt,
            event_ref,
            message_id=delivery.message_id,
            event_type=self.event_type,
            clerk_id=self.organization_id,
            outcome=outcome,
            ttl=delivery.event_ttl,
        )


@dataclass(frozen=True)
class OrganizationDeletion:
    """`organization.deleted`: `{id, slug, deleted: true}`, no `updated_at`; a tombstone beats everything."""

    event_type: str
    organization_id: str
    deleted_at: datetime | None

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.organization_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one organization take turns in an instance."""
        return f"organization/{self.organization_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """Every membership of the organization, however many (in batches, after the tombstone)."""
        return [Sweep(query=db.collection(paths.memberships(self.organization_id)), ours=lambda _path: True)]

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Tombstone the organization and delete its document; its members go in the sweep."""
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        organization_ref = db.collection(paths.organizations).document(self.organization_id)
        tombstone_ref = db.collection(paths.organization_tombstones).document(self.organization_id)
        snapshots = attempt.read([event_ref, organization_ref, tombstone_ref])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE
        outcome = Outcome.STALE if snapshots[tombstone_ref.path].exists else Outcome.APPLIED
        if outcome is Outcome.APPLIED:
            if snapshots[organization_ref.path].exists:
                attempt.delete(organization_ref)
            attempt.set(
                tombstone_ref,
                {
                    "clerk_id": self.organization_id,
                    "deleted_at": self.deleted_at,
                    "recorded_at": firestore.SERVER_TIMESTAMP,
                },
            )
        return event_log.record(
            attempt,
            event_ref,
            message_id=delivery.message_id,
            event_type=self.event_type,
            clerk_id=self.organization_id,
            outcome=outcome,
            ttl=delivery.event_ttl,
        )


def _data(envelope: dict[str, Any]) -> dict[str, Any]:
    data = envelope.get("data")
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    return data


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


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> OrganizationUpsert:
    """The organization document from an `organization.created` / `.updated` body."""
    data = _data(envelope)
    payload.check_encodable(body, data)
    document = document_from(data)
    payload.check_document_size(document, "organization")
    return OrganizationUpsert(
        event_type=event_type,
        organization_id=document["clerk_id"],
        updated_at=document["updated_at"],
        document=document,
        digest=versions.content_digest(document),
    )


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> OrganizationDeletion:
    """`organization.deleted`; its time is informational and never fails the event."""
    data = _data(envelope)
    return OrganizationDeletion(
        event_type=event_type,
        organization_id=organization_id(data.get("id"), "data.id"),
        deleted_at=payload.lenient_time(envelope.get("timestamp")),
    )
