"""Pending invitations: stored while pending, gone for good once accepted or revoked, never their ticket."""

from __future__ import annotations

import json
from typing import Any

from clerk_events import (
    BASE_MS,
    invitation_event,
    new_invitation_id,
    new_message_id,
    new_organization_id,
    organization_deletion_event,
    organization_event,
    signed_headers,
)
from conftest import PATHS, apply_event, snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore

from clerk_sync import events
from clerk_sync.outcome import Outcome

TIMEOUT_SECONDS = 10


def deliver(db: firestore.Client, body: str) -> Outcome:
    return apply_event(db, new_message_id(), events.parse_event(body.encode()))


def invitation(db: firestore.Client, organization_id: str, invitation_id: str) -> dict[str, Any] | None:
    reference = db.collection(PATHS.invitations(organization_id)).document(invitation_id)
    return reference.get(timeout=TIMEOUT_SECONDS).to_dict()


def test_a_pending_invitation_is_stored_without_its_ticket_or_private_metadata(db: firestore.Client) -> None:
    organization, invitation_id = new_organization_id(), new_invitation_id()

    outcome = deliver(db, invitation_event("organizationInvitation.created", invitation_id, organization))

    stored = invitation(db, organization, invitation_id)
    assert outcome is Outcome.APPLIED
    assert stored is not None
    assert (stored["email_address"], stored["status"], stored["role"], stored["inviter_id"]) == (
        "invitee@example.com",
        "pending",
        "org:member",
        "user_inviter",
    )
    assert stored["public_metadata"] == {"team": "blue"}
    assert "secret" not in json.dumps(stored, default=str)
    assert not {"url", "private_metadata", "public_inviter_data"} & set(stored)


def test_accepted_or_revoked_invitations_go_for_good_in_either_order(db: firestore.Client) -> None:
    organization = new_organization_id()
    for ending in ("organizationInvitation.accepted", "organizationInvitation.revoked"):
        first, second = new_invitation_id(), new_invitation_id()
        created = invitation_event("organizationInvitation.created", first, organization)
        deliver(db, created)

        ended = deliver(db, invitation_event(ending, first, organization, updated_at=BASE_MS + 5))
        again = deliver(db, created)  # a late retry of the creation, under another svix id
        early_end = deliver(db, invitation_event(ending, second, organization, updated_at=BASE_MS + 5))
        late_creation = deliver(db, invitation_event("organizationInvitation.created", second, organization))

        assert (ended, again, early_end, late_creation) == (
            Outcome.APPLIED,
            Outcome.STALE,
            Outcome.APPLIED,
            Outcome.STALE,
        ), ending
        assert invitation(db, organization, first) is None
        assert invitation(db, organization, second) is None
        tombstone = db.collection(PATHS.invitation_tombstones).document(first).get(timeout=TIMEOUT_SECONDS).to_dict()
        assert tombstone is not None
        assert tombstone["organization_id"] == organization


def test_an_organizations_deletion_sweeps_its_invitations_and_later_ones_are_stale(db: firestore.Client) -> None:
    organization = new_organization_id()
    deliver(db, organization_event("organization.created", organization))
    pending = [new_invitation_id() for _ in range(3)]
    for invitation_id in pending:
        deliver(db, invitation_event("organizationInvitation.created", invitation_id, organization))

    deleted = deliver(db, organization_deletion_event(organization))
    late = deliver(db, invitation_event("organizationInvitation.created", new_invitation_id(), organization))

    assert (deleted, late) == (Outcome.APPLIED, Outcome.STALE)
    assert list(db.collection(PATHS.invitations(organization)).stream(timeout=TIMEOUT_SECONDS)) == []


def test_every_wrong_invitation_field_alone_is_a_400_and_changes_nothing(
    client: FlaskClient, db: firestore.Client
) -> None:
    organization, invitation_id = new_organization_id(), new_invitation_id()
    good = json.loads(invitation_event("organizationInvitation.created", invitation_id, organization))
    deliver(db, json.dumps(good))
    before = snapshot_all(db)
    wrong: dict[str, list[Any]] = {
        "id": [None, "", 7, "a/b"],
        "organization_id": [None, "", ["org_1"], "org/x"],
        "email_address": [7],
        "role": [7],
        "status": [{"s": 1}],
        "public_metadata": ["x", [1]],
        "inviter_id": [7],
        "expires_at": ["tomorrow", 1.5],
        "updated_at": [None, "now"],
    }
    bodies = []
    for field, values in wrong.items():
        for value in values:
            for event_type in ("organizationInvitation.created", "organizationInvitation.revoked"):
                if event_type.endswith("revoked") and field not in {"id", "organization_id"}:
                    continue  # an ending reads only the ids
                body = json.loads(json.dumps(good))
                body["type"] = event_type
                body["data"][field] = value
                bodies.append((f"{event_type} {field}={value!r}", json.dumps(body)))

    answers = [
        (case, response.status_code, (response.get_json() or {}).get("outcome"))
        for case, body in bodies
        for response in [client.post("/", data=body, headers=signed_headers(body))]
    ]

    assert [answer for answer in answers if answer[1:] != (400, "malformed")] == []
    assert snapshot_all(db) == before
