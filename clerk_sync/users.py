"""User events: `user.created` / `user.updated` / `user.deleted`, parsed, then their transaction bodies.

Documents (names are part of the data contract):
  {USERS_COLLECTION}/{user_id}     the synced user, readable by that user's client
  email_claims/{email key}         who owns a normalised primary email (uniqueness)
  user_tombstones/{user_id}        deleted users, so late upserts never resurrect them

A user's deletion also sweeps their memberships everywhere and their billing
({USERS_COLLECTION}/{user_id}/billing, billing.py).
"""

from __future__ import annotations

import time
from typing import Any, Literal

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1 import FieldFilter

from clerk_sync import billing, documents, ids, kind, payload
from clerk_sync.cascade import Sweep
from clerk_sync.config import Settings
from clerk_sync.delivery import Delivery
from clerk_sync.kind import Admission, Deletion, Ids, Snapshots, Upsert
from clerk_sync.outcome import FollowUpFailed, Outcome, StoreUnavailable
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import NO_RETRY, Attempt, remaining

__all__ = [
    "AUTH_FOLLOW_UP",
    "DELETED_AT_FIELD",
    "KIND",
    "OWNED_FIELDS",
    "PENDING_FIELD",
    "SYNCED_FIELDS",
    "align_auth_record",
    "align_auth_user",
    "blocked",
    "email_key",
    "normalise_email",
    "parse_deletion",
    "parse_upsert",
]

# The fields parsed from Clerk, as the data contract declares them (clerk_sync/documents.py).
SYNCED_FIELDS = documents.USER.names_set_by("clerk")
DELETED_AT_FIELD = kind.DELETED_AT_FIELD
# The primary address a stored user is waiting to take while another user still holds it.
PENDING_FIELD = "pending_email"
# The follow-up that brings the user's Firebase Auth record in line (events.FOLLOW_UPS).
AUTH_FOLLOW_UP = "firebase_auth_user"
# Auth may use part of the time between Firestore's budget (8 s) and Svix's 15 s.
AUTH_SECONDS_PAST_DEADLINE = 5.0
MAX_AUTH_ROUNDS = 3


def normalise_email(address: str) -> str | None:
    """The key that makes `Alice@Example.com ` and `alice@example.com` the same address."""
    key = address.strip().lower()
    return key or None


def email_key(document: dict[str, Any] | None) -> str | None:
    """The claim key of a user document's primary email, if it has one."""
    email = (document or {}).get("email")
    return normalise_email(email) if isinstance(email, str) else None


def _claim(db: firestore.Client, paths: Paths, email_key: str) -> firestore.DocumentReference:
    return db.collection(paths.claims).document(ids.document_id(email_key))


def _claim_read(db: firestore.Client, paths: Paths, change: Upsert) -> list[firestore.DocumentReference]:
    """The claim of the incoming primary email, read with everything else in the one batched read."""
    key = email_key(change.document)
    return [_claim(db, paths, key)] if key else []


def _admit(
    attempt: Attempt, delivery: Delivery, change: Upsert, snapshots: Snapshots, stored: dict[str, Any] | None
) -> Admission:
    """Primary emails stay unique: the incoming address must be free or ours; a released one is let go."""
    db, paths = attempt.db, delivery.paths
    key = email_key(change.document)
    old_key = email_key(stored)
    if key is not None:
        claim_ref = _claim(db, paths, key)
        if _claim_blocked(attempt, delivery, change.clerk_id, key, snapshots[claim_ref.path], claim_ref):
            if not KIND.holds(stored, change.clerk_id):
                return Admission(Outcome.CONFLICT, None)  # not stored yet: nothing to keep current
            return _parked(attempt, delivery, change, old_key)
    if old_key is not None and old_key != key:
        # The stored document held this address, so its claim is ours to release.
        attempt.delete(_claim(db, paths, old_key))
    return Admission(Outcome.APPLIED, change.document)


def _parked(attempt: Attempt, delivery: Delivery, change: Upsert, old_key: str | None) -> Admission:
    """A stored user whose new address another user still holds: all but the move is stored now.

    The ban, names and metadata must not wait for an address (or forever, in a cycle whose
    intermediate step was lost). The old address is let go as Clerk has let it go, so a user waiting
    for it (the other half of a swap) can take it, which frees this one's: cycles resolve through
    Svix's retries alone. The answer stays 409, so the move itself is retried.
    """
    if old_key is not None:
        attempt.delete(_claim(attempt.db, delivery.paths, old_key))
    delivery.notes["email_parked"] = 1
    document = {**change.document, "email": None, "email_verified": False, PENDING_FIELD: change.document["email"]}
    return Admission(Outcome.CONFLICT, document)


