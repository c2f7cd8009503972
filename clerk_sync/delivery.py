"""One event on its way into Firestore: its svix id, the deployment's settings, and what to log."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from clerk_sync.config import Settings
from clerk_sync.paths import Paths

__all__ = ["Delivery"]


@dataclass
class Delivery:
    """What a transaction body needs besides its event; `notes` become fields of the request's log line."""

    message_id: str
    settings: Settings
    notes: dict[str, str | int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # Work outside Firestore the committed change asks for (events.FOLLOW_UPS names each).
    follow_ups: tuple[str, ...] = ()
    # Whether records of earlier versions, keyed by the svix id as it is, may still exist (event_log).
    legacy_event_ids: bool = False

    @property
    def paths(self) -> Paths:
        """The deployment's collection paths."""
        return self.settings.paths

    @property
    def event_ttl(self) -> timedelta:
        """How long the event record is kept."""
        return self.settings.event_ttl

    def warn(self, message: str, **notes: str | int | None) -> None:
        """Something an operator should look at, though the event went through (ids only)."""
        self.warnings.append(message)
        self.notes.update(notes)
