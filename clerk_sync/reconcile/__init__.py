"""Reconcile: Firestore made equal to Clerk again after deliveries were lost, deletions included.

Svix gives up on a message after about 28 hours, and an endpoint that is down, unmounted or holds
the wrong secret receives nothing. This reads users, organizations, memberships, roles and
permissions from Clerk's Backend API, compares them with Firestore, and repairs every difference
through the webhook's own transactions (`events.apply_event`): missing or older in Firestore -> the
upsert the webhook would have applied; in Firestore but gone from Clerk -> the deletion it would
have applied (tombstone, claim released, cascades). An id is deleted only when Clerk confirms it is
gone (`GET` by id answers 404), never because a listing missed it. Webhooks arriving meanwhile stay
correct: the transactions order everything, whoever writes first.

A run is `full` (every object, deletions found) or `incremental` (users changed since the last run,
newest first). Progress is checkpointed in Firestore after every page, so a run cut off by its time
budget resumes where it stopped; a lease in the same document keeps two runs from overlapping.

The steps, one module each: `clerk_api` (Clerk's Backend API with bounded retries), `listing`
(paging through it), `comparison` (Clerk's objects against Firestore's), `repairs` (applied through
the webhook's transactions), `lease` (one run at a time, the checkpoint), `phases` (a run from start
to end); `kinds` holds what differs between the kinds (users, organizations, memberships, roles and
permissions); `billing_phase` copies Clerk Billing's plans and compares every payer's subscription item
by item.
"""

from clerk_sync.reconcile.clerk_api import ClerkApi, retry_after_seconds
from clerk_sync.reconcile.kinds import KINDS
from clerk_sync.reconcile.phases import run
from clerk_sync.reconcile.report import TALLIED, Mode, Progress, ReconcileBusy, ReconcileStopped, Report

__all__ = [
    "KINDS",
    "TALLIED",
    "ClerkApi",
    "Mode",
    "Progress",
    "ReconcileBusy",
    "ReconcileStopped",
    "Report",
    "retry_after_seconds",
    "run",
]
