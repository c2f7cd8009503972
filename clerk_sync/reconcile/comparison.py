"""The comparison: Clerk's objects parsed as the webhook would, against what Firestore holds of them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from clerk_sync import events, memberships, roles, versions
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
    documents = [
        snapshot.to_dict() if (snapshot := stored.get(reference.path)) is not None and snapshot.exists else None
        for reference in references
    ]
    named = _roles_named(run, documents) if kind == "memberships" else set()
    needed: list[tuple[str, events.Change, str]] = []
    for (key, change), document in zip(changes, documents, strict=True):
        found = verdict(change, document)
        if found == "in_sync" and _role_id_due(document, named):
            found = "outdated"  # stored before its role was: applied again, it names the role's id
        if found == "in_sync":
            tally.in_sync += 1
        elif run.report.dry_run:
            setattr(tally, found, getattr(tally, found) + 1)
        else:
            needed.append((key, change, found))
    return needed


def _role_id_due(stored: dict[str, Any] | None, named: set[str]) -> bool:
    """Whether a stored membership lacks the id of a role the sync now holds under its key."""
    return stored is not None and memberships.ROLE_ID_FIELD not in stored and stored.get("role") in named


def _roles_named(run: Run, documents: list[dict[str, Any] | None]) -> set[str]:
    """The role keys of memberships stored without a role id that name a stored role now (one read of the few
    keys a page holds)."""
    keys = {
        str(document.get("role"))
        for document in documents
        if document is not None
        and memberships.ROLE_ID_FIELD not in document
        and roles.is_role_key(document.get("role"))
    }
    if not keys:
        return set()
    references = [roles.key_reference(run.db, run.settings.paths, key) for key in sorted(keys)]
    found = run.read(references)
    return {reference.id for reference in references if found[reference.path].exists}


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
