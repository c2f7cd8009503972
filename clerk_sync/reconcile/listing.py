"""The listing from Clerk: one kind's objects, page after page, in the order asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from clerk_sync.reconcile.context import Run

__all__ = ["pages"]


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
