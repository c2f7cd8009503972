"""The listing from Clerk: one kind's objects, page after page, oldest first (users by cursor, the rest by offset)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from clerk_sync.reconcile.clerk_api import ClerkRefused, ClerkUnavailable
from clerk_sync.reconcile.context import Run

__all__ = ["CURSORS_KEPT", "OVERLAP", "Position", "changed_users", "kind_pages", "pages"]

# An incremental listing asks each page to begin this many users before the last page ended.
OVERLAP = 25
# A users listing keeps the ids of the last users it listed: the next page starts after the newest
# one Clerk still has (a cursor whose user was deleted meanwhile is refused).
CURSORS_KEPT = 5
# What Clerk may answer a cursor naming a user deleted since (undocumented): any of these.
CURSOR_REFUSED = frozenset({400, 404, 422})


@dataclass(frozen=True)
class Position:
    """Where a listing stands: how many objects it listed, and (users) the ids of the last few, newest last."""

    done: int = 0
    cursors: tuple[str, ...] = ()


def kind_pages(run: Run, kind: str, start: Position) -> Iterator[tuple[Position, list[dict[str, Any]]]]:
    """Each page of a kind, oldest first, with the position after it (what a checkpoint saves)."""
    if kind == "users":
        yield from _users_by_cursor(run, start)
        return
    for offset, page in pages(run, kind, start.done, "+created_at"):
        yield Position(offset + len(page)), page


def _users_by_cursor(run: Run, start: Position) -> Iterator[tuple[Position, list[dict[str, Any]]]]:
    """Users after the cursor, page by page: a user created meanwhile is listed at the end, a deleted one
    shifts nothing (unlike an offset). When every kept cursor's user is gone, the listing starts over
    once, skipping the users it listed already."""
    done, cursors, restarted = start.done, list(start.cursors), False
    while True:
        try:
            page = _after(run, cursors)
        except _CursorsGone:
            if restarted:
                raise ClerkUnavailable(
                    "GET /users: Clerk refused every cursor twice; the next run starts over"
                ) from None
            restarted, cursors = True, []
            run.progress.note("users: every kept cursor's user is gone; listing again from the first user")
            continue
        run.report.clerk_requests = run.api.requests
        cursors = [*cursors, *(str(user.get("id")) for user in page)][-CURSORS_KEPT:]
        seen = run.seen.get("users") if restarted else None
        fresh = [user for user in page if seen is None or str(user.get("id")) not in seen]
        done += len(fresh)
        if fresh:
            yield Position(done, tuple(cursors)), fresh
        if len(page) < run.page_size:
            return


class _CursorsGone(Exception):
    """Clerk refused every kept cursor."""


def _after(run: Run, cursors: list[str]) -> list[dict[str, Any]]:
    """The page after the newest kept cursor Clerk accepts; refused ones are dropped from `cursors`."""
    while True:
        cursor = cursors[-1] if cursors else None
        try:
            return run.api.users_after(cursor, run.page_size)
        except ClerkRefused as refused:
            if cursor is None or refused.status not in CURSOR_REFUSED:
                raise
            run.progress.note(f"users: Clerk refused the cursor {cursor} ({refused.status}: deleted meanwhile?)")
            cursors.pop()
            if not cursors:
                raise _CursorsGone from None


def pages(run: Run, kind: str, offset: int, order_by: str) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """Each page with its offset, until the first short page."""
    while True:
        page = run.api.listing(kind, offset, order_by, run.page_size)
        run.report.clerk_requests = run.api.requests
        if page:
            yield offset, page
        if len(page) < run.page_size:
            return
        offset += len(page)


def changed_users(run: Run, since_ms: int | None) -> Iterator[list[dict[str, Any]]]:
    """Users updated at or after `since_ms`, newest first, each user once.

    Offset pages shift while Clerk changes: a deletion moves every later user one place up, so the
    next page would begin one user too late and skip one. Each page therefore begins OVERLAP users
    early, and must contain the last user of the page before; when it does not (more deletions than
    the overlap, or that user changed meanwhile), something may have been skipped, and
    `run.held_back_ms` keeps the next incremental run from starting after it.
    """
    overlap = min(OVERLAP, run.page_size // 2)
    offset, last_id = 0, None
    seen = run.listed("users")
    while True:
        page = run.api.listing("users", offset, "-updated_at", run.page_size)
        run.report.clerk_requests = run.api.requests
        if last_id is not None and last_id not in {user.get("id") for user in page}:
            # What may be skipped lies between the last user seen and this page's first.
            first = int(page[0].get("updated_at") or 0) if page else since_ms or 0
            run.held_back_ms = first if run.held_back_ms is None else min(run.held_back_ms, first)
        fresh = [user for user in page if since_ms is None or int(user.get("updated_at") or 0) >= since_ms]
        unseen = [user for user in fresh if user.get("id") not in seen]
        if unseen:
            yield unseen
        if len(fresh) < len(page) or len(page) < run.page_size:
            return
        last_id = page[-1].get("id")
        offset += len(page) - overlap
