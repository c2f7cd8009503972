"""What keeps a run from destroying what it was meant to keep: the instance check and the deletion breaker.

A key of another Clerk instance lists that instance's objects, and every id Firestore holds answers
404 there: without these guards a full run would delete (and tombstone) everything. So a run first
asks Clerk which instance its key belongs to and refuses, before any write, a key of another
instance than the one Firestore holds (`clerk_sync.instance`). A database that records none yet is
recorded when it is empty, or when the key's instance holds a sample of what Firestore holds.
Then, whatever the cause, a run that would delete more than a small share of a kind stops before
deleting any of it, unless a person confirms (`--allow-mass-deletion`).
"""

from __future__ import annotations

import math
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import instance
from clerk_sync.config import Settings
from clerk_sync.reconcile.clerk_api import ClerkApi
from clerk_sync.reconcile.report import Progress, ReconcileStopped

__all__ = [
    "MASS_DELETION_FLOOR",
    "MASS_DELETION_SHARE",
    "MassDeletion",
    "OtherInstance",
    "check_instance",
    "check_mass_deletion",
    "deletion_limit",
    "record_instance",
]

SAMPLE_SIZE = 5
MASS_DELETION_FLOOR = 50
MASS_DELETION_SHARE = 0.02


class OtherInstance(ReconcileStopped):
    """The key belongs to another Clerk instance than the data in Firestore."""

    reason = "other_instance"


class MassDeletion(ReconcileStopped):
    """The run would delete more than a small share of a kind; nothing of it was deleted."""

    reason = "mass_deletion"


def check_instance(
    db: firestore.Client,
    settings: Settings,
    api: ClerkApi,
    progress: Progress,
    *,
    pin_instance: bool = False,
    timeout: float,
) -> tuple[instance.Pin, bool]:
    """The key's instance, and whether it is still to be recorded; OtherInstance before any write.

    Firestore holding another instance's data is refused. A database that records no instance yet
    is recorded (later, by `record_instance`) when it holds no synced user or organization, or
    when the key's instance holds at least one of a few sampled from it, or when `pin_instance`.
    """
    instance_id, environment = api.instance()
    key_instance = instance.Pin(instance_id, environment)
    progress.note(f"Clerk: instance {key_instance.describe()}")
    try:
        recorded = instance.read_pin(db, settings.paths, timeout=timeout)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise ReconcileStopped(f"Firestore failed reading the recorded instance: {type(error).__name__}") from None
    if recorded is not None:
        if recorded.instance_id != instance_id:
            raise OtherInstance(
                f"this key belongs to Clerk instance {key_instance.describe()}, but Firestore holds the data of "
                f"instance {recorded.describe()}; nothing written. Use that instance's secret key."
            )
        return key_instance, recorded.environment_type != environment
    if pin_instance:
        return key_instance, True
    kind, sample = _sample(db, settings, timeout)
    if not sample or any(api.fetch(kind, stored) is not None for stored in sample):
        return key_instance, True
    raise OtherInstance(
        f"none of the {len(sample)} {kind} sampled from Firestore exist in Clerk instance {key_instance.describe()}: "
        "this key belongs to another instance, or Clerk deleted them all. Nothing written. Use the key of the "
        "instance whose data Firestore holds; if Clerk really deleted them, run once with --pin-instance to record "
        f"{instance_id} as this database's instance."
    )


def record_instance(db: firestore.Client, settings: Settings, key_instance: instance.Pin, *, timeout: float) -> None:
    """Record the key's instance (checked by `check_instance`), with its environment."""
    try:
        recorded = instance.pin(db, settings.paths, key_instance, pinned_by="reconcile", timeout=timeout)
        if recorded.instance_id != key_instance.instance_id:
            raise OtherInstance(f"a webhook recorded Clerk instance {recorded.describe()} meanwhile; run again")
        if recorded.environment_type != key_instance.environment_type:
            reference = db.collection(settings.paths.state).document(instance.INSTANCE_DOCUMENT)
            reference.update({"environment_type": key_instance.environment_type}, timeout=timeout)
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise ReconcileStopped(f"Firestore failed recording the instance: {type(error).__name__}") from None


def _sample(db: firestore.Client, settings: Settings, timeout: float) -> tuple[str, list[dict[str, Any]]]:
    """A few synced users (else organizations), the newest ids first: the ones most likely still in Clerk."""
    for kind, collection in (("users", settings.paths.users), ("organizations", settings.paths.organizations)):
        query = (
            db.collection(collection)
            .select(["clerk_id", "updated_at"])
            .order_by("clerk_id", direction=firestore.Query.DESCENDING)
            .limit(SAMPLE_SIZE)
        )
        try:
            found = [snapshot.to_dict() or {} for snapshot in query.get(retry=None, timeout=timeout)]
        except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
            raise ReconcileStopped(f"Firestore failed reading a sample: {type(error).__name__}") from None
        synced = [data for data in found if isinstance(data.get("clerk_id"), str) and "updated_at" in data]
        if synced:
            return kind, synced
    return "users", []


def deletion_limit(stored: int) -> int:
    """How many of a kind a run deletes without a person's confirmation: max(50, 2 % of what is stored)."""
    return max(MASS_DELETION_FLOOR, math.floor(stored * MASS_DELETION_SHARE))


def check_mass_deletion(gone: dict[str, tuple[int, int, bool]], *, allowed: bool) -> None:
    """MassDeletion when a kind's deletions (`gone`: kind -> found, stored, all counted) exceed its limit."""
    if allowed:
        return
    over = [
        f"{'more than ' if not complete else ''}{found - (0 if complete else 1)} of the {stored} {kind}"
        for kind, (found, stored, complete) in gone.items()
        if found > deletion_limit(stored)
    ]
    if over:
        limits = ", ".join(f"{deletion_limit(stored)} {kind}" for kind, (_, stored, _) in gone.items())
        raise MassDeletion(
            f"{' and '.join(over)} in Firestore are gone from Clerk, more than a run deletes unconfirmed "
            f"(max(50, 2 %): {limits}); nothing was deleted. If Clerk really deleted them: "
            "reconcile --allow-mass-deletion"
        )
