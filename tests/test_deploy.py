"""What `make deploy` would upload and run: the exact file set, the exact gcloud command."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import gcloud_cli
import pytest
from conftest import ROOT

GCLOUD_TIMEOUT_SECONDS = 60
MAKE_TIMEOUT_SECONDS = 30
# Variables the Makefile reads with `?=`: a developer's shell must not change what the tests see.
MAKE_VARIABLES = (
    *re.findall(r"^([A-Z_]+) \?=", (ROOT / "Makefile").read_text(), re.MULTILINE),
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
)

EXPECTED_DEPLOY = [
    "gcloud",
    "functions",
    "deploy",
    "clerk-webhook",
    "--gen2",
    "--runtime=python313",
    "--region=us-central1",
    "--source=.",
    "--ignore-file=.gcloudignore",
    "--entry-point=clerk_webhook",
    "--trigger-http",
    "--allow-unauthenticated",
    "--service-account=clerk-webhook@demo-x.iam.gserviceaccount.com",
    "--set-secrets=CLERK_WEBHOOK_SIGNING_SECRET=clerk-webhook-signing-secret:latest",
    "--set-env-vars=THREADS=8,GOOGLE_CLOUD_PROJECT=demo-x",
    "--memory=256Mi",
    "--cpu=1",
    "--concurrency=8",
    "--timeout=15s",
    "--max-instances=10",
    "--project=demo-x",
]


def gcloud_environment() -> dict[str, str]:
    """gcloud offline and quiet, with .gcloudignore honoured as `--ignore-file` makes deploy do."""
    return {
        **os.environ,
        "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
        "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        "CLOUDSDK_GCLOUDIGNORE_ENABLED": "true",
    }


def files_for_upload(directory: Path) -> set[str]:
    """The files `gcloud functions deploy --source=<directory>` would upload."""
    result = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", "."],
        cwd=directory,
        env=gcloud_environment(),
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=True,
    )
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


SUBPACKAGES = ("reconcile",)  # each has its own lines in .gcloudignore


def function_files(directory: Path) -> set[str]:
    """What the function needs: main.py, requirements.txt and the visible modules of the package and its subpackages."""
    package = directory / "clerk_sync"
    found = [*package.glob("*.py"), *(path for name in SUBPACKAGES for path in (package / name).glob("*.py"))]
    modules = {path.relative_to(directory).as_posix() for path in found if not path.name.startswith(".")}
    modules -= {"clerk_sync/__main__.py"}  # it only starts the tools
    return {"main.py", "requirements.txt"} | modules


def make(*arguments: str) -> subprocess.CompletedProcess[str]:
    """`make --no-print-directory ARGS` in the repo, ignoring the caller's make variables."""
    environment = {name: value for name, value in os.environ.items() if name not in MAKE_VARIABLES}
    return subprocess.run(
        ["make", "--no-print-directory", *arguments],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT_SECONDS,
        check=False,
    )


def printed_command(*arguments: str) -> list[str]:
    """The single shell command `make -n ARGS` prints, split into words."""
    result = make("-n", *arguments)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", " ").strip().splitlines()
    assert len(lines) == 1, result.stdout
    return shlex.split(lines[0])


def test_upload_set_is_exactly_main_requirements_and_the_package_modules() -> None:
    uploaded = files_for_upload(ROOT)

    assert uploaded == function_files(ROOT)
    assert {"main.py", "requirements.txt"} <= uploaded  # gcloud refuses a Python source without them


def test_upload_set_holds_no_tool_and_no_module_imports_tool_dependencies() -> None:
    uploaded = files_for_upload(ROOT)
    imported: dict[str, set[str]] = {}
    for name in sorted(uploaded):
        if name.endswith(".py"):
            tree = ast.parse((ROOT / name).read_text(), name)
            imported[name] = {
                alias.name.split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            } | {
                (node.module or "").split(".")[0]
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level == 0
            }

    assert not [name for name in uploaded if name.startswith("tools/") or name.endswith("__main__.py")]
    assert "clerk_sync/transaction.py" in imported
    forbidden = {"svix", "argparse", "subprocess", "tools"}
    assert {name: found & forbidden for name, found in imported.items() if found & forbidden} == {}
    # The heavy clients load only inside the function that needs them, never when a module is imported.
    heavy = {"clerk_backend_api", "firebase_admin", "jwt", "httpx"}
    at_import = {
        name: {alias.name.split(".")[0] for node in ast.parse((ROOT / name).read_text()).body
               if isinstance(node, ast.Import | ast.ImportFrom)
               for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])} & heavy
        for name in imported
    }  # fmt: skip
    assert {name: found for name, found in at_import.items() if found} == {}


