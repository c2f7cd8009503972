"""What a kind of Clerk object declares, and the two transaction bodies every kind runs on.

Every synced object is a versioned document keyed by Clerk ids: an upsert is stored unless the
event was seen (`duplicate`), the object or something it belongs to is deleted (a tombstone), or the
stored version is newer (`updated_at`, ties by digest: `stale`); a deletion tombstones the object,
removes its document and sweeps what it leaves. Those rules live here once. A kind (users,
organizations, memberships, ...) declares where its documents and tombstones live, which fields
are its own, and adds only what is its own through hooks: email claims for users, the re-join rule
for memberships, cascades for organizations. This module names no kind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from google.cloud import firestore

from clerk_sync import event_log, payload, versions
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.transaction import Attempt

__all__ = [
    "DELETED_AT_FIELD",
    "Admission",
    "Deletion",
    "Ids",
    "Kind",
    "Snapshots",
    "Upsert",
    "delete",
    "parsed_upsert",
    "parsers_by_id",
    "upsert",
    "whole_document",
]

Ids = Mapping[str, str]
Snapshots = dict[str, firestore.DocumentSnapshot[Any]]
# Where a kind whose removal is "strip" records that its object is gone (the app's fields stay).
DELETED_AT_FIELD = "clerk_deleted_at"


@dataclass(frozen=True)
class Admission:
    """What a kind's `admit` hook decided about an upsert that is neither seen, tombstoned nor older.

    `document` is what to merge-write (None: write nothing); `outcome` is APPLIED, or CONFLICT (the
    event is not recorded, so Svix retries it).
    """

    outcome: Outcome
    document: dict[str, Any] | None


def _no_paths(_paths: Paths, _ids: Ids) -> tuple[str, ...]:
    return ()


def _no_reads(_db: firestore.Client, _paths: Paths, _change: Upsert) -> list[firestore.DocumentReference]:
    return []


def _no_sweeps(_db: firestore.Client, _paths: Paths, _ids: Ids) -> list[Sweep]:
    return []


def _delete_always(_settings: Any) -> Literal["delete", "strip"]:
    return "delete"


def _no_follow_ups(_change: Upsert | Deletion, _stored: dict[str, Any] | None) -> tuple[str, ...]:
    return ()


def whole_document(change: Upsert, stored: dict[str, Any] | None) -> Upsert | None:
    """The whole document is one version: the change wins unless the stored one is newer (ties by digest)."""
    return None if versions.is_older(change.updated_at, change.digest, stored) else change


@dataclass(frozen=True)
class Kind:
    """A kind of Clerk object: where it lives, what it owns, and its own rules (the hooks)."""

    family: str  # the event types' prefix: `user` for user.created / .updated / .deleted
    synced_fields: tuple[str, ...]  # the fields parsed from Clerk (its content digest covers these)
    # The collection of its document; None: the top-level one Paths names for its family.
    collection: Callable[[Paths, Ids], str] | None = None
    # The collection of its tombstones, keyed by its own id; None: the one Paths names for its family.
    tombstones: Callable[[Paths], str] | None = None
    id_field: str = "clerk_id"  # the key of `ids` (and the document field) holding the object's own id
    id_fields: tuple[str, ...] = ("clerk_id",)  # every key of `ids`: what its tombstone and event record hold
    place: tuple[str, ...] = ("clerk_id",)  # the keys of `ids` that place its document; the last is its id
    # Paths of other tombstones that forbid an upsert (a membership's organization and user).
    guards: Callable[[Paths, Ids], tuple[str, ...]] = _no_paths
    # More documents the upsert reads in its one batched read (a user's email claim).
    reads: Callable[[firestore.Client, Paths, Upsert], list[firestore.DocumentReference]] = _no_reads
    # The kind's own say on an upsert about to be written; None: write the document as parsed.
    admit: Callable[[Attempt, Delivery, Upsert, Snapshots, dict[str, Any] | None], Admission] | None = None
    # What a deletion also does to the removed document's belongings in the transaction (a claim).
    on_removal: Callable[[Attempt, Delivery, Ids, dict[str, Any] | None], None] | None = None
    # "delete" the document, or "strip" only the owned fields (the app's stay, DELETED_AT_FIELD set).
    removal: Callable[[Any], Literal["delete", "strip"]] = _delete_always
    # What a deletion leaves elsewhere, swept in batches after its transaction.
    sweeps: Callable[[firestore.Client, Paths, Ids], list[Sweep]] = _no_sweeps
    extra_owned: tuple[str, ...] = field(default=())  # fields the sync writes beyond the synced ones
    # Which version wins over what is stored: the change to write (perhaps merged with the stored
    # document), or None when the stored one is newer (stale). A kind whose document holds parts
    # versioned on their own (a subscription's items, each by its own updated_at) merges them here.
    ordering: Callable[[Upsert, dict[str, Any] | None], Upsert | None] = whole_document
    # The document's id when it is not one of the ids (a payer's one `billing/subscription`).
    document_id: Callable[[Ids], str] | None = None
    # Work outside Firestore an applied change needs (by name, from events.FOLLOW_UPS), given what
    # was stored before. Named in the event record, so a retry that finds the event already recorded
    # (a follow-up failed after the commit: 503) completes it.
    follow_ups: Callable[[Upsert | Deletion, dict[str, Any] | None], tuple[str, ...]] = _no_follow_ups

    @property
    def upsert_type(self) -> str:
        """The event type that carries the whole object (reconcile and check repair with it)."""
        return f"{self.family}.updated"

    @property
    def deletion_type(self) -> str:
        """The event type of its deletion."""
        return f"{self.family}.deleted"

    @property
    def owned_fields(self) -> tuple[str, ...]:
        """Every field the sync writes; any other field of the document is the app's."""
        return (*self.synced_fields, *self.extra_owned, "synced_at", versions.DIGEST_FIELD)

    def key(self, ids: Ids) -> str:
        """The object's place as one string (`user_1`, `org_1/user_1`): reconcile and lock keys."""
        return "/".join(ids[name] for name in self.place)

    def document(self, db: firestore.Client, paths: Paths, ids: Ids) -> firestore.DocumentReference:
        """The object's document."""
        document_id = ids[self.place[-1]] if self.document_id is None else self.document_id(ids)
        collection = paths.top_level(self.family) if self.collection is None else self.collection(paths, ids)
        return db.collection(collection).document(document_id)

    def tombstone_collection(self, paths: Paths) -> str:
        """Where its tombstones live."""
        return paths.tombstones(self.family) if self.tombstones is None else self.tombstones(paths)

    def tombstone(self, db: firestore.Client, paths: Paths, clerk_id: str) -> firestore.DocumentReference:
        """The object's tombstone."""
        return db.collection(self.tombstone_collection(paths)).document(clerk_id)

    def ids_of(self, document: Mapping[str, Any]) -> dict[str, str] | None:
        """The ids a stored document names (None when it names no synced object: only the app's fields)."""
        found = {name: document.get(name) for name in self.id_fields}
        if not all(isinstance(value, str) and value for value in found.values()):
            return None
        return {name: str(value) for name, value in found.items()}

    def holds(self, stored: Mapping[str, Any] | None, clerk_id: str) -> bool:
        """Whether a stored document is this object's synced copy (a member's may hold a newer membership)."""
        return stored is not None and stored.get(self.id_field) == clerk_id


