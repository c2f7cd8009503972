"""Firestore: one transaction per event that enforces email uniqueness, order and idempotency.

Collections (names are part of the data contract):
  users/{clerk_id}            the synced user, readable by that user's client
  email_claims/{email key}    who owns a normalised primary email (uniqueness)
  user_tombstones/{clerk_id}  deleted users, so late upserts never resurrect them
  webhook_events/{svix id}    every applied or stale event (idempotency, audit), with TTL
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1.transaction import Transaction

from clerk_sync.events import UserDeletion, UserUpsert, normalise_email

__all__ = [
    "CLAIMS",
    "EVENTS",
    "TOMBSTONES",
    "USERS",
    "Outcome",
    "StoreUnavailable",
    "apply_event",
    "client",
    "document_id",
    "reset_client",
]

USERS = "users"
CLAIMS = "email_claims"
TOMBSTONES = "user_tombstones"
EVENTS = "webhook_events"
MAX_ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.25
SAFE_ID_CHARACTERS = re.compile(r"[A-Za-z0-9@._+-]")
MAX_ID_BYTES = 1500

T = TypeVar("T")


class Outcome(enum.StrEnum):
    """What an event did; the HTTP adapter maps these to statuses."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"


class StoreUnavailable(Exception):
    """Firestore could not be reached, was too slow, or contention outlasted the retries."""


_client: firestore.Client | None = None
_client_lock = threading.Lock()
# Deliveries for one user take turns inside an instance. Concurrent transactions on the same
# documents abort each other (the emulator only after a 2 s lock timeout each time), and a
# burst of retries for one user could keep every one of them aborting.
_user_locks = tuple(threading.Lock() for _ in range(64))


def client(project: str | None = None, database: str = "(default)") -> firestore.Client:
    """The instance's one Firestore client, created on first use and shared by all threads.

    Raises StoreUnavailable when credentials or the project cannot be found (yet).
    """
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                try:
                    _client = firestore.Client(project=project, database=database)
                except (auth_exceptions.GoogleAuthError, OSError) as error:
                    raise StoreUnavailable(type(error).__name__) from error
    return _client


def reset_client() -> None:
    """Forget the client so the next call builds one from the current environment."""
    global _client
    with _client_lock:
        _client = None


def document_id(text: str) -> str:
    """A readable, collision-free document id for any string (emails may hold `/`, `__x__`...).

    Characters outside `[A-Za-z0-9@._+-]` are percent-encoded, as is `%` itself; a leading
    `_` or `.` is encoded too, which rules out the reserved `__x__`, `.` and `..` ids. An id too
    long for Firestore becomes a hash whose `%s` prefix the encoding never produces.
    """
    encoded = "".join(
        char if SAFE_ID_CHARACTERS.fullmatch(char) else "".join(f"%{byte:02X}" for byte in char.encode())
        for char in text
    )
    if encoded[:1] in {"_", "."}:
        encoded = f"%{ord(encoded[0]):02X}{encoded[1:]}"
    if not encoded or len(encoded.encode()) > MAX_ID_BYTES:
        return "%sha256-" + hashlib.sha256(text.encode()).hexdigest()
    return encoded


