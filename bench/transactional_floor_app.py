"""The throughput floor of issue 20: a plain functions-framework function doing what any webhook must.

It reads the body, parses the JSON, and stores the user with the library's own transaction
(`@firestore.transactional`: BeginTransaction, one read, one write in the Commit). No signature, no
idempotency record, no ordering, no claims. The webhook, which does all of that in two round trips
instead of three, should keep up with it.
"""

from __future__ import annotations

import json
from typing import Any

import functions_framework
from google.cloud import firestore

_client: firestore.Client | None = None


@firestore.transactional
def _store(transaction: firestore.Transaction, reference: firestore.DocumentReference, data: dict[str, Any]) -> str:
    stored = reference.get(transaction=transaction)
    transaction.set(reference, {"clerk_id": data["id"], "first_name": data.get("first_name"), "seen": stored.exists})
    return "applied"


@functions_framework.http
def transactional_floor(request: Any) -> tuple[str, int]:
    """One `@firestore.transactional` read and write per request, the client created on first use."""
    global _client
    if _client is None:
        _client = firestore.Client()
    data = json.loads(request.get_data())["data"]
    return _store(_client.transaction(), _client.collection("users").document(data["id"]), data), 200