def test_package_has_no_subpackages_the_allow_list_would_drop() -> None:
    nested = {
        path.relative_to(ROOT).parts[1]
        for path in (ROOT / "clerk_sync").glob("*/**/*.py")
        if "__pycache__" not in path.parts
    }

    assert nested == set(SUBPACKAGES), "a subpackage needs its own lines in .gcloudignore (and in SUBPACKAGES)"


def test_untracked_secrets_and_junk_are_never_uploaded(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*_cache", ".hypothesis", "__pycache__", "node_modules", ".env", ".env.*"
        ),
    )
    junk = [
        ".env",
        ".env.local",
        ".env.production",
        "service-account.json",
        "notes.md",
        "new_folder/helper.py",
        ".venv/lib/site.py",
        ".git/config",
        "tests/test_new.py",
        "bench/results/run.csv",
        "clerk_sync/__pycache__/store.cpython-313.pyc",
        "clerk_sync/.env",
        "clerk_sync/.secret.py",
        "clerk_sync/fixture.json",
        "clerk_sync/nested/module.py",
        "clerk_sync/reconcile/__pycache__/phases.cpython-313.pyc",
        "clerk_sync/reconcile/.secret.py",
        "clerk_sync/reconcile/fixture.json",
        "clerk_sync/reconcile/nested/module.py",
    ]
    for name in junk:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text("CLERK_WEBHOOK_SIGNING_SECRET=whsec_not_for_upload\n")
    (copy / "clerk_sync" / "added_module.py").write_text('"""A module added later is deployed too."""\n')

    uploaded = files_for_upload(copy)

    assert uploaded == function_files(copy)
    assert "clerk_sync/added_module.py" in uploaded
    assert not uploaded & set(junk)


def test_uploaded_files_alone_import_the_function(tmp_path: Path) -> None:
    for name in files_for_upload(ROOT):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    environment = {**os.environ, "K_SERVICE": "clerk-webhook"}
    environment.pop("PYTHONPATH", None)

    result = subprocess.run(
        [sys.executable, "-c", "import main; print(main.__file__, callable(main.clerk_webhook))"],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "main.py"), "True"]


def test_make_deploy_prints_the_exact_gcloud_command() -> None:
    assert printed_command("deploy", "PROJECT=demo-x") == EXPECTED_DEPLOY


def test_make_deploy_keeps_threads_equal_to_concurrency_and_appends_extra_variables() -> None:
    command = printed_command("deploy", "PROJECT=demo-x", "CONCURRENCY=16", "ENV_VARS=FIRESTORE_DATABASE=clerk")

    assert "--concurrency=16" in command
    assert "--set-env-vars=THREADS=16,GOOGLE_CLOUD_PROJECT=demo-x,FIRESTORE_DATABASE=clerk" in command


@pytest.mark.parametrize(("database", "flag"), [(None, "(default)"), ("clerk", "clerk")])
def test_make_ttl_targets_the_database_the_function_writes(database: str | None, flag: str) -> None:
    extra = [f"FIRESTORE_DATABASE={database}"] if database else []

    command = printed_command("ttl", "PROJECT=demo-x", *extra)

    assert command == shlex.split(
        "gcloud firestore fields ttls update expires_at --collection-group=webhook_events --enable-ttl "
        f"--database='{flag}' --project=demo-x"
    )


