"""`check [--repair] [--json]`: whether Firestore holds what the transactions promise, named by ids only.

What is checked, from one paged pass over each collection (only the fields needed):
  1. every live user with an email holds its claim, and every claim's owner still holds that address;
  2. no two live users share an address;
  3. no user, organization or membership document under its tombstone (a user document that
     `ON_USER_DELETED=keep-app-fields` left, with only the app's fields and `clerk_deleted_at`, is legal);
  4. no membership of a deleted organization or user (one whose organization or user was never
     synced is fine: order is not guaranteed);
  5. every synced field of its declared type (clerk_sync/documents.py, the one declaration the writers,
     the docs and the TypeScript client share), and the ids inside a document equal to its path's;
  6. with SYNC_FIREBASE_AUTH on: no banned or deprovisioned user whose Firebase Auth user is enabled,
     and no deleted user who still has one (a call the webhook could not make, and Svix gave up on).
  7. no billing (subscription, payments) of a deleted user or organization, none under its own
     tombstone, and a subscription's `active_plans` / `active_features` what its items grant.

A document with none of the function's fields is the app's (say, written before its user arrived) and
is not type-checked. Claim document ids are email addresses, so a claim is named by its owner and
`sha256:` + the first 12 hex digits of the SHA-256 of its id; no address is ever printed.

`--repair` fixes what the transactions can: a deleted user's or organization's leftovers (synced
fields under its tombstone, memberships) go by applying its deletion again (a synthesised
`user.deleted` / `organization.deleted` under `check_repair_...`: the shared deletion body removes
a synced copy under its own tombstone, per `ON_USER_DELETED`, and the sweep takes the memberships);
a membership under its tombstone by a synthesised `organizationMembership.deleted`; a Firebase Auth
user is disabled or deleted as the webhook does it, from what Firestore holds; a subscription or
payment under its tombstone by its kind's deletion; a subscription's derived fields are recomputed
from its items, in a transaction that re-reads them; a stale claim is
deleted, and a missing one created, each in a transaction that re-reads what the check saw. A repair
can make another fixable (a deleted user's claim released lets a live user take it), so repairs run
again, up to three rounds, while a round fixes something. The rest (two users with one address,
the app's fields under a tombstone, wrong types) needs Clerk's data or a hand: each is reported with
what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from google.api_core import exceptions as api_exceptions
from google.cloud import firestore

from clerk_sync import (
    billing,
    config,
    documents,
    events,
    firebase_auth,
    ids,
    kind,
    memberships,
    organizations,
    payments,
    subscriptions,
    transaction,
    users,
)
from clerk_sync.delivery import Delivery
from clerk_sync.outcome import FollowUpFailed, StoreUnavailable
from clerk_sync.paths import MEMBERSHIPS, Paths
from clerk_sync.payload import MalformedEvent
from clerk_sync.transaction import NO_RETRY, Attempt
from tools.common import ToolError

__all__ = ["PAGE_SIZE", "Fix", "Report", "Violation", "claim_name", "repair", "repair_rounds", "run", "scan"]

# Documents per query page, each page one call bounded by --timeout. The emulator scans the whole
# collection for every page, so fewer, bigger pages are faster there; 2,500 stream well inside 10 s.
PAGE_SIZE = 2500
# Collections read at once: Firestore serves them in parallel, the decoding here overlaps the waits.
READERS = 4
REPAIR_ATTEMPTS = 3
REPAIR_ROUNDS = 3
HASH_DIGITS = 12
CLAIM_NAMES = (
    "claims are named by owner and sha256:<first 12 hex digits of the SHA-256 of the claim's document id>, "
    "because claim ids are email addresses"
)
# What to do about what --repair cannot fix (printed once per kind found). `reconcile` rewrites a
# document only when its updated_at or sync_digest differs from Clerk's, and a deletion under a
# tombstone is stale, so neither it nor the webhook undoes an edit made in place.
ADVICE = {
    "email_shared": "Clerk says which user holds the address: correct the other's document by hand, or change "
    "that user in Clerk (a fresh user.updated); then check --repair puts the claims right",
    "claim_blocked": "a document under its tombstone that names no Clerk id still holds the address: remove its "
    "email by hand; the live user's next event (or check --repair) then takes the claim",
    "app_fields_under_tombstone": "the app wrote this document after its object was deleted: the app's to remove",
    "wrong_type": "a fresh update from Clerk rewrites the document (change the object in Clerk), or correct the "
    "field by hand; reconcile skips documents whose updated_at and sync_digest match Clerk's",
}
TOMBSTONES = ("user_tombstones", "organization_tombstones", "membership_tombstones", "billing_tombstones")
BILLING_KINDS = {kind.family: kind for kind in (subscriptions.KIND, payments.KIND)}


@dataclass(frozen=True)
class Fix:
    """What `--repair` does about a violation; `ids` may hold a claim id (an email): never printed."""

    action: str
    # For delete_claim: (claim id, owner), the owner "" when the claim names no readable one.
    ids: tuple[str, ...] = field(repr=False)


@dataclass(frozen=True)
class Violation:
    """One broken promise: `subject` and `detail` hold paths and Clerk ids, never personal data."""

    kind: str
    subject: str
    detail: str
    fix: Fix | None = field(default=None, compare=False)
    advice: str = field(default="", compare=False)  # an ADVICE key when there is no fix

    def __post_init__(self) -> None:
        """Every violation either has a fix or says what to do instead."""
        if (self.fix is None) == (self.advice == ""):
            raise ValueError("a violation has a fix or advice, not both or neither")

    def line(self) -> str:
        """The violation as printed: kind, subject, detail, and what --repair would do."""
        note = f"--repair: {REPAIR_VERBS[self.fix.action]}" if self.fix else f"not fixable here: {self.advice}"
        return f"{self.kind:<34} {self.subject}: {self.detail} [{note}]"

    def as_json(self) -> dict[str, Any]:
        """The violation for --json."""
        return {
            "kind": self.kind,
            "subject": self.subject,
            "detail": self.detail,
            "fixable": self.fix is not None,
            **({"advice": ADVICE[self.advice]} if self.advice else {}),
        }


@dataclass(frozen=True)
class Report:
    """What one pass found: documents read per collection, the violations, how long it took."""

    checked: dict[str, int]
    violations: list[Violation]
    seconds: float

    @property
    def ok(self) -> bool:
        """Whether every promise holds."""
        return not self.violations

    def as_json(self) -> dict[str, Any]:
        """The report for --json."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "seconds": round(self.seconds, 3),
            "violations": [violation.as_json() for violation in self.violations],
            "by_kind": dict(sorted(Counter(violation.kind for violation in self.violations).items())),
        }


