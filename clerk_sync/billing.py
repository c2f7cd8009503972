"""Clerk Billing, what its kinds share: who pays, where that payer's billing lives, which items grant access.

Documents (names are part of the data contract):
  {USERS_COLLECTION}/{user_id}/billing/subscription                    a user's one subscription
  {ORGANIZATIONS_COLLECTION}/{org_id}/billing/subscription             an organization's
  .../billing/subscription/payments/{payment_id}                       the payer's payments (payments.py)
  billing_plans/{plan_id}                                              plans and their features (copied
                                                                       by backfill and reconcile)
  billing_tombstones/{subscription or payment id}                      what reconcile found gone from Clerk

A payer is a user or an organization; its billing lives under its document, so the payer's
deletion sweeps it (Firestore never deletes subcollections with their parent) and its tombstone
forbids billing written after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.cloud import firestore

from clerk_sync import ids, payload
from clerk_sync.cascade import Sweep
from clerk_sync.kind import Ids
from clerk_sync.paths import Paths
from clerk_sync.payload import MalformedEvent

__all__ = [
    "BILLING",
    "GRANTING_STATUSES",
    "PAYER_TYPES",
    "PAYMENTS",
    "SUBSCRIPTION",
    "Payer",
    "billing_collection",
    "money",
    "optional_object",
    "payer_from",
    "payer_guard",
    "payer_of",
    "payer_sweeps",
    "payments_collection",
    "plan_id",
]

BILLING = "billing"  # the payer's subscollection the sync owns
SUBSCRIPTION = "subscription"  # the one document in it
PAYMENTS = "payments"  # a subcollection of the subscription document
PAYER_TYPES = ("user", "organization")
# Item statuses that grant the plan now. `active` includes free trials. `canceled` keeps the plan
# until the period ends (Clerk: "the payer retains Plan features until the end of the current
# billing period"; `subscriptionItem.ended` follows then). `past_due` keeps it while Clerk retries
# the failed charge: Clerk ends the item (or moves the payer to the free plan) when it gives up, and
# an expired card should not lock a payer out on the first failed attempt; the document's
# `status` / `past_due_at` show it, for apps that want to warn or to be stricter.
GRANTING_STATUSES = frozenset({"active", "past_due", "canceled"})


@dataclass(frozen=True)
class Payer:
    """Who pays: a user or an organization (Clerk ids), and Clerk's own payer id (`cpayer_…`)."""

    type: str
    id: str
    clerk_payer_id: str | None

    @property
    def ids(self) -> dict[str, str]:
        """The ids that place the payer's billing documents."""
        return {"payer_type": self.type, "payer_id": self.id}


def optional_object(data: dict[str, Any], field: str, where: str = "data") -> dict[str, Any] | None:
    """An object or null field; anything else is malformed."""
    value = data.get(field)
    if value is None or isinstance(value, dict):
        return value
    raise MalformedEvent(f"{where}.{field} is not an object")


def payer_from(data: dict[str, Any], where: str = "data") -> Payer:
    """The payer an event names: `payer.organization_id` or `payer.user_id` (the other is an empty string).

    An organization id wins when both are set: an organization's payment may name the member who made it.
    """
    payer = data.get("payer")
    if not isinstance(payer, dict):
        raise MalformedEvent(f"{where}.payer is not an object")
    organization_id = payload.optional_str(payer, "organization_id", f"{where}.payer")
    user_id = payload.optional_str(payer, "user_id", f"{where}.payer")
    clerk_payer_id = payload.optional_str(payer, "id", f"{where}.payer") or None
    if organization_id:
        clerk_id = payload.clerk_id(organization_id, f"{where}.payer.organization_id", "organization")
        return Payer("organization", clerk_id, clerk_payer_id)
    if user_id:
        return Payer("user", payload.clerk_id(user_id, f"{where}.payer.user_id", "user"), clerk_payer_id)
    raise MalformedEvent(f"{where}.payer names neither a user nor an organization")


def _payer_collection(paths: Paths, payer_type: str) -> str:
    return paths.users if payer_type == "user" else paths.organizations


def billing_collection(paths: Paths, payer_type: str, payer_id: str) -> str:
    """The payer's `billing` subcollection."""
    return f"{_payer_collection(paths, payer_type)}/{payer_id}/{BILLING}"


def payments_collection(paths: Paths, payer_type: str, payer_id: str) -> str:
    """The payer's payments, under its subscription document."""
    return f"{billing_collection(paths, payer_type, payer_id)}/{SUBSCRIPTION}/{PAYMENTS}"


def payer_of(paths: Paths, document_path: str, depth: int) -> tuple[str, str, list[str]] | None:
    """Whose billing a document path is (found by a collection-group query): payer type, payer id, and
    the path's rest below `billing` (`depth` segments); None when it is not this deployment's."""
    for payer_type in PAYER_TYPES:
        prefix = f"{_payer_collection(paths, payer_type)}/"
        if document_path.startswith(prefix):
            payer_id, *rest = document_path[len(prefix) :].split("/")
            if len(rest) == depth + 1 and rest[0] == BILLING and rest[1] == SUBSCRIPTION:
                return payer_type, payer_id, rest[1:]
    return None


def payer_guard(paths: Paths, billing_ids: Ids) -> tuple[str, ...]:
    """The payer's tombstone: a deleted payer's billing never comes back."""
    tombstones = paths.user_tombstones if billing_ids["payer_type"] == "user" else paths.organization_tombstones
    return (f"{tombstones}/{billing_ids['payer_id']}",)


def payer_sweeps(db: firestore.Client, paths: Paths, payer_type: str, payer_id: str) -> list[Sweep]:
    """The payer's billing documents, which its deletion leaves (they are subcollections): one query finds them all."""
    query = db.collection(billing_collection(paths, payer_type, payer_id)).recursive()
    return [Sweep(query=query, ours=lambda _path: True, ordered=True)]


def money(data: dict[str, Any], field: str, where: str) -> dict[str, Any] | None:
    """A Clerk amount (`{amount, amount_formatted, currency, ...}`) as an app's billing page shows it."""
    value = optional_object(data, field, where)
    if value is None:
        return None
    inside = f"{where}.{field}"
    return {
        "amount": payload.optional_int(value, "amount", inside),
        "amount_formatted": payload.optional_str(value, "amount_formatted", inside),
        "currency": payload.optional_str(value, "currency", inside),
    }


def plan_id(value: object, where: str) -> str | None:
    """A plan id (`cplan_…`), usable as a document id of the plans collection, or None."""
    if value is None or value == "":
        return None
    if not ids.is_clerk_id(value):
        raise MalformedEvent(f"{where} is not a Clerk plan id")
    assert isinstance(value, str)
    return value
