"""What keeping members' permissions equal to their role's costs, measured both ways (issue 23).

Clerk sends no membership event when a role's permissions change. Either every membership of the
role is rewritten (a sweep, in bounded batches like the deletion sweeps), or the rules read the role
document on every permission check (what clerk_sync does: `clerkSyncHasPermission`). This measures,
against the emulator:

- the sweep: writes, gRPC calls, time and 8-second deliveries to rewrite MEMBERS memberships of one
  role (the sweep is written here, shaped like `cascade.sweep`: pages of 250 by name, 4 commits in
  flight), and what one role change costs the webhook as built (the same MEMBERS stored);
- the rules: documents one permission check reads, counted against the emulator's limit of 10 reads
  per single-document request, for the helper as built and for a check of a list kept on the
  membership (what a sweep would allow), and the time of one check over REST.

Usage: .venv/bin/python bench/roles.py [MEMBERS]   (default 10,000; results in bench/results/roles.*)
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import harness
from clerk_events import (
    membership_event,
    new_message_id,
    permission_data,
    permission_event,
    role_event,
    user_event,
)
from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter
from harness import Table
from rpc_count import CallCounter, counting_client

from clerk_sync import events, paths
from clerk_sync.payload import EPOCH
from clerk_sync.transaction import NO_RETRY
from tools import rules

MEMBERS = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
ORGANIZATIONS = 20
PAGE = 250
COMMITS_IN_FLIGHT = 4
DELIVERY_SECONDS = 8.0  # FIRESTORE_DEADLINE_SECONDS: what one Svix delivery may spend
CHECKS = 200
BASE_MS = 1_756_382_400_000
PATHS = paths.paths_for("users", "organizations")
EDIT = "org:posts:edit"
COUNTER = CallCounter()


def parsed(body: str) -> events.Change:
    event = events.parse_event(body.encode())
    assert not isinstance(event, events.IgnoredEvent)
    return event


def seed_members(db: firestore.Client, count: int, role_key: str) -> float:
    """`count` memberships of `role_key` across ORGANIZATIONS organizations, written directly (setup)."""
    started = time.perf_counter()
    batch, pending = db.batch(), 0
    for index in range(count):
        organization = f"org_bench{index % ORGANIZATIONS:03d}"
        user = f"user_bench{index:06d}"
        reference = db.collection(PATHS.memberships(organization)).document(user)
        batch.set(
            reference,
            {
                "membership_id": f"orgmem_bench{index:06d}",
                "organization_id": organization,
                "user_id": user,
                "role": role_key,
                "permissions": [EDIT, "org:posts:read"],
                "updated_at": EPOCH + timedelta(milliseconds=BASE_MS),
            },
        )
        pending += 1
        if pending == 500:
            batch.commit(timeout=60)
            batch, pending = db.batch(), 0
    if pending:
        batch.commit(timeout=60)
    return time.perf_counter() - started


def sweep_role(db: firestore.Client, role_key: str, granted: list[str], deadline: float) -> tuple[int, bool]:
    """One delivery's share of rewriting `permissions` on every membership of `role_key`: pages by name,
    only documents not yet right are written (so a delivery cut off by its deadline leaves the rest to
    the next, which reads past what is done). Returns (written, finished)."""
    query = db.collection_group(paths.MEMBERSHIPS).where(filter=FieldFilter("role", "==", role_key))
    written, last = 0, None
    pending: list[Future[Any]] = []
    commits = ThreadPoolExecutor(max_workers=COMMITS_IN_FLIGHT)
    try:
        while True:
            page = query.select(["permissions"]).order_by("__name__").limit(PAGE)
            if last is not None:
                page = page.start_after(last)
            found = list(page.stream(retry=NO_RETRY, timeout=max(0.0, deadline - time.monotonic())))
            stale = [
                snapshot.reference for snapshot in found if (snapshot.to_dict() or {}).get("permissions") != granted
            ]
            if stale:
                batch = db.batch()
                for reference in stale:
                    batch.update(reference, {"permissions": granted})
                pending.append(commits.submit(batch.commit, retry=None, timeout=max(0.1, deadline - time.monotonic())))
                written += len(stale)
            if len(pending) >= COMMITS_IN_FLIGHT:
                pending.pop(0).result()
            if len(found) < PAGE:
                break
            last = found[-1]
        for commit in pending:
            commit.result()
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError, ValueError):
        return written, False  # cut off: 503, and Svix's retry goes on
    finally:
        commits.shutdown(wait=True)
    return written, True


def _base64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def id_token(uid: str) -> str:
    """An unsigned Firebase ID token as firebase_token's custom token makes it (the emulator trusts it)."""
    now = int(time.time())
    payload = {
        "sub": uid,
        "user_id": uid,
        "aud": harness.PROJECT,
        "iss": f"https://securetoken.google.com/{harness.PROJECT}",
        "iat": now,
        "auth_time": now,
        "exp": now + 3600,
        "firebase": {"sign_in_provider": "custom", "identities": {}},
        "clerk_sid": "sess_bench",
    }
    return f"{_base64url({'alg': 'none', 'typ': 'JWT'})}.{_base64url(payload)}."


