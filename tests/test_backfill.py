"""`backfill` with the real clerk-backend-api client against a local Clerk API, into the emulator."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from clerk_api import BASE_MS, SECRET_KEY, FakeClerk, api_user, serve
from clerk_backend_api import models
from conftest import PATHS, PROJECT, apply_event, snapshot_all
from google.cloud import firestore

from clerk_sync import events, users
from clerk_sync.outcome import Outcome
from tools import backfill, cli

# clerk-backend-api reads a deprecated query field of its own request model on every call.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")
COUNT_NAMES = ("created", "updated", "unchanged", "stale", "duplicate", "conflicts", "skipped")


def clerk_users(count: int, *, start: int = 0) -> list[dict[str, Any]]:
    """`count` users, oldest first, each with its own address."""
    return [
        api_user(
            f"user_bf{index:04d}",
            email=f"grace{index}@example.com",
            created_at=BASE_MS + index * 1000,
            updated_at=BASE_MS + index * 1000 + 500,
        )
        for index in range(start, start + count)
    ]


def run_backfill(
    capsys: pytest.CaptureFixture[str], fake: FakeClerk, tmp_path: Path, emulator_host: str, *options: str
) -> tuple[int, str, str]:
    """`python -m clerk_sync backfill …` in this process; returns exit code, stdout, stderr."""
    capsys.readouterr()
    code = cli.main(
        [
            "backfill",
            "--env-file",
            str(tmp_path / "absent.env"),
            "--emulator",
            emulator_host,
            "--project",
            PROJECT,
            "--server-url",
            fake.url,
            *options,
        ]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def counts(summary: str) -> dict[str, int]:
    """The summary's numbers by name."""
    found = dict(re.findall(r"^  (\w+)\s+(\d+)", summary, flags=re.MULTILINE))
    return {name: int(found[name]) for name in COUNT_NAMES}


def expected(**nonzero: int) -> dict[str, int]:
    return {name: nonzero.get(name, 0) for name in COUNT_NAMES}


def deliver(db: firestore.Client, message_id: str, envelope: dict[str, Any]) -> Outcome:
    """What the webhook would have stored before the backfill ran."""
    event = events.parse_event(json.dumps(envelope).encode())
    assert not isinstance(event, events.IgnoredEvent)
    return apply_event(db, message_id, event)


def upsert_envelope(user: dict[str, Any]) -> dict[str, Any]:
    webhook_data = {**user, "email_addresses": [dict(entry) for entry in user["email_addresses"]]}
    return {"type": "user.updated", "object": "event", "timestamp": user["updated_at"], "data": webhook_data}


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


@pytest.mark.usefixtures("secret_key")
def test_backfill_writes_every_user_through_a_429_and_a_500(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(23)
    fake = FakeClerk(users, faults={1: (429, {"Retry-After": "1"}), 2: (500, {})})

    with serve(fake):
        code, out, err = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "5")

    assert code == 0, out + err
    assert counts(out) == expected(created=23)
    stored = {document.id: document.to_dict() or {} for document in db.collection(PATHS.users).stream(timeout=10)}
    assert set(stored) == {user["id"] for user in users}
    assert stored["user_bf0007"]["email"] == "grace7@example.com"
    assert stored["user_bf0007"]["public_metadata"] == {"plan": "pro"}
    assert all("private_metadata" not in document for document in stored.values())
    claims = {document.id for document in db.collection(PATHS.claims).stream(timeout=10)}
    assert len(claims) == 23
    logged = {document.id for document in db.collection(PATHS.events).stream(timeout=10)}
    assert f"backfill_user_bf0007_{BASE_MS + 7500}" in logged
    requests = fake.list_requests()
    assert [request.status for request in requests] == [200, 429, 500, 200, 200, 200, 200]
    assert [request.query["offset"] for request in requests] == ["0", "5", "5", "5", "10", "15", "20"]
    assert requests[2].at - requests[1].at >= 0.95  # Retry-After: 1 was honoured, not skipped
    assert {request.query["order_by"] for request in requests} == {"+created_at"}
    assert "429, retrying in 1.0 s" in err
    assert "users/s" in err


