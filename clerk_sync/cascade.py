"""Deleting what belonged to a deleted object (an organization's members, a user's memberships).

One transaction cannot take thousands of documents, and Svix needs an answer within 15 s. So the
deletion's own transaction writes the tombstone first: from then on no transaction can add a
document the sweep is looking for, because every membership upsert reads that tombstone. The sweep
then deletes what is left in bounded batches, outside any transaction. If the deadline comes
first the request answers 503, and Svix's retry of the same message sweeps the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync.outcome import StoreUnavailable
from clerk_sync.transaction import NO_RETRY, remaining

__all__ = ["BATCH_SIZE", "Sweep", "sweep"]

# Firestore takes up to 500 writes per commit; smaller batches keep each call well inside the deadline.
BATCH_SIZE = 250
# Commits in flight while the next page is read: the round trips overlap instead of adding up.
COMMITS_IN_FLIGHT = 4


@dataclass(frozen=True)
class Sweep:
    """Documents to delete: those `query` finds whose path `ours` accepts.

    `ordered`: the query orders by document name already (a `recursive()` one, which finds a
    collection's documents and all their subcollections' in one query).
    """

    query: firestore.Query | firestore.CollectionReference
    ours: Callable[[str], bool]
    ordered: bool = False


def sweep(db: firestore.Client, sweeps: Sequence[Sweep], deadline: float) -> int:
    """Delete every document the sweeps find, batch by batch; returns how many went.

    Raises StoreUnavailable when Firestore fails or the deadline comes first (the rest waits for
    the retry; what was deleted stays deleted).
    """
    removed = 0
    try:
        for job in sweeps:
            removed += _sweep_one(db, job, deadline)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise StoreUnavailable(f"sweep: {type(error).__name__}") from error
    return removed


def _sweep_one(db: firestore.Client, job: Sweep, deadline: float) -> int:
    removed = 0
    last: Any = None
    with ThreadPoolExecutor(max_workers=COMMITS_IN_FLIGHT, thread_name_prefix="sweep") as commits:
        pending: list[Future[Any]] = []
        while True:
            query = job.query.select([])
            query = (query if job.ordered else query.order_by("__name__")).limit(BATCH_SIZE)
            if last is not None:
                query = query.start_after(last)
            found = list(query.stream(retry=NO_RETRY, timeout=remaining(deadline)))
            doomed = [snapshot.reference for snapshot in found if job.ours(snapshot.reference.path)]
            if doomed:
                batch = db.batch()
                for reference in doomed:
                    batch.delete(reference)
                pending.append(commits.submit(batch.commit, retry=None, timeout=remaining(deadline)))
                removed += len(doomed)
            if len(pending) >= COMMITS_IN_FLIGHT:
                pending.pop(0).result()  # raises what the commit raised
            if len(found) < BATCH_SIZE:
                break
            last = found[-1]
        for commit in pending:
            commit.result()
    return removed