def app_rules(*conditions: str) -> str:
    """The sync's block and an app collection per condition: `app_posts0/post_1`, `app_posts1/post_1`, ..."""
    matches = "".join(
        f"    match /app_posts{index}/{{postId}} {{\n      allow get: if {condition};\n    }}\n"
        for index, condition in enumerate(conditions)
    )
    return (
        "rules_version = '2';\nservice cloud.firestore {\n  match /databases/{database}/documents {\n"
        + rules.block(PATHS)
        + matches
        + "  }\n}\n"
    )


def fetch(host: str, uid: str, collection: int = 0) -> tuple[int, float]:
    """One client get of an app document under the loaded rules: status and milliseconds."""
    url = f"http://{host}/v1/projects/{harness.PROJECT}/databases/(default)/documents/app_posts{collection}/post_1"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {id_token(uid)}"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        with error:
            status = int(error.code)
    return status, (time.perf_counter() - started) * 1000


def reads_used(host: str, condition: str, uid: str) -> int:
    """Reads one evaluation of `condition` takes: 10 less the most extra reads the rule still allows."""
    room = -1
    for extra in range(11):
        probe = " && get(/databases/$(database)/documents/app_probes/p{}).data.ok"
        harness.load_rules(host, app_rules(condition + "".join(probe.format(index) for index in range(extra))))
        if fetch(host, uid)[0] != 200:
            break
        room = extra
    return 10 - room


def check_times(host: str, cases: list[tuple[str, str]]) -> list[tuple[float, float]]:
    """p50 and p99 of each (condition, uid), requests interleaved so the machine's load falls on all alike."""
    harness.load_rules(host, app_rules(*(condition for condition, _ in cases)))
    times: list[list[float]] = [[] for _ in cases]
    for round_number in range(CHECKS + 20):
        for index, (_, uid) in enumerate(cases):
            status, milliseconds = fetch(host, uid, index)
            assert status == 200, status
            if round_number >= 20:  # the first rounds warm the emulator up
                times[index].append(milliseconds)
    return [(harness.percentile(found, 50), harness.percentile(found, 99)) for found in times]


def apply(client: firestore.Client, body: str) -> str:
    return harness.apply(client, new_message_id(), parsed(body))


def calls_of(counted: dict[str, int]) -> int:
    return sum(count for method, count in counted.items() if method not in {"documents read", "writes"})


def row_of(counted: dict[str, int], milliseconds: float) -> list[str]:
    """Writes, calls, documents read, time, deliveries of one webhook event."""
    return [
        str(counted["writes"]),
        str(calls_of(counted)),
        str(counted["documents read"]),
        f"{milliseconds:.0f} ms",
        "1",
    ]


CARRIED = [permission_data("perm_benchedit", EDIT), permission_data("perm_benchread", "org:posts:read")]


def measure_built(client: firestore.Client, db: firestore.Client, table: Table, numbers: dict[str, object]) -> None:
    """The webhook as built: one role.updated with MEMBERS members of the role stored; a permission's new key."""
    apply(client, role_event("role.created", "role_bench", "org:editor", CARRIED))
    numbers["seed_seconds"] = seed_members(db, MEMBERS, "org:editor")
    COUNTER.take()
    started = time.perf_counter()
    outcome = apply(client, role_event("role.updated", "role_bench", "org:editor", CARRIED[1:], updated_at=BASE_MS + 1))
    milliseconds = (time.perf_counter() - started) * 1000
    built = COUNTER.take()
    table.rows.append([f"rules read the role (built): role.updated ({outcome})", *row_of(built, milliseconds)])
    numbers["role_change"] = {**built, "milliseconds": milliseconds}
    for index in range(10):  # Clerk's custom role limit
        apply(client, role_event("role.created", f"role_bench{index}", f"org:r{index}", CARRIED[:1]))
    COUNTER.take()
    started = time.perf_counter()
    apply(client, permission_event("permission.updated", "perm_benchedit", "org:articles:edit", updated_at=BASE_MS + 5))
    milliseconds = (time.perf_counter() - started) * 1000
    renamed = COUNTER.take()
    table.rows.append(["built: permission.updated (new key), 10 roles hold it", *row_of(renamed, milliseconds)])
    numbers["permission_rename"] = {**renamed, "milliseconds": milliseconds}


