"""Signing-secret rotation: while Svix signs with the old and the new secret, either one verifies."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import pytest
from clerk_events import SECRET, new_message_id, new_user_id, signed_headers, user_event
from conftest import snapshot_all
from flask.testing import FlaskClient
from google.cloud import firestore
from svix.webhooks import Webhook

from clerk_sync import config

OLD_SECRET = SECRET
NEW_SECRET = "whsec_bmV3IHNlY3JldCBhZnRlciByb3RhdGlvbiE="


def configure(secret: str) -> None:
    """What a redeploy with a new secret version does to an instance's settings."""
    os.environ["CLERK_WEBHOOK_SIGNING_SECRET"] = secret
    config.reset()


def rotation_headers(body: str, message_id: str) -> dict[str, str]:
    """Headers as Svix sends them during a rotation: one signature per secret, new one first."""
    when = datetime.now(UTC)
    signatures = [Webhook(secret).sign(message_id, when, body) for secret in (NEW_SECRET, OLD_SECRET)]
    return {
        "svix-id": message_id,
        "svix-timestamp": str(int(when.timestamp())),
        "svix-signature": " ".join(signatures),
        "content-type": "application/json",
    }


@pytest.mark.parametrize("configured", [OLD_SECRET, NEW_SECRET], ids=["old secret", "new secret"])
def test_delivery_signed_with_old_and_new_secret_verifies_with_either(
    client: FlaskClient, db: firestore.Client, configured: str
) -> None:
    configure(configured)
    user_id = new_user_id()
    body = user_event("user.created", user_id)

    response = client.post("/", data=body, headers=rotation_headers(body, new_message_id()))

    assert response.status_code == 200
    assert response.get_json() == {"outcome": "applied"}
    assert db.collection("users").document(user_id).get(timeout=10).exists


def test_retry_reaching_an_instance_with_the_new_secret_is_a_duplicate(
    client: FlaskClient, db: firestore.Client
) -> None:
    user_id = new_user_id()
    body = user_event("user.created", user_id)
    message_id = new_message_id()
    configure(OLD_SECRET)
    first = client.post("/", data=body, headers=rotation_headers(body, message_id))
    configure(NEW_SECRET)

    retry = client.post("/", data=body, headers=rotation_headers(body, message_id))

    assert first.status_code == 200
    assert retry.status_code == 200
    assert retry.get_json() == {"outcome": "duplicate"}


def test_old_secret_alone_rejects_deliveries_once_the_rotation_window_closed(
    client: FlaskClient, db: firestore.Client
) -> None:
    configure(OLD_SECRET)
    body = user_event("user.created", new_user_id())
    before = snapshot_all(db)

    response = client.post("/", data=body, headers=signed_headers(body, secret=NEW_SECRET))

    assert response.status_code == 401
    assert snapshot_all(db) == before
