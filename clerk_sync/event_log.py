"""The idempotency record: a second delivery of the same svix id finds it and changes nothing.

Written in the same transaction as the event's effect, so an event is either applied and recorded
or neither. It takes plain fields, so it knows no kind of Clerk object.

Records are keyed by a hash of the svix id, not the id itself: svix ids (`msg_` + KSUID) begin with
a timestamp, and Firestore keeps a collection written with rising ids on one tablet, capped at about
500 writes/s. Records written by earlier versions under the svix id as it is (`ids.document_id`)
stay readable as duplicates until they could have expired: for `EVENT_LOG_TTL_DAYS` after this
version first ran (`sync_state/event_log`, read once per instance), each event also reads its
legacy record in the same batched read.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import ids
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome, StoreUnavailable
from clerk_sync.paths import Paths
from clerk_sync.transaction import NO_RETRY, Attempt, remaining

__all__ = [
    "STATE_DOCUMENT",
    "legacy_ids_until",
    "record",
    "record_id",
    "references",
    "remember",
    "reset",
    "state_reference",
]

STATE_DOCUMENT = "event_log"
RECORD_ID_HEX = 40  # 160 bits of SHA-256: no two svix ids meet
_legacy_until: dict[str, datetime] = {}
_lock = threading.Lock()


def record_id(message_id: str) -> str:
    """The record's document id: spread evenly over the key space, whatever order svix ids come in."""
    return hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()[:RECORD_ID_HEX]


def references(
    db: firestore.Client, collection: str, message_id: str, *, legacy: bool = False
) -> list[firestore.DocumentReference]:
    """Where the record of `message_id` lives, then (with `legacy`) where an earlier version kept it."""
    found = [db.collection(collection).document(record_id(message_id))]
    if legacy:
        found.append(db.collection(collection).document(ids.document_id(message_id)))
    return found


def state_reference(db: firestore.Client, paths: Paths) -> firestore.DocumentReference:
    """The document that records since when records are keyed by hash (read once per instance)."""
    return db.document(f"{paths.state}/{STATE_DOCUMENT}")


def remember(paths: Paths, snapshot: firestore.DocumentSnapshot[Any], ttl: timedelta) -> None:
    """Take the state from a read made for another purpose too (one round trip for both, on a cold instance)."""
    since = (snapshot.to_dict() or {}).get("hashed_since") if snapshot.exists else None
    if isinstance(since, datetime):
        with _lock:
            _legacy_until.setdefault(f"{paths.state}/{STATE_DOCUMENT}", since + ttl)


def legacy_ids_until(db: firestore.Client, paths: Paths, ttl: timedelta, deadline: float) -> datetime:
    """Until when records under the old ids may still exist; read (or started) once per instance.

    A database with no event records at all when this version first runs has none under the old
    ids: its window is already closed. Raises StoreUnavailable.
    """
    state = f"{paths.state}/{STATE_DOCUMENT}"
    cached = _legacy_until.get(state)
    if cached is not None:
        return cached
    with _lock:
        if state not in _legacy_until:
            _legacy_until[state] = _read_or_start(db, paths, state, ttl, deadline) + ttl
    return _legacy_until[state]


def _read_or_start(db: firestore.Client, paths: Paths, state: str, ttl: timedelta, deadline: float) -> datetime:
    reference = state_reference(db, paths)
    try:
        for _ in range(2):  # a create that loses to another instance's reads what that one wrote
            snapshot = reference.get(retry=None, timeout=remaining(deadline))
            since = (snapshot.to_dict() or {}).get("hashed_since") if snapshot.exists else None
            if isinstance(since, datetime):
                return since
            now = datetime.now(UTC)
            empty = not list(db.collection(paths.events).limit(1).stream(retry=NO_RETRY, timeout=remaining(deadline)))
            since = now - ttl if empty else now
            try:
                reference.create({"hashed_since": since}, retry=None, timeout=remaining(deadline))
            except api_exceptions.AlreadyExists:
                continue
            return since
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise StoreUnavailable(f"event log state: {type(error).__name__}") from error
    raise StoreUnavailable("event log state: created and gone again")


def reset() -> None:
    """Forget the cached window (tests switch databases)."""
    with _lock:
        _legacy_until.clear()


def record(
    attempt: Attempt,
    ref: firestore.DocumentReference,
    delivery: Delivery,
    *,
    event_type: str,
    clerk_id: str,
    outcome: Outcome,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    """Record the event's outcome with the rest of the transaction's writes; returns the outcome."""
    attempt.set(
        ref,
        {
            "svix_id": delivery.message_id,
            "type": event_type,
            "clerk_id": clerk_id,
            "outcome": str(outcome),
            "received_at": firestore.SERVER_TIMESTAMP,
            "expires_at": datetime.now(UTC) + delivery.event_ttl,
            **(extra or {}),
        },
    )
    return outcome
