"""Running `reconcile` and `backfill` in this process against the Clerk stand-in, and reading what they did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from clerk_api import BASE_MS, INSTANCE_ID, FakeClerk, api_membership, api_organization, api_user
from conftest import PATHS, PROJECT, apply_event
from google.cloud import firestore

from clerk_sync import events, instance
from clerk_sync.outcome import Outcome
from tools import cli

STATE = f"{PATHS.state}/reconcile"


def clerk_users(count: int, *, start: int = 0, prefix: str = "user_rc", name: str = "grace") -> list[dict[str, Any]]:
    """`count` users, oldest first, each with its own address (`{name}{index}@example.com`)."""
    return [
        api_user(
            f"{prefix}{index:04d}",
            email=f"{name}{index}@example.com",
            created_at=BASE_MS + index * 1000,
            updated_at=BASE_MS + index * 1000 + 500,
        )
        for index in range(start, start + count)
    ]


def organizations_with_members(users: list[dict[str, Any]], count: int) -> tuple[list[Any], list[Any]]:
    """`count` organizations, each with the first three of `users` as members."""
    organizations = [
        api_organization(
            f"org_rc{index:03d}", name=f"Org {index}", created_at=BASE_MS + index, updated_at=BASE_MS + index
        )
        for index in range(count)
    ]
    memberships = [
        api_membership(
            f"orgmem_rc{index:03d}_{user['id']}", organization, user, role="org:member", updated_at=BASE_MS + 10 + index
        )
        for index, organization in enumerate(organizations)
        for user in users[:3]
    ]
    return organizations, memberships


def run_cli(
    capsys: pytest.CaptureFixture[str], fake: FakeClerk, tmp_path: Path, emulator_host: str, *options: str
) -> tuple[int, str, str]:
    """`python -m clerk_sync …` (reconcile or backfill) in this process; exit code, stdout, stderr."""
    command, *rest = options
    capsys.readouterr()
    code = cli.main(
        [
            command,
            "--env-file",
            str(tmp_path / "absent.env"),
            "--emulator",
            emulator_host,
            "--project",
            PROJECT,
            "--server-url",
            fake.url,
            *rest,
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def summary_of(out: str) -> dict[str, Any]:
    """The `--json` summary."""
    parsed: dict[str, Any] = json.loads(out)
    return parsed


def counts(summary: dict[str, Any], kind: str) -> dict[str, int]:
    tally = summary["kinds"][kind]
    return {name: tally[name] if isinstance(tally[name], int) else len(tally[name]) for name in tally}


def deliver(
    db: firestore.Client,
    message_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    instance_id: str | None = INSTANCE_ID,
) -> Outcome:
    """What the webhook stored before reconcile ran; it recorded the event's instance (None: an older webhook)."""
    body = json.dumps({"type": event_type, "object": "event", "timestamp": BASE_MS, "data": data}).encode()
    event = events.parse_event(body)
    assert not isinstance(event, events.IgnoredEvent)
    if instance_id is not None:
        instance.pin(db, PATHS, instance.Pin(instance_id), pinned_by="webhook", timeout=10)
    return apply_event(db, message_id, event)


def documents(db: firestore.Client, collection: str) -> dict[str, dict[str, Any]]:
    return {snapshot.id: snapshot.to_dict() or {} for snapshot in db.collection(collection).stream(timeout=10)}


def without_state(snapshot: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {path: value for path, value in snapshot.items() if not path.startswith(f"{PATHS.state}/")}
