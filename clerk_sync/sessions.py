"""Session events: a Clerk session that ends is recorded, so the Firebase session exchanged from it reads
nothing from then on; the others (`session.created`, `session.pending`) are acknowledged, never stored.

Documents (names are part of the data contract):
  ended_sessions/{session_id}    a Clerk session that ended (ended, removed or revoked), beside the
                                 users collection; the rules deny any Firebase ID token whose
                                 `clerk_sid` claim names one (docs/reading-from-your-app.md)

Not a versioned document (kind.py): there is no document, only the record that the session ended,
and an ended session never starts again, so there is no version to compare: the first event that ends
it is recorded, later ones (a `session.removed` after `session.ended`, a retry) change nothing. The
records are kept: a Firebase refresh token never expires on its own, so a Firebase session exchanged
from the ended session could ask for a new ID token at any time. Nothing here calls Firebase Auth:
revoking the user's refresh tokens would end the user's other sessions too (other devices), and
the rules' denial is immediate while a revoked ID token stays valid up to an hour.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.cloud import firestore

from clerk_sync import event_log, ids, payload
from clerk_sync.cascade import Sweep
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import Attempt

__all__ = ["ENDING_TYPES", "SessionEnd", "parse_end"]

ENDING_TYPES = ("session.ended", "session.removed", "session.revoked")
# Clerk's session statuses (the webhook spec); an unknown one is stored as it comes.
MAX_STATUS_CHARS = 64


@dataclass(frozen=True)
class SessionEnd:
    """`session.ended` / `.removed` / `.revoked`: this session (of this user) ends for good."""

    event_type: str
    session_id: str
    user_id: str
    status: str | None
    ended_at: datetime | None

    @property
    def clerk_id(self) -> str:
        """The id this event is about (logged)."""
        return self.session_id

    @property
    def lock_key(self) -> str:
        """Deliveries for one session take turns in an instance."""
        return f"session/{self.session_id}"

    def sweeps(self, db: firestore.Client, paths: Paths) -> list[Sweep]:
        """An ended session leaves nothing to delete."""
        return []

    def transact(self, attempt: Attempt, delivery: Delivery) -> Outcome:
        """Record the end unless the event was seen or the session had already ended."""
        db, paths = attempt.db, delivery.paths
        delivery.follow_ups = ()
        event_refs = event_log.references(db, paths.events, delivery.message_id, legacy=delivery.legacy_event_ids)
        event_ref = event_refs[0]
        ended_ref = db.collection(paths.ended_sessions).document(self.session_id)
        snapshots = attempt.read([*event_refs, ended_ref])
        if any(snapshots[ref.path].exists for ref in event_refs):
            return Outcome.DUPLICATE
        outcome = Outcome.STALE if snapshots[ended_ref.path].exists else Outcome.APPLIED
        if outcome is Outcome.APPLIED:
            attempt.set(
                ended_ref,
                {
                    "session_id": self.session_id,
                    "user_id": self.user_id,
                    "status": self.status,
                    "ended_by": self.event_type,
                    "ended_at": self.ended_at,
                    "recorded_by": delivery.message_id,
                    "recorded_at": firestore.SERVER_TIMESTAMP,
                },
            )
        extra = {"user_id": self.user_id}
        return event_log.record(
            attempt,
            event_ref,
            delivery,
            event_type=self.event_type,
            clerk_id=self.session_id,
            outcome=outcome,
            extra=extra,
        )


def parse_end(event_type: str, envelope: dict[str, Any], body: bytes) -> SessionEnd:
    """The ended session's id and user; its status and time are informational and never fail the event."""
    data = payload.data_of(envelope)
    session_id = payload.clerk_id(data.get("id"), "data.id", "session")
    if not ids.is_clerk_id(session_id, "sess_"):
        raise MalformedEvent("data.id is not a Clerk session id")
    user_id = payload.clerk_id(data.get("user_id"), "data.user_id", "user")
    if not ids.is_clerk_id(user_id, "user_"):
        raise MalformedEvent("data.user_id is not a Clerk user id")
    status = data.get("status")
    when = data.get("updated_at")
    return SessionEnd(
        event_type=event_type,
        session_id=session_id,
        user_id=user_id,
        status=status[:MAX_STATUS_CHARS] if isinstance(status, str) else None,
        ended_at=payload.lenient_time(when if when is not None else envelope.get("timestamp")),
    )
