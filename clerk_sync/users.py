"""User events: `user.created` / `user.updated` / `user.deleted`, parsed, then their transaction bodies.

Documents (names are part of the data contract):
  {USERS_COLLECTION}/{user_id}     the synced user, readable by that user's client
  email_claims/{email key}         who owns a normalised primary email (uniqueness)
  user_tombstones/{user_id}        deleted users, so late upserts never resurrect them
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from clerk_sync import event_log, ids, payload, versions
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = [
    "OWNED_FIELDS",
    "SYNCED_FIELDS",
    "UserDeletion",
    "UserUpsert",
    "normalise_email",
    "parse_deletion",
    "parse_upsert",
]

SYNCED_FIELDS = (
    "clerk_id",
    "email",
    "email_verified",
    "email_addresses",
    "phone_number",
    "username",
    "first_name",
    "last_name",
    "image_url",
    "external_id",
    "public_metadata",
    "unsafe_metadata",
    "banned",
    "locked",
    "created_at",
    "updated_at",
    "last_sign_in_at",
)
# Every field the function writes; any other field of a user document belongs to the app.
OWNED_FIELDS = (*SYNCED_FIELDS, "synced_at", versions.DIGEST_FIELD)
DELETED_AT_FIELD = "clerk_deleted_at"


def normalise_email(address: str) -> str | None:
    """The key that makes `Alice@Example.com ` and `alice@example.com` the same address."""
    key = address.strip().lower()
    return key or None


def _email_key(document: dict[str, Any] | None) -> str | None:
    email = (document or {}).get("email")
    return normalise_email(email) if isinstance(email, str) else None


def _claim(db: firestore.Client, paths: Paths, email_key: str) -> firestore.DocumentReference:
    return db.collection(paths.claims).document(ids.document_id(email_key))


@dataclass(frozen=True)
class UserUpsert:
    """`user.created` / `user.updated`: the user's synced fields, ordered by `updated_at`."""

    event_type: str
    user_id: str
    updated_at: datetime
    email_key: str | None
    document: dict[str, Any]
    digest: str

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.user_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one user take turns in an instance."""
        return f"user/{self.user_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """An upsert leaves nothing behind to delete."""
        return []

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Store the user unless the event was seen, is older, or its email still belongs to another user."""
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        user_ref = db.collection(paths.users).document(self.user_id)
        tombstone_ref = db.collection(paths.user_tombstones).document(self.user_id)
        claim_ref = _claim(db, paths, self.email_key) if self.email_key else None
        snapshots = attempt.read([event_ref, user_ref, tombstone_ref, *([claim_ref] if claim_ref else [])])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE

        def record(outcome: Outcome) -> Outcome:
            return event_log.record(
                attempt,
                event_ref,
                message_id=delivery.message_id,
                event_type=self.event_type,
                clerk_id=self.user_id,
                outcome=outcome,
                ttl=delivery.event_ttl,
            )

        stored = snapshots[user_ref.path].to_dict() if snapshots[user_ref.path].exists else None
        if snapshots[tombstone_ref.path].exists or versions.is_older(self.updated_at, self.digest, stored):
            return record(Outcome.STALE)
        if claim_ref is not None and self._claim_blocked(attempt, delivery, snapshots[claim_ref.path], claim_ref):
            return Outcome.CONFLICT
        old_key = _email_key(stored)
        if old_key is not None and old_key != self.email_key:
            # The stored document held this address, so its claim is ours to release.
            attempt.delete(_claim(db, paths, old_key))
        attempt.set(
            user_ref,
            {**self.document, "synced_at": firestore.SERVER_TIMESTAMP, versions.DIGEST_FIELD: self.digest},
            merge=OWNED_FIELDS,
        )
        return record(Outcome.APPLIED)

    def _claim_blocked(
        self,
        attempt: Attempt,
        delivery: Delivery,
        claim: firestore.DocumentSnapshot[Any],
        claim_ref: firestore.DocumentReference,
    ) -> bool:
        """Whether another user still holds this email; otherwise the claim is (made) ours."""
        owner = (claim.to_dict() or {}).get("clerk_id") if claim.exists else None
        if claim.exists and owner == self.user_id:
            return False
        if claim.exists and not ids.is_clerk_id(owner):
            # Hand-edited or damaged: no user can be shown to hold the address, so it is free.
            delivery.warn("email claim without a readable owner taken over", claim_owner=None)
        elif claim.exists:
            # Rare path, so one more read: the claim only blocks while its owner still holds it.
            owner_ref = attempt.db.collection(delivery.paths.users).document(owner)
            owner_snapshot = attempt.read([owner_ref])[owner_ref.path]
            if _email_key(owner_snapshot.to_dict() if owner_snapshot.exists else None) == self.email_key:
                delivery.notes["claim_owner"] = owner
                return True
            delivery.notes["claim_taken_from"] = owner
        attempt.set(
            claim_ref, {"email": self.email_key, "clerk_id": self.user_id, "claimed_at": firestore.SERVER_TIMESTAMP}
        )
        return False


