"""Every synced document in the emulator (users, organizations, memberships, billing), checked field by field
against the declaration (clerk_sync/documents.py).

Used after whatever wrote them (the webhook, reconcile, the delivery simulator): a field of the wrong
type, a declared field missing, a field the sync wrote that nothing declares, or an id unlike its
path's is a problem named by path and field, never by value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.cloud import firestore

from clerk_sync import billing, documents, kind
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.schema import Document

__all__ = ["problems", "stored"]

TIMEOUT_SECONDS = 30


def stored(db: firestore.Client, paths: Paths) -> Iterator[tuple[Document, str, dict[str, str], dict[str, Any]]]:
    """Each synced document: its declaration, its path, the ids its path holds, its fields."""
    for snapshot in db.collection(paths.users).stream(timeout=TIMEOUT_SECONDS):
        yield documents.USER, snapshot.reference.path, {"clerk_id": snapshot.id}, snapshot.to_dict() or {}
    for snapshot in db.collection(paths.organizations).stream(timeout=TIMEOUT_SECONDS):
        yield documents.ORGANIZATION, snapshot.reference.path, {"clerk_id": snapshot.id}, snapshot.to_dict() or {}
    for snapshot in db.collection_group(MEMBERSHIPS).stream(timeout=TIMEOUT_SECONDS):
        if not paths.is_membership(snapshot.reference.path):
            continue
        organization = snapshot.reference.parent.parent
        assert organization is not None
        ids = {"organization_id": organization.id, "user_id": snapshot.id}
        yield documents.MEMBERSHIP, snapshot.reference.path, ids, snapshot.to_dict() or {}
    for snapshot in db.collection_group(billing.BILLING).stream(timeout=TIMEOUT_SECONDS):
        owner = billing.payer_of(paths, snapshot.reference.path, 1)
        if owner is not None:
            ids = {"payer_type": owner[0], "payer_id": owner[1]}
            yield documents.SUBSCRIPTION, snapshot.reference.path, ids, snapshot.to_dict() or {}
    for snapshot in db.collection_group(billing.PAYMENTS).stream(timeout=TIMEOUT_SECONDS):
        owner = billing.payer_of(paths, snapshot.reference.path, 3)
        if owner is not None and owner[2][1] == billing.PAYMENTS:
            ids = {"payer_type": owner[0], "payer_id": owner[1], "payment_id": snapshot.id}
            yield documents.PAYMENT, snapshot.reference.path, ids, snapshot.to_dict() or {}
    for snapshot in db.collection(paths.billing_plans).stream(timeout=TIMEOUT_SECONDS):
        yield documents.PLAN, snapshot.reference.path, {"plan_id": snapshot.id}, snapshot.to_dict() or {}


def problems(
    db: firestore.Client, paths: Paths, *, app_fields: frozenset[str] = frozenset(), minimum: int = 1
) -> list[str]:
    """What is wrong with the stored synced documents (`app_fields`: the test's own fields, allowed).

    A stripped user (`ON_USER_DELETED=keep-app-fields`) holds only the app's fields and
    `clerk_deleted_at`; it is not a synced document any more and is skipped. Fewer than `minimum`
    documents checked is a problem too: an empty pass proves nothing.
    """
    found: list[str] = []
    checked = 0
    for declared, path, ids, data in stored(db, paths):
        if kind.DELETED_AT_FIELD in data and not set(data) & set(declared.field_names):
            continue
        checked += 1
        unknown = sorted(set(data) - set(declared.field_names) - app_fields)
        found += [f"{path}: {name} is not declared" for name in unknown]
        found += [f"{path}: {problem}" for problem in declared.problems(data, ids)]
    if checked < minimum:
        found.append(f"only {checked} synced documents checked, expected at least {minimum}")
    return found