@dataclass(frozen=True)
class Repair:
    """What one repair did (or why it did nothing), ids only."""

    action: str
    subject: str
    result: str
    done: bool

    def as_json(self) -> dict[str, Any]:
        """The repair for --json."""
        return dataclasses.asdict(self)


REPAIR_VERBS = {
    "align_auth_user": "disable or delete the Firebase Auth user, as Firestore says",
    "sweep_organization": "re-apply the organization's deletion (its synced fields, its memberships, its billing)",
    "sweep_user": "re-apply the user's deletion (its synced fields, its claim, its memberships, its billing)",
    "delete_membership": "apply organizationMembership.deleted",
    "delete_claim": "delete the claim",
    "create_claim": "create the claim",
    "delete_billing": "apply the subscription's or payment's deletion",
    "rederive_subscription": "recompute active_plans and active_features from the items",
}
# Sweeps first (they may remove what a membership deletion would), stale claims before new ones.
REPAIR_ORDER = tuple(REPAIR_VERBS)


def claim_name(claim_id: str) -> str:
    """A claim's printable name: its id is an email address, its hash is not."""
    return f"sha256:{hashlib.sha256(claim_id.encode()).hexdigest()[:HASH_DIGITS]}"


def _claim_id(document: dict[str, Any] | None) -> str | None:
    """The claim document id the function uses for this user document's primary email, if any."""
    email = (document or {}).get("email")
    key = users.normalise_email(email) if isinstance(email, str) else None
    return ids.document_id(key) if key else None


@dataclass
class Snapshot:
    """Everything one pass read: documents by id (only the selected fields), tombstone ids."""

    users: dict[str, dict[str, Any]]
    claims: dict[str, object]  # claim id -> its `clerk_id` field as stored
    organizations: dict[str, dict[str, Any]]
    memberships: list[tuple[str, str, dict[str, Any]]]  # (organization id, user id, fields)
    tombstones: dict[str, set[str]]
    auth_disabled: dict[str, bool] | None = None  # uid -> disabled, of the users 6 looks up (None: not checked)
    subscriptions: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (payer type, id, fields)
    payments: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)  # (payer type, id, payment)


def _pages(query: firestore.Query, read_time: datetime, timeout: float) -> Iterator[firestore.DocumentSnapshot[Any]]:
    """Every document the query finds as of `read_time`, one bounded call per page (by name, resumed after the last)."""
    last: firestore.DocumentSnapshot[Any] | None = None
    while True:
        page = query.order_by("__name__").limit(PAGE_SIZE)
        if last is not None:
            page = page.start_after(last)
        found = list(page.stream(retry=NO_RETRY, timeout=timeout, read_time=read_time))
        yield from found
        if len(found) < PAGE_SIZE:
            return
        last = found[-1]


