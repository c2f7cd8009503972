"""`backfill`: every existing Clerk user, written through the webhook's own transaction.

Webhooks only carry changes made after the endpoint exists. This reads all users from Clerk's Backend
API (`GET /v1/users`, oldest first) with the official client and applies each one as a synthesised
`user.updated` through `events.apply_event`: the same email uniqueness, the same ordering guard
(a newer webhook already stored wins, a tombstone wins), and a deterministic idempotency id
`backfill_<user id>_<updated_at>`, so a rerun, or a page read twice, changes nothing.
"""

from __future__ import annotations

import enum
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TextIO, TypeVar

import httpx
from clerk_backend_api import Clerk, models
from clerk_backend_api.utils import BackoffStrategy, RetryConfig
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import config, events, ids, payload, users
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome, StoreUnavailable
from clerk_sync.users import UserUpsert

__all__ = ["Result", "Tally", "backfill_id", "retry_after_seconds", "run"]

ORDER = "+created_at"  # new sign-ups land after the last page, so offsets of earlier users stay put
MAX_ATTEMPTS = 8
BACKOFF_BASE_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
MAX_RETRY_AFTER_SECONDS = 300.0
REQUEST_TIMEOUT_MS = 30_000
STORE_ATTEMPTS = 3
READ_TIMEOUT_SECONDS = 10.0
REDRAW_SECONDS = 0.2
# Our own loop retries (it also honours 429, which the client's default policy does not).
NO_CLIENT_RETRIES = RetryConfig("none", BackoffStrategy(0, 0, 1.0, 0), retry_connection_errors=False)

T = TypeVar("T")


class Result(enum.StrEnum):
    """What backfilling one user did (or, in a dry run, would do)."""

    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    STALE = "stale"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    SKIPPED = "skipped"


WRITES = (Result.CREATED, Result.UPDATED, Result.UNCHANGED)


class BackfillStopped(Exception):
    """Clerk or Firestore kept failing, or refused us; the run can resume from `resume_offset`."""

    def __init__(self, message: str, resume_offset: int) -> None:
        super().__init__(message)
        self.resume_offset = resume_offset


@dataclass
class Tally:
    """The run's counts and the user ids an operator may need to look at."""

    counts: Counter[Result] = field(default_factory=Counter)
    conflicts: dict[str, str | None] = field(default_factory=dict)  # user id -> current claim owner
    skipped: dict[str, str] = field(default_factory=dict)  # user id -> why
    read: int = 0


@dataclass(frozen=True)
class Prediction:
    """A dry run's verdict; `if_claim_free` is what happens once a conflicting owner moves on."""

    result: Result
    if_claim_free: Result
    owner: str | None = None


def backfill_id(user_id: str, updated_at_ms: int) -> str:
    """The idempotency id of one version of one user: a rerun finds it and writes nothing."""
    return f"backfill_{user_id}_{updated_at_ms}"


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _backoff(attempt: int) -> float:
    """Exponential with jitter: 0.5 s, 1 s, 2 s … capped, so many clients never retry in step."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not security)


class Progress:
    """A progress line on stderr: a redrawn bar on a terminal, one line per page otherwise."""

    def __init__(self, err: TextIO, total: int | None, start_offset: int) -> None:
        self.err = err
        self.total = total
        self.start_offset = start_offset
        self.started = time.monotonic()
        self.done = 0
        self.drawn = 0.0
        self.tty = err.isatty()

    def rate(self) -> float:
        return float(self.done / max(time.monotonic() - self.started, 1e-9))

    def advance(self, position: int, page_offset: int) -> None:
        """One more user handled; a terminal redraws at most five times a second."""
        self.done += 1
        if self.tty and time.monotonic() - self.drawn >= REDRAW_SECONDS:
            self._draw(position, page_offset)

    def page(self, next_offset: int) -> None:
        """A page is finished: redraw on a terminal, one line otherwise."""
        self._draw(next_offset, next_offset)

    def _draw(self, position: int, resume_offset: int) -> None:
        self.drawn = time.monotonic()
        where = f"{position}/{self.total}" if self.total is not None else f"{position}"
        percent = f" {100 * position / self.total:3.0f}%" if self.total else ""
        line = f"{where} users{percent}  {self.rate():.1f} users/s  resume offset {resume_offset}"
        if self.tty:
            bar = ""
            if self.total:
                filled = min(30, round(30 * position / self.total))
                bar = "[" + "#" * filled + "-" * (30 - filled) + "] "
            self.err.write(f"\r\033[K{bar}{line}")
        else:
            self.err.write(f"backfill: {line}\n")
        self.err.flush()

    def note(self, text: str) -> None:
        self.err.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.err.flush()

    def finish(self) -> None:
        if self.tty:
            self.err.write("\n")
            self.err.flush()


def _call_clerk(what: str, call: Callable[[], T], progress: Progress, resume_offset: int) -> T:
    """One Backend API call with bounded retries: 429 waits Retry-After, 5xx and network errors back off."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return call()
        except models.ResponseValidationError as error:
            message = f"Clerk's answer to {what} did not fit the client's model: {error}"
            raise BackfillStopped(message, resume_offset) from None
        except models.ClerkBaseError as error:
            status = error.status_code
            if status == 429:
                wait, why = retry_after_seconds(error.headers.get("retry-after")) or _backoff(attempt), "429"
            elif status >= 500:
                wait, why = _backoff(attempt), str(status)
            else:
                detail = " ".join(error.body.split())[:300]
                raise BackfillStopped(f"Clerk refused {what}: {status} {detail}", resume_offset) from None
        except (httpx.TransportError, models.NoResponseError) as error:
            wait, why = _backoff(attempt), type(error).__name__
        if attempt == MAX_ATTEMPTS:
            raise BackfillStopped(f"{what} still failing after {MAX_ATTEMPTS} attempts ({why})", resume_offset)
        progress.note(f"{what}: {why}, retrying in {wait:.1f} s (attempt {attempt + 1} of {MAX_ATTEMPTS})")
        time.sleep(wait)
    raise AssertionError("unreachable")


