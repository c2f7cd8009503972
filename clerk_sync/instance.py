"""Which Clerk instance the data belongs to: recorded once, and anything of another instance refused.

A development and a production instance have different ids, keys and users; an id of one answers
404 in the other. Data of two instances mixed in one database cannot be told apart, and a reconcile
run with the other instance's key would delete everything as "gone from Clerk". So the first
webhook that names its instance, or the first reconcile of an empty database, records it in
`sync_state/instance` (created only if absent, so two first writers agree on one); from then on an
event or a key of another instance is refused before anything is written.

The webhook pays for this once per process: the recorded instance is cached, and the one read (and
perhaps the create) happens outside the event's transaction, together with the event log's state,
which a cold instance reads before its first event too.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import event_log
from clerk_sync.config import Settings
from clerk_sync.outcome import StoreUnavailable
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent

__all__ = [
    "INSTANCE_DOCUMENT",
    "OtherInstance",
    "Pin",
    "admit_event",
    "envelope_instance",
    "forget",
    "is_instance_id",
    "pin",
    "read_pin",
]

INSTANCE_DOCUMENT = "instance"
INSTANCE_ID = re.compile(r"ins_[A-Za-z0-9]{1,100}")
INSTANCE_FIELD = b'"instance_id"'

_pinned: dict[tuple[str, str], str] = {}  # (database, state collection) -> the recorded instance id
_pinned_lock = threading.Lock()


@dataclass(frozen=True)
class Pin:
    """The instance recorded for this database, and its environment when known."""

    instance_id: str
    environment_type: str | None = None

    def describe(self) -> str:
        """`ins_… (production)`, or only the id when the environment is not known."""
        return f"{self.instance_id} ({self.environment_type})" if self.environment_type else self.instance_id


class OtherInstance(Exception):
    """The event or key belongs to another Clerk instance than the one this database holds."""

    def __init__(self, pinned: Pin, seen: Pin) -> None:
        super().__init__(f"Clerk instance {seen.describe()} is not {pinned.describe()}, the one this database holds")
        self.pinned = pinned
        self.seen = seen


def is_instance_id(value: object) -> bool:
    """Whether `value` looks like a Clerk instance id (`ins_…`)."""
    return isinstance(value, str) and INSTANCE_ID.fullmatch(value) is not None


def envelope_instance(body: bytes) -> str | None:
    """The envelope's `instance_id`, or None when it has none (hand-made events, older tools).

    Raises MalformedEvent for one that is present but no Clerk instance id. For a body that
    `events.parse_event` accepted (a JSON object).
    """
    if INSTANCE_FIELD not in body:
        return None
    value = json.loads(body).get("instance_id")
    if value is None:
        return None
    if not is_instance_id(value):
        raise MalformedEvent("instance_id is not a Clerk instance id")
    return str(value)


def _names_only(body: bytes, instance_id: str) -> bool:
    """Whether the body names `instance_id` and no other, seen without parsing it again.

    Clerk writes the field once, unescaped; a body where it appears more than once is parsed.
    """
    if body.count(INSTANCE_FIELD) != 1:
        return False
    value = instance_id.encode()
    return b'"instance_id":"' + value + b'"' in body or b'"instance_id": "' + value + b'"' in body


def _reference(db: firestore.Client, paths: Paths) -> firestore.DocumentReference:
    return db.collection(paths.state).document(INSTANCE_DOCUMENT)


def _pin_of(data: dict[str, Any] | None) -> Pin | None:
    instance_id = (data or {}).get("instance_id")
    if not is_instance_id(instance_id):
        return None
    environment = (data or {}).get("environment_type")
    return Pin(str(instance_id), environment if isinstance(environment, str) else None)


def read_pin(db: firestore.Client, paths: Paths, *, timeout: float) -> Pin | None:
    """The recorded instance, or None when none is (a document without a usable id counts as none)."""
    snapshot = _reference(db, paths).get(retry=None, timeout=timeout)
    return _pin_of(snapshot.to_dict()) if snapshot.exists else None


def _read_pin_and_event_log(db: firestore.Client, settings: Settings, *, timeout: float) -> Pin | None:
    """`read_pin`, with the event log's state in the same round trip: a cold instance needs both first."""
    pin_reference = _reference(db, settings.paths)
    log_reference = event_log.state_reference(db, settings.paths)
    found = {
        snapshot.reference.path: snapshot
        for snapshot in db.get_all([pin_reference, log_reference], retry=None, timeout=timeout)
    }
    if log_reference.path in found:
        event_log.remember(settings.paths, found[log_reference.path], settings.event_ttl)
    snapshot = found.get(pin_reference.path)
    return _pin_of(snapshot.to_dict()) if snapshot is not None and snapshot.exists else None


def pin(db: firestore.Client, paths: Paths, wanted: Pin, *, pinned_by: str, timeout: float) -> Pin:
    """Record `wanted` unless an instance is recorded already; returns the one recorded either way."""
    reference = _reference(db, paths)
    document = {
        "instance_id": wanted.instance_id,
        "environment_type": wanted.environment_type,
        "pinned_by": pinned_by,
        "pinned_at": firestore.SERVER_TIMESTAMP,
    }
    try:
        reference.create(document, retry=None, timeout=timeout)
    except api_exceptions.AlreadyExists:
        recorded = read_pin(db, paths, timeout=timeout)
        if recorded is not None:
            return recorded
        reference.set(document, retry=None, timeout=timeout)  # a record without a usable id: ours again
    return wanted


def admit_event(db: firestore.Client, settings: Settings, body: bytes) -> Settings:
    """Refuse an event of another instance than the recorded one (OtherInstance); record the first one seen.

    Returns the settings for the rest of the request: what this took comes off its Firestore
    deadline. Costs a byte scan once this process knows the recorded instance; MalformedEvent for
    an unusable `instance_id`, StoreUnavailable when Firestore does not answer in time.
    """
    key = (settings.database, settings.paths.state)
    recorded = _pinned.get(key)
    if INSTANCE_FIELD not in body or (recorded is not None and _names_only(body, recorded)):
        return settings
    instance_id = envelope_instance(body)
    if instance_id is None:
        return settings
    if recorded is not None:
        if recorded != instance_id:
            raise OtherInstance(Pin(recorded), Pin(instance_id))
        return settings
    deadline = time.monotonic() + settings.firestore_deadline_seconds
    try:
        found = _read_pin_and_event_log(db, settings, timeout=_left(deadline)) or pin(
            db, settings.paths, Pin(instance_id), pinned_by="webhook", timeout=_left(deadline)
        )
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise StoreUnavailable(f"reading the recorded instance: {type(error).__name__}") from error
    with _pinned_lock:
        recorded = _pinned.setdefault(key, found.instance_id)
    if recorded != instance_id:
        raise OtherInstance(Pin(recorded), Pin(instance_id))
    return dataclasses.replace(settings, firestore_deadline_seconds=_left(deadline))


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise StoreUnavailable("deadline spent")
    return left


def forget() -> None:
    """Drop what this process knows, so the next event reads the record again (tests, a changed record)."""
    with _pinned_lock:
        _pinned.clear()
