"""The listing from Clerk: one kind's objects, page after page, in the order asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clerk_sync.reconcile.context import Run

__all__ = ["OVERLAP", "changed_users", "pages"]

# An incremental listing asks each page to begin this many users before the last page ended.
OVERLAP = 25


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
    seen = run.seen.setdefault("users", set())
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
