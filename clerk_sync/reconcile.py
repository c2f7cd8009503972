"""Reconcile: Firestore made equal to Clerk again after deliveries were lost, deletions included.

Svix gives up on a message after about 28 hours, and an endpoint that is down, unmounted or holds
the wrong secret receives nothing. This reads users, organizations and memberships from Clerk's
Backend API, compares them with Firestore, and repairs every difference through the webhook's own
transactions (`events.apply_event`): missing or older in Firestore -> the upsert the webhook would
have applied; in Firestore but gone from Clerk -> the deletion it would have applied (tombstone,
claim released, cascades). An id is deleted only when Clerk confirms it is gone (`GET` by id answers
404), never because a listing missed it. Webhooks arriving meanwhile stay correct: the transactions
order everything, whoever writes first.

A run is `full` (every object, deletions found) or `incremental` (users changed since the last run,
newest first). Progress is checkpointed in Firestore after every page, so a run cut off by its time
budget resumes where it stopped; a lease in the same document keeps two runs from overlapping.
"""

from __future__ import annotations

import contextlib
import enum
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import events, transaction, users, versions
from clerk_sync.clerk_api import PAGE_SIZE, ClerkApi, ClerkUnavailable, backoff, retry_after_seconds
from clerk_sync.config import Settings
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome, StoreUnavailable
from clerk_sync.paths import MEMBERSHIPS
from clerk_sync.payload import EPOCH, MalformedEvent

__all__ = [
    "KINDS",
    "ClerkApi",
    "Mode",
    "Progress",
    "ReconcileBusy",
    "ReconcileStopped",
    "Report",
    "retry_after_seconds",
    "run",
]

KINDS = ("users", "organizations", "memberships")
STORE_ATTEMPTS = 3
READ_TIMEOUT_SECONDS = 30.0
LEASE_SECONDS = 300.0
STATE_DOCUMENT = "reconcile"
# Clerk's clock and ours may differ; an incremental run looks this far before the last one began.
INCREMENTAL_MARGIN = timedelta(minutes=10)

T = TypeVar("T")


class Mode(enum.StrEnum):
    """How much a run looks at."""

    FULL = "full"
    INCREMENTAL = "incremental"


class ReconcileStopped(Exception):
    """Clerk or Firestore kept failing, or refused us; the checkpoint says where to resume."""


class ReconcileBusy(Exception):
    """Another run holds the lease (it renews it after every page)."""


class Progress(Protocol):
    """Where a run reports how far it got (a terminal bar, or nothing)."""

    def advance(self, kind: str, done: int, total: int | None) -> None: ...

    def note(self, text: str) -> None: ...


class _Silent:
    def advance(self, kind: str, done: int, total: int | None) -> None:
        """Nobody watches a scheduled run."""

    def note(self, text: str) -> None:
        """Nobody watches a scheduled run."""


