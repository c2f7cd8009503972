"""Reconcile at scale, scaled down: users paged by cursor while Clerk changes, the ids a run keeps in
little memory, the write ramp on a clock the test advances, and a budget that holds whatever Clerk
answers. The million-user run is `make soak` (test_reconcile_soak.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clerk_api import SECRET_KEY, FakeClerk, serve
from conftest import PATHS
from google.cloud import firestore
from reconcile_runs import clerk_users, counts, deliver, documents, run_cli, summary_of

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def stale_copies(db: firestore.Client, users: list[dict[str, Any]]) -> None:
    """Firestore holds an older version of each (first name `Stale`): only a listing brings them up to date."""
    for user in users:
        deliver(db, f"msg_old_{user['id']}", "user.updated",
                {**user, "first_name": "Stale", "updated_at": user["updated_at"] - 100})  # fmt: skip


def fetched_by_id(clerk: FakeClerk) -> set[str]:
    """The users asked for one by one (`GET /v1/users/{id}`): what the listing did not show."""
    return {request.path.rsplit("/", 1)[1] for request in clerk.requests if request.path.startswith("/v1/users/user")}


# --- users by cursor ---------------------------------------------------------------------------


@pytest.mark.usefixtures("secret_key")
def test_cursor_paging_skips_nobody_while_users_are_created_and_deleted_during_the_listing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(30)
    stale_copies(db, users)
    clerk = FakeClerk(list(users))
    # users[4], the first page's last, is the next page's cursor: deleted right after it was listed.
    gone = [users[7], users[20]]  # deleted before the listing reached them
    newcomers = clerk_users(2, start=30)

    def first_page_served() -> None:
        clerk.users.remove(users[4])
        clerk.users.remove(users[7])
        clerk.users.extend(newcomers)

    clerk.after[("/v1/users", 0)] = first_page_served
    clerk.after[("/v1/users", 3)] = lambda: clerk.users.remove(users[20])
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")

    summary = summary_of(out)
    stored = documents(db, PATHS.users)
    listed = [user for user in users if user not in gone]
    assert code == 0, out + err
    assert all(stored[user["id"]]["first_name"] == "Grace" for user in listed)  # none skipped
    assert all(user["id"] in stored for user in newcomers)
    assert fetched_by_id(clerk) == {user["id"] for user in gone}  # only the unlisted were asked for by id …
    assert all(user["id"] not in stored for user in gone)  # … and deleted once Clerk answered 404
    assert counts(summary, "users") == {
        "in_sync": 0, "missing": 2, "outdated": 28, "extra": 2, "conflicts": 0, "skipped": 0,
    }  # fmt: skip
    refused = [request for request in clerk.list_requests() if request.status == 422]
    assert [request.query["starting_after"] for request in refused] == [users[4]["id"]]
    assert "Clerk refused the cursor user_rc0004 (422" in err
    assert all("offset" not in request.query for request in clerk.list_requests())


@pytest.mark.usefixtures("secret_key")
def test_when_every_kept_cursor_is_deleted_the_listing_starts_over_and_skips_nobody(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    stale_copies(db, users)
    clerk = FakeClerk(list(users))
    first_page = users[:5]  # every cursor the listing keeps after it

    def first_page_deleted() -> None:
        for user in first_page:
            clerk.users.remove(user)

    clerk.after[("/v1/users", 0)] = first_page_deleted
    with serve(clerk):
        code, out, err = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")
        after_first = documents(db, PATHS.users)
        asked_first = fetched_by_id(clerk)
        next_code, next_out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    assert code == 0, out + err
    assert "listing again from the first user" in err
    assert all(after_first[user["id"]]["first_name"] == "Grace" for user in users)  # nobody skipped
    assert counts(summary_of(out), "users")["outdated"] == 12  # each counted once, though listed again
    # Listed before Clerk deleted them, so not extra in this run; the next run confirms each by id (404):
    assert (asked_first, counts(summary_of(out), "users")["extra"]) == (set(), 0)
    assert (next_code, counts(summary_of(next_out), "users")["extra"]) == (0, 5)
    assert fetched_by_id(clerk) == {user["id"] for user in first_page}
    assert sorted(documents(db, PATHS.users)) == [user["id"] for user in users[5:]]