class _DeadlineTransaction(Transaction):
    """A transaction whose begin, commit and rollback RPCs share one deadline.

    The library issues those three calls with its 60 s defaults; Svix gives up after 15 s,
    so every call here gets what is left of the request's budget and no retry of its own.
    """

    def __init__(self, firestore_client: firestore.Client, deadline: float) -> None:
        super().__init__(firestore_client, max_attempts=1)
        self.deadline = deadline

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise StoreUnavailable("deadline spent")
        return left

    def _begin(self, retry_id: bytes | None = None) -> None:
        response = self._client._firestore_api.begin_transaction(
            request={"database": self._client._database_string, "options": self._options_protobuf(retry_id)},
            metadata=self._client._rpc_metadata,
            retry=None,
            timeout=self.remaining(),
        )
        self._id = response.transaction

    def _commit(self) -> list[Any]:
        response = self._client._firestore_api.commit(
            request={
                "database": self._client._database_string,
                "writes": self._write_pbs,
                "transaction": self._id,
            },
            metadata=self._client._rpc_metadata,
            retry=None,
            timeout=self.remaining(),
        )
        self._clean_up()
        self.write_results = list(response.write_results)
        self.commit_time = response.commit_time
        return self.write_results

    def _rollback(self) -> None:
        try:
            self._client._firestore_api.rollback(
                request={"database": self._client._database_string, "transaction": self._id},
                metadata=self._client._rpc_metadata,
                retry=None,
                timeout=max(0.5, min(2.0, self.deadline - time.monotonic())),
            )
        finally:
            self._clean_up()

    def read(self, references: list[firestore.DocumentReference]) -> dict[str, firestore.DocumentSnapshot[Any]]:
        """All of this attempt's reads in one batched round trip, keyed by document path."""
        snapshots = self.get_all(references, retry=None, timeout=self.remaining())
        return {snapshot.reference.path: snapshot for snapshot in snapshots}


def _run_transaction(
    firestore_client: firestore.Client, deadline: float, work: Callable[[_DeadlineTransaction], T]
) -> T:
    """Run `work` in a transaction, re-running it on contention while the deadline allows."""
    transaction = _DeadlineTransaction(firestore_client, deadline)
    retry_id: bytes | None = None
    for attempt in range(MAX_ATTEMPTS):
        transaction._clean_up()
        transaction._begin(retry_id=retry_id)
        retry_id = retry_id or transaction._id
        try:
            result = work(transaction)
            transaction._commit()
            return result
        except api_exceptions.Aborted:
            # Contention: Firestore already dropped this attempt; run the work again after a
            # random pause, or the contenders that aborted together collide again together.
            transaction._clean_up()
            pause = random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt)  # noqa: S311 - jitter, not a secret
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        except BaseException:
            if transaction.in_progress:
                # The original error matters more; an abandoned transaction expires on its own.
                with contextlib.suppress(api_exceptions.GoogleAPICallError):
                    transaction._rollback()
            raise
    raise StoreUnavailable(f"contention persisted through {MAX_ATTEMPTS} attempts")


def apply_event(
    firestore_client: firestore.Client,
    message_id: str,
    event: UserUpsert | UserDeletion,
    *,
    deadline_seconds: float,
    event_ttl: timedelta,
) -> Outcome:
    """Apply one verified event exactly once in effect; raises StoreUnavailable (retry later)."""
    deadline = time.monotonic() + deadline_seconds
    if isinstance(event, UserUpsert):

        def work(transaction: _DeadlineTransaction) -> Outcome:
            return _upsert(transaction, message_id, event, event_ttl)

    else:

        def work(transaction: _DeadlineTransaction) -> Outcome:
            return _delete(transaction, message_id, event, event_ttl)

    user_lock = _user_locks[hash(event.user_id) % len(_user_locks)]
    if not user_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise StoreUnavailable("earlier deliveries for this user outlasted the deadline")
    try:
        return _run_transaction(firestore_client, deadline, work)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError, auth_exceptions.GoogleAuthError) as error:
        raise StoreUnavailable(type(error).__name__) from error
    finally:
        user_lock.release()


def _refs(firestore_client: firestore.Client, message_id: str, user_id: str) -> tuple[Any, Any, Any]:
    return (
        firestore_client.collection(EVENTS).document(document_id(message_id)),
        firestore_client.collection(USERS).document(user_id),
        firestore_client.collection(TOMBSTONES).document(user_id),
    )


def _claim_ref(firestore_client: firestore.Client, email_key: str) -> firestore.DocumentReference:
    return firestore_client.collection(CLAIMS).document(document_id(email_key))