@pytest.mark.usefixtures("secret_key")
def test_second_backfill_run_finds_only_duplicates_and_changes_nothing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClerk(clerk_users(12))
    with serve(fake):
        run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "5")
        before = snapshot_all(db)

        code, out, _ = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "5")

    assert code == 0
    assert counts(out) == expected(duplicate=12)
    assert snapshot_all(db) == before


def mixed_state(db: firestore.Client) -> list[dict[str, Any]]:
    """Clerk's users (oldest first) against a Firestore that webhooks already partly filled.

    u0 new; u1 older copy stored; u2 same version stored; u3 newer copy stored; u4 deleted
    (tombstone); u5 took moving@ from u6, listed before u6's update frees it; u7 wants taken@,
    still held by user_gone whom Clerk no longer lists (a conflict that needs a person).
    """
    users = clerk_users(8)
    users[5] = api_user("user_bf0005", email="moving@example.com", created_at=BASE_MS + 5000, updated_at=BASE_MS + 9000)
    users[7] = api_user("user_bf0007", email="taken@example.com", created_at=BASE_MS + 7000, updated_at=BASE_MS + 9000)
    older_u1 = api_user("user_bf0001", email="old1@example.com", created_at=BASE_MS + 1000, updated_at=BASE_MS + 1200)
    newer_u3 = api_user("user_bf0003", email="new3@example.com", created_at=BASE_MS + 3000, updated_at=BASE_MS + 9999)
    older_u6 = api_user("user_bf0006", email="moving@example.com", created_at=BASE_MS + 6000, updated_at=BASE_MS + 6100)
    gone = api_user("user_gone", email="taken@example.com", created_at=BASE_MS, updated_at=BASE_MS + 100)
    assert deliver(db, "msg_u1", upsert_envelope(older_u1)) is Outcome.APPLIED
    assert deliver(db, "msg_u2", upsert_envelope(users[2])) is Outcome.APPLIED
    assert deliver(db, "msg_u3", upsert_envelope(newer_u3)) is Outcome.APPLIED
    deleted = {"type": "user.deleted", "timestamp": BASE_MS + 9000, "data": {"id": "user_bf0004", "deleted": True}}
    assert deliver(db, "msg_u4", deleted) is Outcome.APPLIED
    assert deliver(db, "msg_u6", upsert_envelope(older_u6)) is Outcome.APPLIED
    assert deliver(db, "msg_gone", upsert_envelope(gone)) is Outcome.APPLIED
    return users


@pytest.mark.usefixtures("secret_key")
def test_dry_run_writes_nothing_and_predicts_what_the_real_run_does(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClerk(mixed_state(db))
    before = snapshot_all(db)
    with serve(fake):
        dry_code, dry_out, _ = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "3", "--dry-run")
        after_dry_run = snapshot_all(db)

        code, out, _ = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "3")

    assert after_dry_run == before
    assert "dry run, nothing written" in dry_out
    assert counts(dry_out) == counts(out) == expected(created=2, updated=2, unchanged=1, stale=2, conflicts=1)
    assert dry_code == code == 3
    assert "user_bf0007: primary email still held by user_gone" in dry_out
    assert "user_bf0007: primary email still held by user_gone" in out