def _claim_blocked(
    attempt: Attempt,
    delivery: Delivery,
    user_id: str,
    key: str,
    claim: firestore.DocumentSnapshot[Any],
    claim_ref: firestore.DocumentReference,
) -> bool:
    """Whether another user still holds this email; otherwise the claim is (made) ours."""
    owner = (claim.to_dict() or {}).get("clerk_id") if claim.exists else None
    if claim.exists and owner == user_id:
        return False
    if claim.exists and not ids.is_clerk_id(owner):
        # Hand-edited or damaged: no user can be shown to hold the address, so it is free.
        delivery.warn("email claim without a readable owner taken over", claim_owner=None)
    elif claim.exists:
        # Rare path, so one more read: the claim only blocks while its owner still holds it.
        owner_ref = attempt.db.collection(delivery.paths.users).document(owner)
        owner_snapshot = attempt.read([owner_ref])[owner_ref.path]
        if email_key(owner_snapshot.to_dict() if owner_snapshot.exists else None) == key:
            delivery.notes["claim_owner"] = owner
            return True
        delivery.notes["claim_taken_from"] = owner
    attempt.set(claim_ref, {"email": key, "clerk_id": user_id, "claimed_at": firestore.SERVER_TIMESTAMP})
    return False


def _release_claim(attempt: Attempt, delivery: Delivery, _ids: Ids, stored: dict[str, Any] | None) -> None:
    """A deleted user's address is free for whoever Clerk gives it to next."""
    old_key = email_key(stored)
    if old_key is not None:
        attempt.delete(_claim(attempt.db, delivery.paths, old_key))


def _removal(settings: Any) -> Literal["delete", "strip"]:
    """ON_USER_DELETED: `delete` the document, or `keep-app-fields` (strip only what the sync wrote)."""
    return "delete" if settings.on_user_deleted == "delete" else "strip"


def _belongings(db: firestore.Client, paths: Paths, user_ids: Ids) -> list[Sweep]:
    """The user's billing, and its memberships in every organization (Clerk does not send a delete for each).

    The few billing documents go first: the sweep that can take long comes last, so the delivery that
    finishes it is the one that removed its last documents (`applied`, not `duplicate`).
    """
    user_id = user_ids["clerk_id"]
    query = db.collection_group(MEMBERSHIPS).where(filter=FieldFilter("user_id", "==", user_id))
    return [*billing.payer_sweeps(db, paths, "user", user_id), Sweep(query=query, ours=paths.is_membership)]


def blocked(document: dict[str, Any] | None) -> bool:
    """Whether Clerk keeps this user out: banned or deprovisioned. (A lockout ends no session: Clerk's
    `locked` only stops new sign-ins until it expires, and failed attempts, an attacker's too, set it.)"""
    return document is not None and (document.get("banned") is True or document.get("deprovisioned") is True)


def _auth_follow_ups(change: Upsert | Deletion, stored: dict[str, Any] | None) -> tuple[str, ...]:
    """A deletion, or a change of whether Clerk keeps the user out, reaches their Firebase Auth record."""
    if isinstance(change, Deletion) or blocked(change.document) != blocked(stored):
        return (AUTH_FOLLOW_UP,)
    return ()


def _access(db: firestore.Client, paths: Paths, user_id: str, deadline: float) -> str:
    """What the user's Auth record must be, from what Firestore holds now (after the commit)."""
    user_ref = db.collection(paths.users).document(user_id)
    tombstone_ref = db.collection(paths.user_tombstones).document(user_id)
    try:
        found = {
            snapshot.reference.path: snapshot
            for snapshot in db.get_all([user_ref, tombstone_ref], retry=NO_RETRY, timeout=remaining(deadline))
        }
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError, StoreUnavailable) as error:
        raise FollowUpFailed(f"firebase_auth: reading the user: {type(error).__name__}") from None
    if found[tombstone_ref.path].exists:
        return "deleted"
    user = found[user_ref.path]
    return "disabled" if blocked(user.to_dict() if user.exists else None) else "enabled"


def align_auth_user(db: firestore.Client, change: Any, delivery: Delivery, deadline: float) -> None:
    """The follow-up of a ban, unban, deprovisioning or deletion (events.FOLLOW_UPS; `change` is the
    user's Upsert or Deletion); raises FollowUpFailed (503: Svix's retry finds the event recorded and
    runs this again)."""
    if not delivery.settings.firebase_auth:
        return
    delivery.notes["firebase_auth"] = align_auth_record(db, delivery.settings, change.clerk_id, deadline)


