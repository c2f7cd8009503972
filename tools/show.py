"""`users`, `user ID`, `organizations`, `organization ID`: the terminal twin of the Firestore console.

These print personal data (emails, names) to the operator's own terminal, never to logs. A user or
an organization is shown with its subscription (items, the plans that grant access now) and its
latest payments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from clerk_sync import billing
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.transaction import NO_RETRY
from tools.common import ToolError

__all__ = ["list_organizations", "list_users", "show_organization", "show_user"]

MAX_EVENTS_READ = 1000
MAX_MEMBERS_SHOWN = 200
MAX_PAYMENTS_SHOWN = 10


def _time(value: object) -> str:
    """Firestore Timestamps as ISO 8601 UTC with milliseconds, like Clerk's own precision."""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return "-" if value is None else str(value)


def _json_default(value: object) -> str:
    return _time(value) if isinstance(value, datetime) else repr(value)


def _name(document: dict[str, Any]) -> str:
    return " ".join(part for part in (document.get("first_name"), document.get("last_name")) if part) or "-"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _indented(rows: Sequence[Sequence[str]]) -> str:
    return "\n".join("  " + line for line in _table(rows).splitlines()) + "\n"


def _unavailable(error: Exception) -> ToolError:
    return ToolError(f"Firestore did not answer in time or refused ({type(error).__name__}: {error})")


def _newest(db: firestore.Client, collection: str, limit: int, timeout: float) -> list[firestore.DocumentSnapshot[Any]]:
    query = db.collection(collection).order_by("updated_at", direction=firestore.Query.DESCENDING).limit(limit)
    try:
        return list(query.stream(retry=NO_RETRY, timeout=timeout))
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None


def _count_line(found: int, limit: int, noun: str) -> str:
    more = " (more exist: raise --limit)" if found == limit else ""
    return f"{found} {noun}{'s' if found != 1 else ''}, most recently updated first{more}\n"


def list_users(db: firestore.Client, paths: Paths, *, limit: int, timeout: float, out: TextIO) -> int:
    """The most recently updated users first: id, primary email, name, updated_at."""
    documents = _newest(db, paths.users, limit, timeout)
    if not documents:
        out.write("no users yet (send one: python3 -m clerk_sync send user.created)\n")
        return 0
    rows = [("ID", "EMAIL", "NAME", "UPDATED_AT")]
    for document in documents:
        data = document.to_dict() or {}
        rows.append((document.id, str(data.get("email") or "-"), _name(data), _time(data.get("updated_at"))))
    out.write(_table(rows) + "\n" + _count_line(len(documents), limit, "user"))
    return 0


def list_organizations(db: firestore.Client, paths: Paths, *, limit: int, timeout: float, out: TextIO) -> int:
    """The most recently updated organizations first: id, name, slug, members, updated_at."""
    documents = _newest(db, paths.organizations, limit, timeout)
    if not documents:
        out.write("no organizations yet (send one: python3 -m clerk_sync send organization.created)\n")
        return 0
    rows = [("ID", "NAME", "SLUG", "MEMBERS", "UPDATED_AT")]
    try:
        for document in documents:
            data = document.to_dict() or {}
            collection = db.collection(paths.memberships(document.id))
            members = collection.count().get(retry=NO_RETRY, timeout=timeout)  # type: ignore[no-untyped-call]
            count = str(members[0][0].value)
            rows.append((document.id, str(data.get("name") or "-"), str(data.get("slug") or "-"), count,
                         _time(data.get("updated_at"))))  # fmt: skip
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None
    out.write(_table(rows) + "\n" + _count_line(len(documents), limit, "organization"))
    return 0


def _event_records(
    db: firestore.Client, paths: Paths, clerk_ids: Sequence[str], timeout: float
) -> list[dict[str, Any]]:
    """Event-log records about these ids (or their billing, which records its payer), newest first.

    Equality filters only: no composite index needed.
    """
    records: list[dict[str, Any]] = []
    for clerk_id in clerk_ids:
        for field in ("clerk_id", "payer_id"):
            query = db.collection(paths.events).where(filter=FieldFilter(field, "==", clerk_id))
            records += [
                entry.to_dict() or {} for entry in query.limit(MAX_EVENTS_READ).stream(retry=NO_RETRY, timeout=timeout)
            ]
    return sorted(
        records, key=lambda record: record.get("received_at") or datetime.min.replace(tzinfo=UTC), reverse=True
    )