@pytest.mark.usefixtures("secret_key")
def test_conflicting_user_is_reported_and_left_unwritten(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeClerk(mixed_state(db))
    with serve(fake):
        code, out, _ = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "3")

    assert code == 3
    assert "user_bf0007: primary email still held by user_gone" in out
    assert not db.collection(PATHS.users).document("user_bf0007").get(timeout=10).exists
    moved_to = db.collection(PATHS.users).document("user_bf0005").get(timeout=10).to_dict() or {}
    moved_from = db.collection(PATHS.users).document("user_bf0006").get(timeout=10).to_dict() or {}
    assert moved_to["email"] == "moving@example.com"
    assert moved_from["email"] == "grace6@example.com"
    assert not db.collection(PATHS.users).document("user_bf0004").get(timeout=10).exists  # tombstone wins
    newer = db.collection(PATHS.users).document("user_bf0003").get(timeout=10).to_dict() or {}
    assert newer["email"] == "new3@example.com"  # the newer webhook copy wins


@pytest.mark.usefixtures("secret_key")
def test_stopped_run_resumes_from_the_printed_offset(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill, "MAX_ATTEMPTS", 2)
    users = clerk_users(13)
    fake = FakeClerk(users, faults={1: (500, {}), 2: (503, {})})
    with serve(fake):
        stopped_code, stopped_out, stopped_err = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "5")
        offset = re.search(r"resume with: --start-offset (\d+)", stopped_err)
        assert offset is not None, stopped_err
        written_before = {document.id for document in db.collection(PATHS.users).stream(timeout=10)}

        code, out, _ = run_backfill(
            capsys, fake, tmp_path, emulator_host, "--page-size", "5", "--start-offset", offset.group(1)
        )

    assert stopped_code == 1
    assert counts(stopped_out) == expected(created=5)
    assert offset.group(1) == "5"
    assert written_before == {user["id"] for user in users[:5]}
    assert code == 0
    assert counts(out) == expected(created=8)
    assert fake.list_requests()[3].query["offset"] == "5"
    assert {document.id for document in db.collection(PATHS.users).stream(timeout=10)} == {u["id"] for u in users}


@pytest.mark.usefixtures("secret_key")
def test_resume_offset_skips_the_users_before_it(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    fake = FakeClerk(users)
    with serve(fake):
        code, out, _ = run_backfill(capsys, fake, tmp_path, emulator_host, "--page-size", "5", "--start-offset", "10")

    assert code == 0
    assert counts(out) == expected(created=2)
    assert {document.id for document in db.collection(PATHS.users).stream(timeout=10)} == {"user_bf0010", "user_bf0011"}


def test_wrong_secret_key_stops_with_clerks_answer_and_writes_nothing(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_wrong")
    fake = FakeClerk(clerk_users(3))
    with serve(fake):
        code, _, err = run_backfill(capsys, fake, tmp_path, emulator_host)

    assert code == 1
    assert "Clerk refused GET /users?offset=0: 401" in err
    assert "sk_test_wrong" not in err
    assert snapshot_all(db) == {}


def test_backfill_without_secret_key_explains_what_to_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)

    code = cli.main(["backfill", "--env-file", str(tmp_path / "absent.env")])

    assert code == 1
    assert "set CLERK_SECRET_KEY" in capsys.readouterr().err


def test_user_from_the_api_model_parses_like_the_raw_json() -> None:
    raw = api_user("user_model01", email="Model@Example.com", created_at=BASE_MS, updated_at=BASE_MS + 1)
    envelope = json.dumps({"type": "user.updated", "data": raw}).encode()

    from_model = backfill._upsert(models.User.model_validate(raw))

    from_raw = events.parse_event(envelope)
    assert isinstance(from_raw, users.UserUpsert)
    assert from_model.document == from_raw.document
    assert from_model.email_key == "model@example.com"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("1", 1.0), ("0.25", 0.25), ("-3", 0.0), ("100000", backfill.MAX_RETRY_AFTER_SECONDS), ("soon", None), ("", None)],
)
def test_retry_after_is_read_as_seconds(header: str, seconds: float | None) -> None:
    assert backfill.retry_after_seconds(header) == seconds


def test_retry_after_http_date_is_the_time_until_then() -> None:
    header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    seconds = backfill.retry_after_seconds(header)

    assert seconds is not None
    assert 28 <= seconds <= 30
