"""The happy path end to end through the test client: a signed user.created becomes a document."""

from __future__ import annotations

from clerk_events import new_user_id, signed_headers, user_event
from flask.testing import FlaskClient
from google.cloud import firestore


def test_signed_user_created_is_stored(client: FlaskClient, db: firestore.Client) -> None:
    user_id = new_user_id()
    body = user_event("user.created", user_id)

    response = client.post("/", data=body, headers=signed_headers(body))

    assert response.status_code == 200
    assert response.get_json() == {"outcome": "applied"}
    stored = db.collection("users").document(user_id).get().to_dict()
    assert stored is not None
    assert stored["email"] == "alice@example.com"
    assert "private_metadata" not in stored
