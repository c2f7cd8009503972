"""What keeps reconcile from destroying what it was meant to keep, against the Clerk stand-in and the emulator:
a key of another instance writes nothing, a mass deletion waits for a person, the key never comes
from `.env` for a real project, and the run says which instance it talks to before it writes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from clerk_api import INSTANCE_ID, SECRET_KEY, FakeClerk, api_user, serve
from conftest import PATHS, snapshot_all
from google.cloud import firestore
from reconcile_runs import clerk_users, counts, deliver, documents, run_cli, summary_of

from clerk_sync import instance
from tools import cli

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")
RECORD = f"{PATHS.state}/{instance.INSTANCE_DOCUMENT}"
PRODUCTION = "ins_2production0000000000000000"


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def record(db: firestore.Client) -> dict[str, object]:
    return db.document(RECORD).get(timeout=10).to_dict() or {}


def seed(db: firestore.Client, count: int, instance_id: str | None) -> list[dict[str, object]]:
    """`count` users stored by the webhook (which recorded `instance_id`, unless None)."""
    users = clerk_users(count, prefix="user_seed", name="seed")
    for user in users:
        deliver(db, f"msg_seed_{user['id']}", "user.created", user, instance_id=instance_id)
    return users


@pytest.mark.usefixtures("secret_key")
def test_a_key_of_another_instance_writes_nothing_and_names_both_instances(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instance.pin(db, PATHS, instance.Pin(PRODUCTION, "production"), pinned_by="reconcile", timeout=10)
    seed(db, 4, PRODUCTION)
    before = snapshot_all(db)
    development = FakeClerk(clerk_users(6, prefix="user_dev", name="dev"))  # the development instance: other users

    with serve(development):
        code, out, err = run_cli(capsys, development, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert code == 1
    assert (summary["outcome"], summary["stop_reason"]) == ("stopped", "other_instance")
    assert f"{INSTANCE_ID} (development)" in summary["stopped"]
    assert f"{PRODUCTION} (production)" in summary["stopped"]
    assert SECRET_KEY not in out + err
    assert snapshot_all(db) == before  # no deletion, no tombstone, no lease, no checkpoint
    assert [request.path for request in development.requests] == ["/v1/instance"]
    assert "resumes" not in err


@pytest.mark.usefixtures("secret_key")
def test_a_key_of_another_instance_is_refused_when_an_older_webhook_recorded_nothing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(db, 8, None)  # stored before instances were recorded
    before = snapshot_all(db)
    development = FakeClerk(clerk_users(3, prefix="user_dev", name="dev"))

    with serve(development):
        code, out, _ = run_cli(capsys, development, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert (code, summary["stop_reason"]) == (1, "other_instance")
    assert "none of the 5 users sampled from Firestore exist" in summary["stopped"]
    assert snapshot_all(db) == before
    newest_five = {f"/v1/users/user_seed{index:04d}" for index in range(3, 8)}
    assert {request.path for request in development.requests} == {"/v1/instance", *newest_five}  # nothing listed


@pytest.mark.usefixtures("secret_key")
def test_a_database_recording_no_instance_is_recorded_when_clerk_holds_what_it_holds(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = seed(db, 3, None)
    clerk = FakeClerk([*users, *clerk_users(2, prefix="user_new", name="new")])

    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    assert (code, counts(summary_of(out), "users")["missing"]) == (0, 2)
    assert (record(db)["instance_id"], record(db)["environment_type"]) == (INSTANCE_ID, "development")
    assert record(db)["pinned_by"] == "reconcile"


@pytest.mark.usefixtures("secret_key")
def test_pin_instance_records_the_key_s_instance_when_clerk_deleted_everything_firestore_holds(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = seed(db, 2, None)
    clerk = FakeClerk(clerk_users(1, prefix="user_new", name="new"))

    with serve(clerk):
        refused, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile")
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--pin-instance", "--json")

    assert refused == 1
    assert (code, counts(summary_of(out), "users")["extra"]) == (0, 2)
    assert set(documents(db, PATHS.users)) == {"user_new0000"}
    assert all(db.collection(PATHS.user_tombstones).document(str(user["id"])).get(timeout=10).exists for user in gone)
    assert record(db)["instance_id"] == INSTANCE_ID


@pytest.mark.usefixtures("secret_key")
def test_the_first_backfill_of_an_empty_database_records_the_instance(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(2), environment_type="production")

    with serve(clerk):
        code, _, err = run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")

    assert code == 0
    assert (record(db)["instance_id"], record(db)["environment_type"]) == (INSTANCE_ID, "production")
    told = err.index(f"Clerk: instance {INSTANCE_ID} (production)")
    assert told < err.index("users")  # said before the first page was repaired


@pytest.mark.usefixtures("secret_key")
def test_the_environment_is_added_to_an_instance_the_webhook_recorded(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = seed(db, 2, INSTANCE_ID)
    clerk = FakeClerk(users)

    with serve(clerk):
        code, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile")

    assert code == 0
    assert (record(db)["pinned_by"], record(db)["environment_type"]) == ("webhook", "development")


@pytest.fixture
def hundred_and_fifty(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], secret_key: str
) -> Iterator[FakeClerk]:
    """150 users copied by a first backfill; then Clerk lists only 60 of them."""
    clerk = FakeClerk(clerk_users(150))
    with serve(clerk):
        assert run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")[0] == 0
        clerk.users = clerk.users[:60]
        yield clerk


@pytest.mark.usefixtures("secret_key")
def test_a_run_that_would_delete_90_of_150_users_stops_before_deleting_any(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hundred_and_fifty: FakeClerk,
) -> None:
    before = documents(db, PATHS.users)

    code, out, err = run_cli(capsys, hundred_and_fifty, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert (code, summary["stop_reason"]) == (1, "mass_deletion")
    assert "more than 50 of the 150 users" in summary["stopped"]
    assert "--allow-mass-deletion" in summary["stopped"]
    assert documents(db, PATHS.users) == before
    assert documents(db, PATHS.user_tombstones) == {}
    by_id = [request for request in hundred_and_fifty.requests if request.path.startswith("/v1/users/user_")]
    assert len(by_id) == 51  # confirmed one past the limit, then stopped asking
    assert "resumes from the checkpoint" in err


@pytest.mark.usefixtures("secret_key")
def test_allow_mass_deletion_lets_a_person_confirm_the_90_deletions(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hundred_and_fifty: FakeClerk,
) -> None:
    code, out, _ = run_cli(
        capsys, hundred_and_fifty, tmp_path, emulator_host, "reconcile", "--allow-mass-deletion", "--json"
    )

    assert (code, summary_of(out)["outcome"]) == (0, "repaired")
    assert counts(summary_of(out), "users")["extra"] == 90
    assert len(documents(db, PATHS.users)) == 60
    assert len(documents(db, PATHS.user_tombstones)) == 90


@pytest.mark.usefixtures("secret_key")
def test_a_dry_run_stops_at_the_same_limit_and_writes_nothing(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    hundred_and_fifty: FakeClerk,
) -> None:
    before = snapshot_all(db)

    code, out, err = run_cli(capsys, hundred_and_fifty, tmp_path, emulator_host, "reconcile", "--dry-run", "--json")

    assert (code, summary_of(out)["stop_reason"]) == (1, "mass_deletion")
    assert snapshot_all(db) == before
    assert "resumes" not in err


@pytest.mark.usefixtures("secret_key")
def test_a_plain_run_still_deletes_one_user_of_fifty(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clerk = FakeClerk(clerk_users(50))
    with serve(clerk):
        run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")
        gone = clerk.users.pop(17)
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    assert (code, counts(summary_of(out), "users")["extra"]) == (0, 1)
    assert gone["id"] not in documents(db, PATHS.users)
    assert len(documents(db, PATHS.users)) == 49


def test_against_a_real_project_the_key_never_comes_from_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text(f"CLERK_SECRET_KEY={SECRET_KEY}\n")

    code = cli.main(["reconcile", "--env-file", str(env_file), "--project", "my-production-project"])

    err = capsys.readouterr().err
    assert code == 1
    assert "against a real project CLERK_SECRET_KEY never comes from .env" in err
    assert "--secret-key-file" in err
    assert SECRET_KEY not in err


@pytest.mark.usefixtures("db")
def test_the_key_can_come_from_a_file_or_standard_input(
    emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)
    key_file = tmp_path / "clerk-key"
    key_file.write_text(SECRET_KEY + "\n")
    clerk = FakeClerk([api_user("user_key", email="key@example.com", created_at=1, updated_at=2)])

    with serve(clerk):
        from_file, _, _ = run_cli(
            capsys, clerk, tmp_path, emulator_host, "backfill", "--secret-key-file", str(key_file)
        )
        monkeypatch.setattr("sys.stdin", io.StringIO(SECRET_KEY))
        from_stdin, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--secret-key-file", "-")
        key_file.write_text("whsec_not_a_backend_key")
        refused, _, err = run_cli(
            capsys, clerk, tmp_path, emulator_host, "reconcile", "--secret-key-file", str(key_file)
        )

    assert (from_file, from_stdin, refused) == (0, 0, 1)
    assert "does not hold a Backend API key" in err
    assert {request.authorization for request in clerk.requests} == {f"Bearer {SECRET_KEY}"}