@dataclass
class Tally:
    """One kind's counts, and the ids an operator may need to look at (ids only, never emails)."""

    in_sync: int = 0
    missing: int = 0
    outdated: int = 0
    extra: int = 0
    conflicts: dict[str, str | None] = field(default_factory=dict)  # id -> who holds its email
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts and ids."""
        return {
            "in_sync": self.in_sync,
            "missing": self.missing,
            "outdated": self.outdated,
            "extra": self.extra,
            "conflicts": [{"id": key, "held_by": value} for key, value in sorted(self.conflicts.items())],
            "skipped": [{"id": key, "reason": value} for key, value in sorted(self.skipped.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        """A tally saved in a checkpoint."""
        return cls(
            in_sync=int(data.get("in_sync", 0)),
            missing=int(data.get("missing", 0)),
            outdated=int(data.get("outdated", 0)),
            extra=int(data.get("extra", 0)),
            conflicts={item["id"]: item.get("held_by") for item in data.get("conflicts", [])},
            skipped={item["id"]: str(item.get("reason")) for item in data.get("skipped", [])},
        )


@dataclass
class Report:
    """What a run found and did."""

    mode: Mode
    dry_run: bool
    deletions: bool
    tallies: dict[str, Tally] = field(default_factory=lambda: {kind: Tally() for kind in KINDS})
    clerk_requests: int = 0
    firestore_reads: int = 0
    elapsed_seconds: float = 0.0
    resumed: bool = False
    partial: bool = False
    stopped: str | None = None

    @property
    def drift(self) -> int:
        """Objects found missing, outdated or extra in Firestore."""
        return sum(tally.missing + tally.outdated + tally.extra for tally in self.tallies.values())

    @property
    def unresolved(self) -> int:
        """Conflicts and skipped objects left for a person."""
        return sum(len(tally.conflicts) + len(tally.skipped) for tally in self.tallies.values())

    @property
    def outcome(self) -> str:
        """in_sync, repaired, drift (a dry run found some), conflicts, partial or stopped."""
        if self.stopped:
            return "stopped"
        if self.partial:
            return "partial"
        if self.unresolved:
            return "conflicts"
        if self.drift:
            return "drift" if self.dry_run else "repaired"
        return "in_sync"

    @property
    def exit_code(self) -> int:
        """0 when Firestore matches Clerk at the end; 3 when something remains; 1 when stopped."""
        return {"in_sync": 0, "repaired": 0, "drift": 3, "conflicts": 3, "partial": 1, "stopped": 1}[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable summary (`--json`, the scheduled function's answer)."""
        return {
            "mode": str(self.mode),
            "dry_run": self.dry_run,
            "deletions": self.deletions,
            "outcome": self.outcome,
            "drift": self.drift,
            "kinds": {kind: tally.as_dict() for kind, tally in self.tallies.items()},
            "clerk_requests": self.clerk_requests,
            "firestore_reads": self.firestore_reads,
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "resumed": self.resumed,
            "partial": self.partial,
            "stopped": self.stopped,
        }


# --- what each kind looks like ------------------------------------------------------------------------------------

UPSERT_TYPE = {
    "users": "user.updated",
    "organizations": "organization.updated",
    "memberships": "organizationMembership.updated",
}
DELETE_TYPE = {
    "users": "user.deleted",
    "organizations": "organization.deleted",
    "memberships": "organizationMembership.deleted",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _envelope(event_type: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"data": data, "object": "event", "type": event_type, "timestamp": _now_ms()}).encode()


def _key(kind: str, data: dict[str, Any]) -> str:
    """The id reconcile compares by: the object's id, or organization/user for a membership."""
    if kind == "memberships":
        return f"{data['organization']['id']}/{data['public_user_data']['user_id']}"
    return str(data["id"])


def _stored_key(kind: str, stored: dict[str, Any]) -> str:
    if kind == "memberships":
        return f"{stored['organization_id']}/{stored['user_id']}"
    return str(stored["clerk_id"])


def _deletion(kind: str, stored: dict[str, Any]) -> bytes:
    """The deletion the webhook would have carried, built from what Firestore holds."""
    if kind == "users":
        return _envelope(DELETE_TYPE[kind], {"id": stored["clerk_id"], "deleted": True, "object": "user"})
    if kind == "organizations":
        return _envelope(DELETE_TYPE[kind], {"id": stored["clerk_id"], "deleted": True, "object": "organization"})
    data = {
        "id": stored["membership_id"],
        "object": "organization_membership",
        "organization": {"id": stored["organization_id"]},
        "public_user_data": {"user_id": stored["user_id"]},
    }
    return _envelope(DELETE_TYPE[kind], data)


def _document(db: firestore.Client, settings: Settings, kind: str, key: str) -> firestore.DocumentReference:
    paths = settings.paths
    if kind == "users":
        return db.collection(paths.users).document(key)
    if kind == "organizations":
        return db.collection(paths.organizations).document(key)
    organization_id, user_id = key.split("/", 1)
    return db.collection(paths.memberships(organization_id)).document(user_id)


def _tombstone(
    db: firestore.Client, settings: Settings, kind: str, change: events.Change
) -> firestore.DocumentReference:
    paths = settings.paths
    if kind == "users":
        return db.collection(paths.user_tombstones).document(change.clerk_id)
    if kind == "organizations":
        return db.collection(paths.organization_tombstones).document(change.clerk_id)
    return db.collection(paths.membership_tombstones).document(change.clerk_id)


