"""`send`, `users` and `user` against a real functions-framework server and the emulator."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import emulator
import pytest
from clerk_events import new_user_id, user_event
from conftest import PATHS, PROJECT, ROOT, Server, start_server, stop_server
from google.cloud import firestore

from clerk_sync import event_log
from tools import cli
from tools import reconcile as terminal
from tools import send as send_module

OTHER_SECRET = "whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCB5b3Ugd2FudA=="


@pytest.fixture(autouse=True)
def _sent_bodies_in_tmp(tmp_path: Path) -> None:
    """`send` keeps each body it posts; here, in the test's own directory."""
    os.environ["CLERK_SYNC_SENT_DIR"] = str(tmp_path / "sent")


@pytest.fixture(scope="module")
def module_server(emulator_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real functions-framework process for this module (each test still gets a wiped database)."""
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host}
    running = start_server(tmp_path_factory.mktemp("cli-server"), environment)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture
def server(module_server: Server, db: firestore.Client) -> Server:
    """The module's server, in front of a database wiped for this test."""
    return module_server


def run_cli(capsys: pytest.CaptureFixture[str], tmp_path: Path, *arguments: str) -> tuple[int, str, str]:
    """One `python -m clerk_sync` command in this process, without anybody's real .env."""
    capsys.readouterr()
    command, *rest = arguments
    code = cli.main([command, "--env-file", str(tmp_path / "absent.env"), *rest])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def send(capsys: pytest.CaptureFixture[str], tmp_path: Path, server: Server, *arguments: str) -> tuple[int, str]:
    code, out, err = run_cli(capsys, tmp_path, "send", *arguments, "--url", server.url)
    return code, out + err


def look(capsys: pytest.CaptureFixture[str], tmp_path: Path, emulator_host: str, *arguments: str) -> tuple[int, str]:
    code, out, _ = run_cli(capsys, tmp_path, *arguments, "--emulator", emulator_host, "--project", PROJECT)
    return code, out


def stored(db: firestore.Client, user_id: str) -> dict[str, object] | None:
    return db.collection(PATHS.users).document(user_id).get(timeout=10).to_dict()


def test_send_user_created_is_stored_by_the_real_server(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()

    code, out = send(capsys, tmp_path, server, "user.created", "--user-id", user_id, "--first-name", "Zoë")

    assert code == 0, out
    assert "200 OK" in out
    assert '"outcome": "applied"' in out
    document = stored(db, user_id)
    assert document is not None
    assert document["first_name"] == "Zoë"
    assert document["email"] == f"zoë.{user_id[-8:].lower()}@example.com"


def test_send_without_user_id_creates_a_new_clerk_shaped_user(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = send(capsys, tmp_path, server, "user.created")

    created = re.search(r"user\.created  (user_2\w{26})\b", out)
    assert code == 0
    assert created is not None, out
    assert stored(db, created.group(1)) is not None


def test_send_with_a_reused_svix_id_is_a_duplicate_delivery(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    first_code, first = send(capsys, tmp_path, server, "user.created", "--user-id", user_id, "--svix-id", "msg_cli_dup")
    saved = re.search(r"resend   (python3 -m clerk_sync send (\S+\.json) --svix-id msg_cli_dup --url \S+)\n", first)
    assert saved is not None, first
    assert saved.group(2) == str(tmp_path / "sent" / "msg_cli_dup.json")

    # The hint runs as typed, in a shell whose python3 is the system's (none of the tools' dependencies).
    shell = subprocess.run(  # noqa: S602 (the hint runs exactly as a person would paste it)
        saved.group(1),
        shell=True,
        cwd=ROOT,
        env={**os.environ, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    code, out = shell.returncode, shell.stdout + shell.stderr
    other_code, other = send(
        capsys, tmp_path, server, "user.updated", "--user-id", user_id, "--svix-id", "msg_cli_dup", "--email", "x@y.z"
    )

    assert first_code == code == other_code == 0
    assert '"outcome": "applied"' in first
    assert '"outcome": "duplicate"' in out
    assert '"outcome": "duplicate"' in other
    document = stored(db, user_id)
    assert document is not None
    assert document["email"] != "x@y.z"
    assert db.collection(PATHS.events).document(event_log.record_id("msg_cli_dup")).get(timeout=10).exists


def test_send_user_updated_moves_the_user_to_a_new_email(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    send(capsys, tmp_path, server, "user.created", "--user-id", user_id)
    first = stored(db, user_id)
    assert first is not None

    code, _ = send(capsys, tmp_path, server, "user.updated", "--user-id", user_id)
    changed = stored(db, user_id)
    chosen_code, _ = send(
        capsys, tmp_path, server, "user.updated", "--user-id", user_id, "--email", "Chosen@Example.com"
    )
    chosen = stored(db, user_id)

    assert code == chosen_code == 0
    assert changed is not None
    assert chosen is not None
    assert changed["email"] != first["email"]
    assert chosen["email"] == "Chosen@Example.com"
    claims = {document.id for document in db.collection(PATHS.claims).stream(timeout=10)}
    assert claims == {"chosen@example.com"}


def test_send_user_updated_requires_the_user_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, tmp_path, "send", "user.updated")

    assert code == 1
    assert "user.updated needs --user-id" in err


def test_send_user_deleted_removes_the_user_and_user_shows_the_tombstone(
    server: Server, db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    send(capsys, tmp_path, server, "user.created", "--user-id", user_id, "--svix-id", "msg_cli_created")

    code, out = send(capsys, tmp_path, server, "user.deleted", "--user-id", user_id, "--svix-id", "msg_cli_deleted")
    shown_code, shown = look(capsys, tmp_path, emulator_host, "user", user_id)

    assert code == 0, out
    assert stored(db, user_id) is None
    assert db.collection(PATHS.user_tombstones).document(user_id).get(timeout=10).exists
    assert shown_code == 0
    assert f"users/{user_id}: no document" in shown
    assert f"user_tombstones/{user_id}: deleted_at" in shown
    assert shown.index("msg_cli_deleted") < shown.index("msg_cli_created")  # newest first


def test_send_posts_a_json_file_verbatim(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    path = tmp_path / "event.json"
    path.write_text(user_event("user.created", user_id, emails=["file@example.com"]))

    code, out = send(capsys, tmp_path, server, str(path))

    assert code == 0, out
    assert f"user.created  {user_id}" in out
    document = stored(db, user_id)
    assert document is not None
    assert document["email"] == "file@example.com"


def test_send_exits_non_zero_when_the_function_rejects_the_signature(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = OTHER_SECRET
    user_id = new_user_id()

    code, out = send(capsys, tmp_path, server, "user.created", "--user-id", user_id)

    assert code == 1
    assert "401 UNAUTHORIZED" in out.upper()
    assert stored(db, user_id) is None


def test_send_to_a_closed_port_says_nothing_answered(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{emulator.free_port()}/"

    code, _, err = run_cli(capsys, tmp_path, "send", "user.created", "--url", url, "--timeout", "5")

    assert code == 1
    assert f"no answer from {url}" in err


def test_users_lists_what_the_function_wrote_newest_first(
    server: Server, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older, newer = new_user_id(), new_user_id()
    send(capsys, tmp_path, server, "user.created", "--user-id", older, "--updated-at", "1756382400000")
    send(capsys, tmp_path, server, "user.created", "--user-id", newer, "--first-name", "Grace", "--last-name", "Hopper")

    code, out = look(capsys, tmp_path, emulator_host, "users")
    limited_code, limited = look(capsys, tmp_path, emulator_host, "users", "--limit", "1")

    assert code == limited_code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "EMAIL", "NAME", "UPDATED_AT"]
    assert lines[1].split()[:4] == [newer, f"grace.{newer[-8:].lower()}@example.com", "Grace", "Hopper"]
    assert lines[2].split()[:4] == [older, f"ada.{older[-8:].lower()}@example.com", "Ada", "Lovelace"]
    assert lines[2].endswith("2025-08-28T12:00:00.000Z")
    assert "2 users" in out
    assert older not in limited
    assert "more exist" in limited


def test_user_shows_the_document_and_its_events(
    server: Server, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    send(capsys, tmp_path, server, "user.created", "--user-id", user_id, "--svix-id", "msg_cli_show1")
    send(capsys, tmp_path, server, "user.updated", "--user-id", user_id, "--svix-id", "msg_cli_show2")

    code, out = look(capsys, tmp_path, emulator_host, "user", user_id)

    assert code == 0
    document = json.loads(out[out.index("{") : out.index("}\n") + 1])
    assert document["clerk_id"] == user_id
    assert document["updated_at"].endswith("Z")
    assert "private_metadata" not in document
    assert f"user_tombstones/{user_id}: none" in out
    assert f"webhook_events for {user_id}: 2 (newest first)" in out
    assert out.index("msg_cli_show2") < out.index("msg_cli_show1")


def test_user_that_never_existed_exits_non_zero(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = look(capsys, tmp_path, emulator_host, "user", "user_never")

    assert code == 1
    assert "webhook_events for user_never: 0" in out


def test_send_builds_organization_and_membership_events_and_the_views_show_them(
    server: Server, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    organization_id, user_id = "org_cli0000000000000000000001", new_user_id()
    membership = "organizationMembership"

    codes = [
        send(capsys, tmp_path, server, "organization.created", "--org-id", organization_id, "--name", "Acme Labs")[0],
        send(capsys, tmp_path, server, "user.created", "--user-id", user_id)[0],
        send(capsys, tmp_path, server, f"{membership}.created", "--org-id", organization_id, "--user-id", user_id,
             "--membership-id", "orgmem_cli1", "--role", "org:admin")[0],
    ]  # fmt: skip
    listed_code, listed = look(capsys, tmp_path, emulator_host, "organizations")
    shown_code, shown = look(capsys, tmp_path, emulator_host, "organization", organization_id)
    user_code, user = look(capsys, tmp_path, emulator_host, "user", user_id)
    left = send(capsys, tmp_path, server, f"{membership}.deleted", "--org-id", organization_id, "--user-id", user_id,
                "--membership-id", "orgmem_cli1")  # fmt: skip
    gone = send(capsys, tmp_path, server, "organization.deleted", "--org-id", organization_id)
    after_code, after = look(capsys, tmp_path, emulator_host, "organization", organization_id)

    assert codes == [0, 0, 0]
    assert listed_code == shown_code == user_code == after_code == 0
    assert listed.splitlines()[1].split()[:5] == [organization_id, "Acme", "Labs", "acme-labs", "1"]
    assert '"name": "Acme Labs"' in shown
    assert f"organizations/{organization_id}/memberships: 1" in shown
    assert "orgmem_cli1" in shown
    assert "org:admin" in shown
    assert f"memberships of {user_id}: 1" in user
    assert '"outcome": "applied"' in left[1]
    assert '"outcome": "applied"' in gone[1]
    assert f"organizations/{organization_id}: no document" in after
    assert f"organization_tombstones/{organization_id}: deleted_at" in after


def test_send_membership_events_say_which_ids_they_need(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, tmp_path, "send", "organizationMembership.created", "--user-id", "user_1")
    org_code, _, org_err = run_cli(capsys, tmp_path, "send", "organization.updated")
    update_code, _, update_err = run_cli(capsys, tmp_path, "send", "organizationMembership.updated")
    delete_code, _, delete_err = run_cli(
        capsys, tmp_path, "send", "organizationMembership.deleted", "--org-id", "org_1", "--user-id", "user_1"
    )
    with pytest.raises(SystemExit):
        cli.main(["send", "--help"])
    help_text = capsys.readouterr().out

    assert (code, org_code, update_code, delete_code) == (1, 1, 1, 1)
    assert "organizationMembership.created needs --org-id (the organization joined)" in err
    assert "--user-id" not in err
    assert "organization.updated needs --org-id" in org_err
    assert update_err.strip() == (
        "error: organizationMembership.updated needs --org-id (the organization joined), --user-id (the member) "
        "and --membership-id (the id `send organizationMembership.created` printed)"
    )
    assert "organizationMembership.deleted needs --membership-id" in delete_err
    assert "organizationMembership.updated and .deleted need the one .created printed" in " ".join(help_text.split())


@pytest.mark.parametrize(("command", "given"), [("user", "a/b"), ("user", ""), ("organization", "org_x/memberships")])
def test_user_and_organization_refuse_an_id_no_document_can_have_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, given: str
) -> None:
    closed = f"127.0.0.1:{emulator.free_port()}"

    code, out, err = run_cli(capsys, tmp_path, command, given, "--emulator", closed)

    assert code == 1
    assert out == ""
    assert err.startswith("error: ")
    assert f"is not a Clerk {command} id: those are letters, digits, _ and - only" in err
    assert ("an empty id" if not given else repr(given)) in err
    assert "Traceback" not in err
    assert "Firestore" not in err  # refused before any connection is tried


def test_an_emulator_address_without_a_port_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, tmp_path, "users", "--emulator", "localhost")
    os.environ["FIRESTORE_EMULATOR_HOST"] = "127.0.0.1"
    environment_code, _, environment_err = run_cli(capsys, tmp_path, "users")

    assert (code, environment_code) == (1, 1)
    assert "--emulator localhost needs a port: HOST:PORT, such as 127.0.0.1:8081" in err
    assert "FIRESTORE_EMULATOR_HOST=127.0.0.1 needs a port" in environment_err


def test_send_of_a_malformed_file_shows_the_reason_the_function_gave(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "no-id.json"
    event = json.loads(user_event("user.created", new_user_id()))
    del event["data"]["id"]
    path.write_text(json.dumps(event))

    code, out = send(capsys, tmp_path, server, str(path))

    assert code == 1
    assert "400 BAD REQUEST" in out.upper()
    assert json.loads(out.strip().splitlines()[-1]) == {"outcome": "malformed", "reason": "missing data.id"}


@pytest.mark.parametrize("url", ["127.0.0.1:8080/", "localhost:8080", "ftp://127.0.0.1/", "http://"])
def test_send_to_a_url_it_cannot_post_to_refuses_before_saving_or_printing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    code, out, err = run_cli(capsys, tmp_path, "send", "user.created", "--url", url)

    assert code == 1
    assert out == ""
    assert "--url must be an http:// or https:// URL, such as http://127.0.0.1:8080/" in err
    assert not (tmp_path / "sent").exists()


def test_send_user_updated_without_names_says_the_defaults_replace_the_stored_ones(
    server: Server, db: firestore.Client, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id = new_user_id()
    send(
        capsys, tmp_path, server, "user.created", "--user-id", user_id, "--first-name", "Grace", "--last-name", "Hopper"
    )

    code, out = send(capsys, tmp_path, server, "user.updated", "--user-id", user_id)
    named_code, named = send(capsys, tmp_path, server, "user.updated", "--user-id", user_id, "--first-name", "Grace",
                             "--last-name", "Hopper")  # fmt: skip
    created_code, created = send(capsys, tmp_path, server, "user.created")

    assert code == named_code == created_code == 0
    assert (
        "  note     first name 'Ada', last name 'Lovelace': the defaults, not what Firestore holds; an update carries "
        "the whole object, so they replace the stored values (choose with --first-name, --last-name)"
    ) in out
    assert "note" not in named
    assert "note" not in created
    document = stored(db, user_id)
    assert document is not None
    assert (document["first_name"], document["last_name"]) == ("Grace", "Hopper")


def test_send_membership_updated_without_role_says_it_resets_the_role() -> None:
    assert send_module.defaults_note("organizationMembership.updated", ("role",)) == (
        "role 'org:member': the defaults, not what Firestore holds; an update carries the whole object, so they "
        "replace the stored values (choose with --role)"
    )
    assert send_module.defaults_note("organizationMembership.created", ("role",)) is None


def test_send_of_a_missing_file_says_the_file_is_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, tmp_path, "send", "nofile.json")

    assert code == 1
    assert "no such file: nofile.json" in err


def test_users_without_an_emulator_says_how_to_start_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    host = f"127.0.0.1:{emulator.free_port()}"

    code, _, err = run_cli(capsys, tmp_path, "users", "--emulator", host)

    assert code == 1
    assert f"no Firestore emulator answers at {host}: start one with `make dev`" in err


def test_python_m_clerk_sync_send_reaches_the_server(server: Server, db: firestore.Client, tmp_path: Path) -> None:
    user_id = new_user_id()
    command = [sys.executable, "-m", "clerk_sync", "send", "user.created", "--user-id", user_id, "--url", server.url]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}

    finished = subprocess.run(
        [*command, "--env-file", str(tmp_path / "absent.env")],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    assert "200 OK" in finished.stdout
    assert stored(db, user_id) is not None


def test_an_empty_secret_variable_in_the_environment_does_not_hide_the_one_in_env(
    server: Server, db: firestore.Client, tmp_path: Path
) -> None:
    user_id = new_user_id()
    env_file = tmp_path / ".env"
    env_file.write_text(f"CLERK_WEBHOOK_SIGNING_SECRET={os.environ['CLERK_WEBHOOK_SIGNING_SECRET']}\n")
    environment = {**os.environ, "CLERK_WEBHOOK_SIGNING_SECRET": "", "WEBHOOK_SECRET": ""}

    finished = subprocess.run(
        ["python3", "-m", "clerk_sync", "send", "user.created", "--user-id", user_id, "--url", server.url,
         "--env-file", str(env_file)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert finished.returncode == 0, finished.stderr
    assert stored(db, user_id) is not None


def test_the_function_never_imports_the_tools_or_their_dependencies() -> None:
    probe = (
        "import sys; import main; "
        "print(sorted(name for name in sys.modules if name.split('.')[0] in "
        "{'svix', 'clerk_backend_api', 'tools', 'firebase_admin', 'jwt'} or name.startswith('clerk_sync.')))"
    )

    finished = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )

    loaded = json.loads(finished.stdout.replace("'", '"'))
    assert loaded
    assert all(name.startswith("clerk_sync.") for name in loaded)
    assert "clerk_sync.transaction" in loaded


def test_reconcile_progress_rates_each_kind_from_its_own_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Organizations listed after a long user listing must not show the users' elapsed time as theirs."""
    clock = iter([0.0, 10.0, 20.0, 21.0, 22.0])
    monkeypatch.setattr("tools.reconcile.time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    err = io.StringIO()
    progress = terminal.TerminalProgress(err, "reconcile")  # created at 0
    progress.advance("users", 500, 1000)  # 500 in 10 s
    progress.advance("users", 1000, 1000)  # 1000 in 20 s
    progress.advance("organizations", 2, None)  # 2 in the 1 s since the users' last page
    progress.advance("memberships", 4, None)  # 4 in 1 s
    assert err.getvalue().splitlines() == [
        "reconcile: 500/1000 users  50%  50.0/s",
        "reconcile: 1000/1000 users 100%  50.0/s",
        "reconcile: 2 organizations  2.0/s",
        "reconcile: 4 memberships  4.0/s",
    ]
