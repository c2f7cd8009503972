"""`check [--repair] [--json]` against the emulator: every kind of violation found (by ids, never emails),
the fixable ones repaired through the transactions, the rest reported, a database the function wrote
passes, and 10,000 users are checked in seconds."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clerk_events import (
    BASE_MS,
    deletion_event,
    membership_event,
    new_membership_id,
    new_organization_id,
    new_user_id,
    organization_deletion_event,
    organization_event,
    signed_headers,
    user_event,
)
from conftest import PATHS, PROJECT, apply_event
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import config, documents, event_log, events, ids, paths, users, versions
from clerk_sync.paths import Paths
from tools import check, cli

NOW = datetime(2025, 9, 1, tzinfo=UTC)
APP_FIELDS = {"plan": "pro", "seats": 3}


# --- documents as the function writes them, built by its own parsers ---------------------------------


def parsed(body: str) -> Any:
    return events.parse_event(body.encode())


def user_document(user_id: str, email: str | None = None, /, **changes: Any) -> dict[str, Any]:
    """A users/{id} document exactly as the function writes it (the server timestamp resolved)."""
    upsert = parsed(user_event("user.created", user_id, emails=[email] if email else []))
    return {**upsert.document, "synced_at": NOW, "sync_digest": upsert.digest, **changes}


def organization_document(organization_id: str, /, **changes: Any) -> dict[str, Any]:
    upsert = parsed(organization_event("organization.created", organization_id))
    return {**upsert.document, "synced_at": NOW, "sync_digest": upsert.digest, **changes}


def membership_document(membership_id: str, organization_id: str, user_id: str, /, **changes: Any) -> dict[str, Any]:
    upsert = parsed(membership_event("organizationMembership.created", membership_id, organization_id, user_id))
    return {**upsert.document, "synced_at": NOW, "sync_digest": upsert.digest, **changes}


def claim_id(email: str) -> str:
    key = users.normalise_email(email)
    assert key is not None
    return ids.document_id(key)


def claim_name(email: str) -> str:
    return f"{PATHS.claims}[sha256:{hashlib.sha256(claim_id(email).encode()).hexdigest()[:12]}]"


class Writer:
    """Documents written straight into Firestore (no transaction), 500 per batch."""

    def __init__(self, db: firestore.Client, layout: Paths = PATHS) -> None:
        self.db = db
        self.paths = layout
        self.pending: list[tuple[firestore.DocumentReference, dict[str, Any]]] = []

    def set(self, path: str, data: dict[str, Any]) -> None:
        self.pending.append((self.db.document(path), data))

    def user(self, user_id: str, email: str | None = None, /, **changes: Any) -> None:
        self.set(f"{self.paths.users}/{user_id}", user_document(user_id, email, **changes))

    def claim(self, email: str, owner: object) -> None:
        self.set(
            f"{self.paths.claims}/{claim_id(email)}",
            {"email": users.normalise_email(email), "clerk_id": owner, "claimed_at": NOW},
        )

    def user_with_claim(self, user_id: str, email: str) -> None:
        self.user(user_id, email)
        self.claim(email, user_id)

    def organization(self, organization_id: str, /, **changes: Any) -> None:
        self.set(f"{self.paths.organizations}/{organization_id}", organization_document(organization_id, **changes))

    def member(self, membership_id: str, organization_id: str, user_id: str, /, **changes: Any) -> None:
        document = membership_document(membership_id, organization_id, user_id, **changes)
        self.set(f"{self.paths.memberships(organization_id)}/{user_id}", document)

    def tombstone(self, collection: str, clerk_id: str) -> None:
        self.set(f"{collection}/{clerk_id}", {"clerk_id": clerk_id, "deleted_at": NOW, "recorded_at": NOW})

    def commit(self, workers: int = 4) -> None:
        """Everything pending, in batches of 500 committed a few at a time."""
        chunks = [self.pending[start : start + 500] for start in range(0, len(self.pending), 500)]
        self.pending = []

        def commit(chunk: list[tuple[firestore.DocumentReference, dict[str, Any]]]) -> None:
            batch = self.db.batch()
            for reference, data in chunk:
                batch.set(reference, data)
            batch.commit(timeout=120)

        with ThreadPoolExecutor(max_workers=workers) as committers:
            list(committers.map(commit, chunks))


# --- running the command -------------------------------------------------------------------------------


def run_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, emulator_host: str, *arguments: str
) -> tuple[int, str, str]:
    """`python -m clerk_sync check ...` in this process, against the test emulator, without any .env."""
    capsys.readouterr()
    code = cli.main(
        ["check", "--env-file", str(tmp_path / "absent.env"), "--emulator", emulator_host, "--project", PROJECT,
         "--timeout", "30", *arguments]
    )  # fmt: skip
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def reported(out: str) -> set[tuple[str, str]]:
    """(kind, subject) of every violation line printed (up to the first summary line)."""
    found = set()
    for line in out.partition("repair:\n")[0].splitlines():
        kind, _, rest = line.partition(" ")
        if kind in KINDS:
            found.add((kind, rest.strip().split(": ")[0]))
    return found


KINDS = {
    "claim_stale",
    "claim_missing",
    "email_shared",
    "user_under_tombstone",
    "organization_under_tombstone",
    "membership_under_tombstone",
    "membership_of_deleted_organization",
    "membership_of_deleted_user",
    "wrong_type",
}


def assert_no_email(*texts: str) -> None:
    for text in texts:
        assert "@" not in text, text  # every address here has one; no id, path or claim name does


# --- the data contract -----------------------------------------------------------------------------------


def test_documents_built_by_the_parsers_have_no_type_problems() -> None:
    # check validates with the declaration the writers take their fields from (tests/test_schema.py).
    user = user_document("user_a", "a@example.com")
    organization = organization_document("org_a")
    member = membership_document("orgmem_a", "org_a", "user_a")

    assert documents.USER.problems(user, {"clerk_id": "user_a"}) == []
    assert documents.ORGANIZATION.problems(organization, {"clerk_id": "org_a"}) == []
    assert documents.MEMBERSHIP.problems(member, {"user_id": "user_a", "organization_id": "org_a"}) == []


# --- a clean database ------------------------------------------------------------------------------------


def post(client: FlaskClient, body: str) -> None:
    response = client.post("/", data=body, headers=signed_headers(body))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_an_empty_database_passes(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_check(capsys, tmp_path, emulator_host)

    assert code == 0
    assert out.endswith("no violations\n")
    assert f"Firestore: emulator {emulator_host}, project {PROJECT}" in err


def test_a_database_written_by_the_function_passes(
    client: FlaskClient, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alice, bob, carol, dan, erin, frank = (new_user_id() for _ in range(6))
    acme, gone, unseen = new_organization_id(), new_organization_id(), new_organization_id()
    post(client, user_event("user.created", alice, emails=["Alice@Example.com "]))
    post(client, user_event("user.created", bob, emails=[]))
    post(client, user_event("user.created", carol, emails=["carol@example.com"]))
    post(client, user_event("user.updated", carol, emails=["carol@new.example.com"], updated_at=2_000_000_000_000))
    post(client, user_event("user.created", dan, emails=["dan@example.com"]))
    post(client, deletion_event(dan))
    post(client, user_event("user.created", frank, emails=["frank@example.com"]))
    post(client, organization_event("organization.created", acme))
    post(client, organization_event("organization.created", gone))
    for user_id in (alice, carol, frank):
        post(client, membership_event("organizationMembership.created", new_membership_id(), acme, user_id))
    post(client, membership_event("organizationMembership.created", new_membership_id(), gone, alice))
    left = new_membership_id()
    post(client, membership_event("organizationMembership.created", left, acme, bob))
    post(client, membership_event("organizationMembership.deleted", left, acme, bob))
    post(client, organization_deletion_event(gone))  # sweeps alice's membership of it
    post(client, deletion_event(frank))  # sweeps frank's membership of acme
    # Order is not guaranteed: members of an organization or a user not synced yet are legal.
    post(client, membership_event("organizationMembership.created", new_membership_id(), unseen, alice))
    post(client, membership_event("organizationMembership.created", new_membership_id(), acme, new_user_id()))
    # keep-app-fields leaves the app's fields and clerk_deleted_at under the tombstone.
    os.environ["ON_USER_DELETED"] = "keep-app-fields"
    config.reset()
    post(client, user_event("user.created", erin, emails=["erin@example.com"]))
    db.collection(PATHS.users).document(erin).update(APP_FIELDS, timeout=10)
    post(client, deletion_event(erin))
    assert set(db.collection(PATHS.users).document(erin).get(timeout=10).to_dict() or {}) == {
        *APP_FIELDS,
        users.DELETED_AT_FIELD,
    }

    code, out, err = run_check(capsys, tmp_path, emulator_host)
    json_code, json_out, _ = run_check(capsys, tmp_path, emulator_host, "--json")

    assert code == 0, out
    assert out.startswith("checked 4 users (users), 2 email claims, 1 organizations (organizations), 4 memberships, ")
    assert "3 + 1 + 1 user + organization + membership tombstones" in out
    assert out.endswith("no violations\n")
    summary = json.loads(json_out)
    assert json_code == 0
    assert summary["ok"] is True
    assert summary["violations"] == []
    assert summary["checked"]["users"] == 4
    assert_no_email(out, err, json_out)


# --- violations ---------------------------------------------------------------------------------------------


@pytest.fixture
def damaged(db: firestore.Client) -> dict[str, set[tuple[str, str]]]:
    """A database with every kind of violation written directly; returns the expected (kind, subject)s.

    "fixable" are what --repair can fix, "unfixable" the rest, "legal" things that look odd but are fine.
    """
    write = Writer(db)
    u, o, m = PATHS.users, PATHS.organizations, PATHS.memberships
    for index in range(3):
        write.user_with_claim(f"user_fine{index}", f"fine{index}@example.com")
    write.organization("org_fine")
    write.member("orgmem_fine", "org_fine", "user_fine0")
    fixable: set[tuple[str, str]] = set()
    unfixable: set[tuple[str, str]] = set()
    # 1. Claims: one whose owner moved on, one of a user who does not exist, one with no readable owner,
    # and a user holding an address nobody claimed.
    write.user_with_claim("user_moved", "now@example.com")
    write.claim("before@example.com", "user_moved")
    write.claim("ghost@example.com", "user_ghost")
    write.claim("unreadable@example.com", 42)
    write.user("user_unclaimed", "Unclaimed@Example.com")
    fixable |= {
        ("claim_stale", f"{claim_name('before@example.com')} (owner user_moved)"),
        ("claim_stale", f"{claim_name('ghost@example.com')} (owner user_ghost)"),
        ("claim_stale", f"{claim_name('unreadable@example.com')} (owner -)"),
        ("claim_missing", f"{u}/user_unclaimed"),
    }
    # 2. Two live users with one address (spelled differently), the claim naming one of them.
    write.user_with_claim("user_twin1", "twin@example.com")
    write.user("user_twin2", " TWIN@example.com")
    unfixable.add(("email_shared", f"{u}/user_twin1, {u}/user_twin2"))
    # 3. Synced fields under tombstones; a keep-app-fields leftover is legal.
    write.user("user_zombie", "zombie@example.com")
    write.tombstone(PATHS.user_tombstones, "user_zombie")
    write.set(f"{u}/user_kept", {**APP_FIELDS, users.DELETED_AT_FIELD: NOW})
    write.tombstone(PATHS.user_tombstones, "user_kept")
    write.set(f"{u}/user_afterwards", APP_FIELDS)  # the app wrote it after the deletion
    write.tombstone(PATHS.user_tombstones, "user_afterwards")
    write.organization("org_zombie")
    write.tombstone(PATHS.organization_tombstones, "org_zombie")
    write.set(f"{o}/org_app", APP_FIELDS)  # the app wrote it after the deletion
    write.tombstone(PATHS.organization_tombstones, "org_app")
    fixable |= {
        ("user_under_tombstone", f"{u}/user_zombie"),
        ("organization_under_tombstone", f"{o}/org_zombie"),
    }
    unfixable |= {
        ("user_under_tombstone", f"{u}/user_afterwards"),
        ("organization_under_tombstone", f"{o}/org_app"),
    }
    # 4. Memberships left behind by deletions (org_gone's document went, its members stayed), and one
    # under its own tombstone; members of an organization or user never synced are legal.
    write.tombstone(PATHS.organization_tombstones, "org_gone")
    write.member("orgmem_gone1", "org_gone", "user_fine1")
    write.member("orgmem_gone2", "org_gone", "user_fine2")
    write.tombstone(PATHS.user_tombstones, "user_left")
    write.member("orgmem_left", "org_fine", "user_left")
    write.member("orgmem_old", "org_fine", "user_fine1")
    write.tombstone(PATHS.membership_tombstones, "orgmem_old")
    write.member("orgmem_early", "org_unseen", "user_unseen")
    fixable |= {
        ("membership_of_deleted_organization", f"{m('org_gone')}/user_fine1"),
        ("membership_of_deleted_organization", f"{m('org_gone')}/user_fine2"),
        ("membership_of_deleted_user", f"{m('org_fine')}/user_left"),
        ("membership_under_tombstone", f"{m('org_fine')}/user_fine1"),
    }
    # 5. Wrong types and ids; metadata kept as the JSON text of an object is legal.
    write.claim("typed@example.com", "user_typed")
    write.set(f"{u}/user_typed", user_document("user_typed", "typed@example.com", email_verified="yes", banned=None,
                                               email_addresses=["a", 1], sync_digest="abc"))  # fmt: skip
    write.set(f"{u}/user_copied", user_document("user_original", None))
    write.set(f"{u}/user_textmeta", user_document("user_textmeta", None, public_metadata='{"a": [[1]]}'))
    write.set(f"{u}/user_badmeta", user_document("user_badmeta", None, unsafe_metadata="[1, 2]"))
    write.organization("org_typed", max_allowed_memberships=True, updated_at=None)
    write.member("orgmem_typed", "org_fine", "user_fine2", permissions="org:all", user_id="user_other")
    write.set(f"{m('org_fine')}/user_fine3", {"membership_id": "orgmem_fine3"})  # synced fields missing
    unfixable |= {
        ("wrong_type", f"{u}/user_typed"),
        ("wrong_type", f"{u}/user_copied"),
        ("wrong_type", f"{u}/user_badmeta"),
        ("wrong_type", f"{o}/org_typed"),
        ("wrong_type", f"{m('org_fine')}/user_fine2"),
        ("wrong_type", f"{m('org_fine')}/user_fine3"),
    }
    write.commit()
    return {"fixable": fixable, "unfixable": unfixable}


def test_each_kind_of_violation_is_reported_by_ids_only(
    db: firestore.Client,
    damaged: dict[str, set[tuple[str, str]]],
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_check(capsys, tmp_path, emulator_host)

    assert code == 1
    assert reported(out) == damaged["fixable"] | damaged["unfixable"], out
    assert {kind for kind, _ in reported(out)} == KINDS
    assert_no_email(out, err)
    lines = out.splitlines()
    summary = next(line for line in lines if " violations (" in line)
    assert summary.startswith("19 violations (10 fixable with --repair): claim_missing 1, claim_stale 3, ")
    advice = {line.split(":")[0] for line in lines if line.startswith("what to do, ")}
    assert advice == {f"what to do, {key}" for key in check.ADVICE} - {"what to do, claim_blocked"}
    assert lines[-1] == f"({check.CLAIM_NAMES})"
    assert "[not fixable here: app_fields_under_tombstone]" in next(
        line for line in lines if "/user_afterwards:" in line
    )
    typed = next(line for line in lines if "users/user_typed:" in line)
    assert "email_verified is string, not boolean" in typed
    assert "email_addresses[1] is integer, not string" in typed
    assert "banned is null, not boolean" in typed
    assert "sync_digest is string, not 64 hex digits" in typed
    assert "clerk_id is not user_copied" in next(line for line in lines if "users/user_copied:" in line)
    organization = next(line for line in lines if "organizations/org_typed:" in line)
    assert "max_allowed_memberships is boolean, not integer or null" in organization
    assert "updated_at is null, not timestamp" in organization
    member = next(line for line in lines if "memberships/user_fine2: " in line and "wrong_type" in line)
    assert "user_id is not user_fine2; permissions is string, not list of strings" in member
    assert "synced_at missing" in next(line for line in lines if "memberships/user_fine3:" in line)
    assert "[--repair: delete the claim]" in next(line for line in lines if "(owner user_ghost)" in line)


def test_json_prints_a_machine_readable_summary(
    db: firestore.Client,
    damaged: dict[str, set[tuple[str, str]]],
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_check(capsys, tmp_path, emulator_host, "--json")

    summary = json.loads(out)
    assert code == 1
    assert summary["ok"] is False
    assert {(entry["kind"], entry["subject"]) for entry in summary["violations"]} == (
        damaged["fixable"] | damaged["unfixable"]
    )
    fixable = {(entry["kind"], entry["subject"]) for entry in summary["violations"] if entry["fixable"]}
    assert fixable == damaged["fixable"]
    assert summary["by_kind"]["claim_stale"] == 3
    assert all(("advice" in entry) != entry["fixable"] for entry in summary["violations"])
    assert summary["checked"]["memberships"] == 8
    assert_no_email(out)


def test_repair_fixes_each_fixable_kind_and_the_recheck_passes(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write = Writer(db)
    write.user_with_claim("user_moved", "now@example.com")
    write.claim("before@example.com", "user_moved")
    write.claim("ghost@example.com", "user_ghost")
    write.user("user_unclaimed", "Unclaimed@Example.com")
    write.user("user_taker", "taken@example.com")
    write.claim("taken@example.com", "user_moved")  # stale, and user_taker's address
    write.organization("org_fine")
    write.tombstone(PATHS.organization_tombstones, "org_gone")
    for index in range(3):
        write.member(f"orgmem_gone{index}", "org_gone", f"user_member{index}")
    write.tombstone(PATHS.user_tombstones, "user_left")
    write.member("orgmem_left1", "org_fine", "user_left")
    write.member("orgmem_left2", "org_other", "user_left")
    write.member("orgmem_old", "org_fine", "user_moved")
    write.tombstone(PATHS.membership_tombstones, "orgmem_old")
    write.commit()

    code, out, err = run_check(capsys, tmp_path, emulator_host, "--repair")
    again_code, again, _ = run_check(capsys, tmp_path, emulator_host, "--repair")

    assert code == 0, out
    before, _, rest = out.partition("repair:\n")
    repairs, _, after = rest.partition("after repair:\n")
    assert "11 violations (11 fixable with --repair)" in before
    assert "NOT DONE" not in repairs
    # The deletions are stale (the tombstones exist); what their sweeps removed makes them applied.
    run_id = re.search(r"check_repair_([0-9a-f]{8})_", repairs)
    assert run_id is not None, repairs
    prefix = f"check_repair_{run_id.group(1)}"
    assert f"done     organizations/org_gone: {check.REPAIR_VERBS['sweep_organization']}: " \
           f"{prefix}_organization_org_gone: applied, 3 swept" in repairs  # fmt: skip
    assert f"done     users/user_left: {check.REPAIR_VERBS['sweep_user']}: {prefix}_user_user_left: applied, 2 swept" \
           in repairs  # fmt: skip
    assert f"{prefix}_membership_orgmem_old: applied" in repairs
    assert f"done     {claim_name('ghost@example.com')} (owner user_ghost): delete the claim: deleted" in repairs
    assert f"done     users/user_taker -> {claim_name('taken@example.com')}: create the claim: created" in repairs
    assert after.endswith("no violations\n")
    assert_no_email(out, err)
    assert (again_code, again.endswith("no violations\n"), "repair:" in again) == (0, True, False)
    claims = {doc.id: (doc.to_dict() or {})["clerk_id"] for doc in db.collection(PATHS.claims).stream(timeout=10)}
    assert claims == {
        claim_id("now@example.com"): "user_moved",
        claim_id("unclaimed@example.com"): "user_unclaimed",
        claim_id("taken@example.com"): "user_taker",
    }
    created = db.collection(PATHS.claims).document(claim_id("unclaimed@example.com")).get(timeout=10).to_dict()
    assert created is not None
    assert created["email"] == "unclaimed@example.com"
    left = [doc.reference.path for doc in db.collection_group(paths.MEMBERSHIPS).stream(timeout=10)]
    assert left == []
    assert db.collection(PATHS.membership_tombstones).document("orgmem_old").get(timeout=10).exists
    record = (
        db.collection(PATHS.events).document(event_log.record_id(f"{prefix}_user_user_left")).get(timeout=10).to_dict()
    )
    assert record is not None
    assert (record["type"], record["outcome"], record["clerk_id"]) == ("user.deleted", "stale", "user_left")


def test_repair_reports_what_it_cannot_fix_and_exit_stays_1(
    db: firestore.Client,
    damaged: dict[str, set[tuple[str, str]]],
    emulator_host: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write = Writer(db)
    # A live user whose address a deleted user's document still holds (and claims): the first round
    # re-applies the deletion, which releases the claim; the second claims it for the live user.
    write.user_with_claim("user_dead", "held@example.com")
    write.tombstone(PATHS.user_tombstones, "user_dead")
    write.user("user_alive", "held@example.com")
    write.commit()
    unfixable = damaged["unfixable"]

    code, out, err = run_check(capsys, tmp_path, emulator_host, "--repair")
    json_code, json_out, _ = run_check(capsys, tmp_path, emulator_host, "--repair", "--json")

    assert code == 1
    _, _, after = out.partition("after repair:\n")
    assert reported(after) == unfixable, after
    repairs = out.partition("repair:\n")[2].partition("after repair:\n")[0].splitlines()
    not_done = [line for line in repairs if line.startswith("  NOT DONE")]
    assert len(not_done) == len(unfixable)
    assert len([line for line in not_done if ": wrong_type: " in line]) == 6
    assert f"what to do, wrong_type: {check.ADVICE['wrong_type']}\n" in after
    done = [line for line in repairs if line.startswith("  done")]
    assert len(done) == len(repairs) - len(not_done) == 11  # one sweep for both of org_gone's members
    assert f"done     users/user_alive -> {claim_name('held@example.com')}: create the claim: created" in out
    assert_no_email(out, err, json_out)
    shared = db.collection(PATHS.claims).document(claim_id("twin@example.com")).get(timeout=10).to_dict()
    assert shared is not None
    assert shared["clerk_id"] == "user_twin1"  # a conflict is not settled here
    held = db.collection(PATHS.claims).document(claim_id("held@example.com")).get(timeout=10).to_dict()
    assert held is not None
    assert held["clerk_id"] == "user_alive"
    assert not db.collection(PATHS.users).document("user_dead").get(timeout=10).exists
    summary = json.loads(json_out)
    assert json_code == 1
    assert summary["ok"] is False
    assert {(entry["kind"], entry["subject"]) for entry in summary["after_repair"]["violations"]} == unfixable
    assert all(not entry["done"] for entry in summary["repairs"])  # the fixable ones are already fixed


@pytest.mark.parametrize("on_user_deleted", ["delete", "keep-app-fields"])
def test_repair_removes_a_deleted_users_synced_data_per_on_user_deleted(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], on_user_deleted: str
) -> None:
    os.environ["ON_USER_DELETED"] = on_user_deleted
    write = Writer(db)
    write.set(f"{PATHS.users}/user_zombie", {**user_document("user_zombie", "zombie@example.com"), **APP_FIELDS})
    write.claim("zombie@example.com", "user_zombie")
    write.tombstone(PATHS.user_tombstones, "user_zombie")
    write.set(f"{PATHS.organizations}/org_zombie", {**organization_document("org_zombie"), **APP_FIELDS})
    write.tombstone(PATHS.organization_tombstones, "org_zombie")
    write.commit()

    code, out, err = run_check(capsys, tmp_path, emulator_host, "--repair")

    assert code == 0, out
    assert out.endswith("no violations\n")
    assert_no_email(out, err)
    left = db.collection(PATHS.users).document("user_zombie").get(timeout=10).to_dict()
    if on_user_deleted == "delete":
        assert left is None
    else:
        assert left is not None
        assert set(left) == {*APP_FIELDS, users.DELETED_AT_FIELD}
    assert not db.collection(PATHS.organizations).document("org_zombie").get(timeout=10).exists
    assert list(db.collection(PATHS.claims).stream(timeout=10)) == []


def test_claim_repairs_re_read_what_they_change(db: firestore.Client) -> None:
    write = Writer(db)
    write.user_with_claim("user_back", "now@example.com")
    write.claim("back@example.com", "user_back")
    write.user("user_beaten", "race@example.com")
    write.commit()
    settings = config.read_settings()
    report = check.scan(db, PATHS, timeout=10)
    # Between the check and the repair, user_back's document takes its old address back, and somebody
    # claims the address user_beaten lacked a claim for.
    db.collection(PATHS.users).document("user_back").set(user_document("user_back", "back@example.com"), timeout=10)
    race = Writer(db)
    race.claim("race@example.com", "user_winner")
    race.commit()

    repairs = check.repair(db, settings, report, timeout=10)

    assert sorted((repair.action, repair.result, repair.done) for repair in repairs) == [
        ("create_claim", "left alone: claimed since the check", False),
        ("delete_claim", "left alone: its owner holds the address again", False),
    ]
    back = db.collection(PATHS.claims).document(claim_id("back@example.com")).get(timeout=10).to_dict()
    race_claim = db.collection(PATHS.claims).document(claim_id("race@example.com")).get(timeout=10).to_dict()
    assert (back or {}).get("clerk_id") == "user_back"
    assert (race_claim or {}).get("clerk_id") == "user_winner"


def test_a_check_during_deliveries_sees_one_consistent_instant(db: firestore.Client) -> None:
    write = Writer(db)
    user_ids = [f"user_busy{index:03d}" for index in range(300)]
    for user_id in user_ids:
        write.user_with_claim(user_id, f"{user_id}.0@example.com")
    write.commit()
    stop = threading.Event()
    moved = itertools.count(1)

    def deliver() -> None:
        """Move addresses through the function's transaction: user and claims change together."""
        while not stop.is_set():
            step = next(moved)
            user_id = user_ids[step % len(user_ids)]
            body = user_event("user.updated", user_id, emails=[f"{user_id}.{step}@example.com"],
                              updated_at=BASE_MS + step)  # fmt: skip
            apply_event(db, f"msg_busy{step}", parsed(body))

    senders = [threading.Thread(target=deliver) for _ in range(4)]
    for sender in senders:
        sender.start()
    try:
        reports = [check.scan(db, PATHS, timeout=30) for _ in range(3)]
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=60)

    assert next(moved) > 20  # the addresses really moved while the checks read
    assert [report.violations for report in reports] == [[], [], []]
    assert all(report.checked["email_claims"] == len(user_ids) for report in reports)


