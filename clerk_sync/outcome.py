"""What applying an event can end in, and the one error that means "try again later"."""

from __future__ import annotations

import enum

__all__ = ["FollowUpFailed", "Outcome", "StoreUnavailable"]


class Outcome(enum.StrEnum):
    """What an event did; the HTTP adapter maps these to statuses (409 for a conflict, else 200)."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"


class StoreUnavailable(Exception):
    """Firestore could not be reached, was too slow, or contention outlasted the retries (503)."""


class FollowUpFailed(StoreUnavailable):
    """Work outside Firestore (Firebase Auth) failed after the commit; the retry completes it (503)."""