@dataclass(frozen=True)
class _Change:
    """What every change of a kind carries: which object, and the event type that said so."""

    kind: Kind
    event_type: str
    ids: Ids

    @property
    def clerk_id(self) -> str:
        """The object's own id (logged)."""
        return self.ids[self.kind.id_field]

    @property
    def lock_key(self) -> str:
        """Deliveries for one document take turns in an instance."""
        return f"{self.kind.family}/{self.kind.key(self.ids)}"


@dataclass(frozen=True)
class Upsert(_Change):
    """A created or updated object: its document as parsed, ordered by `updated_at` then digest."""

    updated_at: datetime
    document: dict[str, Any]
    digest: str

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """The shared upsert body."""
        return upsert(self, attempt, delivery)

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """An upsert leaves nothing behind to delete."""
        return []


@dataclass(frozen=True)
class Deletion(_Change):
    """A deleted object: only its ids matter; `deleted_at` (the envelope's time) is informational."""

    deleted_at: datetime | None

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """The shared deletion body."""
        return delete(self, attempt, delivery)

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """What the object leaves elsewhere (every delivery sweeps: a retry finishes a cut-off sweep)."""
        return self.kind.sweeps(db, paths, self.ids)


def _record(
    attempt: Attempt,
    delivery: Delivery,
    change: Upsert | Deletion,
    event_ref: firestore.DocumentReference,
    outcome: Outcome,
) -> Outcome:
    kind = change.kind
    extra: dict[str, Any] = {name: value for name, value in change.ids.items() if name != kind.id_field}
    if delivery.follow_ups:
        extra["follow_ups"] = list(delivery.follow_ups)
    return event_log.record(
        attempt,
        event_ref,
        delivery,
        event_type=change.event_type,
        clerk_id=change.clerk_id,
        outcome=outcome,
        extra=extra or None,
    )