@dataclass(frozen=True)
class UserDeletion:
    """`user.deleted`: only the id survives in Clerk's payload."""

    event_type: str
    user_id: str
    deleted_at: datetime | None

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.user_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one user take turns in an instance."""
        return f"user/{self.user_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """The user's memberships in every organization (Clerk does not send a delete for each)."""
        query = db.collection_group(MEMBERSHIPS).where(filter=FieldFilter("user_id", "==", self.user_id))
        return [Sweep(query=query, ours=paths.is_membership)]

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Tombstone the user, release their email and remove their synced data."""
        db, paths = attempt.db, delivery.paths
        event_ref = event_log.reference(db, paths.events, delivery.message_id)
        user_ref = db.collection(paths.users).document(self.user_id)
        tombstone_ref = db.collection(paths.user_tombstones).document(self.user_id)
        snapshots = attempt.read([event_ref, user_ref, tombstone_ref])
        if snapshots[event_ref.path].exists:
            return Outcome.DUPLICATE
        outcome = Outcome.STALE if snapshots[tombstone_ref.path].exists else Outcome.APPLIED
        if outcome is Outcome.APPLIED:
            stored = snapshots[user_ref.path]
            old_key = _email_key(stored.to_dict() if stored.exists else None)
            if old_key is not None:
                attempt.delete(_claim(db, paths, old_key))
            if stored.exists:
                self._remove(attempt, user_ref, delivery.settings.on_user_deleted)
            attempt.set(
                tombstone_ref,
                {"clerk_id": self.user_id, "deleted_at": self.deleted_at, "recorded_at": firestore.SERVER_TIMESTAMP},
            )
        return event_log.record(
            attempt,
            event_ref,
            message_id=delivery.message_id,
            event_type=self.event_type,
            clerk_id=self.user_id,
            outcome=outcome,
            ttl=delivery.event_ttl,
        )

    def _remove(self, attempt: Attempt, user_ref: firestore.DocumentReference, mode: str) -> None:
        """`delete`: the whole document goes; `keep-app-fields`: only what the function wrote."""
        if mode == "delete":
            attempt.delete(user_ref)
            return
        removal: dict[str, Any] = dict.fromkeys(OWNED_FIELDS, firestore.DELETE_FIELD)
        removal[DELETED_AT_FIELD] = self.deleted_at or firestore.SERVER_TIMESTAMP
        attempt.set(user_ref, removal, merge=[*OWNED_FIELDS, DELETED_AT_FIELD])


def _user_data(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    user_id = data.get("id")
    if not isinstance(user_id, str) or not user_id:
        raise MalformedEvent("missing data.id")
    if not ids.is_clerk_id(user_id):
        raise MalformedEvent("data.id is not a Clerk user id")
    return data


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> UserUpsert:
    """The whole user document from a `user.created` / `user.updated` body."""
    data = _user_data(envelope.get("data"))
    payload.check_encodable(body, data)
    updated_at = payload.required_time(data, "updated_at")
    addresses = _entries(data, "email_addresses", "email_address")
    phones = _entries(data, "phone_numbers", "phone_number")
    primary_email = _primary(addresses, data, "primary_email_address_id")
    primary_phone = _primary(phones, data, "primary_phone_number_id")
    email = primary_email["email_address"] if primary_email else None
    verification = primary_email.get("verification") if primary_email else None
    document: dict[str, Any] = {
        "clerk_id": data["id"],
        "email": email,
        "email_verified": isinstance(verification, dict) and verification.get("status") == "verified",
        "email_addresses": [entry["email_address"] for entry in addresses],
        "phone_number": primary_phone["phone_number"] if primary_phone else None,
        "username": payload.optional_str(data, "username"),
        "first_name": payload.optional_str(data, "first_name"),
        "last_name": payload.optional_str(data, "last_name"),
        "image_url": payload.optional_str(data, "image_url"),
        "external_id": payload.optional_str(data, "external_id"),
        "public_metadata": payload.metadata(data, "public_metadata"),
        "unsafe_metadata": payload.metadata(data, "unsafe_metadata"),
        "banned": payload.flag(data, "banned"),
        "locked": payload.flag(data, "locked"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
        "last_sign_in_at": payload.optional_time(data, "last_sign_in_at"),
    }
    # The email is kept twice (email and email_addresses), so a body under 1 MiB can exceed it.
    payload.check_document_size(document, "user")
    return UserUpsert(
        event_type=event_type,
        user_id=data["id"],
        updated_at=updated_at,
        email_key=normalise_email(email) if email else None,
        document=document,
        digest=versions.content_digest(document),
    )


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> UserDeletion:
    """`user.deleted` carries only the id; its time is informational and never fails the event."""
    data = _user_data(envelope.get("data"))
    return UserDeletion(
        event_type=event_type, user_id=data["id"], deleted_at=payload.lenient_time(envelope.get("timestamp"))
    )


def _entries(data: dict[str, Any], field: str, value_field: str) -> list[dict[str, Any]]:
    entries = data.get(field)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MalformedEvent(f"data.{field} is not a list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get(value_field), str):
            raise MalformedEvent(f"data.{field} has an entry without {value_field}")
    return entries


def _primary(entries: list[dict[str, Any]], data: dict[str, Any], id_field: str) -> dict[str, Any] | None:
    """The entry Clerk marks primary by id; `entries[0]` is not necessarily it."""
    primary_id = data.get(id_field)
    if primary_id is None:
        return None
    if not isinstance(primary_id, str):
        raise MalformedEvent(f"data.{id_field} is not a string")
    return next((entry for entry in entries if entry.get("id") == primary_id), None)