def _write_events(out: TextIO, paths: Paths, about: str, records: list[dict[str, Any]]) -> None:
    out.write(f"{paths.events} for {about}: {len(records)}{' (newest first)' if records else ''}\n")
    if records:
        rows = [("RECEIVED_AT", "TYPE", "OUTCOME", "SVIX_ID")]
        rows += [
            (
                _time(record.get("received_at")),
                str(record.get("type")),
                str(record.get("outcome")),
                str(record.get("svix_id")),
            )
            for record in records
        ]
        out.write(_indented(rows))


def _write_document(out: TextIO, path: str, document: firestore.DocumentSnapshot[Any]) -> None:
    if document.exists:
        out.write(f"{path}\n")
        out.write(
            json.dumps(document.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, default=_json_default) + "\n"
        )
    else:
        out.write(f"{path}: no document\n")


def _write_tombstone(out: TextIO, path: str, tombstone: firestore.DocumentSnapshot[Any]) -> None:
    if tombstone.exists:
        data = tombstone.to_dict() or {}
        out.write(
            f"{path}: deleted_at {_time(data.get('deleted_at'))}, recorded_at {_time(data.get('recorded_at'))} "
            "(later upserts for this id are ignored)\n"
        )
    else:
        out.write(f"{path}: none\n")


@dataclass(frozen=True)
class _Billing:
    """A payer's subscription document and its newest payments, as read."""

    path: str
    subscription: firestore.DocumentSnapshot[Any]
    payments: list[firestore.DocumentSnapshot[Any]]

    @property
    def exists(self) -> bool:
        return self.subscription.exists or bool(self.payments)


def _read_billing(db: firestore.Client, paths: Paths, payer_type: str, payer_id: str, timeout: float) -> _Billing:
    collection = billing.billing_collection(paths, payer_type, payer_id)
    subscription = db.collection(collection).document(billing.SUBSCRIPTION).get(retry=NO_RETRY, timeout=timeout)
    query = db.collection(billing.payments_collection(paths, payer_type, payer_id))
    newest = query.order_by("updated_at", direction=firestore.Query.DESCENDING).limit(MAX_PAYMENTS_SHOWN)
    return _Billing(
        f"{collection}/{billing.SUBSCRIPTION}", subscription, list(newest.stream(retry=NO_RETRY, timeout=timeout))
    )


def _money(value: object) -> str:
    if not isinstance(value, dict):
        return "-"
    return str(value.get("amount_formatted") or f"{value.get('amount')} {value.get('currency')}")


def _write_billing(out: TextIO, found: _Billing) -> None:
    """The subscription (its own status, each item, what grants access now) and the newest payments."""
    if not found.subscription.exists:
        out.write(f"{found.path}: none\n")
    else:
        data = found.subscription.to_dict() or {}
        plans = ", ".join(data.get("active_plans") or []) or "none"
        features = ", ".join(data.get("active_features") or []) or "none"
        out.write(
            f"{found.path}: {data.get('subscription_id')}, status {data.get('status') or '-'}, "
            f"updated_at {_time(data.get('updated_at'))}\n  active plans: {plans}; active features: {features}\n"
        )
        items = data.get("items") if isinstance(data.get("items"), dict) else {}
        if items:
            rows: list[tuple[str, ...]] = [("ITEM", "PLAN", "STATUS", "TRIAL", "SEATS", "PERIOD_END", "UPDATED_AT")]
            for item_id, entry in sorted(items.items(), key=lambda pair: str(pair[1].get("updated_at"))):
                rows.append((item_id, str((entry.get("plan") or {}).get("slug") or entry.get("plan_id") or "-"),
                             str(entry.get("status") or "-"), "yes" if entry.get("is_free_trial") else "no",
                             str(entry.get("seats") if entry.get("seats") is not None else "-"),
                             _time(entry.get("period_end")), _time(entry.get("updated_at"))))  # fmt: skip
            out.write(_indented(rows))
    payments = f"{found.path}/{billing.PAYMENTS}"
    shown = f", newest {MAX_PAYMENTS_SHOWN}" if len(found.payments) == MAX_PAYMENTS_SHOWN else ""
    out.write(f"{payments}: {len(found.payments)}{shown}\n")
    if found.payments:
        payment_rows: list[tuple[str, ...]] = [("PAYMENT", "STATUS", "CHARGE", "TOTAL", "CARD", "UPDATED_AT")]
        for payment in found.payments:
            data = payment.to_dict() or {}
            source: dict[str, Any] = data["payment_source"] if isinstance(data.get("payment_source"), dict) else {}
            card = " ".join(str(source.get(name)) for name in ("card_type", "last4") if source.get(name)) or "-"
            total = _money((data.get("totals") or {}).get("grand_total"))
            payment_rows.append((payment.id, str(data.get("status")), str(data.get("charge_type")), total, card,
                                 _time(data.get("updated_at"))))  # fmt: skip
        out.write(_indented(payment_rows))


