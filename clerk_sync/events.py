"""The Clerk event envelope: which module parses each type, and applying a parsed event exactly once.

Adding a kind of Clerk object means a module with its parsers and transaction bodies, and a line
per event type in `PARSERS` below.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from google.cloud import firestore

from clerk_sync import (
    cascade,
    event_log,
    invitations,
    memberships,
    organizations,
    payments,
    permissions,
    roles,
    sessions,
    subscriptions,
    transaction,
    users,
)
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import Outcome
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent

__all__ = [
    "ACKNOWLEDGED",
    "FOLLOW_UPS",
    "KINDS",
    "PARSERS",
    "Change",
    "Event",
    "IgnoredEvent",
    "MalformedEvent",
    "apply_event",
    "parse_event",
]


class Change(Protocol):
    """A parsed event that changes Firestore: one transaction body, then perhaps a sweep."""

    @property
    def event_type(self) -> str: ...

    @property
    def clerk_id(self) -> str: ...

    @property
    def lock_key(self) -> str: ...

    def transact(self, attempt: transaction.Attempt, delivery: Delivery) -> Outcome: ...

    def sweeps(self, db: firestore.Client, paths: Paths) -> Sequence[cascade.Sweep]: ...


@dataclass(frozen=True)
class IgnoredEvent:
    """Any other event type: acknowledged so Svix stops sending it, never stored."""

    event_type: str
    clerk_id: None = None

    @property
    def known(self) -> bool:
        """Whether Clerk's catalog has the type (ACKNOWLEDGED says why it is not stored), or it is new."""
        return self.event_type in ACKNOWLEDGED


Event = Change | IgnoredEvent
Parser = Callable[[str, dict[str, Any], bytes], Change]
# Work outside Firestore that a kind's changes name (Kind.follow_ups), run after the commit. Each
# raises FollowUpFailed (503: the retry finds the event recorded and runs it again).
FollowUp = Callable[[firestore.Client, Change, Delivery, float], None]
FOLLOW_UPS: dict[str, FollowUp] = {
    users.AUTH_FOLLOW_UP: users.align_auth_user,
    permissions.ROLES_FOLLOW_UP: roles.refresh_holders,
}

# Every kind the webhook stores: reconcile and check walk these declarations.
KINDS = (
    users.KIND,
    organizations.KIND,
    memberships.KIND,
    subscriptions.KIND,
    payments.KIND,
    roles.KIND,
    permissions.KIND,
    invitations.KIND,
)

# Types in Clerk's catalog that nothing here stores, and why (docs/data-model.md has every type's decision;
# tests/test_catalog.py holds the two together). Any other type is new: its log line says so.
ACKNOWLEDGED = {
    "session.created": "a session starting changes nothing the rules read",
    "session.pending": "a session waiting for an organization changes nothing the rules read",
    "email.created": "an email Clerk sends (it may hold a one-time code): never stored",
    "sms.created": "a text message Clerk sends (it may hold a one-time code): never stored",
    "waitlistEntry.created": "a waitlist entry is no user yet; an invited one arrives as user.created",
    "waitlistEntry.updated": "a waitlist entry is no user yet; an invited one arrives as user.created",
    "organizationDomain.created": "a domain grants no access; Clerk turns it into invitations and suggestions",
    "organizationDomain.updated": "a domain grants no access; Clerk turns it into invitations and suggestions",
    "organizationDomain.deleted": "a domain grants no access; Clerk turns it into invitations and suggestions",
}

PARSERS: dict[str, Parser] = {
    "user.created": users.parse_upsert,
    "user.updated": users.parse_upsert,
    "user.deleted": users.parse_deletion,
    "organization.created": organizations.parse_upsert,
    "organization.updated": organizations.parse_upsert,
    "organization.deleted": organizations.parse_deletion,
    "organizationMembership.created": memberships.parse_upsert,
    "organizationMembership.updated": memberships.parse_upsert,
    "organizationMembership.deleted": memberships.parse_deletion,
    "organizationInvitation.created": invitations.parse_upsert,
    "organizationInvitation.accepted": invitations.parse_end,
    "organizationInvitation.revoked": invitations.parse_end,
    "session.ended": sessions.parse_end,
    "session.removed": sessions.parse_end,
    "session.revoked": sessions.parse_end,
    **dict.fromkeys(subscriptions.SUBSCRIPTION_TYPES, subscriptions.parse_subscription),
    **dict.fromkeys(subscriptions.ITEM_TYPES, subscriptions.parse_item),
    **dict.fromkeys(payments.PAYMENT_TYPES, payments.parse_upsert),
    # Clerk's billing changelog (2025-07) spelled these in snake case; its catalog now says pastDue.
    "subscription.past_due": subscriptions.parse_subscription,
    "subscriptionItem.past_due": subscriptions.parse_item,
    "role.created": roles.parse_upsert,
    "role.updated": roles.parse_upsert,
    "role.deleted": roles.parse_deletion,
    "permission.created": permissions.parse_upsert,
    "permission.updated": permissions.parse_upsert,
    "permission.deleted": permissions.parse_deletion,
}


def parse_event(body: bytes) -> Event:
    """Parse a verified body; raises MalformedEvent for anything a retry cannot fix."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedEvent("body is not JSON") from None
    if not isinstance(envelope, dict):
        raise MalformedEvent("body is not a JSON object")
    event_type = envelope.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise MalformedEvent("missing type")
    parser = PARSERS.get(event_type)
    if parser is None:
        return IgnoredEvent(event_type=event_type)
    return parser(event_type, envelope, body)


def apply_event(db: firestore.Client, change: Change, delivery: Delivery) -> Outcome:
    """Apply one verified event exactly once in effect; raises StoreUnavailable (answer 503, Svix retries).

    A deletion also sweeps what belonged to the deleted object. Every delivery of a deletion sweeps
    (a redelivery finds nothing left, or finishes what a timed-out attempt began), and one that
    removed documents is `applied`, never `duplicate`.
    """
    deadline = time.monotonic() + delivery.settings.firestore_deadline_seconds
    legacy_until = event_log.legacy_ids_until(db, delivery.paths, delivery.event_ttl, deadline)
    delivery.legacy_event_ids = datetime.now(UTC) < legacy_until
    with transaction.turn(change.lock_key, deadline):
        outcome = transaction.run(db, deadline, lambda attempt: change.transact(attempt, delivery))
    if outcome is not Outcome.CONFLICT:
        # Outside the turn: a long sweep must not hold up other deliveries that share its lock.
        sweeps = change.sweeps(db, delivery.paths)
        removed = cascade.sweep(db, sweeps, deadline) if sweeps else 0
        if removed:
            delivery.notes["swept"] = removed
            outcome = Outcome.APPLIED
    for name in delivery.follow_ups:
        follow_up = FOLLOW_UPS.get(name)
        if follow_up is None:  # named by an older deployment's record: nothing left to do
            delivery.warn(f"follow-up {name} unknown, skipped")
            continue
        follow_up(db, change, delivery, deadline)
    return outcome
