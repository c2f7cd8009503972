"""`make soak`: reconcile with a million users and a million memberships against the Clerk stand-in
(its own process, generating them on demand) and the emulator: the run's peak memory (its process's
RSS high-water mark) and its time, printed for docs/testing.md and docs/operations.md.

Two runs: a dry run over an empty Firestore (every object listed, compared and its key kept, the
most a run holds; nothing to seed) and a full run finding everything in sync (Firestore seeded first
with what the webhook would have stored, then every object listed, compared and looked for again
in the deletion phase). SOAK_USERS and SOAK_MEMBERSHIPS (default 1,000,000 each) size the dry run;
the full run defaults to 100,000 of each (SOAK_FULL_USERS): seeding two million documents stalled
the emulator, and its collection-group pages slow down with what it holds, which Firestore's do not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import emulator
import pytest
from clerk_api import (
    BASE_MS,
    DEFAULT_ROLES,
    INSTANCE_ID,
    SECRET_KEY,
    generated_memberships,
    generated_organizations,
    generated_user,
    roles_with_permissions,
)
from conftest import PATHS, PROJECT, ROOT, apply_event
from google.cloud import firestore
from google.cloud.firestore_v1.bulk_writer import BulkWriterOptions

from clerk_sync import config, events, instance, versions
from clerk_sync.memberships import ROLE_ID_FIELD
from clerk_sync.reconcile import kinds

FUNCTION_MEMORY_MIB = 512  # make deploy-reconcile: --memory=512Mi
ORGANIZATIONS = 1000
FLUSH_EVERY = 10_000  # a million writes unflushed held 7 GiB and stalled the seeding
SOAK_TIMEOUT_SECONDS = 4 * 3600  # a million of each on 2 busy cores; the run's own time is what is printed


@contextmanager
def stand_in(users: int, memberships: int) -> Iterator[str]:
    """The stand-in in a process of its own (its memory is not the run's), serving generated objects; its URL."""
    port = emulator.free_port()
    command = [sys.executable, str(ROOT / "tests" / "clerk_api.py"), "--port", str(port), "--users", str(users),
               "--organizations", str(ORGANIZATIONS), "--memberships", str(memberships)]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"Clerk stand-in on")  # printed once it is serving
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        emulator.stop(process)


def seed_in_sync(db: firestore.Client, users: int, memberships: int) -> None:
    """What the webhook's transactions would have stored of every object: the few roles and permissions through
    them, the rest (documents only, members naming their role's id) in bulk."""
    settings = config.read_settings()
    roles, permissions = roles_with_permissions(DEFAULT_ROLES, created_at=BASE_MS, updated_at=BASE_MS)
    for kind, definition in [("permissions", item) for item in permissions] + [("roles", item) for item in roles]:
        envelope = kinds.envelope(kinds.UPSERT_TYPE[kind], definition)
        assert apply_event(db, f"msg_seed_{definition['id']}", events.parse_event(envelope)).value == "applied"
    role_ids = {role["key"]: role["id"] for role in roles}
    organizations = generated_organizations(ORGANIZATIONS)
    objects: list[tuple[str, Any]] = [("organizations", organizations)]
    objects += [("users", (generated_user(index) for index in range(users)))]
    objects += [("memberships", generated_memberships(memberships, organizations, users))]
    # The emulator models no hotspots: no need for BulkWriter's own 500/50/5 ramp (500 writes/s at most).
    writer = db.bulk_writer(BulkWriterOptions(initial_ops_per_second=20_000, max_ops_per_second=20_000))
    written = 0
    for kind, listed in objects:
        for data in listed:
            change: Any = events.parse_event(kinds.envelope(kinds.UPSERT_TYPE[kind], data))
            stored = {**change.document, "synced_at": firestore.SERVER_TIMESTAMP, versions.DIGEST_FIELD: change.digest}
            if kind == "memberships":
                stored[ROLE_ID_FIELD] = role_ids[stored["role"]]
            writer.set(kinds.document(db, settings, kind, kinds.key(kind, data)), stored)
            written += 1
            if written % FLUSH_EVERY == 0:
                writer.flush()  # type: ignore[no-untyped-call]  # BulkWriter keeps every pending write until then
    writer.close()  # type: ignore[no-untyped-call]
    instance.pin(db, PATHS, instance.Pin(INSTANCE_ID, "development"), pinned_by="webhook", timeout=10)


