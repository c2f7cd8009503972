"""What one run carries from step to step (clients, report, budget) and its bounded Firestore calls."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import events
from clerk_sync.config import Settings
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome, StoreUnavailable
from clerk_sync.reconcile.clerk_api import PAGE_SIZE, ClerkApi, backoff
from clerk_sync.reconcile.ramp import Ramp
from clerk_sync.reconcile.report import Progress, ReconcileStopped, Report
from clerk_sync.reconcile.seen import Seen

__all__ = ["READ_TIMEOUT_SECONDS", "STORE_ATTEMPTS", "Run"]

STORE_ATTEMPTS = 3
READ_TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


@dataclass
class Run:
    """One run's clients, report and budget, handed to every step."""

    db: firestore.Client
    settings: Settings
    api: ClerkApi
    report: Report
    progress: Progress
    pool: ThreadPoolExecutor
    run_id: str
    budget_deadline: float | None
    state_ref: firestore.DocumentReference
    page_size: int = PAGE_SIZE
    read_timeout: float = READ_TIMEOUT_SECONDS  # per Firestore call outside the transactions
    lease_token: str | None = None  # this invocation's hold on the lease (None: a dry run takes none)
    allow_mass_deletion: bool = False
    listing_began_ms: int | None = None  # when the users listing began (the next incremental run starts there)
    held_back_ms: int | None = None  # an incremental listing could not prove it skipped nothing after this
    seen: dict[str, Seen] = field(default_factory=dict)  # kind -> keys listed in Clerk during this run
    pending: dict[str, dict[str, tuple[events.Change, str]]] = field(default_factory=dict)  # conflicts to retry
    ramp: Ramp | None = None  # what the repairs may write a second (None: unlimited)

    def read(self, references: list[firestore.DocumentReference]) -> dict[str, firestore.DocumentSnapshot[Any]]:
        """These documents in one call, keyed by path (counted in the report)."""
        self.report.firestore_reads += len(references)
        return self.with_store_retries(
            "reading Firestore",
            lambda: {
                snapshot.reference.path: snapshot
                for snapshot in self.db.get_all(references, retry=None, timeout=self.read_timeout)
            },
        )

    def with_store_retries(self, what: str, call: Callable[[], T]) -> T:
        """Firestore trouble gets a few backed-off retries, then stops the run."""
        for attempt in range(1, STORE_ATTEMPTS + 1):
            try:
                return call()
            except (StoreUnavailable, api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
                if attempt == STORE_ATTEMPTS:
                    raise ReconcileStopped(f"Firestore failed {what}: {type(error).__name__}") from None
                time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def listed(self, kind: str) -> Seen:
        """The keys of `kind` this run listed so far (made on first use: a Seen costs 4,096 arrays)."""
        seen = self.seen.get(kind)
        if seen is None:
            seen = self.seen[kind] = Seen()
        return seen

    def get(self, reference: firestore.DocumentReference) -> firestore.DocumentSnapshot[Any]:
        """One document (counted in the report)."""
        self.report.firestore_reads += 1
        return self.with_store_retries(
            f"reading {reference.path}", lambda: reference.get(retry=None, timeout=self.read_timeout)
        )

    def apply(self, change: events.Change, message_id: str) -> Outcome:
        """One repair through the webhook's own transaction (and sweep, for a deletion), once the ramp allows it."""
        delivery = Delivery(message_id=message_id, settings=self.settings)
        if self.ramp is not None:
            self.ramp.take()
        return self.with_store_retries(
            f"writing {change.clerk_id}", lambda: events.apply_event(self.db, change, delivery)
        )

    def out_of_time(self) -> bool:
        """Whether the run's time budget is spent."""
        return self.budget_deadline is not None and time.monotonic() > self.budget_deadline