def commands(*arguments: str) -> list[list[str]]:
    """Every command `make -n ARGS` prints, split into words."""
    result = make("-n", *arguments)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def test_make_indexes_exempts_metadata_and_every_rising_timestamp_and_indexes_memberships_by_user() -> None:
    printed = commands("indexes", "PROJECT=demo-x", "FIRESTORE_DATABASE=clerk", "USERS_COLLECTION=tenants/acme/members")

    *exemptions, patch = printed
    exempted = set()
    for command in exemptions:
        assert command[:4] == ["gcloud", "firestore", "indexes", "fields"]
        assert command[4:6] == ["update", command[5]]
        assert command[6:] == [next(w for w in command if w.startswith("--collection-group=")), "--disable-indexes",
                               "--database=clerk", "--project=demo-x"]  # fmt: skip
        exempted.add((command[6].removeprefix("--collection-group="), command[5]))
    assert len(exempted) == len(exemptions)
    rising = {"synced_at", "updated_at", "created_at"}
    assert exempted == {
        ("members", "public_metadata"),
        ("members", "unsafe_metadata"),
        ("organizations", "public_metadata"),
        ("memberships", "public_metadata"),
        ("members", "last_sign_in_at"),
        *{(group, field) for group in ("members", "organizations", "memberships") for field in rising},
        ("webhook_events", "svix_id"),
        ("webhook_events", "received_at"),
        ("webhook_events", "expires_at"),
        ("email_claims", "claimed_at"),
        *{
            (group, field)
            for group in ("user_tombstones", "organization_tombstones", "membership_tombstones")
            for field in ("deleted_at", "recorded_at")
        },
    }
    # Nothing the sync or its tools query is exempted: a user's memberships, a user's event records.
    assert not {field for _, field in exempted} & {"user_id", "clerk_id", "organization_id"}
    assert patch[:2] == ["curl", "--fail-with-body"]
    url = next(word for word in patch if word.startswith("https://"))
    body = json.loads(patch[patch.index("-d") + 1])
    assert url.endswith(
        "/projects/demo-x/databases/clerk/collectionGroups/memberships/fields/user_id?updateMask=indexConfig"
    )
    assert {index["queryScope"] for index in body["indexConfig"]["indexes"]} == {"COLLECTION", "COLLECTION_GROUP"}
    assert all(
        index["fields"] == [{"fieldPath": "user_id", "order": "ASCENDING"}] for index in body["indexConfig"]["indexes"]
    )


def test_make_deploy_rules_refuses_to_replace_a_ruleset_without_confirmation() -> None:
    result = make("-n", "deploy-rules", "PROJECT=demo-x")

    assert result.returncode != 0
    assert "replaces every security rule of database (default) in project demo-x" in result.stderr
    assert "python3 -m clerk_sync rules --block" in result.stderr
    assert "REPLACE_RULES=yes" in result.stderr
    assert "firebase deploy" not in result.stdout


def test_make_deploy_rules_renders_for_the_configured_database_then_deploys_that() -> None:
    printed = commands("deploy-rules", "PROJECT=demo-x", "REPLACE_RULES=yes", "FIRESTORE_DATABASE=clerk")

    render, deploy = printed[-2:]
    assert render[1:] == [
        "-m", "clerk_sync", "rules", "--output", "build/rules/firestore.rules",
        "--firebase-json", "build/rules/firebase.json", "--database", "clerk",
    ]  # fmt: skip
    assert deploy == shlex.split(
        "firebase deploy --only firestore:rules --config build/rules/firebase.json --project demo-x"
    )


