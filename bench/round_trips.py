"""Round trips per event: every gRPC call the function makes, counted by an interceptor on the client's channel.

The production code path (`clerk_sync.events.apply_event`) runs unchanged; only the benchmark's client
differs, in that its emulator channel is wrapped with `grpc.intercept_channel`. Expected: BatchGetDocuments
(which begins the transaction) + Commit for every upsert outcome; a conflict reads the claim's owner in a
second batch; a deletion then queries what belonged to the deleted object (a user's or an organization's
billing, an organization's invitations, then the memberships), and commits a batch of deletes per 250
documents found. Billing events read their plans in the same batch: 2 calls too. A permission's new key
or deletion then queries the roles holding it, and derives each one's list again in a transaction of
its own (two reads and a commit per role).
"""

from __future__ import annotations

import os
from datetime import timedelta

import harness
from billing_events import item_data, item_event, payment_data, payment_event, subscription_data, subscription_event
from clerk_events import (
    deleted_object_event,
    invitation_event,
    membership_event,
    organization_deletion_event,
    organization_event,
    permission_data,
    permission_event,
    role_event,
)
from harness import Table
from rpc_count import CallCounter, counting_client

from clerk_sync import events

DEADLINE_SECONDS = 8.0
EVENT_TTL = timedelta(days=30)
BASE_MS = 1_756_382_400_000


COUNTER = CallCounter()


def parsed(body: str) -> events.Event:
    return events.parse_event(body.encode())


def upsert(user_id: str, *, email: str | None, updated_at: int) -> events.Event:
    return parsed(
        harness.user_event(
            "user.updated",
            user_id,
            emails=[email] if email else [],
            phones=[] if email else ["+15550100"],
            updated_at=updated_at,
        )
    )


def subscription(payer_id: str, items: int, updated_at: int) -> str:
    listed = [item_data(f"csub_item_{index}", f"plan-{index}", updated_at=updated_at) for index in range(items)]
    return subscription_event(
        "subscription.updated", subscription_data("csub_1", "user", payer_id, listed, updated_at=updated_at)
    )


def item(payer_id: str, status: str, updated_at: int) -> str:
    changed = item_data("csub_item_0", "plan-0", status=status, updated_at=updated_at)
    return item_event("subscriptionItem.updated", changed, "csub_1", "user", payer_id)


