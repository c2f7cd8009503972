"""The TypeScript client package (client/): generated from the declaration, strict, installable by path.

Its types, descriptors and converters (client/src/documents.ts), the JSON Schema and docs/data-model.md's
tables are what `python3 -m tools.generate` makes of clerk_sync/documents.py, byte for byte; the package
compiles under `strict` with nothing but `firebase` as a peer; its validator says what the Python one says
about the same documents; and an app outside the repository installs it by path as the docs say and
imports it. The package's reads and sign-in run against the emulators in tests/test_token_end_to_end.py
and tests/test_access_end_to_end.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from clerk_api import api_plan
from clerk_events import membership_event, organization_event, user_event
from conftest import ROOT, TSC, TSX

from clerk_sync import documents, events, kind, plans, schema, versions
from tools import generate

NODE_TIMEOUT_SECONDS = 120
PAYLOADS = Path(__file__).with_name("payloads")
NPM_TIMEOUT_SECONDS = 300
WRONG_VALUES: list[tuple[str, object]] = [
    ("clerk_id", "not an id!"),
    ("clerk_id", "__reserved__"),
    ("email", 7),
    ("email", ["a@example.com"]),
    ("email_addresses", "a@example.com"),
    ("email_addresses", ["a@example.com", 3]),
    ("email_addresses", [None]),
    ("public_metadata", [1]),
    ("public_metadata", "[1]"),
    ("public_metadata", "not json"),
    ("unsafe_metadata", None),
    ("updated_at", None),
    ("updated_at", 1_756_382_400_000),
    ("created_at", "2025-01-01"),
    ("banned", 1),
    ("locked", "false"),
    ("sync_digest", "ABC"),
    ("pending_email", None),
    ("pending_email", 5),
]


def test_the_generated_files_are_what_the_declaration_says() -> None:
    for path, wanted in generate.outputs().items():
        assert (ROOT / path).read_text() == wanted, f"{path} differs: run python3 -m tools.generate"


def test_generate_check_names_a_drifted_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    drifted = {**generate.outputs(), generate.TYPESCRIPT: "// an older declaration\n"}
    monkeypatch.setattr(generate, "outputs", lambda: drifted)

    assert generate.main(["--check"]) == 1
    assert "client/src/documents.ts differs from clerk_sync/documents.py" in capsys.readouterr().err


def test_every_declared_document_has_its_table_in_the_data_model_and_no_table_names_another() -> None:
    page = (ROOT / generate.DATA_MODEL).read_text()

    without_memberships = page.replace("<!-- fields: ClerkMembership -->", "")
    with pytest.raises(ValueError, match="no field table for ClerkMembership"):
        generate.data_model(without_memberships)
    with pytest.raises(ValueError, match="ClerkGhost --> names no declared document"):
        generate.data_model(page + "\n<!-- fields: ClerkGhost -->\n<!-- /fields -->\n")
    for document in documents.DOCUMENTS:
        for name in document.field_names:
            assert f"`{name}`" in generate.table(document.fields)


def test_the_generated_types_name_every_declared_field_with_its_optionality() -> None:
    generated = (ROOT / generate.TYPESCRIPT).read_text()

    for document in documents.DOCUMENTS:
        interface = generated.split(f"export interface {document.name} {{\n", 1)[1].split("\n}\n", 1)[0]
        members = [line.strip() for line in interface.splitlines() if not line.strip().startswith(("/**", "*"))]
        declared = [line.split(":")[0] for line in members]
        assert declared == [name + ("?" if document.field(name).optional else "") for name in document.field_names]


def test_the_json_schema_declares_each_document_with_its_required_fields() -> None:
    exported = json.loads((ROOT / generate.JSON_SCHEMA).read_text())

    assert exported["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    user = exported["$defs"]["ClerkUser"]
    assert user["x-firestore-path"] == "{USERS_COLLECTION}/{user_id}"
    assert user["additionalProperties"] is True  # the app's own fields
    assert set(user["required"]) == set(documents.USER.field_names) - {"pending_email"}
    assert user["properties"]["updated_at"]["x-firestore-type"] == "timestamp"
    assert user["properties"]["email"]["anyOf"] == [{"type": "string"}, {"type": "null"}]
    assert user["properties"]["synced_at"]["x-set-by"] == "sync"


def test_the_client_package_compiles_under_strict_with_firebase_as_its_only_peer(client_package: Path) -> None:
    manifest = json.loads((client_package / "package.json").read_text())
    settings = json.loads(
        "\n".join(
            line for line in (client_package / "tsconfig.json").read_text().splitlines() if not line.startswith("//")
        )
    )

    assert (client_package / "dist" / "index.js").exists()
    assert (client_package / "dist" / "index.d.ts").exists()
    assert "dependencies" not in manifest
    assert manifest["peerDependencies"] == {"firebase": "^12.0.0"}
    assert settings["compilerOptions"]["strict"] is True
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "default": "./dist/index.js"}


def firestore_json(document: dict[str, Any]) -> dict[str, Any]:
    """A document as tests/js/schema_problems.mjs reads it: timestamps as {"$timestamp_ms": N}."""

    def convert(value: object) -> object:
        if isinstance(value, datetime):
            return {"$timestamp_ms": round(value.timestamp() * 1000)}
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, list):
            return [convert(item) for item in value]
        return value

    converted = convert(document)
    assert isinstance(converted, dict)
    return converted


def written(body: str) -> tuple[schema.Document, dict[str, Any]]:
    change = events.parse_event(body.encode())
    assert isinstance(change, kind.Upsert)
    declared = {"user": documents.USER, "organization": documents.ORGANIZATION}.get(
        change.kind.family, documents.MEMBERSHIP
    )
    return declared, {**change.document, "synced_at": datetime.now(UTC), versions.DIGEST_FIELD: change.digest}


def test_the_typescript_validator_says_what_the_python_one_says(client_package: Path) -> None:
    user_declared, user = written(user_event("user.created", "user_parity", username="ada"))
    cases: list[tuple[schema.Document, dict[str, Any]]] = [
        (user_declared, user),
        written(user_event("user.created", "user_phone", emails=[], phones=["+15555550100"])),
        written(organization_event("organization.created", "org_parity", name=None, max_allowed_memberships=None)),
        written(membership_event("organizationMembership.created", "orgmem_parity", "org_parity", "user_parity")),
        (user_declared, {**user, "pending_email": "next@example.com", "public_metadata": '{"a": [[1]]}'}),
        (user_declared, {name: value for name, value in user.items() if name not in {"email", "locked"}}),
        (
            documents.ORGANIZATION,
            {**written(organization_event("organization.created", "org_x"))[1], "max_allowed_memberships": 2.5},
        ),
        (documents.MEMBERSHIP, {"membership_id": "orgmem_1", "permissions": ["a", 1]}),
        *((user_declared, {**user, field: value}) for field, value in WRONG_VALUES),
        *billing_cases(),
    ]
    lines = "".join(
        json.dumps({"name": declared.name, "data": firestore_json(data)}) + "\n" for declared, data in cases
    )
    # and a declaration the package does not hold, in the nested words billing documents are written in
    cases += nested_cases()
    lines += "".join(
        json.dumps({"descriptor": NESTED.descriptor(), "data": firestore_json(data)}) + "\n"
        for _, data in nested_cases()
    )

    result = subprocess.run(
        [str(TSX), str(ROOT / "tests" / "js" / "schema_problems.mjs")],
        cwd=ROOT,
        input=lines,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    typescript = [json.loads(line) for line in result.stdout.splitlines()]
    python = [declared.problems(data) for declared, data in cases]
    assert typescript == python
    assert python[:5] == [[], [], [], [], []]
    right = [index for index, problems in enumerate(python) if not problems]
    assert len(right) == 5 + 3 + 1  # the five above, a subscription, a payment and a plan, NESTED's first


def billing_cases() -> list[tuple[schema.Document, dict[str, Any]]]:
    """A subscription, a payment and a plan as stored, then each wrong at some depth."""
    now = datetime.now(UTC)
    change = events.parse_event((PAYLOADS / "subscription_updated.json").read_bytes())
    assert isinstance(change, kind.Upsert)
    items = {item_id: {**entry, "features": ["export"]} for item_id, entry in change.document["items"].items()}
    subscription = {**change.document, "items": items, "active_plans": ["pro"], "active_features": ["export"],
                    "synced_at": now, versions.DIGEST_FIELD: change.digest}  # fmt: skip
    item_id = next(iter(items))
    paid = events.parse_event((PAYLOADS / "paymentAttempt_updated.json").read_bytes())
    assert isinstance(paid, kind.Upsert)
    payment = {**paid.document, "synced_at": now, versions.DIGEST_FIELD: paid.digest}
    plan = {**plans.plan_document(api_plan("pro", ["export"]))[1], "synced_at": now}
    return [
        (documents.SUBSCRIPTION, subscription),
        (documents.PAYMENT, payment),
        (documents.PLAN, plan),
        (documents.SUBSCRIPTION, {**subscription, "payer_type": "org", "active_plans": [1]}),
        (documents.SUBSCRIPTION, {**subscription, "items": {"bad id!": items[item_id]}}),
        (documents.SUBSCRIPTION, {**subscription, "items": {item_id: {**items[item_id], "status": 1, "seats": "5"}}}),
        (documents.SUBSCRIPTION, {**subscription, "items": {item_id: {**items[item_id], "plan": {"slug": "pro"}}}}),
        (documents.PAYMENT, {**payment, "totals": {**payment["totals"], "grand_total": {"amount": "x"}}}),
        (documents.PLAN, {**plan, "feature_details": [{"slug": None, "name": "Export"}]}),
    ]


# A declaration with the nested words billing documents are written in: a payer's type, a map keyed by ids
# of maps with named fields, a map or null, an array of maps.
PLAN = schema.ObjectOf((schema.Field("slug", schema.STRING, "slug"),))
ITEM = schema.ObjectOf(
    (
        schema.Field("status", schema.Nullable(schema.STRING), "status"),
        schema.Field("seats", schema.Nullable(schema.INTEGER), "seats"),
        schema.Field("plan", schema.Nullable(PLAN), "plan"),
    )
)
NESTED = schema.Document(
    name="Nested",
    title="nested",
    path="nested/{id}",
    ids={},
    fields=(
        schema.Field("payer_type", schema.OneOf(("user", "organization")), "who pays"),
        schema.Field("items", schema.MapOf(ITEM, keys=schema.CLERK_ID), "items by id"),
        schema.Field("lines", schema.ArrayOf(schema.ObjectOf((schema.Field("id", schema.CLERK_ID, "id"),))), "lines"),
    ),
)


def nested_cases() -> list[tuple[schema.Document, dict[str, Any]]]:
    """A right document, then one wrong thing at a time, at every depth."""
    good: dict[str, Any] = {
        "payer_type": "user",
        "items": {"csub_item_1": {"status": "active", "seats": None, "plan": {"slug": "pro"}}},
        "lines": [{"id": "csub_item_1"}],
    }
    changes: list[dict[str, Any]] = [
        {"payer_type": "org"},
        {"payer_type": None},
        {"items": {"not an id!": good["items"]["csub_item_1"]}},
        {"items": {"csub_item_1": {"status": 1, "seats": None, "plan": None}}},
        {"items": {"csub_item_1": {"status": None, "seats": None}}},
        {"items": {"csub_item_1": {"status": None, "seats": 1.5, "plan": {"slug": 2}}}},
        {"items": {"csub_item_1": "active"}},
        {"items": []},
        {"lines": [{"id": "ok_1"}, {}]},
        {"lines": [None]},
    ]
    return [(NESTED, good), *((NESTED, {**good, **change}) for change in changes)]


def test_nested_types_name_the_place_of_a_wrong_value() -> None:
    assert [NESTED.problems(data) for _, data in nested_cases()] == [
        [],
        ["payer_type is string, not user or organization"],
        ["payer_type is null, not user or organization"],
        ["items has a key that is not a Clerk id"],
        ["items.csub_item_1.status is integer, not string or null"],
        ["items.csub_item_1.plan missing"],
        [
            "items.csub_item_1.seats is number, not integer or null",
            "items.csub_item_1.plan.slug is integer, not string",
        ],
        ["items.csub_item_1 is string, not map"],
        ["items is list, not map"],
        ["lines[1].id missing"],
        ["lines[0] is null, not map"],
    ]
    exported = NESTED.json_schema()["properties"]
    assert exported["payer_type"]["enum"] == ["user", "organization"]
    assert exported["items"]["propertyNames"]["pattern"] == "^[A-Za-z0-9_-]{1,128}$"
    assert NESTED.field("payer_type").type.typescript("") == '"user" | "organization"'


@pytest.fixture
def app_outside_the_repository(tmp_path: Path) -> Path:
    """An app's directory with its own package.json pinning firebase (the repository's versions)."""
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    app = tmp_path / "my-app"
    app.mkdir()
    manifest = {
        "name": "my-app",
        "private": True,
        "type": "module",
        # firebase's protobufjs asks for @types/node; pinned as the repository pins it, so npm's cache has it.
        "dependencies": {"firebase": pinned["firebase"], "@types/node": pinned["@types/node"]},
    }
    (app / "package.json").write_text(json.dumps(manifest, indent=2))
    return app


APP_TS = """import { Timestamp } from "firebase/firestore";
import { CLERK_USER, documentProblems, typeName, type ClerkUser, type UserOf } from "clerk-firestore-sync";

