"""Clerk Billing through the real functions-framework server over loopback, against the emulator.

Every item of a subscription lives in the payer's one document, so concurrent item events for one
payer contend for it: none may be lost. Every billing event family, shuffled and duplicated, ends in
the newest state.
"""

from __future__ import annotations

import json
import os
import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from billing_events import (
    item_data,
    item_event,
    new_id,
    payment_data,
    payment_event,
    subscription_data,
    subscription_event,
)
from clerk_events import BASE_MS, new_message_id, new_organization_id, new_user_id, signed_headers
from conftest import PATHS, Server, start_server, stop_server
from google.cloud import firestore
from loopback import deliver, send

from clerk_sync import billing

THREAD_COUNT = 8
JOIN_TIMEOUT_SECONDS = 120.0


@pytest.fixture(scope="module")
def running(emulator_host: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    environment = {**os.environ, "FIRESTORE_EMULATOR_HOST": emulator_host, "THREADS": str(THREAD_COUNT)}
    server = start_server(tmp_path_factory.mktemp("end_to_end_billing"), environment)
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture
def url(running: Server, db: firestore.Client) -> str:
    return running.url


def subscription_of(db: firestore.Client, payer_type: str, payer_id: str) -> dict[str, Any]:
    path = f"{billing.billing_collection(PATHS, payer_type, payer_id)}/{billing.SUBSCRIPTION}"
    stored = db.document(path).get(timeout=10).to_dict()
    assert stored is not None, path
    return stored


def in_threads(url: str, bodies: list[tuple[str, str]]) -> list[list[int | str]]:
    """Deliver (message id, body) pairs from THREAD_COUNT threads at once, each retried until acknowledged."""
    results: list[list[int | str]] = [[] for _ in bodies]
    chunks = [list(range(index, len(bodies), THREAD_COUNT)) for index in range(THREAD_COUNT)]

    def work(indexes: list[int]) -> None:
        for index in indexes:
            message_id, body = bodies[index]
            results[index] = deliver(url, body, message_id=message_id)

    threads = [threading.Thread(target=work, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT_SECONDS)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_concurrent_item_events_for_one_payer_lose_no_item(url: str, db: firestore.Client) -> None:
    organization_id, subscription_id = new_organization_id(), new_id("csub")
    items = [item_data(new_id("csub_item"), f"addon-{index}", updated_at=BASE_MS + index) for index in range(16)]
    bodies = [
        (
            new_message_id(),
            item_event("subscriptionItem.active", item, subscription_id, "organization", organization_id),
        )
        for item in items
    ]

    results = in_threads(url, bodies)

    assert all(attempts[-1] == "applied" for attempts in results), results
    stored = subscription_of(db, "organization", organization_id)
    assert set(stored["items"]) == {item["id"] for item in items}
    assert stored["active_plans"] == sorted(f"addon-{index}" for index in range(16))


def test_every_billing_family_shuffled_and_duplicated_ends_in_the_newest_state(url: str, db: firestore.Client) -> None:
    user_id, subscription_id, payment_id = new_user_id(), new_id("csub"), new_id("cpa")
    free, pro = new_id("csub_item"), new_id("csub_item")
    ending = item_data(pro, "pro", is_free_trial=True, updated_at=BASE_MS + 3)
    history = [
        subscription_event("subscription.created", subscription_data(subscription_id, "user", user_id,
                           [item_data(free, "free", amount=0, updated_at=BASE_MS + 1)], updated_at=BASE_MS + 1)),
        item_event("subscriptionItem.active", item_data(pro, "pro", is_free_trial=True, updated_at=BASE_MS + 2),
                   subscription_id, "user", user_id),
        item_event("subscriptionItem.freeTrialEnding", ending, subscription_id, "user", user_id),
        payment_event("paymentAttempt.created", payment_data(payment_id, "user", user_id, status="pending",
                                                              updated_at=BASE_MS + 4)),
        payment_event("paymentAttempt.updated", payment_data(payment_id, "user", user_id, status="failed",
                                                              updated_at=BASE_MS + 5)),
        item_event("subscriptionItem.pastDue", item_data(pro, "pro", status="past_due", updated_at=BASE_MS + 6),
                   subscription_id, "user", user_id),
        subscription_event("subscription.pastDue", subscription_data(subscription_id, "user", user_id,
                           [item_data(pro, "pro", status="past_due", updated_at=BASE_MS + 6)], status="past_due",
                           updated_at=BASE_MS + 7)),
        payment_event("paymentAttempt.updated", payment_data(payment_id, "user", user_id, status="paid",
                                                              updated_at=BASE_MS + 8)),
        item_event("subscriptionItem.active", item_data(pro, "pro", updated_at=BASE_MS + 9), subscription_id, "user",
                   user_id),
        subscription_event("subscription.active", subscription_data(subscription_id, "user", user_id,
                           [item_data(pro, "pro", updated_at=BASE_MS + 9)], updated_at=BASE_MS + 10)),
    ]  # fmt: skip
    deliveries = [(new_message_id(), body) for body in history]
    deliveries += random.Random(5).sample(deliveries, 4)  # the same svix ids again: duplicates
    random.Random(6).shuffle(deliveries)

    results = in_threads(url, deliveries)

    finals = [attempts[-1] for attempts in results]
    assert set(finals) <= {"applied", "stale", "duplicate"}, results
    stored = subscription_of(db, "user", user_id)
    assert (stored["status"], stored["active_plans"], list(stored["items"])) == ("active", ["pro"], [pro])
    payment_path = f"{billing.payments_collection(PATHS, 'user', user_id)}/{payment_id}"
    assert (db.document(payment_path).get(timeout=10).to_dict() or {})["status"] == "paid"
    records = [document.get("outcome") for document in db.collection(PATHS.events).stream(timeout=10)]
    assert len(records) == len(history)  # one record per svix id, duplicates included


def test_a_malformed_billing_body_over_loopback_is_400(url: str, db: firestore.Client) -> None:
    body = json.dumps({"type": "subscriptionItem.active", "object": "event", "data": {"id": "csub_item_1"}})
    reply = send(url, body.encode(), signed_headers(body))

    assert (reply.status, reply.json()["outcome"]) == (400, "malformed")