def test_committed_rules_are_what_the_block_renders_for_the_default_collections() -> None:
    rendered = subprocess.run(
        [sys.executable, "-m", "clerk_sync", "rules", "--env-file", "/nonexistent"],
        cwd=ROOT,
        env={key: value for key, value in os.environ.items() if not key.endswith("_COLLECTION")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )

    assert rendered.stdout == (ROOT / "firestore.rules").read_text()


def test_rules_for_a_named_database_and_nested_collections(tmp_path: Path) -> None:
    environment = {
        **os.environ,
        "USERS_COLLECTION": "tenants/acme/users",
        "ORGANIZATIONS_COLLECTION": "tenants/acme/orgs",
    }

    subprocess.run(
        [
            sys.executable, "-m", "clerk_sync", "rules", "--env-file", "/nonexistent",
            "--output", str(tmp_path / "r" / "firestore.rules"),
            "--firebase-json", str(tmp_path / "r" / "firebase.json"), "--database", "clerk",
        ],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip

    rules = (tmp_path / "r" / "firestore.rules").read_text()
    assert json.loads((tmp_path / "r" / "firebase.json").read_text()) == {
        "firestore": [{"database": "clerk", "rules": "firestore.rules"}]
    }
    assert "match /tenants/acme/users/{userId}" in rules
    assert "match /tenants/acme/orgs/{orgId}" in rules
    assert "documents/tenants/acme/orgs/$(orgId)/memberships/$(request.auth.uid)" in rules
    assert "documents/tenants/acme/ended_sessions/$(request.auth.token.clerk_sid)" in rules
    assert "documents/tenants/acme/user_tombstones/$(userId)" in rules
    assert "documents/tenants/acme/users/$(request.auth.uid)" in rules
    assert "match /users/" not in rules


@pytest.mark.parametrize("target", ["deploy", "deploy-rules", "ttl", "indexes", "deploy-reconcile", "schedule"])
def test_make_refuses_to_deploy_without_a_project(target: str) -> None:
    result = make("-n", target)

    assert result.returncode != 0
    assert f"PROJECT is not set: run `make {target} PROJECT=your-gcp-project-id`" in result.stderr
    assert "gcloud" not in result.stdout
    assert "firebase" not in result.stdout


def test_firebase_json_names_the_rules_file_and_an_emulator_port() -> None:
    config = json.loads((ROOT / "firebase.json").read_text())

    assert (ROOT / config["firestore"]["rules"]).resolve() == (ROOT / "firestore.rules").resolve()
    assert isinstance(config["emulators"]["firestore"]["port"], int)


def test_make_deploy_reconcile_is_never_reachable_without_authentication() -> None:
    deploy, invoker = commands("deploy-reconcile", "PROJECT=demo-x")

    assert deploy[:4] == ["gcloud", "functions", "deploy", "clerk-reconcile"]
    assert "--no-allow-unauthenticated" in deploy
    assert "--allow-unauthenticated" not in deploy
    assert "--entry-point=clerk_reconcile" in deploy
    assert "--set-secrets=CLERK_SECRET_KEY=clerk-secret-key:latest" in deploy
    variables = gcloud_cli.env_vars(
        next(word for word in deploy if word.startswith("--set-env-vars=")).split("=", 1)[1]
    )
    assert variables == {
        "GOOGLE_CLOUD_PROJECT": "demo-x",
        "RECONCILE_AUDIENCE": "https://us-central1-demo-x.cloudfunctions.net/clerk-reconcile",
        "RECONCILE_INVOKERS": "clerk-scheduler@demo-x.iam.gserviceaccount.com",
        "RECONCILE_BUDGET_SECONDS": "1500",
    }
    assert "--max-instances=1" in deploy
    assert "--timeout=1800s" in deploy
    assert invoker == shlex.split(
        "gcloud functions add-invoker-policy-binding clerk-reconcile --region=us-central1 "
        "--member=serviceAccount:clerk-scheduler@demo-x.iam.gserviceaccount.com --project=demo-x"
    )


def test_make_schedule_creates_or_updates_an_hourly_incremental_and_a_daily_full_job() -> None:
    result = make("-n", "schedule", "PROJECT=demo-x")

    assert result.returncode == 0, result.stderr
    jobs = [line for line in result.stdout.splitlines() if "gcloud scheduler jobs $verb http" in line]
    assert len(jobs) == 2
    for job, mode, schedule in zip(jobs, ("incremental", "full"), ("17 * * * *", "43 3 * * *"), strict=True):
        assert f"clerk-reconcile-{mode} " in job
        assert f"--uri='https://us-central1-demo-x.cloudfunctions.net/clerk-reconcile?mode={mode}'" in job
        assert f"--schedule='{schedule}'" in job
        assert "--oidc-service-account-email=clerk-scheduler@demo-x.iam.gserviceaccount.com" in job
        assert "--oidc-token-audience=https://us-central1-demo-x.cloudfunctions.net/clerk-reconcile" in job
        subprocess.run(["bash", "-n", "-c", job], check=True, timeout=10)


# Every target that runs gcloud, once with the defaults and once with every optional variable set.
GCLOUD_TARGETS = ("deploy", "deploy-token", "grant-token-signing", "ttl", "indexes", "deploy-reconcile", "schedule",
                  "monitoring")  # fmt: skip
EXTRA_VARIABLES = (
    "ENV_VARS=FIRESTORE_DATABASE=clerk,USERS_COLLECTION=tenants/acme/users",
    "TOKEN_ENV_VARS=ALLOW_PENDING_SESSIONS=true",
    "RECONCILE_ENV_VARS=FIRESTORE_DATABASE=clerk;USERS_COLLECTION=tenants/acme/users",
    "FIRESTORE_DATABASE=clerk",
    "NOTIFY=projects/demo-x/notificationChannels/123,projects/demo-x/notificationChannels/456",
)
PARTIES = "AUTHORIZED_PARTIES=https://app.example.com,http://localhost:3000"


def test_gcloud_accepts_every_command_the_makefile_generates() -> None:
    shell = ""
    for extras in ((), EXTRA_VARIABLES):
        result = make("-n", *GCLOUD_TARGETS, "PROJECT=demo-x", PARTIES, *extras)
        assert result.returncode == 0, result.stderr
        shell += result.stdout
    generated = gcloud_cli.commands_in(shell)

    parsed = gcloud_cli.parse(generated, ROOT)

    refused = [f"{shlex.join(result.command)}\n{result.stderr}" for result in parsed if not result.accepted]
    assert refused == []
    expected = [
        "functions deploy clerk-webhook", "functions deploy clerk-firebase-token", "functions deploy clerk-reconcile",
        "functions add-invoker-policy-binding", "iam service-accounts add-iam-policy-binding",
        "firestore fields ttls update", "firestore indexes fields update", "auth print-access-token",
        "logging metrics describe", "logging metrics update", "logging metrics create",
        "alpha monitoring policies list", "alpha monitoring policies create", "alpha monitoring policies update",
        "scheduler jobs describe", "scheduler jobs create http", "scheduler jobs update http",
    ]  # fmt: skip
    assert [
        prefix for prefix in expected if not any(shlex.join(command[1:]).startswith(prefix) for command in generated)
    ] == []


def test_gcloud_refuses_the_at_separated_reconcile_variables_the_check_exists_for() -> None:
    # What deploy-reconcile generated before: `@` split the scheduler's email, and gcloud said so.
    audience = "https://us-central1-demo-x.cloudfunctions.net/clerk-reconcile"
    broken = shlex.split(
        "gcloud functions deploy clerk-reconcile --gen2 --region=us-central1 --trigger-http --project=demo-x "
        f"--set-env-vars=^@^RECONCILE_AUDIENCE={audience}@RECONCILE_INVOKERS=clerk-scheduler@demo-x.iam.gserviceaccount.com"
    )

    [result] = gcloud_cli.parse([broken], ROOT)

    assert not result.accepted
    assert result.code == 2
    assert "Bad syntax for dict arg: [demo-x.iam.gserviceaccount.com]" in result.stderr


def test_the_gcloud_command_itself_accepts_make_deploy_reconcile(tmp_path: Path) -> None:
    deploy, _invoker = commands("deploy-reconcile", "PROJECT=demo-x")

    result = subprocess.run(
        deploy,
        cwd=ROOT,
        env=gcloud_cli.offline_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=False,
    )

    assert (result.returncode, gcloud_cli.NO_ACCOUNT in result.stderr) == (1, True), result.stderr


def test_reconcile_variables_keep_the_invokers_and_extra_variables_intact() -> None:
    deploy, _ = commands(
        "deploy-reconcile", "PROJECT=demo-x", "SCHEDULER_SERVICE_ACCOUNT=a@demo-x.iam.gserviceaccount.com,b@c.example",
        "RECONCILE_ENV_VARS=FIRESTORE_DATABASE=clerk;USERS_COLLECTION=tenants/acme/users",
    )  # fmt: skip

    variables = gcloud_cli.env_vars(
        next(word for word in deploy if word.startswith("--set-env-vars=")).split("=", 1)[1]
    )

    assert variables["RECONCILE_INVOKERS"] == "a@demo-x.iam.gserviceaccount.com,b@c.example"
    assert (variables["FIRESTORE_DATABASE"], variables["USERS_COLLECTION"]) == ("clerk", "tenants/acme/users")


# The shell variables the docs' commands use, as a reader sets them (docs/deploy.md's first block).
DOCS_VARIABLES = {"PROJECT": "demo-x", "REGION": "us-central1", "NUMBER": "123456789012"}
SHELL_BLOCK = re.compile(r"^( *)```(?:sh|bash)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def test_gcloud_accepts_every_gcloud_command_the_docs_show(tmp_path: Path) -> None:
    shown: list[tuple[str, list[str]]] = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for block in SHELL_BLOCK.finditer(page.read_text()):
            text = "\n".join(line[len(block.group(1)) :] for line in block.group(2).splitlines())
            text = re.sub(r"\$\{?([A-Z_]+)\}?", lambda name: DOCS_VARIABLES.get(name.group(1), name.group(0)), text)
            shown += [(page.name, command) for command in gcloud_cli.commands_in(text, unknown="placeholder")]
    (tmp_path / "clerk-jwt-key.pem").write_text("the file the reader saved\n")  # read by `secrets create`

    parsed = gcloud_cli.parse([command for _, command in shown], tmp_path)

    refused = [
        f"{page}: {shlex.join(result.command)}\n{result.stderr}"
        for (page, _), result in zip(shown, parsed, strict=True)
        if not result.accepted
    ]
    assert refused == []
    assert len(shown) >= 30
    assert {page for page, _ in shown} >= {"deploy.md", "monitoring.md", "operations.md", "reading-from-your-app.md"}