type MyUser = UserOf<{ user: { plan?: "free" | "pro" } }>;
const user: Pick<ClerkUser, "clerk_id" | "email"> = { clerk_id: "user_1", email: null };
const plan: MyUser["plan"] = "pro";
console.log(JSON.stringify({
  problems: documentProblems(CLERK_USER, { ...user, updated_at: Timestamp.now() }).length,
  sameFirebase: typeName(Timestamp.now()),
  plan,
}));
"""


def test_an_app_installs_the_package_by_path_and_uses_it_typed(
    client_package: Path, app_outside_the_repository: Path
) -> None:
    app = app_outside_the_repository
    npm = shutil.which("npm")
    assert npm is not None, "npm is not on PATH"
    # The docs' command; --offline takes firebase from npm's cache (filled by `npm ci`), --ignore-scripts
    # keeps the build `make client` did (client_package) and skips firebase's own postinstall.
    installed = subprocess.run(
        [npm, "install", "--install-links", str(client_package), "--offline", "--ignore-scripts", "--no-audit",
         "--no-fund"],
        cwd=app, capture_output=True, text=True, timeout=NPM_TIMEOUT_SECONDS, check=False,
        env={**os.environ, "npm_config_update_notifier": "false"},
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    copy = app / "node_modules" / "clerk-firestore-sync"
    (app / "app.ts").write_text(APP_TS)
    (app / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {"strict": True, "module": "nodenext", "target": "es2022", "lib": ["es2022", "dom"],
                                    "types": [], "skipLibCheck": True, "outDir": "out"},
                "files": ["app.ts"],
            }
        )
    )  # fmt: skip
    compiled = subprocess.run(
        [str(TSC), "-p", "."], cwd=app, capture_output=True, text=True, timeout=NODE_TIMEOUT_SECONDS, check=False
    )
    ran = subprocess.run(
        ["node", "out/app.js"], cwd=app, capture_output=True, text=True, timeout=NODE_TIMEOUT_SECONDS, check=False
    )

    assert not copy.is_symlink()  # a copy: its `firebase` is the app's own, never the repository's
    assert sorted(path.name for path in copy.iterdir()) == ["clerk-sync.schema.json", "dist", "package.json", "src"]
    assert not (copy / "node_modules").exists()
    dependency = json.loads((app / "package.json").read_text())["dependencies"]["clerk-firestore-sync"]
    assert dependency.startswith("file:")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout) == {"problems": 17, "sameFirebase": "timestamp", "plan": "pro"}