def _record(
    transaction: Transaction,
    event_ref: firestore.DocumentReference,
    message_id: str,
    event: UserUpsert | UserDeletion,
    outcome: Outcome,
    event_ttl: timedelta,
) -> Outcome:
    """The idempotency record: a second delivery of `message_id` finds it and changes nothing."""
    transaction.set(
        event_ref,
        {
            "svix_id": message_id,
            "type": event.event_type,
            "clerk_id": event.user_id,
            "outcome": str(outcome),
            "received_at": firestore.SERVER_TIMESTAMP,
            "expires_at": datetime.now(UTC) + event_ttl,
        },
    )
    return outcome


def _stored_email_key(snapshot: firestore.DocumentSnapshot[Any]) -> str | None:
    email = (snapshot.to_dict() or {}).get("email") if snapshot.exists else None
    return normalise_email(email) if isinstance(email, str) else None


def _upsert(transaction: _DeadlineTransaction, message_id: str, event: UserUpsert, event_ttl: timedelta) -> Outcome:
    db = transaction._client
    event_ref, user_ref, tombstone_ref = _refs(db, message_id, event.user_id)
    claim_ref = _claim_ref(db, event.email_key) if event.email_key else None
    snapshots = transaction.read([event_ref, user_ref, tombstone_ref, *([claim_ref] if claim_ref else [])])
    if snapshots[event_ref.path].exists:
        return Outcome.DUPLICATE
    stored = snapshots[user_ref.path]
    if snapshots[tombstone_ref.path].exists:
        return _record(transaction, event_ref, message_id, event, Outcome.STALE, event_ttl)
    if stored.exists and _is_newer((stored.to_dict() or {}).get("updated_at"), event.updated_at):
        return _record(transaction, event_ref, message_id, event, Outcome.STALE, event_ttl)

    if claim_ref is not None:
        claim = snapshots[claim_ref.path]
        owner = claim.get("clerk_id") if claim.exists else None
        if owner is not None and owner != event.user_id:
            # Rare path, so one more read: the claim only blocks while its owner still holds it.
            owner_snapshot = transaction.read([db.collection(USERS).document(owner)])
            if _stored_email_key(next(iter(owner_snapshot.values()))) == event.email_key:
                return Outcome.CONFLICT
        if owner != event.user_id:
            transaction.set(
                claim_ref,
                {"email": event.email_key, "clerk_id": event.user_id, "claimed_at": firestore.SERVER_TIMESTAMP},
            )
    old_key = _stored_email_key(stored)
    if old_key is not None and old_key != event.email_key:
        # The stored document held this address, so its claim is ours to release.
        transaction.delete(_claim_ref(db, old_key))
    transaction.set(user_ref, {**event.document, "synced_at": firestore.SERVER_TIMESTAMP})
    return _record(transaction, event_ref, message_id, event, Outcome.APPLIED, event_ttl)


def _delete(transaction: _DeadlineTransaction, message_id: str, event: UserDeletion, event_ttl: timedelta) -> Outcome:
    db = transaction._client
    event_ref, user_ref, tombstone_ref = _refs(db, message_id, event.user_id)
    snapshots = transaction.read([event_ref, user_ref, tombstone_ref])
    if snapshots[event_ref.path].exists:
        return Outcome.DUPLICATE
    if snapshots[tombstone_ref.path].exists:
        return _record(transaction, event_ref, message_id, event, Outcome.STALE, event_ttl)
    stored = snapshots[user_ref.path]
    old_key = _stored_email_key(stored)
    if old_key is not None:
        transaction.delete(_claim_ref(db, old_key))
    if stored.exists:
        transaction.delete(user_ref)
    transaction.set(
        tombstone_ref,
        {"clerk_id": event.user_id, "deleted_at": event.deleted_at, "recorded_at": firestore.SERVER_TIMESTAMP},
    )
    return _record(transaction, event_ref, message_id, event, Outcome.APPLIED, event_ttl)


def _is_newer(stored_updated_at: object, incoming: datetime) -> bool:
    """Whether the stored copy is strictly newer than the incoming one (equal applies again)."""
    return isinstance(stored_updated_at, datetime) and stored_updated_at > incoming