def main() -> None:
    info = harness.machine()
    harness.print_machine(info)
    table = Table(
        "gRPC calls per event (interceptor on the Firestore channel; events.apply_event unchanged)",
        [
            "event",
            "outcome",
            "Begin",
            "BatchGet",
            "docs read",
            "RunQuery",
            "Commit",
            "writes",
            "Rollback",
            "calls",
            "expected calls",
            "result",
        ],
    )
    rows: dict[str, dict[str, int]] = {}
    with harness.running_emulator() as host:
        os.environ["FIRESTORE_EMULATOR_HOST"] = host
        client = counting_client(harness.PROJECT, COUNTER)

        def apply(message_id: str, event: events.Event) -> str:
            return str(harness.apply(client, message_id, event, DEADLINE_SECONDS))

        apply("msg_warm", upsert("user_warm", email="warm@example.com", updated_at=BASE_MS))  # channel up
        COUNTER.take()
        member = "organizationMembership"
        edit, publish = permission_data("perm_e", "org:posts:edit"), permission_data("perm_p", "org:posts:publish")
        scenarios: list[tuple[str, str, events.Event, int]] = [
            ("user: create with email", "msg_a1", upsert("user_a", email="a@example.com", updated_at=BASE_MS), 2),
            ("user: same delivery again", "msg_a1", upsert("user_a", email="a@example.com", updated_at=BASE_MS), 2),
            (
                "user: update, email change",
                "msg_a2",
                upsert("user_a", email="a2@example.com", updated_at=BASE_MS + 2),
                2,
            ),
            ("user: older update", "msg_a3", upsert("user_a", email="a@example.com", updated_at=BASE_MS + 1), 2),
            ("user: email owned by another", "msg_b1", upsert("user_b", email="a2@example.com", updated_at=BASE_MS), 3),
            ("user: create, phone only", "msg_c1", upsert("user_c", email=None, updated_at=BASE_MS), 2),
            ("organization: create", "msg_o1", parsed(organization_event("organization.created", "org_o")), 2),
            (
                "membership: join",
                "msg_m1",
                parsed(membership_event(f"{member}.created", "orgmem_1", "org_o", "user_a")),
                2,
            ),
            (
                "membership: join (2nd)",
                "msg_m2",
                parsed(membership_event(f"{member}.created", "orgmem_2", "org_o", "user_c")),
                2,
            ),
            (
                "membership: leave",
                "msg_m3",
                parsed(membership_event(f"{member}.deleted", "orgmem_2", "org_o", "user_c")),
                2,
            ),
            ("user: delete (1 membership)", "msg_a4", parsed(harness.deletion_event("user_a")), 5),
            ("user: update after delete", "msg_a5", upsert("user_a", email="a@example.com", updated_at=BASE_MS + 9), 2),
            ("user: same delete again", "msg_a4", parsed(harness.deletion_event("user_a")), 4),
            # One query per collection it sweeps: its billing, its invitations, its members.
            ("organization: delete (no members left)", "msg_o2", parsed(organization_deletion_event("org_o")), 5),
            ("subscription: create (2 items)", "msg_s1", parsed(subscription("user_c", 2, BASE_MS + 1)), 2),
            ("subscription item: update", "msg_s2", parsed(item("user_c", "active", BASE_MS + 3)), 2),
            ("subscription item: older (stale)", "msg_s3", parsed(item("user_c", "past_due", BASE_MS + 2)), 2),
            ("subscription: older list (stale)", "msg_s4", parsed(subscription("user_c", 1, BASE_MS)), 2),
            (
                "payment attempt",
                "msg_p1",
                parsed(payment_event("paymentAttempt.updated", payment_data("cpa_1", "user", "user_c"))),
                2,
            ),
            ("user: delete (subscription + payment)", "msg_c2", parsed(harness.deletion_event("user_c")), 5),
            (
                "role: create (2 permissions)",
                "msg_r1",
                parsed(role_event("role.created", "role_r", "org:editor", [edit, publish])),
                2,
            ),
            (
                "role: older update",
                "msg_r2",
                parsed(role_event("role.updated", "role_r", "org:editor", [edit], updated_at=BASE_MS - 1)),
                2,
            ),
            (
                "membership: join, its role stored",
                "msg_m4",
                parsed(membership_event(f"{member}.created", "orgmem_4", "org_p", "user_p", role="org:editor")),
                2,
            ),
            (
                "permission: new key, 1 role holds it",
                "msg_perm1",
                parsed(permission_event("permission.updated", "perm_e", "org:articles:edit", updated_at=BASE_MS + 5)),
                6,
            ),
            (
                "permission: delete, 1 role holds it",
                "msg_perm2",
                parsed(deleted_object_event("permission.deleted", "permission", "perm_p")),
                6,
            ),
            ("role: delete", "msg_r3", parsed(deleted_object_event("role.deleted", "role", "role_r")), 2),
            (
                "invitation: create",
                "msg_i1",
                parsed(invitation_event("organizationInvitation.created", "orginv_1", "org_p")),
                2,
            ),
            (
                "invitation: accepted",
                "msg_i2",
                parsed(
                    invitation_event("organizationInvitation.accepted", "orginv_1", "org_p", updated_at=BASE_MS + 1)
                ),
                2,
            ),
        ]
        for label, message_id, event, expected in scenarios:
            outcome = apply(message_id, event)
            calls = COUNTER.take()
            total = sum(count for method, count in calls.items() if method not in {"documents read", "writes"})
            rows[label] = {"calls": total, "expected": expected, **calls}
            table.rows.append(
                [
                    label,
                    outcome,
                    str(calls["BeginTransaction"]),
                    str(calls["BatchGetDocuments"]),
                    str(calls["documents read"]),
                    str(calls["RunQuery"]),
                    str(calls["Commit"]),
                    str(calls["writes"]),
                    str(calls["Rollback"]),
                    str(total),
                    str(expected),
                    harness.verdict(total == expected),
                ]
            )
    harness.save("round_trips", info, [table], {"events": rows})


if __name__ == "__main__":
    main()
