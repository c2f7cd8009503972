"""`users` and `user ID`: the terminal twin of the Firestore console view of the synced data.

These print personal data (emails, names) to the operator's own terminal, never to logs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync.paths import Paths
from clerk_sync.transaction import NO_RETRY
from tools.common import ToolError

__all__ = ["list_users", "show_user"]

MAX_EVENTS_READ = 1000


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


def _unavailable(error: Exception) -> ToolError:
    return ToolError(f"Firestore did not answer in time or refused ({type(error).__name__}: {error})")


def list_users(db: firestore.Client, paths: Paths, *, limit: int, timeout: float, out: TextIO) -> int:
    """The most recently updated users first: id, primary email, name, updated_at."""
    query = db.collection(paths.users).order_by("updated_at", direction=firestore.Query.DESCENDING).limit(limit)
    try:
        documents = list(query.stream(retry=NO_RETRY, timeout=timeout))
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None
    if not documents:
        out.write("no users yet (send one: python -m clerk_sync send user.created)\n")
        return 0
    rows = [("ID", "EMAIL", "NAME", "UPDATED_AT")]
    for document in documents:
        data = document.to_dict() or {}
        rows.append((document.id, str(data.get("email") or "-"), _name(data), _time(data.get("updated_at"))))
    out.write(_table(rows) + "\n")
    more = " (more exist: raise --limit)" if len(documents) == limit else ""
    out.write(f"{len(documents)} user{'s' if len(documents) != 1 else ''}, most recently updated first{more}\n")
    return 0


def show_user(db: firestore.Client, paths: Paths, user_id: str, *, timeout: float, out: TextIO) -> int:
    """One user's document, tombstone and event-log entries (newest first); 1 when none exists."""
    try:
        document = db.collection(paths.users).document(user_id).get(retry=None, timeout=timeout)
        tombstone = db.collection(paths.user_tombstones).document(user_id).get(retry=None, timeout=timeout)
        # Equality only, sorted here: ordering in the query would need a composite index in production.
        entries = list(
            db.collection(paths.events)
            .where(filter=firestore.FieldFilter("clerk_id", "==", user_id))
            .limit(MAX_EVENTS_READ)
            .stream(retry=NO_RETRY, timeout=timeout)
        )
    except api_exceptions.GoogleAPICallError as error:
        raise _unavailable(error) from None
    if document.exists:
        out.write(f"{paths.users}/{user_id}\n")
        rendered = json.dumps(document.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, default=_json_default)
        out.write(rendered + "\n")
    else:
        out.write(f"{paths.users}/{user_id}: no document\n")
    if tombstone.exists:
        data = tombstone.to_dict() or {}
        out.write(
            f"{paths.user_tombstones}/{user_id}: deleted_at {_time(data.get('deleted_at'))}, "
            f"recorded_at {_time(data.get('recorded_at'))} (later upserts for this id are ignored)\n"
        )
    else:
        out.write(f"{paths.user_tombstones}/{user_id}: none\n")
    records = sorted(
        (entry.to_dict() or {} for entry in entries),
        key=lambda record: record.get("received_at") or datetime.min.replace(tzinfo=UTC),
        reverse=True,
    )
    out.write(f"{paths.events} for {user_id}: {len(records)}{' (newest first)' if records else ''}\n")
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
        out.write("\n".join("  " + line for line in _table(rows).splitlines()) + "\n")
    return 0 if document.exists or tombstone.exists or records else 1
