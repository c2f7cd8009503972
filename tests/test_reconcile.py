"""`reconcile` and `backfill` with the real clerk-backend-api client against a local Clerk API, into the
emulator, through the webhook's own transactions: drift of every kind repaired, deletions only when
Clerk confirms them, webhooks during a run, a resumed run, the lease, incremental runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import emulator
import pytest
from clerk_api import (
    BASE_MS,
    DEFAULT_ROLES,
    INSTANCE_ID,
    SECRET_KEY,
    FakeClerk,
    api_membership,
    api_organization,
    api_user,
    roles_with_permissions,
    serve,
)
from clerk_backend_api import models
from clerk_events import signed_headers
from conftest import PATHS, ROOT, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore
from reconcile_runs import (
    STATE,
    clerk_users,
    counts,
    deliver,
    documents,
    organizations_with_members,
    run_cli,
    summary_of,
    without_state,
)

from clerk_sync import events, reconcile
from tools import cli

# clerk-backend-api reads a deprecated query field of its own request model on every call.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)
    return SECRET_KEY


@pytest.mark.usefixtures("secret_key")
def test_backfill_copies_users_organizations_and_memberships_through_a_429_and_a_500(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(23)
    organizations, memberships = organizations_with_members(users, 7)
    fake = FakeClerk(users, organizations, memberships, faults={1: (429, {"Retry-After": "1"}), 2: (500, {})})

    with serve(fake):
        code, out, err = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--page-size", "5", "--json")

    summary = summary_of(out)
    assert code == 0, out + err
    assert (summary["outcome"], summary["drift"], summary["deletions"]) == ("repaired", 23 + 7 + 21, False)
    assert counts(summary, "users")["missing"] == 23
    assert counts(summary, "organizations")["missing"] == 7
    assert counts(summary, "memberships")["missing"] == 21
    stored = documents(db, PATHS.users)
    assert set(stored) == {user["id"] for user in users}
    assert stored["user_rc0007"]["email"] == "grace7@example.com"
    assert documents(db, PATHS.organizations)["org_rc003"]["public_metadata"] == {"tier": "gold"}
    member = db.collection(PATHS.memberships("org_rc003")).document("user_rc0001").get(timeout=10).to_dict()
    assert member is not None
    assert (member["membership_id"], member["role"]) == ("orgmem_rc003_user_rc0001", "org:member")
    assert "secret" not in json.dumps(snapshot_all(db), default=str)  # no private metadata anywhere
    requests = fake.list_requests()
    assert [request.status for request in requests] == [200, 429, 500, 200, 200, 200, 200]
    assert requests[2].at - requests[1].at >= 0.95  # Retry-After: 1 was honoured, not skipped
    assert {request.query["order_by"] for request in requests} == {"+created_at"}
    assert "429, retrying in 1.0 s" in err


@pytest.mark.usefixtures("secret_key")
def test_a_second_run_finds_everything_in_sync_and_writes_nothing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    organizations, memberships = organizations_with_members(users, 2)
    roles, permissions = roles_with_permissions(DEFAULT_ROLES, created_at=BASE_MS, updated_at=BASE_MS)
    fake = FakeClerk(users, organizations, memberships, roles=roles, permissions=permissions)
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "reconcile")
        before = without_state(snapshot_all(db))
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    summary = summary_of(out)
    assert code == 0
    assert summary["outcome"] == "in_sync"
    assert reconcile.KINDS == ("users", "organizations", "memberships", "roles", "permissions")
    assert [counts(summary, kind)["in_sync"] for kind in reconcile.KINDS] == [12, 2, 6, 2, 8]
    assert without_state(snapshot_all(db)) == before


@pytest.fixture
def drifted(db: firestore.Client) -> FakeClerk:
    """Clerk now, and a Firestore that missed deliveries of every kind."""
    users = clerk_users(6)
    organizations, memberships = organizations_with_members(users, 2)
    # What the webhook once stored, before the deliveries that were lost:
    for user in users[1:4]:
        deliver(db, f"msg_old_{user['id']}", "user.updated", {**user, "updated_at": user["updated_at"] - 100})
    deliver(db, "msg_old_u2_name", "user.updated", {**users[2], "first_name": "Stale", "updated_at": BASE_MS})
    gone_user = api_user("user_rcgone", email="gone@example.com", created_at=BASE_MS, updated_at=BASE_MS + 1)
    deliver(db, "msg_gone_user", "user.created", gone_user)
    gone_org = api_organization("org_rcgone", name="Gone", created_at=BASE_MS, updated_at=BASE_MS)
    deliver(db, "msg_gone_org", "organization.created", gone_org)
    for user in users[:2]:
        left = api_membership(f"orgmem_gone_{user['id']}", gone_org, user, role="org:member", updated_at=BASE_MS)
        deliver(db, f"msg_gone_member_{user['id']}", "organizationMembership.created", left)
    behind = api_membership("orgmem_left", organizations[1], users[5], role="org:member", updated_at=BASE_MS)
    deliver(db, "msg_left_behind", "organizationMembership.created", behind)
    gone_member = api_membership("orgmem_gu", organizations[0], gone_user, role="org:member", updated_at=BASE_MS)
    deliver(db, "msg_gone_user_member", "organizationMembership.created", gone_member)
    outdated = dict(memberships[0])
    deliver(db, "msg_role_old", "organizationMembership.created",
            {**outdated, "role": "org:admin", "updated_at": outdated["updated_at"] - 5})  # fmt: skip
    # An email that moved: Firestore has users[4] holding "moved@…"; in Clerk users[0] holds it now,
    # users[4] has a new address, and users[0] is listed first.
    deliver(db, "msg_old_u4", "user.updated",
            {**api_user(users[4]["id"], email="moved@example.com", created_at=users[4]["created_at"],
                        updated_at=BASE_MS)})  # fmt: skip
    users[0] = api_user(users[0]["id"], email="moved@example.com", created_at=users[0]["created_at"],
                        updated_at=users[0]["updated_at"])  # fmt: skip
    return FakeClerk(users, organizations, memberships)


@pytest.mark.usefixtures("secret_key")
def test_reconcile_repairs_drift_of_every_kind_and_deletes_only_what_clerk_confirms_is_gone(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], drifted: FakeClerk
) -> None:
    with serve(drifted):
        code, out, err = run_cli(capsys, drifted, tmp_path, emulator_host, "reconcile", "--page-size", "4", "--json")

    summary = summary_of(out)
    assert code == 0, out + err
    assert summary["outcome"] == "repaired"
    assert counts(summary, "users") == {
        "in_sync": 0,
        "missing": 2,
        "outdated": 4,
        "extra": 1,
        "conflicts": 0,
        "skipped": 0,
    }
    assert counts(summary, "organizations")["missing"] == 2
    assert counts(summary, "organizations")["extra"] == 1
    assert counts(summary, "memberships")["extra"] == 1  # orgmem_left; the others went with their org/user
    assert counts(summary, "memberships")["outdated"] == 1
    stored = documents(db, PATHS.users)
    assert set(stored) == {user["id"] for user in drifted.users}
    assert stored["user_rc0002"]["first_name"] == "Grace"
    assert stored["user_rc0000"]["email"] == "moved@example.com"
    assert db.collection(PATHS.user_tombstones).document("user_rcgone").get(timeout=10).exists
    assert not db.collection(PATHS.claims).document("gone@example.com").get(timeout=10).exists
    moved_claim = db.collection(PATHS.claims).document("moved@example.com").get(timeout=10).to_dict() or {}
    assert moved_claim["clerk_id"] == "user_rc0000"
    assert "org_rcgone" not in documents(db, PATHS.organizations)
    assert documents(db, PATHS.memberships("org_rcgone")) == {}
    assert sorted(documents(db, PATHS.memberships("org_rc001"))) == ["user_rc0000", "user_rc0001", "user_rc0002"]
    assert sorted(documents(db, PATHS.memberships("org_rc000"))) == ["user_rc0000", "user_rc0001", "user_rc0002"]
    assert documents(db, PATHS.memberships("org_rc000"))["user_rc0000"]["role"] == "org:member"
    assert db.collection(PATHS.membership_tombstones).document("orgmem_left").get(timeout=10).exists
    by_id = [request.path for request in drifted.requests if request.path.count("/") >= 3]
    assert "/v1/users/user_rcgone" in by_id  # asked before deleting
    assert "/v1/organizations/org_rcgone" in by_id


@pytest.mark.usefixtures("secret_key")
def test_a_dry_run_counts_the_same_drift_and_writes_nothing(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], drifted: FakeClerk
) -> None:
    before = snapshot_all(db)
    with serve(drifted):
        code, out, _ = run_cli(capsys, drifted, tmp_path, emulator_host, "reconcile", "--dry-run", "--json")

    summary = summary_of(out)
    assert code == 3
    assert summary["outcome"] == "drift"
    assert counts(summary, "users")["extra"] == 1
    assert counts(summary, "organizations")["extra"] == 1
    assert summary["drift"] > 8
    assert snapshot_all(db) == before


@pytest.mark.usefixtures("secret_key")
def test_a_user_missing_from_a_listing_but_alive_in_clerk_is_not_deleted(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(3)
    fake = FakeClerk(users)
    hidden = users[1]
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "reconcile")
        fake.unlisted.add(hidden["id"])  # the listing misses it; GET by id still finds it
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    assert code == 0
    assert counts(summary_of(out), "users")["extra"] == 0
    assert hidden["id"] in documents(db, PATHS.users)
    assert not db.collection(PATHS.user_tombstones).document(hidden["id"]).get(timeout=10).exists


@pytest.mark.usefixtures("secret_key")
def test_a_conflict_that_remains_is_reported_by_id_and_exits_3(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Firestore's stale user still holds the address and reconcile may not delete it (backfill).
    stale = api_user("user_rcstale", email="shared@example.com", created_at=BASE_MS, updated_at=BASE_MS)
    deliver(db, "msg_stale", "user.created", stale)
    taker = api_user("user_rctaker", email="shared@example.com", created_at=BASE_MS + 1, updated_at=BASE_MS + 2)
    fake = FakeClerk([taker])

    with serve(fake):
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "backfill")

    assert code == 3
    assert "conflict  users/user_rctaker: primary email still held by user_rcstale" in out
    assert "shared@example.com" not in out
    assert "user_rctaker" not in documents(db, PATHS.users)


@pytest.mark.usefixtures("secret_key")
def test_webhooks_delivered_during_a_run_stay_correct(
    db: firestore.Client, client: FlaskClient, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(60)
    fake = FakeClerk(users)
    newer = [{**user, "first_name": "Webhook", "updated_at": user["updated_at"] + 10_000} for user in users[::3]]
    deleted = users[1]["id"]

    def webhooks() -> None:
        for data in newer:
            body = json.dumps({"type": "user.updated", "object": "event", "timestamp": BASE_MS, "data": data})
            client.post("/", data=body, headers=signed_headers(body))
        body = json.dumps({"type": "user.deleted", "object": "event", "timestamp": BASE_MS, "data": {"id": deleted}})
        client.post("/", data=body, headers=signed_headers(body))

    with serve(fake):
        sender = threading.Thread(target=webhooks)
        sender.start()
        code, out, err = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--page-size", "7", "--json")
        sender.join(60)

    stored = documents(db, PATHS.users)
    # Whichever comes first: reconcile's copy of the deleted user (then the deletion removes it), or
    # the deletion (then reconcile finds the tombstone, writes nothing and says so; exit 3). The
    # webhook's own log lines share stdout with the summary here.
    summary = summary_of("".join(line for line in out.splitlines(True) if not line.startswith('{"severity"')))
    skipped = tuple((item["id"], item["reason"]) for item in summary["kinds"]["users"]["skipped"])
    either = {(0, ()), (3, ((deleted, "deleted in Firestore (tombstone) but alive in Clerk"),))}
    assert (code, skipped) in either, out + err
    assert not sender.is_alive()
    assert all(stored[data["id"]]["first_name"] == "Webhook" for data in newer if data["id"] != deleted)
    assert deleted not in stored  # the webhook's deletion holds: reconcile never resurrects
    assert db.collection(PATHS.user_tombstones).document(deleted).get(timeout=10).exists


@pytest.mark.usefixtures("secret_key")
def test_a_run_cut_off_by_its_budget_resumes_where_it_stopped(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(23)
    fake = FakeClerk(users)
    with serve(fake):
        first_code, first_out, _ = run_cli(
            capsys, fake, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--budget", "0", "--json"
        )
        checkpoint = db.document(STATE).get(timeout=10).to_dict()
        second_code, second_out, _ = run_cli(
            capsys, fake, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json"
        )

    first, second = summary_of(first_out), summary_of(second_out)
    cursors = [request.query.get("starting_after") for request in fake.list_requests()]
    assert (first_code, first["outcome"]) == (1, "partial")
    assert counts(first, "users")["missing"] == 5
    assert checkpoint is not None
    assert (checkpoint["full"]["phase"], checkpoint["full"]["offset"]) == (2, 5)  # users: after permissions, roles
    assert checkpoint["full"]["cursors"][-1] == "user_rc0004"
    assert (second_code, second["outcome"], second["resumed"]) == (0, "repaired", True)
    assert counts(second, "users")["missing"] == 23  # the whole run's count
    assert cursors[:3] == [None, "user_rc0004", "user_rc0009"]  # the second run started after user 4, not at 0
    assert len(documents(db, PATHS.users)) == 23
    assert "full" not in (db.document(STATE).get(timeout=10).to_dict() or {})  # finished: checkpoint cleared


@pytest.mark.usefixtures("secret_key")
def test_a_second_run_while_one_holds_the_lease_refuses(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db.document(STATE).set({"lease_until": datetime.now(UTC) + timedelta(minutes=3), "lease_owner": "other"})
    fake = FakeClerk(clerk_users(2))

    with serve(fake):
        code, _, err = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile")

    assert code == 1
    assert "another reconcile run holds the lease" in err
    assert [request.path for request in fake.requests] == ["/v1/instance"]  # asked which instance, listed nothing
    assert documents(db, PATHS.users) == {}


@pytest.mark.usefixtures("secret_key")
def test_an_incremental_run_reads_only_users_changed_since_the_last_run(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = int(datetime.now(UTC).timestamp() * 1000)
    users = [
        api_user(
            f"user_inc{index:03d}",
            email=f"inc{index}@example.com",
            created_at=now - 10**9,
            updated_at=now - 10**9 + index,
        )
        for index in range(30)
    ]
    fake = FakeClerk(users)
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "reconcile")
        changed = [{**users[index], "first_name": "Changed", "updated_at": now + 60_000 + index} for index in (3, 17)]
        fake.users = [*users[:3], changed[0], *users[4:17], changed[1], *users[18:]]
        fake.requests.clear()
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--mode", "incremental",
                               "--page-size", "5", "--json")  # fmt: skip

    summary = summary_of(out)
    stored = documents(db, PATHS.users)
    assert code == 0
    assert counts(summary, "users")["outdated"] == 2
    assert [stored[f"user_inc{index:03d}"]["first_name"] for index in (3, 17)] == ["Changed", "Changed"]
    assert {request.query["order_by"] for request in fake.list_requests()} == {"-updated_at"}
    assert len(fake.list_requests()) == 1  # the first page already reached users older than the last run
    assert fake.list_requests("/v1/organizations") == []


@pytest.mark.usefixtures("secret_key")
def test_a_wrong_secret_key_stops_with_clerks_answer_and_writes_nothing(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_wrong")
    fake = FakeClerk(clerk_users(3))

    with serve(fake):
        code, out, err = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile")

    assert code == 1
    assert "Clerk refused GET /instance: 401" in out
    assert "resumes" not in err  # nothing was saved to resume from
    assert len(fake.requests) == 1  # a refused key is not retried
    assert snapshot_all(db) == {}


def test_reconcile_without_a_secret_key_explains_what_to_set(
    emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLERK_SECRET_KEY", raising=False)

    code = cli.main(["reconcile", "--env-file", str(tmp_path / "absent.env"), "--emulator", emulator_host])

    assert code == 1
    assert "set CLERK_SECRET_KEY" in capsys.readouterr().err


def test_backfill_help_names_the_secret_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["backfill", "--help"])

    assert "CLERK_SECRET_KEY" in capsys.readouterr().out


def test_a_user_from_the_api_model_parses_like_the_raw_json() -> None:
    raw = api_user("user_model", email="m@example.com", created_at=BASE_MS, updated_at=BASE_MS + 1)
    dumped = models.User.model_validate(raw).model_dump(mode="json", by_alias=True)

    def parsed(data: dict[str, Any]) -> Any:
        body = json.dumps({"type": "user.updated", "object": "event", "timestamp": BASE_MS, "data": data}).encode()
        return events.parse_event(body)

    assert parsed(dumped) == parsed(raw)


@pytest.mark.parametrize(
    ("header", "seconds"), [("2", 2.0), ("0.5", 0.5), ("-3", 0.0), ("9999", 300.0), ("", None), ("soon", None)]
)
def test_retry_after_is_read_as_seconds(header: str, seconds: float | None) -> None:
    assert reconcile.retry_after_seconds(header) == seconds


def test_retry_after_http_date_is_the_time_until_then() -> None:
    later = datetime.now(UTC) + timedelta(seconds=30)

    seconds = reconcile.retry_after_seconds(format_datetime(later, usegmt=True))

    assert seconds is not None
    assert 25 <= seconds <= 31


def test_every_kind_is_counted_in_the_text_summary() -> None:
    report = reconcile.Report(mode=reconcile.Mode.FULL, dry_run=False, deletions=True)
    report.tallies["memberships"].extra = 2

    text = re.sub(r"\d+\.\d s", "T s", reconcile_summary(report))

    assert "memberships" in text
    assert "repaired; Firestore matches Clerk" in text


def reconcile_summary(report: reconcile.Report) -> str:
    from tools import reconcile as tool  # noqa: PLC0415

    return tool.summary(report, "reconcile")


@pytest.mark.usefixtures("secret_key")
def test_what_a_full_run_costs_in_clerk_requests_and_firestore_reads(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(12)
    organizations, memberships = organizations_with_members(users, 3)  # 9 memberships
    roles, permissions = roles_with_permissions(DEFAULT_ROLES, created_at=BASE_MS, updated_at=BASE_MS)  # 2, 8
    fake = FakeClerk(users, organizations, memberships, roles=roles, permissions=permissions)
    with serve(fake):
        run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--page-size", "5")
        fake.requests.clear()
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--page-size", "5", "--json")

    summary = summary_of(out)
    paths = [request.path for request in fake.requests]
    assert code == 0
    # The key's instance; listing each kind once (ceil(n / page) requests, plus the count for the
    # progress bar); the extras reuse those listings; nothing is fetched by id when nothing is extra.
    assert paths.count("/v1/instance") == 1
    assert paths.count("/v1/users") == 3
    assert paths.count("/v1/users/count") == 1
    assert paths.count("/v1/organizations") == 1
    assert paths.count("/v1/organization_memberships") == 2
    assert paths.count("/v1/organization_roles") == 1
    assert paths.count("/v1/organization_permissions") == 2
    # Clerk Billing: the plans, and every subscription item (none here: no payer is asked for more).
    assert paths.count("/v1/billing/plans") == 1
    assert paths.count("/v1/billing/subscription_items") == 1
    assert summary["clerk_requests"] == len(paths) == 13
    # Each object is read once to compare and once in the pass that looks for extras.
    assert summary["firestore_reads"] == 2 * (12 + 3 + 9 + 2 + 8)


@pytest.mark.soak
@pytest.mark.usefixtures("secret_key")
def test_a_10000_user_backfill_then_an_in_sync_full_run(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = clerk_users(10_000)
    organizations, memberships = organizations_with_members(users, 100)
    fake = FakeClerk(users, organizations, memberships)
    with serve(fake):
        first_code, first_out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "backfill", "--json")
        second_code, second_out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    first, second = summary_of(first_out), summary_of(second_out)
    with capsys.disabled():
        for label, summary in (("backfill into an empty database", first), ("full reconcile, in sync", second)):
            print(
                f"\nreconcile: 10,000 users, 100 organizations, 300 memberships, {label}: "
                f"{summary['elapsed_seconds']} s, {summary['clerk_requests']} Clerk requests, "
                f"{summary['firestore_reads']} Firestore reads, drift {summary['drift']}"
            )
    assert (first_code, first["drift"]) == (0, 10_000 + 100 + 300)
    assert (second_code, second["outcome"]) == (0, "in_sync")


@pytest.mark.usefixtures("secret_key")
def test_the_stand_in_starts_on_its_own_as_the_docs_show(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = emulator.free_port()
    command = [sys.executable, str(ROOT / "tests" / "clerk_api.py"), "--port", str(port), "--users", "3",
               "--user", "user_2AdaLovelace:ada@example.com:Ada:Lovelace", "--organization", "org_2Engines:Engines",
               "--membership", "org_2Engines:user_2AdaLovelace:org:admin", "--answer-429", "/v1/users:0",
               "--role", "org:editor:org:posts:edit,org:posts:read"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline().decode()  # printed once it is serving
        standin = FakeClerk([], url=f"http://127.0.0.1:{port}/v1")
        code, out, err = run_cli(capsys, standin, tmp_path, emulator_host, "backfill", "--json")
    finally:
        emulator.stop(process)

    assert first_line.startswith(f"Clerk stand-in on http://127.0.0.1:{port}/v1: instance {INSTANCE_ID} (development)")
    assert code == 0, out + err
    assert "GET /users?order_by=+created_at: 429, retrying in 1.0 s" in err
    assert counts(summary_of(out), "users")["missing"] == 4
    # Clerk's two default roles and their 8 system permissions, and the custom role with its 2.
    assert (counts(summary_of(out), "roles")["missing"], counts(summary_of(out), "permissions")["missing"]) == (3, 10)
    assert "3 roles, 10 permissions" in first_line
    member = documents(db, PATHS.memberships("org_2Engines"))["user_2AdaLovelace"]
    assert (member["role"], member["role_id"]) == ("org:admin", "role_standin_org_admin")
    assert documents(db, PATHS.roles)["role_standin_org_editor"]["permissions"] == ["org:posts:edit", "org:posts:read"]