def _seen(snapshots: Snapshots, event_refs: list[firestore.DocumentReference], delivery: Delivery) -> bool:
    """Whether the event is recorded already; its follow-ups then run again (the first try may have failed)."""
    found = [snapshots[ref.path] for ref in event_refs if snapshots[ref.path].exists]
    if not found:
        return False
    named = (found[0].to_dict() or {}).get("follow_ups")
    if isinstance(named, list):
        delivery.follow_ups = tuple(str(name) for name in named)
    return True


def upsert(change: Upsert, attempt: Attempt, delivery: Delivery) -> Outcome:
    """Store the object unless the event was seen, it (or what it belongs to) is deleted, or it is older.

    One batched read (event record, document, tombstones, the kind's own reads), then the writes:
    two round trips with the commit.
    """
    kind, db, paths = change.kind, attempt.db, delivery.paths
    delivery.follow_ups = ()  # a re-run after contention decides again
    event_refs = event_log.references(db, paths.events, delivery.message_id, legacy=delivery.legacy_event_ids)
    event_ref = event_refs[0]
    document_ref = kind.document(db, paths, change.ids)
    tombstone_refs = [
        kind.tombstone(db, paths, change.clerk_id),
        *(db.document(path) for path in kind.guards(paths, change.ids)),
    ]
    snapshots = attempt.read([*event_refs, document_ref, *tombstone_refs, *kind.reads(db, paths, change)])
    if _seen(snapshots, event_refs, delivery):
        return Outcome.DUPLICATE
    snapshot = snapshots[document_ref.path]
    stored = (snapshot.to_dict() or {}) if snapshot.exists else None
    ordered = None if any(snapshots[ref.path].exists for ref in tombstone_refs) else kind.ordering(change, stored)
    if ordered is None:
        return _record(attempt, delivery, change, event_ref, Outcome.STALE)
    change = ordered
    admission = (
        kind.admit(attempt, delivery, change, snapshots, stored)
        if kind.admit is not None
        else Admission(Outcome.APPLIED, change.document)
    )
    if admission.document is not None:
        delivery.follow_ups = kind.follow_ups(change, stored)  # a parked move's ban is followed up too
        # An extra field the admission leaves out is not wanted any more: deleted with the write.
        written = {**dict.fromkeys(kind.extra_owned, firestore.DELETE_FIELD), **admission.document}
        attempt.set(
            document_ref,
            {**written, "synced_at": firestore.SERVER_TIMESTAMP, versions.DIGEST_FIELD: change.digest},
            merge=kind.owned_fields,
        )
    if admission.outcome is Outcome.CONFLICT:
        return Outcome.CONFLICT  # not recorded: Svix's retry tries again
    return _record(attempt, delivery, change, event_ref, admission.outcome)


