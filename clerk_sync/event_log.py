"""The idempotency record: a second delivery of the same svix id finds it and changes nothing.

Written in the same transaction as the event's effect, so an event is either applied and recorded
or neither. It takes plain fields, so it knows no kind of Clerk object.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from google.cloud import firestore

from clerk_sync import ids
from clerk_sync.outcome import Outcome
from clerk_sync.transaction import Attempt

__all__ = ["record", "reference"]


def reference(db: firestore.Client, collection: str, message_id: str) -> firestore.DocumentReference:
    """Where the record of `message_id` lives (svix ids may hold `/`: encoded)."""
    return db.collection(collection).document(ids.document_id(message_id))


def record(
    attempt: Attempt,
    ref: firestore.DocumentReference,
    *,
    message_id: str,
    event_type: str,
    clerk_id: str,
    outcome: Outcome,
    ttl: timedelta,
    extra: dict[str, Any] | None = None,
) -> Outcome:
    """Record the event's outcome with the rest of the transaction's writes; returns the outcome."""
    attempt.set(
        ref,
        {
            "svix_id": message_id,
            "type": event_type,
            "clerk_id": clerk_id,
            "outcome": str(outcome),
            "received_at": firestore.SERVER_TIMESTAMP,
            "expires_at": datetime.now(UTC) + ttl,
            **(extra or {}),
        },
    )
    return outcome
