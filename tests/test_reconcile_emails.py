"""Primary addresses that moved while deliveries were lost: one full reconcile run converges, cycles included,
and what Clerk's state cannot resolve yet is retried by later runs (incremental ones too)."""

from __future__ import annotations

from typing import Any

import pytest
from clerk_api import BASE_MS, SECRET_KEY, FakeClerk, api_user, serve
from conftest import PATHS
from google.cloud import firestore
from reconcile_runs import STATE, counts, deliver, documents, run_cli, summary_of

from clerk_sync import ids, users

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


def user(user_id: str, email: str, *, updated_at: int = BASE_MS, **fields: Any) -> dict[str, Any]:
    data = api_user(user_id, email=email, created_at=BASE_MS, updated_at=updated_at)
    return {**data, **fields}


def stored_before(db: firestore.Client, *stored: dict[str, Any]) -> None:
    """What the webhook stored before the deliveries of the moves were lost."""
    for data in stored:
        deliver(db, f"msg_before_{data['id']}", "user.created", data)


def claim_owner(db: firestore.Client, address: str) -> str | None:
    snapshot = db.collection(PATHS.claims).document(ids.document_id(address)).get(timeout=10)
    owner = (snapshot.to_dict() or {}).get("clerk_id") if snapshot.exists else None
    return owner if isinstance(owner, str) else None


def addresses(db: firestore.Client) -> dict[str, tuple[str | None, str | None]]:
    """Each stored user's email and pending move."""
    return {
        key: (value.get("email"), value.get(users.PENDING_FIELD)) for key, value in documents(db, PATHS.users).items()
    }


@pytest.mark.usefixtures("secret_key")
@pytest.mark.parametrize("size", [2, 3], ids=["swap", "three_cycle"])
def test_an_address_cycle_whose_moves_were_lost_converges_in_one_full_run(
    db: firestore.Client, emulator_host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str], size: int
) -> None:
    names = [f"user_cyc{index}" for index in range(size)]
    stored_before(db, *(user(name, f"{name}@example.com") for name in names))
    # In Clerk each user took the next one's address (through an intermediate address each time).
    moved = [user(name, f"{names[(index + 1) % size]}@example.com", updated_at=BASE_MS + 1000)
             for index, name in enumerate(names)]  # fmt: skip
    clerk = FakeClerk(moved)

    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert (code, summary["outcome"]) == (0, "repaired")
    assert counts(summary, "users") == {**counts(summary, "users"), "outdated": size, "conflicts": 0}
    expected = {name: (f"{names[(index + 1) % size]}@example.com", None) for index, name in enumerate(names)}
    assert addresses(db) == expected
    assert {claim_owner(db, f"{name}@example.com") for name in names} == set(names)
    assert all(claim_owner(db, email) == name for name, (email, _) in expected.items() if email)
    assert (db.document(STATE).get(timeout=10).to_dict() or {})["pending_conflicts"] == []


@pytest.mark.usefixtures("secret_key")
def test_an_address_freed_by_a_deletion_found_in_the_same_run_is_taken_in_that_run(
    db: firestore.Client, emulator_host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_before(db, user("user_gone", "shared@example.com"), user("user_taker", "taker@example.com"))
    # Clerk deleted user_gone, then gave its address to user_taker; both deliveries were lost.
    clerk = FakeClerk([user("user_taker", "shared@example.com", updated_at=BASE_MS + 1000)])

    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert (code, summary["outcome"]) == (0, "repaired")
    assert (counts(summary, "users")["extra"], counts(summary, "users")["conflicts"]) == (1, 0)
    assert addresses(db) == {"user_taker": ("shared@example.com", None)}
    assert claim_owner(db, "shared@example.com") == "user_taker"


@pytest.mark.usefixtures("secret_key")
def test_a_ban_is_stored_at_once_while_the_address_move_still_waits(
    db: firestore.Client, emulator_host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_before(db, user("user_holder", "wanted@example.com"), user("user_banned", "old@example.com"))
    # Clerk gave the address to user_banned and banned it; user_holder's move away was lost, and a
    # backfill (no deletions, no listing of user_holder: Clerk deleted it) cannot free the address.
    clerk = FakeClerk([user("user_banned", "wanted@example.com", updated_at=BASE_MS + 1000, banned=True)])

    with serve(clerk):
        code, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "backfill", "--json")

    stored = documents(db, PATHS.users)["user_banned"]
    assert code == 3
    assert counts(summary_of(out), "users")["conflicts"] == 1
    assert stored["banned"] is True  # stored now, not after the address is free
    assert (stored["email"], stored[users.PENDING_FIELD]) == (None, "wanted@example.com")
    assert claim_owner(db, "old@example.com") is None  # let go, as Clerk let it go


@pytest.mark.usefixtures("secret_key")
def test_an_incremental_run_retries_the_conflicts_the_last_run_left(
    db: firestore.Client, emulator_host: str, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    stored_before(db, user("user_holder", "wanted@example.com"), user("user_taker", "old@example.com"))
    clerk = FakeClerk([user("user_taker", "wanted@example.com", updated_at=BASE_MS + 1000)])
    with serve(clerk):
        first, _, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "backfill")
        left = (db.document(STATE).get(timeout=10).to_dict() or {})["pending_conflicts"]
        # user_holder's deletion arrives by webhook; user_taker has not changed since, so an
        # incremental listing would never show it again.
        deliver(db, "msg_holder_deleted", "user.deleted", {"id": "user_holder", "deleted": True})
        clerk.requests.clear()
        second, out, _ = run_cli(capsys, clerk, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                                 "--json")  # fmt: skip

    assert (first, left) == (3, ["user_taker"])
    assert (second, summary_of(out)["outcome"]) == (0, "repaired")
    assert "/v1/users/user_taker" in [request.path for request in clerk.requests]
    assert addresses(db)["user_taker"] == ("wanted@example.com", None)
    assert (db.document(STATE).get(timeout=10).to_dict() or {})["pending_conflicts"] == []