def delete(change: Deletion, attempt: Attempt, delivery: Delivery) -> Outcome:
    """Tombstone the object and remove its synced copy; what it leaves elsewhere goes in the sweeps.

    The document is removed when it is this object's synced copy, even under its own tombstone (a
    copy written there by hand, or by a bug, is a deleted object's data: Clerk never reuses ids);
    a document keyed by the object's own id that holds only the app's fields goes too, on the
    first deletion, per the kind's removal rule.
    """
    kind, db, paths = change.kind, attempt.db, delivery.paths
    delivery.follow_ups = ()  # a re-run after contention decides again
    event_refs = event_log.references(db, paths.events, delivery.message_id, legacy=delivery.legacy_event_ids)
    event_ref = event_refs[0]
    document_ref = kind.document(db, paths, change.ids)
    tombstone_ref = kind.tombstone(db, paths, change.clerk_id)
    snapshots = attempt.read([*event_refs, document_ref, tombstone_ref])
    if _seen(snapshots, event_refs, delivery):
        return Outcome.DUPLICATE
    tombstoned = snapshots[tombstone_ref.path].exists
    snapshot = snapshots[document_ref.path]
    stored = (snapshot.to_dict() or {}) if snapshot.exists else None
    keyed_by_own_id = kind.place[-1] == kind.id_field
    unnamed = stored is not None and kind.id_field not in stored  # only the app's fields
    remove = kind.holds(stored, change.clerk_id) or (unnamed and keyed_by_own_id and not tombstoned)
    if remove:
        if kind.on_removal is not None:
            kind.on_removal(attempt, delivery, change.ids, stored)
        _remove(attempt, document_ref, kind, delivery, change.deleted_at)
    if not tombstoned:
        attempt.set(
            tombstone_ref,
            {
                **change.ids,
                "deleted_at": change.deleted_at,
                "deleted_by": delivery.message_id,
                "recorded_at": firestore.SERVER_TIMESTAMP,
            },
        )
    outcome = Outcome.APPLIED if remove or not tombstoned else Outcome.STALE
    if outcome is Outcome.APPLIED:
        delivery.follow_ups = kind.follow_ups(change, stored)
    return _record(attempt, delivery, change, event_ref, outcome)


def _remove(
    attempt: Attempt,
    reference: firestore.DocumentReference,
    kind: Kind,
    delivery: Delivery,
    deleted_at: datetime | None,
) -> None:
    """`delete`: the whole document goes; `strip`: only what the sync wrote (subcollections always stay)."""
    if kind.removal(delivery.settings) == "delete":
        attempt.delete(reference)
        return
    removal: dict[str, Any] = dict.fromkeys(kind.owned_fields, firestore.DELETE_FIELD)
    removal[DELETED_AT_FIELD] = deleted_at or firestore.SERVER_TIMESTAMP
    attempt.set(reference, removal, merge=[*kind.owned_fields, DELETED_AT_FIELD])


def parsed_upsert(kind: Kind, event_type: str, ids: Ids, document: dict[str, Any], updated_at: datetime) -> Upsert:
    """An upsert with the digest of its synced fields, which breaks `updated_at` ties."""
    return Upsert(
        kind=kind,
        event_type=event_type,
        ids=ids,
        updated_at=updated_at,
        document=document,
        digest=versions.content_digest(document),
    )


UpsertParser = Callable[[str, dict[str, Any], bytes], Upsert]
DeletionParser = Callable[[str, dict[str, Any], bytes], Deletion]


def parsers_by_id(
    kind: Kind, document_from: Callable[[dict[str, Any]], dict[str, Any]], id_of: Callable[[object, str], str]
) -> tuple[UpsertParser, DeletionParser]:
    """The event parsers of an object keyed by its own id (`clerk_id`), whose `data` is its whole document."""

    def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
        data = payload.data_of(envelope, body)
        document = document_from(data)
        payload.check_document_size(document, kind.family, len(body))
        ids = {"clerk_id": document["clerk_id"]}
        return parsed_upsert(kind, event_type, ids, document, document["updated_at"])

    def parse_deletion(event_type: str, envelope: dict[str, Any], _body: bytes) -> Deletion:
        # Its time is informational and never fails the event.
        clerk_id = id_of(payload.data_of(envelope).get("id"), "data.id")
        return Deletion(kind, event_type, {"clerk_id": clerk_id}, payload.lenient_time(envelope.get("timestamp")))

    return parse_upsert, parse_deletion