def measure_sweep(table: Table, numbers: dict[str, object]) -> None:
    """Every membership of the role rewritten, in as many 8-second deliveries as it takes."""
    client = counting_client(harness.PROJECT, COUNTER)
    COUNTER.take()
    started = time.perf_counter()
    deliveries, written, finished = 0, 0, False
    while not finished:
        deliveries += 1
        deadline = time.monotonic() + DELIVERY_SECONDS
        done, finished = sweep_role(client, "org:editor", ["org:posts:read"], deadline)
        written += done
    seconds = time.perf_counter() - started
    swept = COUNTER.take()
    row = [f"{written:,}", str(calls_of(swept)), f"{written:,} (query)", f"{seconds:.1f} s", str(deliveries)]
    table.rows.append(["sweep every membership of the role (not built)", *row])
    numbers["sweep"] = {**swept, "written": written, "seconds": seconds, "deliveries": deliveries}


def measure_checks(host: str, client: firestore.Client, db: firestore.Client, numbers: dict[str, object]) -> Table:
    """Reads and time of one permission check: a list kept on the membership, and the helper as built."""
    member, early = "user_bench000000", "user_bench_early"
    db.collection(PATHS.users).document(member).set({"clerk_id": member, "banned": False})
    for index in range(3):
        db.collection(f"app_posts{index}").document("post_1").set({"orgId": "org_bench000"})
    for index in range(10):
        db.collection("app_probes").document(f"p{index}").set({"ok": True})
    db.collection(PATHS.memberships("org_bench000")).document(member).update({"role_id": "role_bench"})
    apply(client, user_event("user.created", early, emails=["early@example.com"]))
    joined = "organizationMembership.created"
    apply(client, membership_event(joined, "orgmem_early", "org_bench000", early, role="org:late"))
    apply(client, role_event("role.created", "role_late", "org:late", CARRIED[1:]))
    kept_list = (
        "clerkSyncReader() && 'org:posts:read' in get(/databases/$(database)/documents/"
        f"{PATHS.organizations}/$(resource.data.orgId)/memberships/$(request.auth.uid)).data.permissions"
    )
    helper = "clerkSyncHasPermission(resource.data.orgId, 'org:posts:read')"
    checks = Table(
        f"One permission check in the rules (emulator, {CHECKS} each, interleaved; reads counted against its limit)",
        ["rule", "reads", "p50 ms", "p99 ms"],
    )
    cases = [
        ("a list kept on the membership (what a sweep allows)", kept_list, member),
        ("clerkSyncHasPermission, member names its role's id (built)", helper, member),
        ("clerkSyncHasPermission, member stored before its role (built)", helper, early),
    ]
    used = [reads_used(host, condition, uid) for _, condition, uid in cases]
    timed = check_times(host, [(condition, uid) for _, condition, uid in cases])
    for (label, _, _), reads, (p50, p99) in zip(cases, used, timed, strict=True):
        checks.rows.append([label, str(reads), f"{p50:.1f}", f"{p99:.1f}"])
        numbers[label] = {"reads": reads, "p50_ms": p50, "p99_ms": p99}
    return checks


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    numbers: dict[str, object] = {"members": MEMBERS}
    with harness.running_emulator() as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        os.environ["GOOGLE_CLOUD_PROJECT"] = harness.PROJECT
        db = firestore.Client(project=harness.PROJECT)
        client = counting_client(harness.PROJECT, COUNTER)
        table = Table(
            f"One role's permissions changed, {MEMBERS:,} members of the role ({ORGANIZATIONS} organizations)",
            ["way", "writes", "gRPC calls", "documents read", "time", "8 s deliveries"],
        )
        measure_built(client, db, table, numbers)
        measure_sweep(table, numbers)
        checks = measure_checks(host, client, db, numbers)
    harness.save("roles", info, [table, checks], numbers)


if __name__ == "__main__":
    main()
