"""What `make deploy-token` and `make grant-token-signing` would run, and that node_modules never ships."""

from __future__ import annotations

import os
import shlex
import subprocess

import gcloud_cli
import pytest
from conftest import ROOT

GCLOUD_TIMEOUT_SECONDS = 60
MAKE_TIMEOUT_SECONDS = 30
# Variables the Makefile reads with `?=`: a developer's shell must not change what the tests see.
MAKE_VARIABLES = (
    "PROJECT",
    "REGION",
    "CONCURRENCY",
    "TOKEN_FUNCTION",
    "TOKEN_SERVICE_ACCOUNT",
    "AUTHORIZED_PARTIES",
    "JWT_KEY_SECRET",
    "JWT_KEY_SECRET_VERSION",
    "TOKEN_MAX_INSTANCES",
    "TOKEN_ENV_VARS",
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
)
SERVICE_ACCOUNT = "clerk-firebase-token@demo-x.iam.gserviceaccount.com"
PARTIES = "https://app.example.com,http://localhost:3000"

EXPECTED_DEPLOY_TOKEN = [
    "gcloud",
    "functions",
    "deploy",
    "clerk-firebase-token",
    "--gen2",
    "--runtime=python313",
    "--region=us-central1",
    "--source=.",
    "--ignore-file=.gcloudignore",
    "--entry-point=firebase_token",
    "--trigger-http",
    "--allow-unauthenticated",
    f"--service-account={SERVICE_ACCOUNT}",
    "--set-secrets=CLERK_JWT_KEY=clerk-jwt-key:latest",
    f"--set-env-vars=^@^THREADS=8@GOOGLE_CLOUD_PROJECT=demo-x@CLERK_AUTHORIZED_PARTIES={PARTIES}",
    "--memory=256Mi",
    "--cpu=1",
    "--concurrency=8",
    "--timeout=10s",
    "--max-instances=10",
    "--project=demo-x",
]
EXPECTED_GRANT = [
    "gcloud",
    "iam",
    "service-accounts",
    "add-iam-policy-binding",
    SERVICE_ACCOUNT,
    f"--member=serviceAccount:{SERVICE_ACCOUNT}",
    "--role=roles/iam.serviceAccountTokenCreator",
    "--project=demo-x",
]


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


def printed_commands(*arguments: str) -> list[list[str]]:
    """Each shell command `make -n ARGS` prints, split into words."""
    result = make("-n", *arguments)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.replace("\\\n", " ").splitlines() if line.strip()]


def test_make_deploy_token_prints_the_exact_gcloud_command_and_the_signing_reminder() -> None:
    deploy, reminder = printed_commands("deploy-token", "PROJECT=demo-x", f"AUTHORIZED_PARTIES={PARTIES}")

    assert deploy == EXPECTED_DEPLOY_TOKEN
    assert reminder == [
        "echo",
        "Custom tokens are signed through IAM signBlob: once per project run make grant-token-signing PROJECT=demo-x",
    ]


def test_make_deploy_token_appends_extra_variables_and_follows_concurrency() -> None:
    deploy, _ = printed_commands(
        "deploy-token",
        "PROJECT=demo-x",
        "AUTHORIZED_PARTIES=https://app.example.com",
        "CONCURRENCY=4",
        "TOKEN_ENV_VARS=ALLOW_PENDING_SESSIONS=true",
    )

    assert "--concurrency=4" in deploy
    assert (
        "--set-env-vars=^@^THREADS=4@GOOGLE_CLOUD_PROJECT=demo-x@CLERK_AUTHORIZED_PARTIES=https://app.example.com"
        "@ALLOW_PENDING_SESSIONS=true"
    ) in deploy


def test_make_grant_token_signing_prints_the_token_creator_binding_on_itself() -> None:
    assert printed_commands("grant-token-signing", "PROJECT=demo-x") == [EXPECTED_GRANT]


@pytest.mark.parametrize(
    ("arguments", "missing"),
    [
        (["deploy-token", f"AUTHORIZED_PARTIES={PARTIES}"], "PROJECT"),
        (["deploy-token", "PROJECT=demo-x"], "AUTHORIZED_PARTIES"),
        (["grant-token-signing"], "PROJECT"),
    ],
)
def test_make_refuses_token_targets_without_their_settings(arguments: list[str], missing: str) -> None:
    result = make("-n", *arguments)

    assert result.returncode != 0
    assert f"{missing} is not set: run `make {arguments[0]} PROJECT=your-gcp-project-id" in result.stderr
    assert "gcloud" not in result.stdout


def test_gcloud_parses_the_env_vars_with_the_commas_of_the_parties_intact() -> None:
    deploy, _ = printed_commands("deploy-token", "PROJECT=demo-x", f"AUTHORIZED_PARTIES={PARTIES}")
    value = next(word for word in deploy if word.startswith("--set-env-vars=")).split("=", 1)[1]

    # gcloud's own dictionary-flag parser, run by gcloud's own Python.
    parsed = gcloud_cli.env_vars(value)

    assert parsed == {
        "THREADS": "8",
        "GOOGLE_CLOUD_PROJECT": "demo-x",
        "CLERK_AUTHORIZED_PARTIES": PARTIES,
    }


def test_node_modules_and_package_files_are_never_uploaded() -> None:
    assert (ROOT / "node_modules" / ".bin" / "firebase").exists()  # the check means something only if present
    result = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", "."],
        cwd=ROOT,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_GCLOUDIGNORE_ENABLED": "true"},
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=True,
    )
    uploaded = {line.strip() for line in result.stdout.splitlines() if line.strip()}

    assert "clerk_sync/session_token.py" in uploaded
    assert not {name for name in uploaded if name.startswith(("node_modules/", "tests/", "docs/"))}
    assert not uploaded & {"package.json", "package-lock.json"}