def align_auth_record(db: firestore.Client, settings: Settings, user_id: str, deadline: float) -> str:
    """Make the user's Firebase Auth record follow what Firestore holds now; what it became
    (`enabled`, `disabled`, `deleted`). Raises FollowUpFailed.

    The state comes from Firestore, never from the event: deliveries of one user on several
    instances may commit in one order and reach Auth in another. So each round applies what
    Firestore holds, then reads again, and stops when nothing changed in between: the last call to
    reach Auth was then made after the last commit (any later commit makes a later call of its own).
    """
    from clerk_sync import firebase_auth  # noqa: PLC0415 (firebase-admin only for the events that need it)

    auth_deadline = deadline + AUTH_SECONDS_PAST_DEADLINE
    access = _access(db, settings.paths, user_id, auth_deadline)
    for _ in range(MAX_AUTH_ROUNDS):
        try:
            firebase_auth.set_user_access(user_id, access, settings.project_id, auth_deadline - time.monotonic())
        except firebase_auth.AuthFailed as failed:
            advice = ": grant the service account roles/firebaseauth.admin" if failed.reason == "denied" else ""
            raise FollowUpFailed(f"firebase_auth {failed.reason}{advice}") from None
        now = _access(db, settings.paths, user_id, auth_deadline)
        if now == access:
            return access
        access = now
    raise FollowUpFailed("firebase_auth: the user's state kept changing; the retry aligns it")


KIND = kind.Kind(
    family="user",
    synced_fields=SYNCED_FIELDS,
    reads=_claim_read,
    admit=_admit,
    on_removal=_release_claim,
    removal=_removal,
    sweeps=_belongings,
    extra_owned=(PENDING_FIELD,),
    follow_ups=_auth_follow_ups,
)
# Every field the function writes; any other field of a user document belongs to the app.
OWNED_FIELDS = KIND.owned_fields


def _user_data(data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise MalformedEvent("data is not an object")
    payload.clerk_id(data.get("id"), "data.id", "user")
    return data


def parse_upsert(event_type: str, envelope: dict[str, Any], body: bytes) -> Upsert:
    """The whole user document from a `user.created` / `user.updated` body."""
    data = _user_data(envelope.get("data"))
    payload.check_encodable(body, data)
    updated_at = payload.required_time(data, "updated_at")
    addresses = _entries(data, "email_addresses", "email_address")
    phones = _entries(data, "phone_numbers", "phone_number")
    primary_email = _primary(addresses, data, "primary_email_address_id")
    primary_phone = _primary(phones, data, "primary_phone_number_id")
    email = primary_email["email_address"] if primary_email else None
    verification = primary_email.get("verification") if primary_email else None
    document: dict[str, Any] = {
        "clerk_id": data["id"],
        "email": email,
        "email_verified": isinstance(verification, dict) and verification.get("status") == "verified",
        "email_addresses": [entry["email_address"] for entry in addresses],
        "phone_number": primary_phone["phone_number"] if primary_phone else None,
        "username": payload.optional_str(data, "username"),
        "first_name": payload.optional_str(data, "first_name"),
        "last_name": payload.optional_str(data, "last_name"),
        "image_url": payload.optional_str(data, "image_url"),
        "external_id": payload.optional_str(data, "external_id"),
        "public_metadata": payload.metadata(data, "public_metadata"),
        "unsafe_metadata": payload.metadata(data, "unsafe_metadata"),
        "banned": payload.flag(data, "banned"),
        "locked": payload.flag(data, "locked"),
        "deprovisioned": payload.flag(data, "deprovisioned"),
        "created_at": payload.optional_time(data, "created_at"),
        "updated_at": updated_at,
        "last_sign_in_at": payload.optional_time(data, "last_sign_in_at"),
    }
    # The email is kept twice (email and email_addresses), so a body under 1 MiB can exceed it.
    payload.check_document_size(document, "user", len(body))
    return kind.parsed_upsert(KIND, event_type, {"clerk_id": data["id"]}, document, updated_at)


def parse_deletion(event_type: str, envelope: dict[str, Any], body: bytes) -> Deletion:
    """`user.deleted` carries only the id; its time is informational and never fails the event."""
    data = _user_data(envelope.get("data"))
    return Deletion(KIND, event_type, {"clerk_id": data["id"]}, payload.lenient_time(envelope.get("timestamp")))


def _entries(data: dict[str, Any], field: str, value_field: str) -> list[dict[str, Any]]:
    entries = data.get(field)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise MalformedEvent(f"data.{field} is not a list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get(value_field), str):
            raise MalformedEvent(f"data.{field} has an entry without {value_field}")
    return entries


def _primary(entries: list[dict[str, Any]], data: dict[str, Any], id_field: str) -> dict[str, Any] | None:
    """The entry Clerk marks primary by id; `entries[0]` is not necessarily it."""
    primary_id = data.get(id_field)
    if primary_id is None:
        return None
    if not isinstance(primary_id, str):
        raise MalformedEvent(f"data.{id_field} is not a string")
    return next((entry for entry in entries if entry.get("id") == primary_id), None)
