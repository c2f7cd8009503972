"""The docs' TypeScript blocks compile under `strict` (tsc, the pinned version) and say what `make dev` serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, TSX

from clerk_sync import config
from tools import snippets
from tools.common import DEFAULT_AUTH_PORT, DEFAULT_EMULATOR_PORT, DEFAULT_TOKEN_PORT

TSC = ROOT / "node_modules" / ".bin" / "tsc"
NODE_TIMEOUT_SECONDS = 120
DOCUMENTED = {"firebase.ts", "clerk-firebase.tsx", "main.ts", "try-local.ts", "billing.ts"}
# App code that misreads the synced documents, as untyped DocumentData would let it.
MISREAD = """import { clerkData } from "clerk-firestore-sync";
import { PRODUCTION, startFirebase } from "./firebase";

const { auth, db } = startFirebase(PRODUCTION);
const user = await clerkData(db, auth).readOwnUser();
const address: string = user?.email ?? "";
const greeting: string = user?.first_name;
const typo = user?.emial;
const seen: number = user?.last_sign_in_at ?? 0;
export { address, greeting, typo, seen };
"""


def tsc(project: Path) -> subprocess.CompletedProcess[str]:
    """`tsc --noEmit -p PROJECT`, as `make docs-ts` runs it."""
    assert TSC.exists(), f"{TSC} is missing: run `make node-modules` (npm ci) first"
    return subprocess.run(
        [str(TSC), "--noEmit", "-p", str(project)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def scratch_in_build() -> Iterator[Path]:
    """A directory under build/ (imports resolve to the repository's node_modules from there)."""
    path = ROOT / "build" / f"docs-ts-check-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_every_typescript_block_of_the_docs_compiles_under_strict(docs_ts: Path) -> None:
    result = tsc(ROOT / "tsconfig.docs.json")

    assert result.returncode == 0, result.stdout + result.stderr
    assert {path.name for path in docs_ts.glob("*.ts*")} == DOCUMENTED
    settings = json.loads("\n".join(line for line in (ROOT / "tsconfig.docs.json").read_text().splitlines()
                                    if not line.lstrip().startswith("//")))  # fmt: skip
    assert settings["compilerOptions"]["strict"] is True
    assert settings["compilerOptions"]["noEmit"] is True


def test_the_compiler_refuses_app_code_that_misreads_the_synced_documents(
    docs_ts: Path, scratch_in_build: Path
) -> None:
    # The package's generated types make the docs' data typed: a nullable name, a typo and a Timestamp
    # taken for a number are compile errors, not runtime surprises.
    shutil.copy(docs_ts / "firebase.ts", scratch_in_build / "firebase.ts")
    (scratch_in_build / "app.ts").write_text(MISREAD)
    (scratch_in_build / "tsconfig.json").write_text(
        json.dumps({"extends": "../../tsconfig.docs.json", "include": ["*.ts"]})
    )

    result = tsc(scratch_in_build / "tsconfig.json")

    assert result.returncode != 0
    errors = sorted(line.split(": error ")[0].split("(")[1].split(",")[0] + " " + line.split(": error ")[1][:6]
                    for line in result.stdout.splitlines() if ": error TS" in line)  # fmt: skip
    assert errors == ["7 TS2322", "8 TS2551", "9 TS2322"], result.stdout


def test_every_typescript_block_must_name_its_file_once(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "page.md"

    page.write_text("text\n\n```ts\nconst unnamed = 1;\n```\n")
    with pytest.raises(ValueError, match=r"docs/page.md:3: a ```ts block must start with `// NAME.ts`"):
        snippets.snippets(tmp_path)
    page.write_text("```ts\n// a.ts: one\nexport {};\n```\n\n```tsx\n// a.ts\n```\n")
    with pytest.raises(ValueError, match=r"a ```tsx block names a.ts"):
        snippets.snippets(tmp_path)
    page.write_text("```ts\n// a.ts: one\nexport {};\n```\n\n```ts\n// a.ts\n```\n")
    with pytest.raises(ValueError, match=r"docs/page.md:6: a.ts is named by another block too"):
        snippets.snippets(tmp_path)
    page.write_text("```ts\n// a.ts: one\nexport {};\n```\n\n```sh\nmake docs-ts\n```\n")
    assert [(found.name, found.line) for found in snippets.snippets(tmp_path)] == [("a.ts", 1)]


def test_stale_files_of_renamed_blocks_are_removed(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("```ts\n// new.ts\nexport {};\n```\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.ts").write_text("export {};\n")

    snippets.write(out, tmp_path)

    assert sorted(path.name for path in out.iterdir()) == ["new.ts"]
    assert (out / "new.ts").read_text() == "// new.ts\nexport {};\n"


def test_local_development_settings_are_what_make_dev_serves(docs_ts: Path) -> None:
    # The page's own localDevelopment(), run by tsx: a project id or port that drifted reads nothing.
    probe = f'import {{ localDevelopment }} from "{docs_ts / "firebase.ts"}";\n'
    probe += "console.log(JSON.stringify(localDevelopment()));"
    result = subprocess.run(
        [str(TSX), "-e", probe], cwd=ROOT, capture_output=True, text=True, timeout=NODE_TIMEOUT_SECONDS, check=False
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "firebase": {"apiKey": "local-development", "projectId": config.EMULATOR_PROJECT},
        "tokenUrl": f"http://127.0.0.1:{DEFAULT_TOKEN_PORT}/",
        "emulators": {"auth": f"127.0.0.1:{DEFAULT_AUTH_PORT}", "firestore": f"127.0.0.1:{DEFAULT_EMULATOR_PORT}"},
    }