def _with_store_retries(what: str, call: Callable[[], T], resume_offset: int) -> T:
    """Firestore trouble (StoreUnavailable, a failed read) gets a few backed-off retries, then stops the run."""
    for attempt in range(1, STORE_ATTEMPTS + 1):
        try:
            return call()
        except (StoreUnavailable, api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
            if attempt == STORE_ATTEMPTS:
                raise BackfillStopped(f"Firestore failed {what}: {type(error).__name__}", resume_offset) from None
            time.sleep(_backoff(attempt))
    raise AssertionError("unreachable")


def _upsert(user: models.User) -> UserUpsert:
    """The user as Clerk's `user.updated` webhook would carry it, parsed by the webhook's own parser."""
    data = user.model_dump(mode="json", by_alias=True)
    envelope = {"data": data, "object": "event", "type": "user.updated", "timestamp": time.time_ns() // 1_000_000}
    event = events.parse_event(json.dumps(envelope).encode())
    assert isinstance(event, UserUpsert)
    return event


def _stored_updated_at(snapshot: firestore.DocumentSnapshot[Any] | None) -> datetime | None:
    if snapshot is None or not snapshot.exists:
        return None
    value = (snapshot.to_dict() or {}).get("updated_at")
    return value if isinstance(value, datetime) else None


def _written(prior: firestore.DocumentSnapshot[Any] | None, upsert: UserUpsert) -> Result:
    """Created, updated or unchanged, judged from the document as it was before (report only)."""
    if prior is None or not prior.exists:
        return Result.CREATED
    return Result.UNCHANGED if _stored_updated_at(prior) == upsert.updated_at else Result.UPDATED


def _read(db: firestore.Client, references: list[Any]) -> dict[str, firestore.DocumentSnapshot[Any]]:
    snapshots = db.get_all(references, retry=None, timeout=READ_TIMEOUT_SECONDS)
    return {snapshot.reference.path: snapshot for snapshot in snapshots}


def _predict(db: firestore.Client, paths: Any, upsert: UserUpsert, message_id: str) -> Prediction:
    """What `events.apply_event` would decide, from the same documents, without a transaction or a write."""
    event_ref = db.collection(paths.events).document(ids.document_id(message_id))
    user_ref = db.collection(paths.users).document(upsert.user_id)
    tombstone_ref = db.collection(paths.user_tombstones).document(upsert.user_id)
    claim_ref = db.collection(paths.claims).document(ids.document_id(upsert.email_key)) if upsert.email_key else None
    snapshots = _read(db, [event_ref, user_ref, tombstone_ref, *([claim_ref] if claim_ref else [])])
    stored = snapshots.get(user_ref.path)
    if_free = _written(stored, upsert)
    if snapshots[event_ref.path].exists:
        return Prediction(Result.DUPLICATE, Result.DUPLICATE)
    stored_at = _stored_updated_at(stored)
    if snapshots[tombstone_ref.path].exists or (stored_at is not None and stored_at > upsert.updated_at):
        return Prediction(Result.STALE, Result.STALE)
    if claim_ref is not None:
        claim = snapshots[claim_ref.path]
        owner = claim.get("clerk_id") if claim.exists else None
        if owner is not None and owner != upsert.user_id:
            owner_doc = db.collection(paths.users).document(owner).get(retry=None, timeout=READ_TIMEOUT_SECONDS)
            owner_email = (owner_doc.to_dict() or {}).get("email") if owner_doc.exists else None
            if isinstance(owner_email, str) and users.normalise_email(owner_email) == upsert.email_key:
                return Prediction(Result.CONFLICT, if_free, owner)
    return Prediction(if_free, if_free)


@dataclass
class Run:
    """One backfill's shared state: where to write, how, and what happened so far."""

    db: firestore.Client
    settings: config.Settings
    dry_run: bool
    pool: ThreadPoolExecutor
    progress: Progress
    start_offset: int
    tally: Tally = field(default_factory=Tally)
    pending: dict[str, UserUpsert] = field(default_factory=dict)  # conflicts to try once more at the end
    predictions: dict[str, Prediction] = field(default_factory=dict)  # dry run only
    clerk_emails: dict[str, str | None] = field(default_factory=dict)  # dry run only

    def apply(self, upserts: list[UserUpsert], resume_offset: int) -> Iterator[Result]:
        """Write a batch through the webhook transaction; report created/updated from a prior read."""
        references = [self.db.collection(self.settings.paths.users).document(upsert.user_id) for upsert in upserts]
        prior = _with_store_retries("reading the users", lambda: _read(self.db, references), resume_offset)

        def one(upsert: UserUpsert) -> Result:
            message_id = backfill_id(upsert.user_id, _ms(upsert.updated_at))
            outcome = _with_store_retries(
                f"writing {upsert.user_id}",
                lambda: events.apply_event(self.db, upsert, Delivery(message_id, self.settings)),
                resume_offset,
            )
            if outcome is Outcome.APPLIED:
                return _written(prior.get(f"{self.settings.paths.users}/{upsert.user_id}"), upsert)
            return Result(str(outcome))

        return self.pool.map(one, upserts)

    def predict(self, upserts: list[UserUpsert], resume_offset: int) -> Iterator[Result]:
        """A dry run's batch: read what the transaction would read, write nothing."""

        def one(upsert: UserUpsert) -> Result:
            message_id = backfill_id(upsert.user_id, _ms(upsert.updated_at))
            prediction = _with_store_retries(
                f"reading {upsert.user_id}",
                lambda: _predict(self.db, self.settings.paths, upsert, message_id),
                resume_offset,
            )
            self.predictions[upsert.user_id] = prediction
            return prediction.result

        for upsert in upserts:
            self.clerk_emails[upsert.user_id] = upsert.email_key
        return self.pool.map(one, upserts)

    def page(self, users: list[models.User], offset: int) -> None:
        """Parse, write (or predict) and count one page of Clerk users."""
        upserts = []
        for user in users:
            try:
                upserts.append(_upsert(user))
            except payload.MalformedEvent as malformed:
                self.tally.skipped[user.id] = str(malformed)
                self.tally.counts[Result.SKIPPED] += 1
        handle = self.predict if self.dry_run else self.apply
        skipped = len(users) - len(upserts)
        for done, (upsert, result) in enumerate(zip(upserts, handle(upserts, offset), strict=True), start=1):
            self.count(upsert, result)
            self.progress.advance(offset + skipped + done, offset)
        self.tally.read += len(users)
        self.progress.page(offset + len(users))

    def count(self, upsert: UserUpsert, result: Result) -> None:
        if result is Result.CONFLICT:
            self.pending[upsert.user_id] = upsert
        else:
            self.tally.counts[result] += 1

    def settle_conflicts(self) -> None:
        """An address may move from A to B with B listed first: once A is written, B's retry succeeds."""
        pending, self.pending = self.pending, {}
        if not pending:
            return
        if self.dry_run:
            for user_id, upsert in pending.items():
                prediction = self.predictions[user_id]
                owner = prediction.owner
                owner_moves = (
                    owner in self.clerk_emails
                    and self.clerk_emails[owner] != upsert.email_key
                    and self.predictions[owner].result in WRITES
                )
                if owner_moves:
                    self.tally.counts[prediction.if_claim_free] += 1
                else:
                    self.tally.counts[Result.CONFLICT] += 1
                    self.tally.conflicts[user_id] = owner
            return
        retried = self.apply(list(pending.values()), self.start_offset)
        for upsert, result in zip(pending.values(), retried, strict=True):
            self.tally.counts[result] += 1
            if result is Result.CONFLICT:
                self.tally.conflicts[upsert.user_id] = self.claim_owner(upsert)

    def claim_owner(self, upsert: UserUpsert) -> str | None:
        if upsert.email_key is None:
            return None
        claim = self.db.collection(self.settings.paths.claims).document(ids.document_id(upsert.email_key))
        try:
            snapshot = claim.get(retry=None, timeout=READ_TIMEOUT_SECONDS)
        except api_exceptions.GoogleAPICallError:
            return None
        owner = snapshot.get("clerk_id") if snapshot.exists else None
        return owner if isinstance(owner, str) else None


def _ms(moment: datetime) -> int:
    return (moment - payload.EPOCH) // timedelta(milliseconds=1)


def _pages(clerk: Clerk, page_size: int, offset: int, progress: Progress) -> Iterable[tuple[int, list[models.User]]]:
    """(offset, users) for each page, until a short page says there are no more."""
    while True:
        users = _call_clerk(
            f"GET /users?offset={offset}",
            lambda at=offset: clerk.users.list(  # type: ignore[misc]
                request={"limit": page_size, "offset": at, "order_by": ORDER}, timeout_ms=REQUEST_TIMEOUT_MS
            ),
            progress,
            offset,
        )
        if users:
            yield offset, users
        if len(users) < page_size:
            return
        offset += len(users)


def summary(tally: Tally, *, dry_run: bool, elapsed: float, start_offset: int) -> str:
    """The closing report; conflicts name both users so an operator can look at them."""
    rate = tally.read / max(elapsed, 1e-9)
    verb = "dry run, nothing written; the counts say what a real run would do" if dry_run else "done"
    lines = [
        f"backfill {verb}\n{tally.read} users read from Clerk from offset {start_offset} "
        f"in {elapsed:.1f} s ({rate:.1f} users/s)",
        f"  created    {tally.counts[Result.CREATED]:>7}",
        f"  updated    {tally.counts[Result.UPDATED]:>7}  (Firestore had an older version)",
        f"  unchanged  {tally.counts[Result.UNCHANGED]:>7}  (Firestore had this version; rewritten as is)",
        f"  stale      {tally.counts[Result.STALE]:>7}  (Firestore has a newer version, or the user was deleted)",
        f"  duplicate  {tally.counts[Result.DUPLICATE]:>7}  (this exact version was backfilled before)",
        f"  conflicts  {tally.counts[Result.CONFLICT]:>7}",
    ]
    lines += [
        f"    {user_id}: primary email still held by {owner or 'another user'}"
        for user_id, owner in sorted(tally.conflicts.items())
    ]
    lines.append(f"  skipped    {tally.counts[Result.SKIPPED]:>7}")
    lines += [f"    {user_id}: {why}" for user_id, why in sorted(tally.skipped.items())]
    return "\n".join(lines) + "\n"


def _total(clerk: Clerk, progress: Progress, start_offset: int) -> int | None:
    """How many users Clerk has, for the progress bar; the run goes on without it."""
    try:
        count = _call_clerk(
            "GET /users/count", lambda: clerk.users.count(timeout_ms=REQUEST_TIMEOUT_MS), progress, start_offset
        )
    except BackfillStopped as stopped:
        progress.note(f"no total for the progress bar: {stopped}")
        return None
    return count.total_count


def run(
    db: firestore.Client,
    settings: config.Settings,
    *,
    secret_key: str,
    server_url: str,
    page_size: int,
    start_offset: int,
    dry_run: bool,
    workers: int,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Backfill every user; 0 when all are in place, 3 when conflicts or skipped users remain, 1 when stopped."""
    started = time.monotonic()
    progress = Progress(err, None, start_offset)
    with (
        Clerk(bearer_auth=secret_key, server_url=server_url, retry_config=NO_CLIENT_RETRIES) as clerk,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill") as pool,
    ):
        progress.total = _total(clerk, progress, start_offset)
        state = Run(db, settings, dry_run, pool, progress, start_offset)
        offset, status, resume = start_offset, 0, ""
        try:
            for offset, page in _pages(clerk, page_size, start_offset, progress):
                state.page(page, offset)
            state.settle_conflicts()
        except BackfillStopped as stopped:
            status, resume = 1, f"stopped: {stopped}\nresume with: --start-offset {stopped.resume_offset}"
        except KeyboardInterrupt:
            status, resume = 130, f"interrupted; resume with: --start-offset {offset}"
        progress.finish()
    elapsed = time.monotonic() - started
    out.write(summary(state.tally, dry_run=dry_run, elapsed=elapsed, start_offset=start_offset))
    if resume:
        err.write(resume + " (same options otherwise; finished users come back as duplicates)\n")
        return status
    return 3 if state.tally.conflicts or state.tally.skipped else 0
