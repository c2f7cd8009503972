"""Reconcile of roles and permissions (`GET /organization_roles`, `GET /organization_permissions`): what
deliveries lost is copied, what Clerk deleted goes, and what roles grant ends as Clerk says, through the
webhook's own transactions; a member stored before its role names the role's id after the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from clerk_api import (
    BASE_MS,
    SECRET_KEY,
    FakeClerk,
    api_membership,
    api_organization,
    api_permission,
    api_role,
    serve,
)
from conftest import PATHS, snapshot_all
from google.cloud import firestore
from reconcile_runs import clerk_users, counts, deliver, documents, run_cli, summary_of, without_state

pytestmark = pytest.mark.filterwarnings(r"ignore:.*\*\* DEPRECATED \*\*:DeprecationWarning")


@pytest.fixture(autouse=True)
def secret_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", SECRET_KEY)


def permission(permission_id: str, key: str, updated_at: int = BASE_MS) -> dict[str, Any]:
    return api_permission(permission_id, key, created_at=BASE_MS, updated_at=updated_at)


def role(role_id: str, key: str, held: list[dict[str, Any]], updated_at: int = BASE_MS) -> dict[str, Any]:
    return api_role(role_id, key, held, created_at=BASE_MS, updated_at=updated_at)


@pytest.fixture
def drifted(db: firestore.Client) -> FakeClerk:
    """Clerk now; Firestore as the webhook left it before deliveries were lost."""
    edit, read = permission("perm_edit", "org:posts:edit", BASE_MS + 10), permission("perm_read", "org:posts:read")
    editor = role("role_editor", "org:editor", [edit, read], BASE_MS + 20)
    viewer = role("role_viewer", "org:viewer", [read])
    users = clerk_users(1)
    organization = api_organization("org_roles", name="Roles Inc", created_at=BASE_MS, updated_at=BASE_MS)
    member = api_membership("orgmem_roles", organization, users[0], role="org:viewer", updated_at=BASE_MS)
    # Stored before: the edit permission under its old key, a permission and a role Clerk deleted since,
    # the editor role as it was, and the member (its role unknown to Firestore then).
    gone = permission("perm_gone", "org:posts:delete")
    deliver(db, "msg_p1", "permission.updated", permission("perm_edit", "org:posts:write"))
    deliver(db, "msg_p2", "permission.created", gone)
    deliver(
        db,
        "msg_r1",
        "role.updated",
        role("role_editor", "org:editor", [permission("perm_edit", "org:posts:write"), gone]),
    )
    deliver(db, "msg_r2", "role.created", role("role_legacy", "org:legacy", [gone]))
    deliver(db, "msg_u1", "user.created", users[0])
    deliver(db, "msg_o1", "organization.created", organization)
    deliver(db, "msg_m1", "organizationMembership.created", member)
    return FakeClerk(users, [organization], [member], roles=[editor, viewer], permissions=[edit, read])


def test_a_full_run_makes_roles_and_permissions_equal_to_clerks(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], drifted: FakeClerk
) -> None:
    with serve(drifted):
        code, out, err = run_cli(capsys, drifted, tmp_path, emulator_host, "reconcile", "--json")
        after = without_state(snapshot_all(db))
        again_code, again_out, _ = run_cli(capsys, drifted, tmp_path, emulator_host, "reconcile", "--json")

    summary, again = summary_of(out), summary_of(again_out)
    stored_roles = documents(db, PATHS.roles)
    member = db.collection(PATHS.memberships("org_roles")).document("user_rc0000").get(timeout=10).to_dict() or {}
    assert code == 0, out + err
    assert (counts(summary, "permissions")["outdated"], counts(summary, "permissions")["missing"]) == (1, 1)
    assert counts(summary, "permissions")["extra"] == 1
    assert (counts(summary, "roles")["outdated"], counts(summary, "roles")["missing"]) == (1, 1)
    assert counts(summary, "roles")["extra"] == 1
    assert counts(summary, "memberships")["outdated"] == 1  # in sync, but without its role's id
    assert sorted(stored_roles) == ["role_editor", "role_viewer"]
    assert stored_roles["role_editor"]["permissions"] == ["org:posts:edit", "org:posts:read"]
    assert stored_roles["role_viewer"]["permissions"] == ["org:posts:read"]
    assert sorted(documents(db, PATHS.permissions)) == ["perm_edit", "perm_read"]
    assert sorted(documents(db, PATHS.role_tombstones)) == ["role_legacy"]
    assert sorted(documents(db, PATHS.permission_tombstones)) == ["perm_gone"]
    assert member["role_id"] == "role_viewer"
    assert (again_code, again["outcome"]) == (0, "in_sync")
    assert (counts(again, "roles")["in_sync"], counts(again, "permissions")["in_sync"]) == (2, 2)
    assert without_state(snapshot_all(db)) == after


def test_a_role_listed_then_gone_from_clerk_is_deleted_only_once_clerk_answers_404(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kept = role("role_kept", "org:kept", [])
    deliver(db, "msg_r1", "role.created", kept)
    fake = FakeClerk(clerk_users(1), roles=[kept], unlisted={"role_kept"})  # missed by the listing, found by id

    with serve(fake):
        code, out, _ = run_cli(capsys, fake, tmp_path, emulator_host, "reconcile", "--json")

    assert code == 0
    assert counts(summary_of(out), "roles")["extra"] == 0
    assert "role_kept" in documents(db, PATHS.roles)
    assert "/v1/organization_roles/role_kept" in [request.path for request in fake.requests]