def _ms(moment: object) -> int | None:
    return (moment - EPOCH) // timedelta(milliseconds=1) if isinstance(moment, datetime) else None


# --- the run --------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
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
    seen: dict[str, set[str]] = field(default_factory=dict)  # kind -> keys listed in Clerk during this run
    pending: dict[str, dict[str, tuple[events.Change, str]]] = field(default_factory=dict)  # conflicts to retry

    # -- Firestore helpers --

    def read(self, references: list[firestore.DocumentReference]) -> dict[str, firestore.DocumentSnapshot[Any]]:
        self.report.firestore_reads += len(references)
        return self.with_store_retries(
            "reading Firestore",
            lambda: {
                snapshot.reference.path: snapshot
                for snapshot in self.db.get_all(references, retry=None, timeout=READ_TIMEOUT_SECONDS)
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

    def apply(self, change: events.Change, message_id: str) -> Outcome:
        """One repair through the webhook's own transaction (and sweep, for a deletion)."""
        delivery = Delivery(message_id=message_id, settings=self.settings)
        return self.with_store_retries(
            f"writing {change.clerk_id}", lambda: events.apply_event(self.db, change, delivery)
        )

    def out_of_time(self) -> bool:
        return self.budget_deadline is not None and time.monotonic() > self.budget_deadline

    # -- upserts --

    def compare_and_repair(self, kind: str, page: list[dict[str, Any]]) -> None:
        """Parse a page of Clerk objects, compare with Firestore, apply what differs."""
        tally = self.report.tallies[kind]
        changes: list[tuple[str, events.Change]] = []
        for data in page:
            try:
                key = _key(kind, data)
                parsed = events.parse_event(_envelope(UPSERT_TYPE[kind], data))
            except (MalformedEvent, KeyError, TypeError) as problem:
                tally.skipped[str(data.get("id"))] = (
                    str(problem) if isinstance(problem, MalformedEvent) else "malformed"
                )
                continue
            assert not isinstance(parsed, events.IgnoredEvent)
            self.seen.setdefault(kind, set()).add(key)
            changes.append((key, parsed))
        references = [_document(self.db, self.settings, kind, key) for key, _ in changes]
        stored = self.read(references) if references else {}
        needed: list[tuple[str, events.Change, str]] = []
        for (key, change), reference in zip(changes, references, strict=True):
            snapshot = stored.get(reference.path)
            verdict = self.verdict(change, snapshot.to_dict() if snapshot is not None and snapshot.exists else None)
            if verdict == "in_sync":
                tally.in_sync += 1
            elif self.report.dry_run:
                setattr(tally, verdict, getattr(tally, verdict) + 1)
            else:
                needed.append((key, change, verdict))
        self.repair(kind, needed)

    @staticmethod
    def verdict(change: events.Change, stored: dict[str, Any] | None) -> str:
        """missing, outdated or in_sync (Firestore holding something newer is in sync: a webhook was faster)."""
        if stored is None or "updated_at" not in stored:
            return "missing"
        updated_at: datetime = change.updated_at  # type: ignore[attr-defined]
        digest: str = change.digest  # type: ignore[attr-defined]
        if stored.get("updated_at") == updated_at and stored.get(versions.DIGEST_FIELD) == digest:
            return "in_sync"
        return "outdated" if not versions.is_older(updated_at, digest, stored) else "in_sync"

    def repair(self, kind: str, needed: list[tuple[str, events.Change, str]]) -> None:
        """Apply each change; count what it repaired, keep conflicts for one more try at the end."""
        tally = self.report.tallies[kind]

        def one(item: tuple[str, events.Change, str]) -> tuple[str, events.Change, str, Outcome]:
            key, change, verdict = item
            updated_ms = _ms(change.updated_at)  # type: ignore[attr-defined]
            return key, change, verdict, self.apply(change, f"reconcile_{self.run_id}_{key}_{updated_ms}")

        for key, change, verdict, outcome in self.pool.map(one, needed):
            if outcome is Outcome.APPLIED:
                setattr(tally, verdict, getattr(tally, verdict) + 1)
                tally.conflicts.pop(key, None)
            elif outcome is Outcome.CONFLICT:
                tally.conflicts[key] = self.claim_holder(change)
                self.pending.setdefault(kind, {})[key] = (change, verdict)
            elif outcome is Outcome.STALE:
                tombstone = _tombstone(self.db, self.settings, kind, change).get(timeout=READ_TIMEOUT_SECONDS)
                self.report.firestore_reads += 1
                if tombstone.exists:
                    tally.skipped[key] = "deleted in Firestore (tombstone) but alive in Clerk"
                else:
                    tally.in_sync += 1  # a newer webhook got there first
            else:  # this run applied exactly this version already (a resumed page)
                tally.in_sync += 1

    def claim_holder(self, change: events.Change) -> str | None:
        document = getattr(change, "document", None)
        email_key = users.email_key(document) if isinstance(document, dict) else None
        if not email_key:
            return None
        from clerk_sync import ids  # noqa: PLC0415 (only on this rare path)

        claim = self.db.collection(self.settings.paths.claims).document(ids.document_id(email_key))
        snapshot = claim.get(timeout=READ_TIMEOUT_SECONDS)
        owner = snapshot.get("clerk_id") if snapshot.exists else None
        return owner if isinstance(owner, str) else None

    def settle_conflicts(self, kind: str) -> None:
        """An address may move from A to B with B listed first: once A is written, B's retry succeeds."""
        pending = self.pending.pop(kind, {})
        for key in pending:
            self.report.tallies[kind].conflicts.pop(key, None)
        self.repair(kind, [(key, change, verdict) for key, (change, verdict) in pending.items()])
        self.pending.pop(kind, None)  # what conflicts still is reported, not retried again

    # -- deletions --

    def find_extras(self, kind: str) -> None:
        """Firestore objects Clerk no longer lists: deleted once Clerk confirms it (GET by id -> 404)."""
        tally = self.report.tallies[kind]
        listed = self.seen.get(kind)
        if listed is None:
            listed = {_key(kind, data) for page in self.pages(kind, 0, "+created_at") for data in page[1]}
        for stored in self.stored_objects(kind):
            key = _stored_key(kind, stored)
            if key in listed:
                continue
            current = self.api.fetch(kind, stored)
            if current is not None:  # listed late or moved: compare it like any listed object
                self.compare_and_repair(kind, [current])
                continue
            tally.extra += 1
            if self.report.dry_run:
                continue
            deletion = events.parse_event(_deletion(kind, stored))
            assert not isinstance(deletion, events.IgnoredEvent)
            self.apply(deletion, f"reconcile_{self.run_id}_deleted_{key}")

    def stored_objects(self, kind: str) -> Iterator[dict[str, Any]]:
        """What Firestore holds of this kind (synced documents only: an app's own stay out of it)."""
        paths = self.settings.paths
        if kind == "memberships":
            query: Any = self.db.collection_group(MEMBERSHIPS).select(["membership_id", "organization_id", "user_id"])
        else:
            collection = paths.users if kind == "users" else paths.organizations
            query = self.db.collection(collection).select(["clerk_id", "updated_at"])
        for snapshot in query.stream(retry=transaction.NO_RETRY, timeout=READ_TIMEOUT_SECONDS * 10):
            self.report.firestore_reads += 1
            data = snapshot.to_dict() or {}
            if kind == "memberships":
                if paths.is_membership(snapshot.reference.path) and isinstance(data.get("membership_id"), str):
                    yield data
            elif isinstance(data.get("clerk_id"), str) and "updated_at" in data:
                yield data

    # -- paging and checkpoints --

    def pages(self, kind: str, offset: int, order_by: str) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        while True:
            page = self.api.listing(kind, offset, order_by, self.page_size)
            self.report.clerk_requests = self.api.requests
            if page:
                yield offset, page
            if len(page) < self.page_size:
                return
            offset += len(page)

    def checkpoint(self, phase: int, offset: int) -> None:
        """Where a cut-off run resumes, and the lease renewed (plain write: the lease keeps others out)."""
        if self.report.dry_run:
            return
        progress = {
            "run_id": self.run_id,
            "phase": phase,
            "offset": offset,
            "tallies": {kind: tally.as_dict() for kind, tally in self.report.tallies.items()},
            "saved_at": firestore.SERVER_TIMESTAMP,
        }
        lease = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
        self.with_store_retries(
            "saving the checkpoint",
            lambda: self.state_ref.set(
                {str(self.report.mode): progress, "lease_until": lease, "lease_owner": self.run_id},
                merge=True,
                timeout=READ_TIMEOUT_SECONDS,
            ),
        )


def _take_lease(
    db: firestore.Client, state_ref: firestore.DocumentReference, mode: Mode, *, restart: bool, deadline: float
) -> tuple[dict[str, Any], str]:
    """The state document and this run's id (a cut-off run's, to resume it), with the lease taken.

    In a transaction, so two runs starting together cannot both hold it; ReconcileBusy otherwise.
    """

    def body(attempt: transaction.Attempt) -> tuple[dict[str, Any], str]:
        snapshot = attempt.read([state_ref])[state_ref.path]
        state: dict[str, Any] = (snapshot.to_dict() if snapshot.exists else None) or {}
        lease_until = state.get("lease_until")
        if isinstance(lease_until, datetime) and lease_until > datetime.now(UTC):
            raise ReconcileBusy(f"another reconcile run holds the lease until {lease_until.isoformat()}")
        saved = state.get(str(mode))
        resumable = isinstance(saved, dict) and isinstance(saved.get("run_id"), str) and not restart
        run_id = str(saved["run_id"]) if resumable and isinstance(saved, dict) else uuid.uuid4().hex[:12]
        lease = datetime.now(UTC) + timedelta(seconds=LEASE_SECONDS)
        attempt.set(state_ref, {"lease_until": lease, "lease_owner": run_id}, merge=["lease_until", "lease_owner"])
        return state, run_id

    try:
        return transaction.run(db, deadline, body)
    except StoreUnavailable as error:
        raise ReconcileStopped(f"Firestore failed taking the lease: {error}") from None


def _release_lease(db: firestore.Client, state_ref: firestore.DocumentReference) -> None:
    """Let the next run start at once (a killed run's lease expires by itself)."""
    state_ref.set(
        {"lease_until": firestore.DELETE_FIELD, "lease_owner": firestore.DELETE_FIELD},
        merge=True,
        timeout=READ_TIMEOUT_SECONDS,
    )


PHASES = (("users", False), ("organizations", False), ("memberships", False), ("users", True),
          ("organizations", True), ("memberships", True))  # fmt: skip


def run(
    db: firestore.Client,
    settings: Settings,
    api: ClerkApi,
    *,
    mode: Mode = Mode.FULL,
    deletions: bool = True,
    dry_run: bool = False,
    workers: int = 8,
    page_size: int = PAGE_SIZE,
    budget_seconds: float | None = None,
    restart: bool = False,
    progress: Progress | None = None,
) -> Report:
    """One reconcile run (or the rest of a cut-off one); never raises for Clerk or Firestore trouble.

    ReconcileBusy is the one exception: another run holds the lease.
    """
    started = time.monotonic()
    report = Report(mode=mode, dry_run=dry_run, deletions=deletions and mode is Mode.FULL)
    progress = progress or _Silent()
    state_ref = db.collection(settings.paths.state).document(STATE_DOCUMENT)
    state: dict[str, Any] = {}
    run_id = uuid.uuid4().hex[:12]
    start_phase, start_offset = 0, 0
    if not dry_run:
        lease_deadline = time.monotonic() + settings.firestore_deadline_seconds
        state, run_id = _take_lease(db, state_ref, mode, restart=restart, deadline=lease_deadline)
        saved = state.get(str(mode))
        if isinstance(saved, dict) and saved.get("run_id") == run_id:
            start_phase, start_offset = int(saved.get("phase", 0)), int(saved.get("offset", 0))
            tallies = saved.get("tallies") or {}
            report.tallies = {kind: Tally.from_dict(tallies.get(kind) or {}) for kind in KINDS}
            report.resumed = True
    budget_deadline = started + budget_seconds if budget_seconds is not None else None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile") as pool:
        state_run = _Run(db, settings, api, report, progress, pool, run_id, budget_deadline, state_ref, page_size)
        try:
            finished = _phases(state_run, mode, state, start_phase, start_offset)
            if finished and not dry_run:
                _finish(state_run, state, mode, started)
            report.partial = not finished
        except (ReconcileStopped, ClerkUnavailable) as stopped:
            report.stopped = str(stopped)
        except KeyboardInterrupt:
            report.stopped = "interrupted"
        finally:
            if not dry_run:
                with contextlib.suppress(api_exceptions.GoogleAPICallError, api_exceptions.RetryError):
                    _release_lease(db, state_ref)
    report.clerk_requests = api.requests
    report.elapsed_seconds = time.monotonic() - started
    return report


def _phases(run_state: _Run, mode: Mode, state: dict[str, Any], start_phase: int, start_offset: int) -> bool:
    """Every phase from where the run (re)starts; False when the budget ran out (checkpoint saved)."""
    report = run_state.report
    if mode is Mode.INCREMENTAL:
        return _incremental(run_state, state)
    for phase, (kind, removal) in enumerate(PHASES):
        if phase < start_phase or (removal and not report.deletions):
            continue
        if removal:
            run_state.progress.note(f"{kind}: looking for objects Clerk no longer has")
            run_state.find_extras(kind)
            run_state.checkpoint(phase + 1, 0)
            continue
        offset = start_offset if phase == start_phase else 0
        if offset:
            run_state.seen.pop(kind, None)  # a partial listing cannot tell what is extra
        total = run_state.api.total(kind)
        for page_offset, page in run_state.pages(kind, offset, "+created_at"):
            run_state.compare_and_repair(kind, page)
            done = page_offset + len(page)
            run_state.progress.advance(kind, done, total)
            run_state.checkpoint(phase, done)
            if run_state.out_of_time():
                return False
        run_state.settle_conflicts(kind)
        if offset and kind in run_state.seen:
            run_state.seen.pop(kind)
        run_state.checkpoint(phase + 1, 0)
    return True


def _incremental(run_state: _Run, state: dict[str, Any]) -> bool:
    """Users changed since the last run, newest first, until the listing reaches older ones."""
    since = state.get("incremental_since_ms")
    since_ms = int(since) if isinstance(since, int) else None
    looked_at = 0
    for _, page in run_state.pages("users", 0, "-updated_at"):
        fresh = [data for data in page if since_ms is None or int(data.get("updated_at") or 0) >= since_ms]
        run_state.compare_and_repair("users", fresh)
        looked_at += len(fresh)
        run_state.progress.advance("users", looked_at, None)
        if len(fresh) < len(page) or run_state.out_of_time():
            break
    run_state.settle_conflicts("users")
    return not run_state.out_of_time()


def _finish(run_state: _Run, state: dict[str, Any], mode: Mode, started: float) -> None:
    """A completed run: its progress cleared, the next incremental's starting point, the lease released."""
    began_ms = _now_ms() - round((time.monotonic() - started) * 1000)
    since = began_ms - INCREMENTAL_MARGIN // timedelta(milliseconds=1)
    report = run_state.report
    summary = {"outcome": report.outcome, "drift": report.drift, "finished_at": firestore.SERVER_TIMESTAMP}
    update: dict[str, Any] = {
        str(mode): firestore.DELETE_FIELD,
        f"last_{mode}": summary,
        "incremental_since_ms": since,
    }
    if mode is Mode.INCREMENTAL and isinstance(state.get("incremental_since_ms"), int):
        update["incremental_since_ms"] = max(since, int(state["incremental_since_ms"]))
    run_state.with_store_retries(
        "saving the result", lambda: run_state.state_ref.set(update, merge=True, timeout=READ_TIMEOUT_SECONDS)
    )