def _read(db: firestore.Client, paths: Paths, timeout: float) -> Snapshot:
    """One paged pass over every collection the checks need, several at once, all as of one instant.

    Reading every page at the same `read_time` (the server's, taken first) makes the pass one
    consistent snapshot: a delivery that moves an address between the users and the claims pass
    cannot show up as a violation. Firestore keeps past versions for an hour, so a pass must end
    within it.
    """
    user_fields = [*users.OWNED_FIELDS, users.DELETED_AT_FIELD]

    def documents(query: firestore.Query) -> dict[str, dict[str, Any]]:
        """Users or organizations by id: their fields decide types, tombstones and claims."""
        return {document.id: document.to_dict() or {} for document in _pages(query, read_time, timeout)}

    def claims() -> dict[str, object]:
        """Only each claim's owner: the id is the address's key, the rest is not needed."""
        query = db.collection(paths.claims).select(["clerk_id"])
        return {
            document.id: (document.to_dict() or {}).get("clerk_id") for document in _pages(query, read_time, timeout)
        }

    def members() -> list[tuple[str, str, dict[str, Any]]]:
        """Every memberships document of ours (another deployment's organizations share the group id)."""
        query = db.collection_group(MEMBERSHIPS).select(list(memberships.OWNED_FIELDS))
        found = []
        for document in _pages(query, read_time, timeout):
            if paths.is_membership(document.reference.path):
                organization = document.reference.parent.parent
                assert organization is not None  # a membership's parent is an organization document
                found.append((organization.id, document.id, document.to_dict() or {}))
        return found

    def subscriptions_of_payers() -> list[tuple[str, str, dict[str, Any]]]:
        """Every payer's subscription document of ours (the `billing` group id is anybody's)."""
        query = db.collection_group(billing.BILLING).select(list(subscriptions.OWNED_FIELDS))
        found = []
        for document in _pages(query, read_time, timeout):
            owner = billing.payer_of(paths, document.reference.path, 1)
            if owner is not None:
                found.append((owner[0], owner[1], document.to_dict() or {}))
        return found

    def payments_of_payers() -> list[tuple[str, str, str, dict[str, Any]]]:
        """Every payment document of ours."""
        query = db.collection_group(billing.PAYMENTS).select(list(payments.OWNED_FIELDS))
        found = []
        for document in _pages(query, read_time, timeout):
            owner = billing.payer_of(paths, document.reference.path, 3)
            if owner is not None and owner[2][1] == billing.PAYMENTS:
                found.append((owner[0], owner[1], document.id, document.to_dict() or {}))
        return found

    def ids_of(collection: str) -> set[str]:
        """A tombstone's id is all that matters about it."""
        return {document.id for document in _pages(db.collection(collection).select([]), read_time, timeout)}

    tombstone_paths = (
        paths.user_tombstones,
        paths.organization_tombstones,
        paths.membership_tombstones,
        paths.billing_tombstones,
    )
    try:
        # Any document's read answers with the server's time, even a document that does not exist.
        probe = db.collection(paths.state).document("check").get(field_paths=[], retry=NO_RETRY, timeout=timeout)
        read_time = probe.read_time
        with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="check") as readers:
            user_documents = readers.submit(documents, db.collection(paths.users).select(user_fields))
            claim_owners = readers.submit(claims)
            organization_documents = readers.submit(
                documents, db.collection(paths.organizations).select(list(organizations.OWNED_FIELDS))
            )
            member_documents = readers.submit(members)
            subscription_documents = readers.submit(subscriptions_of_payers)
            payment_documents = readers.submit(payments_of_payers)
            tombstones = {
                name: readers.submit(ids_of, path) for name, path in zip(TOMBSTONES, tombstone_paths, strict=True)
            }
            return Snapshot(
                users=user_documents.result(),
                claims=claim_owners.result(),
                organizations=organization_documents.result(),
                memberships=member_documents.result(),
                tombstones={name: future.result() for name, future in tombstones.items()},
                subscriptions=subscription_documents.result(),
                payments=payment_documents.result(),
            )
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError) as error:
        raise ToolError(f"Firestore did not answer in time or refused ({type(error).__name__}: {error})") from None


def _owned(data: dict[str, Any], owned: Sequence[str]) -> bool:
    """Whether the function wrote this document (the app's own documents are not its to check)."""
    return any(name in data for name in owned)