def sizes(variable: str = "SOAK_USERS", default: int = 1_000_000) -> tuple[int, int]:
    users = int(os.environ.get(variable, str(default)))
    return users, int(os.environ.get("SOAK_MEMBERSHIPS", str(users)))


def reconcile_process(emulator_host: str, url: str, log: Path, *options: str) -> tuple[dict[str, Any], float, float]:
    """`python3 -m clerk_sync reconcile --json` in a process of its own: its summary, peak RSS (MiB) and seconds."""
    command = [sys.executable, "-m", "clerk_sync", "reconcile", "--env-file", str(log.with_suffix(".absent")),
               "--emulator", emulator_host, "--project", PROJECT, "--server-url", url, "--json", *options]  # fmt: skip
    environment = {**os.environ, "CLERK_SECRET_KEY": SECRET_KEY}
    started = time.monotonic()
    with log.open("wb") as err, log.with_suffix(".json").open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=err)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:  # the test's timeout, Ctrl-C: the run stops with it
            process.kill()
            process.wait(10)
            raise
    elapsed = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.returncode in {0, 3}, log.read_text()[-3000:]  # 3: a dry run that found drift
    summary: dict[str, Any] = json.loads(log.with_suffix(".json").read_text())
    return summary, usage.ru_maxrss / 1024, elapsed  # ru_maxrss: KiB on Linux


@pytest.mark.soak
@pytest.mark.timeout(SOAK_TIMEOUT_SECONDS)
def test_a_dry_run_over_a_million_users_and_a_million_memberships_fits_the_functions_memory(
    db: firestore.Client, emulator_host: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users, memberships = sizes()
    instance.pin(db, PATHS, instance.Pin(INSTANCE_ID, "development"), pinned_by="webhook", timeout=10)

    with stand_in(users, memberships) as url:
        summary, peak_mib, elapsed = reconcile_process(emulator_host, url, tmp_path / "dry.log", "--dry-run")

    tallies = summary["kinds"]
    with capsys.disabled():
        print(
            f"\nreconcile soak: {users:,} users, {ORGANIZATIONS:,} organizations, {memberships:,} memberships, "
            f"dry run over an empty Firestore: {elapsed:.0f} s ({summary['elapsed_seconds']} s inside), "
            f"peak RSS {peak_mib:.0f} MiB, {summary['clerk_requests']} Clerk requests, "
            f"{summary['firestore_reads']} Firestore reads"
        )
    assert summary["outcome"] == "drift"
    assert [tallies[kind]["missing"] for kind in ("users", "organizations", "memberships")] == [
        users,
        ORGANIZATIONS,
        memberships,
    ]
    assert peak_mib < FUNCTION_MEMORY_MIB


@pytest.mark.soak
@pytest.mark.timeout(SOAK_TIMEOUT_SECONDS)
def test_a_full_reconcile_in_sync_fits_the_functions_memory(
    db: firestore.Client,
    emulator_host: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    users, memberships = sizes("SOAK_FULL_USERS", 100_000)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", PROJECT)
    seeding = time.monotonic()
    seed_in_sync(db, users, memberships)
    seeded = time.monotonic() - seeding

    with stand_in(users, memberships) as url:
        summary, peak_mib, elapsed = reconcile_process(emulator_host, url, tmp_path / "reconcile.log")

    tallies = summary["kinds"]
    with capsys.disabled():
        print(
            f"\nreconcile soak: {users:,} users, {ORGANIZATIONS:,} organizations, {memberships:,} memberships in sync "
            f"(seeded in {seeded:.0f} s): full run {elapsed:.0f} s ({summary['elapsed_seconds']} s inside), "
            f"peak RSS {peak_mib:.0f} MiB, {summary['clerk_requests']} Clerk requests, "
            f"{summary['firestore_reads']} Firestore reads"
        )
    assert summary["outcome"] == "in_sync"
    assert [tallies[kind]["in_sync"] for kind in ("users", "organizations", "memberships")] == [
        users,
        ORGANIZATIONS,
        memberships,
    ]
    assert peak_mib < FUNCTION_MEMORY_MIB
