"""`reconcile --undo-run`: a database a run with a wrong key damaged (everything deleted and tombstoned)
gets Clerk's state back, while tombstones real deletion webhooks wrote stay authoritative."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clerk_api import BASE_MS, SECRET_KEY, FakeClerk, serve
from conftest import PATHS, apply_event, snapshot_all
from google.cloud import firestore
from reconcile_runs import clerk_users, counts, deliver, documents, organizations_with_members, run_cli, summary_of

from clerk_sync import events

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")
BAD_RUN = "abcdef012345"  # the run that used another instance's key


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def deleted(db: firestore.Client, message_id: str, event_type: str, data: dict[str, Any]) -> None:
    body = json.dumps({"type": event_type, "object": "event", "timestamp": BASE_MS + 10**9, "data": data}).encode()
    event = events.parse_event(body)
    assert not isinstance(event, events.IgnoredEvent)
    apply_event(db, message_id, event)


@pytest.fixture
def damaged(db: firestore.Client, tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str]) -> FakeClerk:
    """Clerk's users, an organization and its members, all deleted in Firestore by run BAD_RUN (as a wrong
    key made the old code do); one user Clerk really deleted, by its webhook."""
    users = clerk_users(6)
    organizations, memberships = organizations_with_members(users, 1)
    clerk = FakeClerk(users, organizations, memberships)
    with serve(clerk):
        assert run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")[0] == 0
    for user in users:
        deleted(db, f"reconcile_{BAD_RUN}_deleted_{user['id']}", "user.deleted", {"id": user["id"], "deleted": True})
    deleted(db, f"reconcile_{BAD_RUN}_deleted_org_rc000", "organization.deleted", {"id": "org_rc000", "deleted": True})
    for user in users[:2]:  # tombstones written before they named their deletion: found by the event records
        db.collection(PATHS.user_tombstones).document(user["id"]).update({"deleted_by": firestore.DELETE_FIELD})
    gone = clerk_users(1, start=6)[0]  # deleted in Clerk, and its webhook arrived
    deliver(db, "msg_created_gone", "user.created", gone)
    deliver(db, "msg_real_deletion", "user.deleted", {"id": gone["id"], "deleted": True})
    assert documents(db, PATHS.users) == {}
    return clerk


@pytest.mark.usefixtures("secret_key")
def test_a_plain_run_names_the_run_to_undo(
    db: firestore.Client, tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str], damaged: FakeClerk
) -> None:
    with serve(damaged):
        code, out, _ = run_cli(capsys, damaged, tmp_path, emulator_host, "reconcile")

    assert code == 3
    assert f"skipped   users/user_rc0005: deleted by reconcile run {BAD_RUN} but alive in Clerk: " in out
    assert f"reconcile --undo-run {BAD_RUN}" in out
    assert documents(db, PATHS.users) == {}


@pytest.mark.usefixtures("secret_key")
def test_undo_run_writes_clerk_s_state_back_over_the_run_s_tombstones(
    db: firestore.Client, tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str], damaged: FakeClerk
) -> None:
    with serve(damaged):
        code, out, err = run_cli(capsys, damaged, tmp_path, emulator_host, "reconcile", "--undo-run", BAD_RUN, "--json")

    summary = summary_of(out)
    assert (code, summary["outcome"], summary["undo_of"]) == (0, "repaired", BAD_RUN)
    assert summary["undone"]["users"] == {"restored": 6, "kept": 0}
    assert summary["undone"]["organizations"] == {"restored": 1, "kept": 0}
    assert counts(summary, "users")["missing"] == 6
    assert counts(summary, "memberships")["missing"] == 3  # the organization's deletion had swept them
    assert sorted(documents(db, PATHS.users)) == [f"user_rc{index:04d}" for index in range(6)]
    assert sorted(documents(db, PATHS.memberships("org_rc000"))) == ["user_rc0000", "user_rc0001", "user_rc0002"]
    assert set(documents(db, PATHS.user_tombstones)) == {"user_rc0006"}  # the webhook's deletion stays
    assert documents(db, PATHS.user_tombstones)["user_rc0006"]["deleted_by"] == "msg_real_deletion"
    assert f"users: tombstones of run {BAD_RUN}: 6 of objects Clerk holds, 0 kept" in err


@pytest.mark.usefixtures("secret_key")
def test_undo_keeps_the_tombstones_of_objects_clerk_deleted_since(
    db: firestore.Client, tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str], damaged: FakeClerk
) -> None:
    damaged.users = damaged.users[1:]  # user_rc0000 is really gone now

    with serve(damaged):
        code, out, _ = run_cli(capsys, damaged, tmp_path, emulator_host, "reconcile", "--undo-run", "all", "--json")

    assert code == 0
    assert summary_of(out)["undone"]["users"] == {"restored": 5, "kept": 1}
    assert db.collection(PATHS.user_tombstones).document("user_rc0000").get(timeout=10).exists
    assert "user_rc0000" not in documents(db, PATHS.users)


@pytest.mark.usefixtures("secret_key")
def test_a_dry_undo_counts_and_writes_nothing(
    db: firestore.Client, tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str], damaged: FakeClerk
) -> None:
    before = snapshot_all(db)

    with serve(damaged):
        code, out, _ = run_cli(capsys, damaged, tmp_path, emulator_host, "reconcile", "--undo-run", BAD_RUN,
                               "--dry-run")  # fmt: skip

    assert code == 3
    assert f"undo of run {BAD_RUN}: users: 6 tombstones would be removed" in out
    assert snapshot_all(db) == before


@pytest.mark.usefixtures("secret_key", "db")
def test_undo_run_refuses_what_is_not_a_run_id(
    tmp_path: Any, emulator_host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk([])
    with serve(clerk), pytest.raises(SystemExit):
        run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--undo-run", "msg_2abc")

    assert "is not a run id" in capsys.readouterr().err