def _check_claims(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promise 1, from the claims' side: every claim's owner still holds its address."""
    claim_of = {user_id: _claim_id(data) for user_id, data in found.users.items()}
    for claim_id, owner in found.claims.items():
        owner_id = owner if isinstance(owner, str) and ids.is_clerk_id(owner) else ""
        if not owner_id:
            why = "its clerk_id is not a Clerk user id"
        elif owner_id not in found.users:
            why = f"{paths.users}/{owner_id} does not exist"
        elif claim_of[owner_id] != claim_id:
            why = f"{paths.users}/{owner_id} no longer holds this address"
        else:
            continue
        yield Violation(
            "claim_stale",
            f"{paths.claims}[{claim_name(claim_id)}] (owner {owner_id or '-'})",
            why,
            Fix("delete_claim", (claim_id, owner_id)),
        )


def _check_holders(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promises 1 and 2, from the users' side: each live address held by one user, who owns its claim."""
    dead = found.tombstones["user_tombstones"]
    claim_of = {user_id: _claim_id(data) for user_id, data in found.users.items()}
    holders: dict[str, list[str]] = defaultdict(list)
    for user_id, claim_id in claim_of.items():
        if claim_id is not None and user_id not in dead:
            holders[claim_id].append(user_id)
    for claim_id, holding in holders.items():
        owner = found.claims.get(claim_id)
        name = f"{paths.claims}[{claim_name(claim_id)}]"
        if len(holding) > 1:
            owned_by = f"owner {owner}" if owner in holding else "no owner among them"
            yield Violation(
                "email_shared",
                ", ".join(f"{paths.users}/{user_id}" for user_id in sorted(holding)),
                f"hold the same address ({name}, {owned_by})",
                advice="email_shared",
            )
            continue
        (user_id,) = holding
        if owner == user_id:
            continue
        subject = f"{paths.users}/{user_id}"
        if owner is None and claim_id not in found.claims:
            yield Violation(
                "claim_missing",
                subject,
                f"holds an address without its claim {name}",
                Fix("create_claim", (claim_id, user_id)),
            )
        elif isinstance(owner, str) and claim_of.get(owner) == claim_id:
            # Only a document under its tombstone can still hold it (live holders are counted above).
            yield Violation(
                "claim_missing",
                subject,
                f"its claim {name} belongs to {paths.users}/{owner}, under its tombstone",
                advice="claim_blocked",
            )
        else:
            yield Violation(
                "claim_missing",
                subject,
                f"its claim {name} names another owner (or none) who no longer holds it",
                Fix("create_claim", (claim_id, user_id)),
            )


def _check_users(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promises 3 and 5 for users: nothing synced under a tombstone, every synced field typed."""
    dead = found.tombstones["user_tombstones"]
    for user_id, data in sorted(found.users.items()):
        subject = f"{paths.users}/{user_id}"
        if user_id in dead:
            if _owned(data, users.OWNED_FIELDS):
                # A deleted user's personal data: Clerk never reuses ids, so it is always wrong.
                yield Violation(
                    "user_under_tombstone",
                    subject,
                    f"synced fields under {paths.user_tombstones}/{user_id}",
                    Fix("sweep_user", (user_id,)),
                )
            elif users.DELETED_AT_FIELD not in data:
                yield Violation(
                    "user_under_tombstone",
                    subject,
                    f"under {paths.user_tombstones}/{user_id} without {users.DELETED_AT_FIELD}, only the app's fields",
                    advice="app_fields_under_tombstone",
                )
        elif _owned(data, users.OWNED_FIELDS):
            problems = documents.USER.problems(data, {"clerk_id": user_id})
            if problems:
                yield Violation("wrong_type", subject, "; ".join(problems), advice="wrong_type")


def _check_organizations(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promises 3 and 5 for organizations."""
    dead = found.tombstones["organization_tombstones"]
    for organization_id, data in sorted(found.organizations.items()):
        subject = f"{paths.organizations}/{organization_id}"
        if organization_id in dead:
            owned = _owned(data, organizations.OWNED_FIELDS)
            yield Violation(
                "organization_under_tombstone",
                subject,
                f"{'synced' if owned else 'only the app' + chr(39) + 's'} fields "
                f"under {paths.organization_tombstones}/{organization_id}",
                Fix("sweep_organization", (organization_id,)) if owned else None,
                advice="" if owned else "app_fields_under_tombstone",
            )
        elif _owned(data, organizations.OWNED_FIELDS):
            problems = documents.ORGANIZATION.problems(data, {"clerk_id": organization_id})
            if problems:
                yield Violation("wrong_type", subject, "; ".join(problems), advice="wrong_type")


def _check_memberships(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promises 3, 4 and 5 for memberships: none left of a deleted membership, organization or user."""
    dead_organizations = found.tombstones["organization_tombstones"]
    dead_users = found.tombstones["user_tombstones"]
    dead_memberships = found.tombstones["membership_tombstones"]
    for organization_id, user_id, data in sorted(found.memberships, key=lambda member: member[:2]):
        subject = f"{paths.memberships(organization_id)}/{user_id}"
        # One sweep removes every leftover of a deleted user or organization, tombstoned memberships too.
        sweep = None
        if user_id in dead_users:
            sweep = Fix("sweep_user", (user_id,))
            yield Violation("membership_of_deleted_user", subject, f"under {paths.user_tombstones}/{user_id}", sweep)
        if organization_id in dead_organizations:
            sweep = Fix("sweep_organization", (organization_id,))
            yield Violation(
                "membership_of_deleted_organization",
                subject,
                f"under {paths.organization_tombstones}/{organization_id}",
                sweep,
            )
        membership_id = data.get("membership_id")
        if isinstance(membership_id, str) and membership_id in dead_memberships:
            fix = sweep or Fix("delete_membership", (membership_id, organization_id, user_id))
            yield Violation(
                "membership_under_tombstone",
                subject,
                f"holds {membership_id}, under {paths.membership_tombstones}/{membership_id}",
                fix,
            )
        elif sweep is None and _owned(data, memberships.OWNED_FIELDS):
            same_as = {"user_id": user_id, "organization_id": organization_id}
            problems = documents.MEMBERSHIP.problems(data, same_as)
            if problems:
                yield Violation("wrong_type", subject, "; ".join(problems), advice="wrong_type")


def _auth_candidates(found: Snapshot) -> list[str]:
    """The users whose Firebase Auth record must not be enabled: blocked ones, and deleted ones."""
    dead = found.tombstones["user_tombstones"]
    blocked = [user_id for user_id, data in found.users.items() if user_id not in dead and users.blocked(data)]
    return sorted({*blocked, *dead})


def _read_auth(found: Snapshot, project: str | None, timeout: float) -> dict[str, bool]:
    """The Firebase Auth records of the candidates (100 per call); raises ToolError when Auth fails."""
    try:
        return firebase_auth.disabled_states(_auth_candidates(found), project, timeout)
    except firebase_auth.AuthFailed as failed:
        advice = " (grant roles/firebaseauth.admin to who runs this)" if failed.reason == "denied" else ""
        raise ToolError(f"Firebase Auth did not answer: {failed.reason}{advice}") from None


def _check_auth(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promise 6: Clerk's bans, deprovisioning and deletions reached the users' Firebase Auth records."""
    if found.auth_disabled is None:
        return
    dead = found.tombstones["user_tombstones"]
    for user_id in _auth_candidates(found):
        if user_id not in found.auth_disabled:
            continue  # never signed in to Firebase, or deleted there: nothing to end
        fix = Fix("align_auth_user", (user_id,))
        if user_id in dead:
            state = "disabled" if found.auth_disabled[user_id] else "enabled"
            detail = f"deleted ({paths.user_tombstones}/{user_id}), but its Firebase Auth user remains ({state})"
            yield Violation("auth_user_of_deleted_user", f"{paths.users}/{user_id}", detail, fix)
        elif not found.auth_disabled[user_id]:
            flags = [name for name in ("banned", "deprovisioned") if found.users[user_id].get(name) is True]
            detail = f"{' and '.join(flags)}, but its Firebase Auth user is enabled"
            yield Violation("auth_user_enabled", f"{paths.users}/{user_id}", detail, fix)


def _payer_gone(found: Snapshot, paths: Paths, payer_type: str, payer_id: str, subject: str) -> Violation | None:
    """Billing of a deleted payer: the payer's deletion again sweeps it."""
    if payer_type == "user" and payer_id in found.tombstones["user_tombstones"]:
        return Violation("billing_of_deleted_user", subject, f"under {paths.user_tombstones}/{payer_id}",
                         Fix("sweep_user", (payer_id,)))  # fmt: skip
    if payer_type == "organization" and payer_id in found.tombstones["organization_tombstones"]:
        return Violation("billing_of_deleted_organization", subject,
                         f"under {paths.organization_tombstones}/{payer_id}",
                         Fix("sweep_organization", (payer_id,)))  # fmt: skip
    return None


def _check_billing(found: Snapshot, paths: Paths) -> Iterator[Violation]:
    """Promise 6: billing only of live payers, none under its tombstone, typed, its derived fields right."""
    dead = found.tombstones["billing_tombstones"]
    for payer_type, payer_id, data in sorted(found.subscriptions, key=lambda found: found[:2]):
        subject = f"{billing.billing_collection(paths, payer_type, payer_id)}/{billing.SUBSCRIPTION}"
        gone = _payer_gone(found, paths, payer_type, payer_id, subject)
        if gone is not None:
            yield gone
            continue
        if not _owned(data, subscriptions.OWNED_FIELDS):
            continue
        subscription_id = data.get("subscription_id")
        if isinstance(subscription_id, str) and subscription_id in dead:
            fix = Fix("delete_billing", ("subscription", subscription_id, payer_type, payer_id))
            yield Violation(
                "billing_under_tombstone", subject, f"under {paths.billing_tombstones}/{subscription_id}", fix
            )
            continue
        same_as = {"payer_type": payer_type, "payer_id": payer_id}
        problems = documents.SUBSCRIPTION.problems(data, same_as)  # its items too, each field by field
        items = data.get(subscriptions.ITEMS)
        if problems:
            yield Violation("wrong_type", subject, "; ".join(problems), advice="wrong_type")
            continue
        expected = subscriptions.derived(items) if isinstance(items, dict) else {}
        stale = sorted(name for name, value in expected.items() if data.get(name) != value)
        if stale:
            yield Violation("billing_derived_stale", subject, f"{' and '.join(stale)} differ from what its items grant",
                            Fix("rederive_subscription", (payer_type, payer_id)))  # fmt: skip
    for payer_type, payer_id, payment_id, data in sorted(found.payments, key=lambda found: found[:3]):
        subject = f"{billing.payments_collection(paths, payer_type, payer_id)}/{payment_id}"
        gone = _payer_gone(found, paths, payer_type, payer_id, subject)
        if gone is not None:
            yield gone
        elif payment_id in dead and _owned(data, payments.OWNED_FIELDS):
            fix = Fix("delete_billing", ("paymentAttempt", payment_id, payer_type, payer_id))
            yield Violation("billing_under_tombstone", subject, f"under {paths.billing_tombstones}/{payment_id}", fix)
        elif _owned(data, payments.OWNED_FIELDS):
            same_as = {"payment_id": payment_id, "payer_type": payer_type, "payer_id": payer_id}
            problems = documents.PAYMENT.problems(data, same_as)
            if problems:
                yield Violation("wrong_type", subject, "; ".join(problems), advice="wrong_type")


def scan(
    db: firestore.Client, paths: Paths, *, timeout: float, auth: bool = False, project: str | None = None
) -> Report:
    """Read everything once and check every promise (6 only with `auth`, against `project`'s Firebase
    Auth); raises ToolError when Firestore or Auth fails."""
    started = time.monotonic()
    found = _read(db, paths, timeout)
    if auth:
        found.auth_disabled = _read_auth(found, project, timeout)
    violations = [
        *_check_claims(found, paths),
        *_check_holders(found, paths),
        *_check_users(found, paths),
        *_check_organizations(found, paths),
        *_check_memberships(found, paths),
        *_check_auth(found, paths),
        *_check_billing(found, paths),
    ]
    checked = {
        "users": len(found.users),
        "email_claims": len(found.claims),
        "organizations": len(found.organizations),
        "memberships": len(found.memberships),
        "subscriptions": len(found.subscriptions),
        "payments": len(found.payments),
        **{name: len(found.tombstones[name]) for name in TOMBSTONES},
        **({"firebase_auth_users": len(_auth_candidates(found))} if found.auth_disabled is not None else {}),
    }
    return Report(checked=checked, violations=violations, seconds=time.monotonic() - started)


def _synthesised(event_type: str, data: dict[str, Any]) -> events.Change:
    """A deletion event as Clerk would send it, parsed by the function's own parser."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    body = json.dumps({"object": "event", "type": event_type, "timestamp": now_ms, "data": data}).encode()
    change = events.parse_event(body)
    assert not isinstance(change, events.IgnoredEvent)
    return change


def _apply(db: firestore.Client, settings: config.Settings, change: events.Change, message_id: str) -> str:
    """Apply a synthesised event like a delivery, retried like Svix would on 503 (a redelivery sweeps on)."""
    attempt = 1
    while True:
        delivery = Delivery(message_id=message_id, settings=settings)
        try:
            outcome = events.apply_event(db, change, delivery)
            break
        except StoreUnavailable:
            if attempt == REPAIR_ATTEMPTS:
                raise
            attempt += 1
    swept = f", {delivery.notes.get('swept', 0)} swept" if change.sweeps(db, settings.paths) else ""
    return f"{message_id}: {outcome}{swept}"


def _delete_stale_claim(attempt: Attempt, paths: Paths, claim_id: str, owner: str) -> str:
    """Delete the claim only if it still names `owner` and the owner's document still lacks the address."""
    db = attempt.db
    claim_ref = db.collection(paths.claims).document(claim_id)
    owner_ref = db.collection(paths.users).document(owner) if owner else None
    read = attempt.read([claim_ref, *([owner_ref] if owner_ref else [])])
    claim = read[claim_ref.path]
    if not claim.exists:
        return "already gone"
    current = (claim.to_dict() or {}).get("clerk_id")
    if (current != owner) if owner else ids.is_clerk_id(current):
        return "left alone: its owner changed since the check"
    if owner_ref is not None:
        owner_document = read[owner_ref.path]
        if _claim_id(owner_document.to_dict() if owner_document.exists else None) == claim_id:
            return "left alone: its owner holds the address again"
    attempt.delete(claim_ref)
    return "deleted"


def _create_claim(attempt: Attempt, paths: Paths, claim_id: str, user_id: str) -> str:
    """Claim the address for the user only if nobody claimed it meanwhile and the user still holds it."""
    db = attempt.db
    claim_ref = db.collection(paths.claims).document(claim_id)
    user_ref = db.collection(paths.users).document(user_id)
    tombstone_ref = db.collection(paths.user_tombstones).document(user_id)
    read = attempt.read([claim_ref, user_ref, tombstone_ref])
    if read[claim_ref.path].exists:
        return "left alone: claimed since the check"
    user = read[user_ref.path].to_dict() if read[user_ref.path].exists else None
    if read[tombstone_ref.path].exists or _claim_id(user) != claim_id:
        return "left alone: the user changed since the check"
    assert user is not None
    key = users.normalise_email(user["email"])
    attempt.set(claim_ref, {"email": key, "clerk_id": user_id, "claimed_at": firestore.SERVER_TIMESTAMP})
    return "created"


def _rederive(attempt: Attempt, paths: Paths, payer_type: str, payer_id: str) -> str:
    """Recompute the derived fields from the items as they are now (a delivery may have changed them)."""
    reference = attempt.db.collection(billing.billing_collection(paths, payer_type, payer_id)).document(
        billing.SUBSCRIPTION
    )
    snapshot = attempt.read([reference])[reference.path]
    items = (snapshot.to_dict() or {}).get(subscriptions.ITEMS) if snapshot.exists else None
    if not isinstance(items, dict):
        return "left alone: no items there any more"
    derived = subscriptions.derived(items)
    if {name: (snapshot.to_dict() or {}).get(name) for name in derived} == derived:
        return "left alone: already what its items grant"
    attempt.set(reference, derived, merge=list(derived))
    return "recomputed"


def _billing_ids(fix: Fix) -> tuple[kind.Kind, dict[str, str]]:
    family, clerk_id, payer_type, payer_id = fix.ids
    billing_kind = BILLING_KINDS[family]
    return billing_kind, {billing_kind.id_field: clerk_id, "payer_type": payer_type, "payer_id": payer_id}


def _billing_subject(db: firestore.Client, paths: Paths, fix: Fix) -> str:
    if fix.action == "delete_billing":
        billing_kind, billing_ids = _billing_ids(fix)
        return str(billing_kind.document(db, paths, billing_ids).path)
    payer_type, payer_id = fix.ids
    return f"{billing.billing_collection(paths, payer_type, payer_id)}/{billing.SUBSCRIPTION}"


def _repair_billing(db: firestore.Client, settings: config.Settings, fix: Fix, timeout: float, run_id: str) -> str:
    """A subscription or payment under its tombstone: its deletion; stale derived fields: recomputed."""
    if fix.action == "delete_billing":
        billing_kind, billing_ids = _billing_ids(fix)
        deletion = kind.Deletion(billing_kind, billing_kind.deletion_type, billing_ids, None)
        return _apply(db, settings, deletion, f"check_repair_{run_id}_billing_{billing_ids[billing_kind.id_field]}")
    payer_type, payer_id = fix.ids
    paths = settings.paths
    return transaction.run(
        db, time.monotonic() + timeout, lambda attempt: _rederive(attempt, paths, payer_type, payer_id)
    )


def _repair_one(db: firestore.Client, settings: config.Settings, fix: Fix, timeout: float, run_id: str) -> Repair:
    """Carry out one fix; ids only in what it returns.

    Each run's repairs have message ids of their own: a repeated repair is applied again, not
    answered `duplicate` by the record an earlier run left.
    """
    paths = settings.paths
    subject: str
    try:
        if fix.action == "align_auth_user":
            (user_id,) = fix.ids
            subject = f"{paths.users}/{user_id}"
            result = users.align_auth_record(db, settings, user_id, time.monotonic() + timeout)
            result = f"Firebase Auth user {result}"
        elif fix.action == "sweep_organization":
            (organization_id,) = fix.ids
            subject = f"{paths.organizations}/{organization_id}"
            change = _synthesised(
                "organization.deleted", {"object": "organization", "id": organization_id, "deleted": True}
            )
            result = _apply(db, settings, change, f"check_repair_{run_id}_organization_{organization_id}")
        elif fix.action == "sweep_user":
            (user_id,) = fix.ids
            subject = f"{paths.users}/{user_id}"
            change = _synthesised("user.deleted", {"object": "user", "id": user_id, "deleted": True})
            result = _apply(db, settings, change, f"check_repair_{run_id}_user_{user_id}")
        elif fix.action == "delete_membership":
            membership_id, organization_id, user_id = fix.ids
            subject = f"{paths.memberships(organization_id)}/{user_id}"
            data = {
                "object": "organization_membership",
                "id": membership_id,
                "organization": {"id": organization_id},
                "public_user_data": {"user_id": user_id},
            }
            change = _synthesised("organizationMembership.deleted", data)
            result = _apply(db, settings, change, f"check_repair_{run_id}_membership_{membership_id}")
        elif fix.action in {"delete_billing", "rederive_subscription"}:
            subject = _billing_subject(db, paths, fix)
            result = _repair_billing(db, settings, fix, timeout, run_id)
        elif fix.action == "delete_claim":
            claim_id, owner = fix.ids
            subject = f"{paths.claims}[{claim_name(claim_id)}] (owner {owner or '-'})"
            deadline = time.monotonic() + timeout
            result = transaction.run(db, deadline, lambda attempt: _delete_stale_claim(attempt, paths, claim_id, owner))
        else:
            claim_id, user_id = fix.ids
            subject = f"{paths.users}/{user_id} -> {paths.claims}[{claim_name(claim_id)}]"
            deadline = time.monotonic() + timeout
            result = transaction.run(db, deadline, lambda attempt: _create_claim(attempt, paths, claim_id, user_id))
    except MalformedEvent as problem:  # an id the function's parser refuses (a hand-made document)
        return Repair(fix.action, subject, f"not repaired: {problem}", done=False)
    except FollowUpFailed as problem:  # a Firebase Auth call, after what Firestore needed was done
        return Repair(fix.action, subject, f"not repaired: {problem}; run again", done=False)
    except StoreUnavailable as problem:
        return Repair(fix.action, subject, f"not repaired: Firestore unavailable ({problem}); run again", done=False)
    done = not result.startswith("left alone")
    return Repair(fix.action, subject, result, done=done)


def repair(
    db: firestore.Client, settings: config.Settings, report: Report, *, timeout: float, run_id: str | None = None
) -> list[Repair]:
    """Apply each distinct fix once, in REPAIR_ORDER (no unfixable violation listed)."""
    run_id = run_id or uuid.uuid4().hex[:8]
    fixes = list(dict.fromkeys(violation.fix for violation in report.violations if violation.fix is not None))
    fixes.sort(key=lambda fix: REPAIR_ORDER.index(fix.action))
    # A repair's deadline is the tool's --timeout, not the webhook's 8 s budget: nobody waits on it.
    repair_settings = dataclasses.replace(settings, firestore_deadline_seconds=timeout)
    return [_repair_one(db, repair_settings, fix, timeout, run_id) for fix in fixes]


def _unfixable(report: Report) -> list[Repair]:
    """What --repair leaves for a person, as lines of the repair list."""
    return [
        Repair("none", violation.subject, f"{violation.kind}: {violation.detail}", done=False)
        for violation in report.violations
        if violation.fix is None
    ]


def repair_rounds(
    db: firestore.Client, settings: config.Settings, report: Report, *, timeout: float
) -> tuple[list[Repair], Report]:
    """Repair, check again, and repeat while a round fixed something and fixable violations remain."""
    run_id = uuid.uuid4().hex[:8]
    repairs: list[Repair] = []
    after = report
    for _ in range(REPAIR_ROUNDS):
        if not any(violation.fix is not None for violation in after.violations):
            break
        done = repair(db, settings, after, timeout=timeout, run_id=run_id)
        repairs += done
        after = scan(db, settings.paths, timeout=timeout, auth=settings.firebase_auth, project=settings.project_id)
        if not any(repaired.done for repaired in done):
            break
    return repairs + _unfixable(after), after


def _write_report(out: TextIO, report: Report, paths: Paths) -> None:
    """What was read, one line per violation, and a summary an operator can act on."""
    checked = report.checked
    out.write(
        f"checked {checked['users']} users ({paths.users}), {checked['email_claims']} email claims, "
        f"{checked['organizations']} organizations ({paths.organizations}), {checked['memberships']} memberships, "
        f"{checked['user_tombstones']} + {checked['organization_tombstones']} + "
        f"{checked['membership_tombstones']} user + organization + membership tombstones, "
        f"{checked['subscriptions']} subscriptions, {checked['payments']} payments, "
        f"{checked['billing_tombstones']} billing tombstones"
        + (
            f", the Firebase Auth users of {checked['firebase_auth_users']} banned, deprovisioned or deleted users"
            if "firebase_auth_users" in checked
            else ""
        )
        + f" in {report.seconds:.1f} s\n"
    )
    for violation in report.violations:
        out.write(violation.line() + "\n")
    if report.ok:
        out.write("no violations\n")
        return
    kinds = Counter(violation.kind for violation in report.violations)
    fixable = sum(1 for violation in report.violations if violation.fix is not None)
    listed = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items()))
    plural = "s" if len(report.violations) != 1 else ""
    out.write(f"{len(report.violations)} violation{plural} ({fixable} fixable with --repair): {listed}\n")
    for key in dict.fromkeys(violation.advice for violation in report.violations if violation.advice):
        out.write(f"what to do, {key}: {ADVICE[key]}\n")
    if any(paths.claims in violation.subject or paths.claims in violation.detail for violation in report.violations):
        out.write(f"({CLAIM_NAMES})\n")


def run(
    db: firestore.Client,
    settings: config.Settings,
    *,
    repair_found: bool,
    as_json: bool,
    timeout: float,
    out: TextIO,
) -> int:
    """Check (and with `repair_found`, repair and check again); 1 while any violation remains."""
    paths = settings.paths
    report = scan(db, paths, timeout=timeout, auth=settings.firebase_auth, project=settings.project_id)
    if not repair_found:
        if as_json:
            out.write(json.dumps({**report.as_json(), "claim_names": CLAIM_NAMES}, indent=2) + "\n")
        else:
            _write_report(out, report, paths)
        return 0 if report.ok else 1
    repairs, after = repair_rounds(db, settings, report, timeout=timeout) if not report.ok else ([], report)
    if as_json:
        summary = {
            "ok": after.ok,
            "found": report.as_json(),
            "repairs": [done.as_json() for done in repairs],
            "after_repair": after.as_json(),
            "claim_names": CLAIM_NAMES,
        }
        out.write(json.dumps(summary, indent=2) + "\n")
        return 0 if after.ok else 1
    _write_report(out, report, paths)
    if repairs:
        out.write("repair:\n")
        for done in repairs:
            verb = f"{REPAIR_VERBS[done.action]}: " if done.action in REPAIR_VERBS else ""
            out.write(f"  {'done' if done.done else 'NOT DONE':<8} {done.subject}: {verb}{done.result}\n")
        out.write("after repair:\n")
        _write_report(out, after, paths)
    return 0 if after.ok else 1