def test_nested_collections_are_checked_and_other_deployments_left_out(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["USERS_COLLECTION"] = "tenants/a/users"
    os.environ["ORGANIZATIONS_COLLECTION"] = "tenants/a/organizations"
    ours = paths.paths_for("tenants/a/users", "tenants/a/organizations")
    theirs = paths.paths_for("tenants/b/users", "tenants/b/organizations")
    mine, other = Writer(db, ours), Writer(db, theirs)
    mine.user_with_claim("user_a", "a@example.com")
    mine.tombstone(ours.organization_tombstones, "org_gone")
    mine.member("orgmem_a", "org_gone", "user_a")
    other.user("user_b", "b@example.com")  # no claim: tenant b's problem, not ours
    other.tombstone(theirs.organization_tombstones, "org_x")
    other.member("orgmem_b", "org_x", "user_b")
    mine.commit()
    other.commit()

    code, out, _ = run_check(capsys, tmp_path, emulator_host)
    repaired_code, repaired, _ = run_check(capsys, tmp_path, emulator_host, "--repair")

    assert code == 1
    assert reported(out) == {
        ("membership_of_deleted_organization", "tenants/a/organizations/org_gone/memberships/user_a")
    }
    assert "checked 1 users (tenants/a/users), 1 email claims, 0 organizations (tenants/a/organizations), 1 memb" in out
    assert repaired_code == 0, repaired
    assert db.document("tenants/b/organizations/org_x/memberships/user_b").get(timeout=10).exists


# --- scale -----------------------------------------------------------------------------------------------------


def seed(db: firestore.Client, user_count: int) -> dict[str, int]:
    """`user_count` users with claims, one organization per 50 of them with 20 members each, tombstones."""
    write = Writer(db)
    template = user_document("user_template", "template@example.com")
    for index in range(user_count):
        user_id = f"user_scale{index:06d}"
        email = f"Scale.{index}@Example.com"
        document = {**template, "clerk_id": user_id, "email": email, "email_addresses": [email]}
        synced = {name: document[name] for name in users.SYNCED_FIELDS}
        write.set(
            f"{PATHS.users}/{user_id}", {**synced, "synced_at": NOW, "sync_digest": versions.content_digest(synced)}
        )
        write.claim(email, user_id)
    organization_count = max(1, user_count // 50)
    for index in range(organization_count):
        organization_id = f"org_scale{index:05d}"
        write.organization(organization_id)
        for member in range(20):
            user_index = (index * 20 + member) % user_count
            write.member(f"orgmem_scale{index:05d}_{member:02d}", organization_id, f"user_scale{user_index:06d}")
    for index in range(user_count // 100):
        write.tombstone(PATHS.user_tombstones, f"user_deleted{index:06d}")
        write.tombstone(PATHS.membership_tombstones, f"orgmem_deleted{index:06d}")
    for index in range(organization_count // 10):
        write.tombstone(PATHS.organization_tombstones, f"org_deleted{index:05d}")
    write.commit()
    return {"users": user_count, "organizations": organization_count, "memberships": organization_count * 20}


def report_line(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\ncheck: {line}")


@pytest.mark.parametrize(
    "user_count",
    [pytest.param(2_000, id="2000"), pytest.param(10_000, id="10000", marks=[pytest.mark.soak])],
)
def test_check_of_thousands_of_users_takes_seconds(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], user_count: int
) -> None:
    started = time.monotonic()
    seeded = seed(db, user_count)
    seeding = time.monotonic() - started

    started = time.monotonic()
    code, out, _ = run_check(capsys, tmp_path, emulator_host)
    elapsed = time.monotonic() - started

    assert code == 0, out[-2000:]
    assert out.startswith(f"checked {user_count} users (users), {user_count} email claims, ")
    report_line(
        capsys,
        f"{user_count} users, {user_count} claims, {seeded['organizations']} organizations, "
        f"{seeded['memberships']} memberships checked in {elapsed:.1f} s (seeded in {seeding:.1f} s, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
    )
    assert elapsed < 120