def show_user(db: firestore.Client, paths: Paths, user_id: str, *, timeout: float, out: TextIO) -> int:
    """One user's document, tombstone, memberships and event-log entries; 1 when none exists."""
    try:
        document = db.collection(paths.users).document(user_id).get(retry=NO_RETRY, timeout=timeout)
        tombstone = db.collection(paths.user_tombstones).document(user_id).get(retry=NO_RETRY, timeout=timeout)
        memberships = [
            member
            for member in db.collection_group(MEMBERSHIPS)
            .where(filter=FieldFilter("user_id", "==", user_id))
            .limit(MAX_MEMBERS_SHOWN)
            .stream(retry=NO_RETRY, timeout=timeout)
            if paths.is_membership(member.reference.path)
        ]
        records = _event_records(db, paths, [user_id], timeout)
        found = _read_billing(db, paths, "user", user_id, timeout)
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None
    _write_document(out, f"{paths.users}/{user_id}", document)
    _write_tombstone(out, f"{paths.user_tombstones}/{user_id}", tombstone)
    out.write(f"memberships of {user_id}: {len(memberships)}\n")
    if memberships:
        rows = [("ORGANIZATION", "ROLE", "MEMBERSHIP_ID", "UPDATED_AT")]
        for member in memberships:
            data = member.to_dict() or {}
            rows.append((str(data.get("organization_id")), str(data.get("role")), str(data.get("membership_id")),
                         _time(data.get("updated_at"))))  # fmt: skip
        out.write(_indented(rows))
    _write_billing(out, found)
    _write_events(out, paths, user_id, records)
    return 0 if document.exists or tombstone.exists or records or memberships or found.exists else 1


def show_organization(db: firestore.Client, paths: Paths, organization_id: str, *, timeout: float, out: TextIO) -> int:
    """One organization's document, tombstone, members and event-log entries; 1 when none exists."""
    try:
        document = db.collection(paths.organizations).document(organization_id).get(retry=NO_RETRY, timeout=timeout)
        tombstone = (
            db.collection(paths.organization_tombstones).document(organization_id).get(retry=NO_RETRY, timeout=timeout)
        )
        members = list(
            db.collection(paths.memberships(organization_id))
            .limit(MAX_MEMBERS_SHOWN)
            .stream(retry=NO_RETRY, timeout=timeout)
        )
        records = _event_records(db, paths, [organization_id], timeout)
        found = _read_billing(db, paths, "organization", organization_id, timeout)
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None
    _write_document(out, f"{paths.organizations}/{organization_id}", document)
    _write_tombstone(out, f"{paths.organization_tombstones}/{organization_id}", tombstone)
    shown = f" (first {MAX_MEMBERS_SHOWN})" if len(members) == MAX_MEMBERS_SHOWN else ""
    out.write(f"{paths.memberships(organization_id)}: {len(members)}{shown}\n")
    if members:
        rows = [("USER_ID", "IDENTIFIER", "NAME", "ROLE", "MEMBERSHIP_ID", "UPDATED_AT")]
        for member in members:
            data = member.to_dict() or {}
            rows.append((member.id, str(data.get("identifier") or "-"), _name(data), str(data.get("role")),
                         str(data.get("membership_id")), _time(data.get("updated_at"))))  # fmt: skip
        out.write(_indented(rows))
    _write_billing(out, found)
    _write_events(out, paths, organization_id, records)
    return 0 if document.exists or tombstone.exists or records or members or found.exists else 1
