"""The comparison: Clerk's objects parsed as the webhook would, against what Firestore holds of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clerk_sync import events, versions
from clerk_sync.payload import MalformedEvent
from clerk_sync.reconcile import kinds
from clerk_sync.reconcile.context import Run

__all__ = ["compare", "verdict"]


def compare(run: Run, kind: str, page: list[dict[str, Any]]) -> list[tuple[str, events.Change, str]]:
    """Parse a page of Clerk objects and compare with Firestore; what differs, with its verdict."""
    tally = run.report.tallies[kind]
    changes: list[tuple[str, events.Change]] = []
    for data in page:
        try:
            key = kinds.key(kind, data)
            parsed = events.parse_event(kinds.envelope(kinds.UPSERT_TYPE[kind], data))
        except (MalformedEvent, KeyError, TypeError) as problem:
            tally.skipped[str(data.get("id"))] = str(problem) if isinstance(problem, MalformedEvent) else "malformed"
            continue
        assert not isinstance(parsed, events.IgnoredEvent)
        run.listed(kind).add(key)
        changes.append((key, parsed))
    references = [kinds.document(run.db, run.settings, kind, key) for key, _ in changes]
    stored = run.read(references) if references else {}
    needed: list[tuple[str, events.Change, str]] = []
    for (key, change), reference in zip(changes, references, strict=True):
        snapshot = stored.get(reference.path)
        found = verdict(change, snapshot.to_dict() if snapshot is not None and snapshot.exists else None)
        if found == "in_sync":
            tally.in_sync += 1
        elif run.report.dry_run:
            setattr(tally, found, getattr(tally, found) + 1)
        else:
            needed.append((key, change, found))
    return needed


def verdict(change: events.Change, stored: dict[str, Any] | None) -> str:
    """missing, outdated or in_sync (Firestore holding something newer is in sync: a webhook was faster)."""
    if stored is None or "updated_at" not in stored:
        return "missing"
    if kinds.waiting(stored):
        return "outdated"  # stored, but its address move still waits: applying it again retries the move
    updated_at: datetime = change.updated_at  # type: ignore[attr-defined]
    digest: str = change.digest  # type: ignore[attr-defined]
    if stored.get("updated_at") == updated_at and stored.get(versions.DIGEST_FIELD) == digest:
        return "in_sync"
    return "outdated" if not versions.is_older(updated_at, digest, stored) else "in_sync"
