"""Plays Clerk and Svix against the real function: a seeded, legal Clerk history, delivered messily.

`generate` writes a random but legal Clerk history of users, organizations and memberships:
every address belongs to at most one live user at any moment, `updated_at` only grows per object
(two versions may share one, as two writes in the same millisecond do), a member who leaves and
joins again gets a new membership id, nothing happens to a user or an organization after its
deletion, and their memberships stop with them (Clerk sends no membership delete for them, or only
for some). `deliver` then sends it the way Svix does: every
event at least once, some twice with the same svix id, shuffled within a window, from a thread
pool, retrying every non-2xx after a compressed backoff with a fresh timestamp and signature. The
`*_problems` functions compare Firestore with the final Clerk state; every message they produce
names the seed, so `SIM_SEED=N` replays it.

`generate_billing` writes Clerk Billing histories on the same model: payers (users and organizations)
whose subscription items go through trials, renewals, failed charges, cancellations, upgrades, seat
changes and payments, each change sent as an item event and often a subscription event listing every
item, some payers deleted while their items' events still arrive.
"""

from __future__ import annotations

import functools
import heapq
import http.client
import itertools
import json
import os
import random
import re
import string
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from billing_events import item_data, payment_data, standalone_item, subscription_data
from clerk_events import BASE_MS, email_entry, envelope, membership_data, organization_data, signed_headers
from conftest import PATHS
from google.cloud import firestore

from clerk_sync import billing, event_log, events, ids, kind, memberships, paths, subscriptions, versions
from clerk_sync.users import PENDING_FIELD, normalise_email

SVIX_TIMEOUT_SECONDS = 15.0
SUCCESS_OUTCOMES = frozenset({"applied", "duplicate", "stale", "ignored"})
IGNORED_TYPES = ("session.created", "session.pending", "email.created", "waitlistEntry.created")
FIRST_NAMES = ("Alice", "Bob", "Chidi", "Dana", "Émile", "Fatima", "Göran", "Hiro", "Inés", "Jun", "Zoë", "李")
LAST_NAMES = ("Anders", "Brown", "Okafor", "Nguyen", "Müller", "Haddad", "Sato", "García", None)
DOMAINS = ("example.com", "Example.ORG", "mail.example.net", "example.co.uk")
ORGANIZATION_NAMES = ("Acme", "Globex", "Initech", "Hooli", "Umbrella", "Ünicorn", "Café & Co", "東京 Labs", "Wayne")
ROLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "org:admin": (
        "Admin",
        (
            "org:sys_profile:manage",
            "org:sys_profile:delete",
            "org:sys_memberships:read",
            "org:sys_memberships:manage",
            "org:sys_domains:read",
            "org:sys_domains:manage",
        ),
    ),
    "org:member": ("Member", ("org:sys_memberships:read",)),
    "org:billing": ("Billing manager", ("org:sys_memberships:read", "org:sys_billing:read", "org:sys_billing:manage")),
}
MEMBERSHIP_LIMITS = (5, 10, 25, 100)
KINDS = {
    "user": "user",
    "organization": "organization",
    "organizationMembership": "membership",
    "subscription": "subscription",
    "subscriptionItem": "subscription",
    "paymentAttempt": "payment",
}
BILLING_KINDS = frozenset({"subscription", "payment"})
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Direct proxies off: every request of the simulator goes to loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def seed_from_environment() -> int:
    """`SIM_SEED=N` replays run N; otherwise a fresh seed, which every failure message prints."""
    raw = os.environ.get("SIM_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(1, 10**6)


def member_path(organization_id: str, user_id: str) -> str:
    """Where the function keeps one member of one organization."""
    return f"{PATHS.memberships(organization_id)}/{user_id}"


@dataclass(frozen=True)
class Member:
    """The ids every membership event carries."""

    membership_id: str
    organization_id: str
    user_id: str


# ----------------------------------------------------------------------------------------------
# Clerk: the history


@dataclass(frozen=True)
class SimEvent:
    """One Clerk event as Svix sends it; the svix id stays the same on every retry.

    `clerk_id` is the id the function records the event under (user, organization or membership
    id), None for the types it ignores. `clerk_ms` is the version's `updated_at` for an upsert and
    the envelope's timestamp for a deletion.
    """

    svix_id: str
    event_type: str
    clerk_id: str | None
    body: str
    order: int
    clerk_ms: int

    @property
    def user_id(self) -> str | None:
        """The field's older name (tests/test_faults.py reads it as "stored, not ignored")."""
        return self.clerk_id

    @property
    def kind(self) -> str | None:
        """`user`, `organization`, `membership`, or None for a type the function ignores."""
        return KINDS.get(self.event_type.split(".")[0]) if self.clerk_id is not None else None

    @property
    def is_deletion(self) -> bool:
        return self.event_type.endswith(".deleted")

    @functools.cached_property
    def parsed(self) -> events.Event:
        """The event as the function parses it."""
        return events.parse_event(self.body.encode())

    @property
    def digest(self) -> str | None:
        """An upsert's `sync_digest`, computed by the function's own parser."""
        parsed = self.parsed
        return parsed.digest if isinstance(parsed, kind.Upsert) else None

    @property
    def member(self) -> Member:
        """A membership event's ids (membership, organization, user)."""
        parsed = self.parsed
        assert isinstance(parsed, kind.Upsert | kind.Deletion), self.event_type
        assert parsed.kind is memberships.KIND, self.event_type
        return Member(**parsed.ids)

    @property
    def version(self) -> tuple[int, str]:
        """How the function orders two upserts of one object: `updated_at`, then the larger digest."""
        return self.clerk_ms, self.digest or ""


@dataclass
class _User:
    user_id: str
    created_at: int
    updated_at: int = 0
    emails: list[tuple[str, str]] = field(default_factory=list)
    primary_email: str | None = None
    phones: list[tuple[str, str]] = field(default_factory=list)
    primary_phone: str | None = None
    username: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    external_id: str | None = None
    public_metadata: dict[str, Any] = field(default_factory=dict)
    unsafe_metadata: dict[str, Any] = field(default_factory=dict)
    private_metadata: dict[str, Any] = field(default_factory=dict)
    verified: set[str] = field(default_factory=set)
    banned: bool = False
    locked: bool = False
    last_sign_in_at: int | None = None

    def data(self) -> dict[str, Any]:
        """The full Clerk User object for this state."""
        return {
            "id": self.user_id,
            "object": "user",
            "external_id": self.external_id,
            "username": self.username,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "image_url": f"https://img.clerk.com/{self.user_id}",
            "has_image": False,
            "email_addresses": [
                email_entry(address, entry_id, verified=entry_id in self.verified) for entry_id, address in self.emails
            ],
            "primary_email_address_id": self.primary_email,
            "phone_numbers": [
                {"id": entry_id, "object": "phone_number", "phone_number": number, "reserved": False}
                for entry_id, number in self.phones
            ],
            "primary_phone_number_id": self.primary_phone,
            "web3_wallets": [],
            "public_metadata": self.public_metadata,
            "private_metadata": self.private_metadata,
            "unsafe_metadata": self.unsafe_metadata,
            "banned": self.banned,
            "locked": self.locked,
            "two_factor_enabled": False,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "last_sign_in_at": self.last_sign_in_at,
        }

    def public_user_data(self) -> dict[str, Any]:
        """The user as a membership carries it now: identified by primary email, phone or username."""
        identifier = (
            dict(self.emails).get(self.primary_email or "")
            or dict(self.phones).get(self.primary_phone or "")
            or self.username
            or ""
        )
        return {
            "user_id": self.user_id,
            "identifier": identifier,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "image_url": f"https://img.clerk.com/{self.user_id}",
            "has_image": False,
            "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
            "username": self.username,
        }


@dataclass
class _Organization:
    organization_id: str
    created_at: int
    created_by: str
    name: str
    slug: str
    updated_at: int = 0
    image_url: str = "https://img.clerk.com/default-organization"
    has_image: bool = False
    max_allowed_memberships: int = 25
    public_metadata: dict[str, Any] = field(default_factory=dict)
    private_metadata: dict[str, Any] = field(default_factory=dict)
    members: dict[str, _Membership] = field(default_factory=dict)  # live memberships by user id

    def data(self) -> dict[str, Any]:
        """The full Clerk Organization object for this state."""
        return organization_data(
            self.organization_id,
            name=self.name,
            slug=self.slug,
            updated_at=self.updated_at,
            image_url=self.image_url,
            has_image=self.has_image,
            members_count=len(self.members),
            max_allowed_memberships=self.max_allowed_memberships,
            public_metadata=self.public_metadata,
            private_metadata=self.private_metadata,
            created_by=self.created_by,
            created_at=self.created_at,
            missing_member_with_elevated_permissions=False,
            role_set_key=None,
        )


@dataclass
class _Membership:
    membership_id: str
    organization: _Organization
    user: _User
    created_at: int
    updated_at: int
    role: str = "org:member"
    public_metadata: dict[str, Any] = field(default_factory=dict)
    private_metadata: dict[str, Any] = field(default_factory=dict)

    def data(self, updated_at: int | None = None) -> dict[str, Any]:
        """The full OrganizationMembership object, with the organization and the user as they are now."""
        role_name, permissions = ROLES[self.role]
        return membership_data(
            self.membership_id,
            self.organization.organization_id,
            self.user.user_id,
            role=self.role,
            role_name=role_name,
            permissions=list(permissions),
            updated_at=self.updated_at if updated_at is None else updated_at,
            created_at=self.created_at,
            public_metadata=self.public_metadata,
            private_metadata=self.private_metadata,
            organization=self.organization.data(),
            public_user_data=self.user.public_user_data(),
        )


@dataclass
class _BillingItem:
    """One subscription item (payer <-> plan) as Clerk holds it now."""

    item_id: str
    slug: str
    status: str
    updated_at: int
    trial: bool = False
    seats: int | None = None
    canceled_at: int | None = None
    past_due_at: int | None = None
    ended_at: int | None = None

    def data(self) -> dict[str, Any]:
        """The item as a subscription event nests it."""
        return item_data(
            self.item_id,
            self.slug,
            status=self.status,
            updated_at=self.updated_at,
            is_free_trial=self.trial,
            seats=self.seats,
            canceled_at=self.canceled_at,
            past_due_at=self.past_due_at,
            ended_at=self.ended_at,
            amount=0 if self.slug == "free" else 2000,
        )


@dataclass
class _Subscription:
    """A payer's one subscription: its own status, the items it lists now, its payments' last attempts."""

    subscription_id: str
    payer_type: str
    payer_id: str
    items: dict[str, _BillingItem] = field(default_factory=dict)
    status: str = "active"
    updated_at: int = 0
    last_listed: str | None = None  # the body of the last subscription event
    payments: dict[str, str] = field(default_factory=dict)  # payment id -> its newest attempt's body

    def data(self) -> dict[str, Any]:
        """The subscription as `subscription.*` carries it, every item listed."""
        past_due = any(item.status == "past_due" for item in self.items.values())
        return subscription_data(
            self.subscription_id,
            self.payer_type,
            self.payer_id,
            [item.data() for item in self.items.values()],
            status=self.status,
            updated_at=self.updated_at,
            past_due_at=self.updated_at if past_due else None,
        )

    def expected(self) -> dict[str, Any]:
        """The document the function must hold: the last listed subscription, every item at its newest."""
        if self.last_listed is not None:
            listed = events.parse_event(self.last_listed.encode())
            assert isinstance(listed, kind.Upsert)
            fields = (*subscriptions.SUBSCRIPTION_FIELDS, subscriptions.PART_DIGEST)
            part = {name: listed.document[name] for name in fields}
        else:  # only item events: the subscription's own fields wait for its event
            part = dict.fromkeys((*subscriptions.SUBSCRIPTION_FIELDS, subscriptions.PART_DIGEST))
            part.update(subscription_id=self.subscription_id, payer_type=self.payer_type, payer_id=self.payer_id)
            part["clerk_payer_id"] = f"cpayer_{self.payer_id}"
        items = {
            item_id: {**subscriptions.item_entry(item.data(), "item")[1], "features": None}
            for item_id, item in self.items.items()
        }
        document = {**part, "items": items, **subscriptions.derived(items)}
        return {**document, versions.DIGEST_FIELD: subscriptions.whole_digest(document)}


def expected_document(body: str) -> dict[str, Any]:
    """The document the function builds from an upsert's body, with its digest."""
    parsed = events.parse_event(body.encode())
    assert isinstance(parsed, kind.Upsert)
    return {**parsed.document, versions.DIGEST_FIELD: parsed.digest}


@dataclass
class History:
    """A Clerk history and the final Clerk state it leads to.

    A final state is the last version of each live object; when versions share the last
    `updated_at`, Clerk's order between them is unknowable, so the one the function keeps (the
    larger `sync_digest`) is the expected one.
    """

    seed: int
    events: list[SimEvent]
    final_bodies: dict[str, str]  # live user id -> its final state's body
    deleted: set[str]  # deleted user ids
    stories: Counter[str]
    addresses: set[str]
    final_organizations: dict[str, str] = field(default_factory=dict)  # live organization id -> body
    final_memberships: dict[str, str] = field(default_factory=dict)  # member path -> body
    deleted_organizations: set[str] = field(default_factory=set)
    deleted_memberships: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (org, user), announced
    stragglers: set[str] = field(default_factory=set)  # svix ids that must arrive after their successors
    final_subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> expected document
    final_payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> expected document

    @property
    def stored_events(self) -> list[SimEvent]:
        """The events the function stores (upserts and deletions of every kind)."""
        return [event for event in self.events if event.clerk_id is not None]

    @property
    def user_events(self) -> list[SimEvent]:
        """The user events (`user.*`)."""
        return [event for event in self.events if event.kind == "user"]

    @property
    def ignored_events(self) -> list[SimEvent]:
        """Events of other types: acknowledged, never stored."""
        return [event for event in self.events if event.clerk_id is None]

    def expected_documents(self) -> dict[str, dict[str, Any]]:
        """Each live user's document as the function builds it from that user's final state."""
        return {user_id: expected_document(body) for user_id, body in self.final_bodies.items()}

    def expected_organizations(self) -> dict[str, dict[str, Any]]:
        """Each live organization's document from its final state."""
        return {org_id: expected_document(body) for org_id, body in self.final_organizations.items()}

    def expected_memberships(self) -> dict[str, dict[str, Any]]:
        """Member path -> document, for each live membership of a live organization and a live user."""
        return {path: expected_document(body) for path, body in self.final_memberships.items()}

    def deciding_ties(self) -> Counter[str]:
        """Per kind, how many final states share their `updated_at` with another version (a tie decides)."""
        versions_at = Counter((event.clerk_id, event.clerk_ms) for event in self.stored_events if not event.is_deletion)
        by_body = {event.body: event for event in self.stored_events}
        finals = {
            "user": self.final_bodies.values(),
            "organization": self.final_organizations.values(),
            "membership": self.final_memberships.values(),
        }
        return Counter(
            {
                kind: sum(versions_at[(by_body[body].clerk_id, by_body[body].clerk_ms)] > 1 for body in bodies)
                for kind, bodies in finals.items()
            }
        )

    def expected_claims(self) -> dict[str, tuple[str, str]]:
        """Claim document id -> (normalised primary email, owner) for the final state."""
        claims: dict[str, tuple[str, str]] = {}
        for user_id, document in self.expected_documents().items():
            if document["email"]:
                key = normalise_email(document["email"])
                assert key is not None
                claims[ids.document_id(key)] = (key, user_id)
        return claims


def _slug(name: str, number: int) -> str:
    return f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'org'}-{number}"


class _Generator:
    """Writes one history; all randomness comes from one seeded `random.Random`."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.clock = BASE_MS
        self.counter = itertools.count(1)
        self.users: dict[str, _User] = {}
        self.in_use: set[str] = set()  # normalised addresses held by a live user (Clerk's rule)
        self.freed: list[str] = []  # addresses someone dropped: free to move to another user
        self.events: list[SimEvent] = []
        self.final_users: dict[str, SimEvent] = {}
        self.deleted: set[str] = set()
        self.stories: Counter[str] = Counter()
        self.addresses: set[str] = set()
        self.organizations: dict[str, _Organization] = {}  # live ones
        self.organizations_created = 0
        self.final_organizations: dict[str, SimEvent] = {}
        self.final_memberships: dict[str, SimEvent] = {}  # member path -> last version
        self.deleted_organizations: set[str] = set()
        self.deleted_memberships: dict[str, tuple[str, str]] = {}
        self.left: list[tuple[str, str]] = []  # (organization, user) pairs whose membership ended
        self.stragglers: set[str] = set()
        self.quiet: set[str] = set()  # membership ids nothing may touch after their race
        self.bulk: _Organization | None = None
        self.subscriptions: dict[str, _Subscription] = {}  # live payers' subscriptions by payer id

    def tick(self) -> int:
        self.clock += self.rng.randint(1, 4000)
        return self.clock

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_s{self.seed}n{next(self.counter):05d}"

    def emit(self, event_type: str, data: dict[str, Any], clerk_id: str | None, clerk_ms: int) -> SimEvent:
        body = json.dumps(envelope(event_type, data, timestamp=clerk_ms))
        svix_id = f"msg_{self.seed}x{len(self.events):06d}"
        event = SimEvent(svix_id, event_type, clerk_id, body, len(self.events), clerk_ms)
        self.events.append(event)
        return event

    def straggle(self) -> None:
        """The event just emitted reaches the function late, after the ones that follow it (a Svix retry)."""
        self.stragglers.add(self.events[-1].svix_id)

    @staticmethod
    def keep_final(finals: dict[str, SimEvent], key: str, event: SimEvent) -> None:
        """The later version is final; of two with the same `updated_at`, the function keeps the larger digest."""
        current = finals.get(key)
        if current is None or event.version > current.version:
            finals[key] = event

    def emit_user(self, user: _User, event_type: str = "user.updated", *, same_ms: bool = False) -> None:
        """`same_ms`: this version shares the previous one's `updated_at` (two writes in one millisecond)."""
        if not same_ms:
            user.updated_at = self.tick()
        event = self.emit(event_type, user.data(), user.user_id, user.updated_at)
        self.keep_final(self.final_users, user.user_id, event)

    def emit_organization(
        self, organization: _Organization, event_type: str = "organization.updated", *, same_ms: bool = False
    ) -> None:
        if not same_ms:
            organization.updated_at = self.tick()
        event = self.emit(event_type, organization.data(), organization.organization_id, organization.updated_at)
        self.keep_final(self.final_organizations, organization.organization_id, event)

    def emit_membership(
        self, membership: _Membership, event_type: str = "organizationMembership.updated", *, same_ms: bool = False
    ) -> None:
        if not same_ms:
            membership.updated_at = self.tick()
        event = self.emit(event_type, membership.data(), membership.membership_id, membership.updated_at)
        key = member_path(membership.organization.organization_id, membership.user.user_id)
        self.keep_final(self.final_memberships, key, event)

    # -- addresses --

    def new_address(self) -> str:
        number = next(self.counter)
        first = self.rng.choice(FIRST_NAMES[:9]).lower().replace("é", "e").replace("ö", "o")
        local = self.rng.choice(
            [f"{first}{number}", f"{first}.{number}+tag", f"{first.title()}{number}", f"team/{first}{number}"]
        )
        return f"{local}@s{self.seed}.{self.rng.choice(DOMAINS)}"

    def take_address(self, prefer_freed: float) -> tuple[str, bool]:
        """A free address: one another user dropped (a move) or a brand-new one."""
        if self.freed and self.rng.random() < prefer_freed:
            address = self.freed.pop(self.rng.randrange(len(self.freed)))
            moved = True
        else:
            address, moved = self.new_address(), False
        key = normalise_email(address)
        assert key is not None
        assert key not in self.in_use
        self.in_use.add(key)
        self.addresses.add(address)
        return address, moved

    def release(self, address: str) -> None:
        key = normalise_email(address)
        assert key is not None
        self.in_use.discard(key)
        self.freed.append(address)

    # -- user actions --

    def create(self, kind: str) -> _User:
        user = _User(user_id=self.next_id("user"), created_at=self.clock)
        user.first_name = self.rng.choice(FIRST_NAMES)
        user.last_name = self.rng.choice(LAST_NAMES)
        if kind == "email":
            for _ in range(self.rng.choice([1, 1, 2, 3])):
                address, moved = self.take_address(prefer_freed=0.5)
                entry_id = self.next_id("idn")
                user.emails.append((entry_id, address))
                if self.rng.random() < 0.85:
                    user.verified.add(entry_id)
                self.stories["reuse_at_create"] += moved
            # The primary is not necessarily the first entry.
            user.primary_email = self.rng.choice(user.emails)[0] if self.rng.random() < 0.95 else None
        if kind in {"phone", "email"} and (kind == "phone" or self.rng.random() < 0.3):
            entry_id = self.next_id("idn")
            user.phones.append((entry_id, f"+1555{next(self.counter):07d}"))
            user.primary_phone = entry_id
        if kind == "username" or self.rng.random() < 0.2:
            user.username = f"u{next(self.counter)}"
        self.users[user.user_id] = user
        self.stories[f"create_{kind}"] += 1
        self.emit_user(user, "user.created")
        return user

    def live(self) -> list[_User]:
        return list(self.users.values())

    def with_emails(self, minimum: int = 1) -> list[_User]:
        return [user for user in self.users.values() if len(user.emails) >= minimum]

    def rename(self, user: _User, *, same_ms: bool = False) -> None:
        user.first_name = self.rng.choice([name for name in FIRST_NAMES if name != user.first_name])
        user.last_name = self.rng.choice(LAST_NAMES)
        self.stories["rename"] += 1
        self.emit_user(user, same_ms=same_ms)

    def edit_metadata(self, user: _User, *, same_ms: bool = False) -> None:
        user.public_metadata = {
            "plan": self.rng.choice(["free", "pro", "team"]),
            "seats": self.rng.randint(1, 500),
            "tags": self.rng.sample(["beta", "admin", "ops", "eu", "us"], self.rng.randint(0, 3)),
            "limits": {"projects": self.rng.randint(0, 9), "ratio": round(self.rng.random(), 3)},
            "revision": next(self.counter),  # every edit changes the synced content
        }
        user.unsafe_metadata = {"theme": self.rng.choice(["dark", "light"]), "onboarded": self.rng.random() < 0.5}
        user.private_metadata = {"stripe_customer": "cus_" + "".join(self.rng.choices(string.ascii_letters, k=10))}
        self.stories["metadata"] += 1
        self.emit_user(user, same_ms=same_ms)

    def add_email(self, user: _User, *, make_primary: bool) -> None:
        address, moved = self.take_address(prefer_freed=0.7)
        entry_id = self.next_id("idn")
        user.emails.append((entry_id, address))
        user.verified.add(entry_id)
        if make_primary:
            user.primary_email = entry_id
        self.stories["move_email" if moved else "add_email"] += 1
        self.emit_user(user)

    def change_primary(self, user: _User) -> None:
        choices = [entry_id for entry_id, _ in user.emails if entry_id != user.primary_email]
        user.primary_email = self.rng.choice(choices)
        self.stories["primary_change"] += 1
        self.emit_user(user)

    def drop_email(self, user: _User, entry_id: str) -> None:
        address = dict(user.emails)[entry_id]
        user.emails = [(other, text) for other, text in user.emails if other != entry_id]
        if user.primary_email == entry_id:
            user.primary_email = self.rng.choice(user.emails)[0] if user.emails else None
        self.release(address)
        self.stories["drop_email"] += 1
        self.emit_user(user)

    def delete(self, user: _User) -> None:
        """The user goes, and with them every membership, without a membership delete (Clerk sends none)."""
        for _, address in user.emails:
            self.release(address)
        del self.users[user.user_id]
        self.final_users.pop(user.user_id, None)
        self.deleted.add(user.user_id)
        for organization in self.organizations.values():
            if organization.members.pop(user.user_id, None) is not None:
                del self.final_memberships[member_path(organization.organization_id, user.user_id)]
                self.stories["delete_member_silently"] += 1
        self.stories["delete"] += 1
        clerk_ms = self.tick()
        self.emit("user.deleted", {"deleted": True, "id": user.user_id, "object": "user"}, user.user_id, clerk_ms)

    def sign_in_or_flags(self, user: _User) -> None:
        if self.rng.random() < 0.8:
            user.last_sign_in_at = self.clock
        else:
            user.banned, user.locked = self.rng.random() < 0.5, self.rng.random() < 0.2
        self.stories["sign_in_or_flags"] += 1
        self.emit_user(user)

    def tie_user(self, user: _User) -> None:
        """A rename and a metadata edit in the same millisecond: two versions, one `updated_at`."""
        self.rename(user)
        self.edit_metadata(user, same_ms=True)
        self.stories["user_tie"] += 1

    def ignored(self) -> None:
        event_type = self.rng.choice(IGNORED_TYPES)
        someone = self.rng.choice(self.live()).user_id if self.users else "user_unknown"
        data: dict[str, Any] = {"id": self.next_id("obj"), "object": event_type.split(".")[0], "user_id": someone}
        self.stories["ignored"] += 1
        self.emit(event_type, data, None, self.tick())

    # -- organization and membership actions --

    def create_organization(self, creator: _User) -> _Organization:
        """Clerk creates the organization, then its creator's admin membership."""
        number = next(self.counter)
        name = f"{self.rng.choice(ORGANIZATION_NAMES)} {number}"
        organization = _Organization(
            organization_id=self.next_id("org"),
            created_at=self.tick(),
            created_by=creator.user_id,
            name=name,
            slug=_slug(name, number),
            max_allowed_memberships=self.rng.choice(MEMBERSHIP_LIMITS),
        )
        organization.updated_at = organization.created_at
        self.organizations[organization.organization_id] = organization
        self.organizations_created += 1
        self.stories["organization_create"] += 1
        self.emit_organization(organization, "organization.created", same_ms=True)
        self.join(organization, creator, role="org:admin")
        return organization

    def rename_organization(self, organization: _Organization, *, same_ms: bool = False) -> None:
        number = next(self.counter)
        organization.name = f"{self.rng.choice(ORGANIZATION_NAMES)} {number}"
        if self.rng.random() < 0.5:
            organization.slug = _slug(organization.name, number)
        self.stories["organization_rename"] += 1
        self.emit_organization(organization, same_ms=same_ms)

    def edit_organization_metadata(self, organization: _Organization, *, same_ms: bool = False) -> None:
        organization.public_metadata = {
            "plan": self.rng.choice(["free", "team", "enterprise"]),
            "features": self.rng.sample(["sso", "audit", "seats", "beta"], self.rng.randint(0, 3)),
            "region": self.rng.choice(["eu", "us", None]),
            "revision": next(self.counter),
        }
        organization.private_metadata = {"billing": "cus_" + "".join(self.rng.choices(string.ascii_letters, k=8))}
        if self.rng.random() < 0.3:
            limits = [limit for limit in MEMBERSHIP_LIMITS if limit >= len(organization.members)]
            organization.max_allowed_memberships = self.rng.choice(limits or [organization.max_allowed_memberships])
        if self.rng.random() < 0.2:
            organization.image_url = f"https://img.clerk.com/{organization.organization_id}/{next(self.counter)}"
            organization.has_image = True
        self.stories["organization_metadata"] += 1
        self.emit_organization(organization, same_ms=same_ms)

    def tie_organization(self, organization: _Organization) -> None:
        """A rename and a metadata edit of one organization in the same millisecond."""
        self.rename_organization(organization)
        self.edit_organization_metadata(organization, same_ms=True)
        self.stories["organization_tie"] += 1

    def join(self, organization: _Organization, user: _User, *, role: str = "org:member") -> _Membership:
        """A new membership (a new id, even for a user who was a member before)."""
        assert user.user_id not in organization.members
        joined_at = self.tick()
        membership = _Membership(self.next_id("orgmem"), organization, user, joined_at, joined_at, role)
        organization.members[user.user_id] = membership
        self.stories["join"] += 1
        self.emit_membership(membership, "organizationMembership.created", same_ms=True)
        return membership

    def change_role(self, membership: _Membership, *, same_ms: bool = False) -> None:
        membership.role = self.rng.choice([role for role in ROLES if role != membership.role])
        self.stories["role_change"] += 1
        self.emit_membership(membership, same_ms=same_ms)

    def edit_membership_metadata(self, membership: _Membership, *, same_ms: bool = False) -> None:
        membership.public_metadata = {
            "team": self.rng.choice(["design", "ops", "sales", "eng"]),
            "seat": self.rng.randint(1, 99),
            "revision": next(self.counter),
        }
        membership.private_metadata = {"cost_center": self.rng.randint(100, 999)}
        self.stories["membership_metadata"] += 1
        self.emit_membership(membership, same_ms=same_ms)

    def tie_membership(self, membership: _Membership) -> None:
        """A role change and a metadata edit of one membership in the same millisecond."""
        self.change_role(membership)
        self.edit_membership_metadata(membership, same_ms=True)
        self.stories["membership_tie"] += 1

    def leave(self, membership: _Membership, *, older: bool | None = None, story: str = "leave") -> None:
        """`organizationMembership.deleted`, whose `updated_at` is sometimes older than the last update's."""
        organization, user_id = membership.organization, membership.user.user_id
        del organization.members[user_id]
        del self.final_memberships[member_path(organization.organization_id, user_id)]
        self.deleted_memberships[membership.membership_id] = (organization.organization_id, user_id)
        self.left.append((organization.organization_id, user_id))
        if older is None:
            older = self.rng.random() < 0.4
        older = older and membership.updated_at > membership.created_at
        updated_at = self.rng.randint(membership.created_at, membership.updated_at - 1) if older else None
        self.stories[story] += 1
        self.stories["delete_with_older_updated_at"] += older
        data = membership.data(updated_at=updated_at)
        self.emit("organizationMembership.deleted", data, membership.membership_id, self.tick())

    def rejoin_candidates(self) -> list[tuple[_Organization, _User]]:
        found = []
        for organization_id, user_id in self.left:
            organization, user = self.organizations.get(organization_id), self.users.get(user_id)
            if organization and user and user_id not in organization.members and self.has_room(organization):
                found.append((organization, user))
        return found

    def rejoin(self, organization: _Organization, user: _User) -> _Membership:
        self.stories["rejoin"] += 1
        return self.join(organization, user, role=self.rng.choice(list(ROLES)))

    @staticmethod
    def has_room(organization: _Organization) -> bool:
        return len(organization.members) < organization.max_allowed_memberships

    def delete_organization(self, organization: _Organization, announced: Callable[[int], bool] | None = None) -> None:
        """Clerk deletes the organization; a delete for some of its memberships comes first, or none.

        `announced(position)` says whether the member at that position gets its own delete.
        """
        for position, membership in enumerate(list(organization.members.values())):
            if announced(position) if announced else self.rng.random() < 0.3:
                self.leave(membership, story="organization_delete_member_announced")
            else:
                self.stories["organization_delete_member_silently"] += 1
        organization_id = organization.organization_id
        for user_id in list(organization.members):
            del self.final_memberships[member_path(organization_id, user_id)]
        organization.members.clear()
        del self.organizations[organization_id]
        self.final_organizations.pop(organization_id, None)
        self.deleted_organizations.add(organization_id)
        self.stories["organization_delete"] += 1
        data = {"object": "organization", "id": organization_id, "slug": organization.slug, "deleted": True}
        self.emit("organization.deleted", data, organization_id, self.tick())

    def memberships(self) -> list[_Membership]:
        return [member for organization in self.organizations.values() for member in organization.members.values()]

    def organization_step(self, organizations_target: int) -> None:
        """One random thing happens to an organization or its members."""
        if not self.organizations or (self.organizations_created < organizations_target and self.rng.random() < 0.12):
            self.create_organization(self.rng.choice(self.live()))
            return
        organization = self.rng.choice(list(self.organizations.values()))
        members = list(organization.members.values())
        outsiders = [user for user in self.live() if user.user_id not in organization.members]
        roll = self.rng.random()
        if roll < 0.10:
            self.rename_organization(organization)
        elif roll < 0.18:
            self.edit_organization_metadata(organization)
        elif roll < 0.45 and outsiders and self.has_room(organization):
            self.join(organization, self.rng.choice(outsiders))
        elif roll < 0.55 and self.rejoin_candidates():
            self.rejoin(*self.rng.choice(self.rejoin_candidates()))
        elif roll < 0.70 and members:
            self.change_role(self.rng.choice(members))
        elif roll < 0.78 and members:
            self.edit_membership_metadata(self.rng.choice(members))
        elif roll < 0.88 and members:
            self.leave(self.rng.choice(members))
        elif 0.88 <= roll < 0.90 and members:
            self.tie_membership(self.rng.choice(members))
        elif 0.90 <= roll < 0.92:
            self.tie_organization(organization)
        elif (
            0.92 <= roll < 0.95
            and len(self.organizations) > 1
            and len(self.deleted_organizations) < max(1, organizations_target // 4)
        ):
            self.delete_organization(organization)
        else:
            self.edit_organization_metadata(organization)

    # -- stories that every history tells at least once --

    def story_move(self) -> bool:
        """A drops its primary address; later B takes it as primary (the 409 path)."""
        owners = [user for user in self.with_emails() if user.primary_email]
        if not owners or len(self.users) < 2:
            self.create("email")  # a short history may have no one to take the address from yet
            return False
        owner = self.rng.choice(owners)
        assert owner.primary_email is not None
        address = dict(owner.emails)[owner.primary_email]
        self.drop_email(owner, owner.primary_email)
        taker = self.rng.choice([user for user in self.live() if user is not owner])
        self.freed.remove(address)
        key = normalise_email(address)
        assert key is not None
        self.in_use.add(key)
        entry_id = self.next_id("idn")
        taker.emails.append((entry_id, address))
        taker.verified.add(entry_id)
        taker.primary_email = entry_id
        self.stories["move_email"] += 1
        self.emit_user(taker)
        return True

    def story_delete_then_reuse(self) -> bool:
        """A user with an email is deleted; a new user signs up with that address."""
        owners = [user for user in self.with_emails() if user.primary_email]
        if not owners:
            self.create("email")
            return False
        owner = self.rng.choice(owners)
        assert owner.primary_email is not None
        address = dict(owner.emails)[owner.primary_email]
        self.delete(owner)
        self.freed.remove(address)
        key = normalise_email(address)
        assert key is not None
        self.in_use.add(key)
        user = _User(user_id=self.next_id("user"), created_at=self.clock, first_name="Reused")
        entry_id = self.next_id("idn")
        user.emails.append((entry_id, address))
        user.primary_email = entry_id
        self.users[user.user_id] = user
        self.stories["reuse_after_delete"] += 1
        self.emit_user(user, "user.created")
        return True

    def story_primary_change(self) -> bool:
        candidates = self.with_emails(2)
        if not candidates and self.with_emails(1):
            self.add_email(self.rng.choice(self.with_emails(1)), make_primary=False)
            return False
        if not candidates:
            self.create("email")
            return False
        self.change_primary(self.rng.choice(candidates))
        return True

    def organization_with_members(self, minimum: int) -> _Organization:
        """An organization with at least `minimum` members, made so (with new users) if none has them yet."""
        candidates = [org for org in self.organizations.values() if len(org.members) >= minimum]
        if candidates:
            return self.rng.choice(candidates)
        while len(self.users) < minimum + 1:
            self.create("email")
        organization = self.create_organization(self.rng.choice(self.live()))
        while len(organization.members) < minimum:
            outsiders = [user for user in self.live() if user.user_id not in organization.members]
            self.join(organization, self.rng.choice(outsiders))
        return organization

    def story_organization(self) -> bool:
        """An organization is created (with its admin), renamed and its metadata edited."""
        if not self.users:
            return False
        organization = self.create_organization(self.rng.choice(self.live()))
        self.rename_organization(organization)
        self.edit_organization_metadata(organization)
        return True

    def story_join_and_role_change(self) -> bool:
        organization = self.organization_with_members(1)
        outsiders = [user for user in self.live() if user.user_id not in organization.members]
        if not outsiders or not self.has_room(organization):
            return False
        membership = self.join(organization, self.rng.choice(outsiders))
        self.change_role(membership)
        return True

    def story_leave_and_rejoin(self) -> bool:
        """A member whose role changed leaves (the delete carries an older `updated_at`), then re-joins."""
        organization = self.organization_with_members(2)
        membership = self.rng.choice(list(organization.members.values()))
        self.change_role(membership)
        self.leave(membership, older=True)
        self.rejoin(organization, membership.user)
        return True

    def story_delete_organization_with_members(self) -> bool:
        """An organization with members is deleted: one member's delete is announced, one's is not."""
        organization = self.organization_with_members(2)
        self.delete_organization(
            organization, announced=lambda position: position == 1 or (position > 1 and self.rng.random() < 0.3)
        )
        return True

    def story_delete_user_in_organizations(self) -> bool:
        """A user in two organizations is deleted; no membership delete comes for them."""
        while len(self.users) < 4:  # a short history keeps a few users alive for the rest
            self.create("email")
        user = self.rng.choice(self.live())
        for _ in range(2):
            outsider_of = [org for org in self.organizations.values() if user.user_id not in org.members]
            organization = self.rng.choice(outsider_of) if outsider_of else None
            if organization is None or not self.has_room(organization):
                organization = self.create_organization(self.rng.choice(self.live()))
            if user.user_id not in organization.members:
                self.join(organization, user)
        self.delete(user)
        return True

    def story_bulk_import(self, members: int) -> bool:
        """An organization gets `members` members at once (new users where too few exist), as a bulk import does."""
        organization = self.create_organization(self.rng.choice(self.live()))
        organization.max_allowed_memberships = members + 100
        self.edit_organization_metadata(organization)
        while len(self.users) < members + 1:
            self.create(self.rng.choices(["email", "phone", "username"], weights=[8, 2, 1])[0])
        outsiders = [user for user in self.live() if user.user_id not in organization.members]
        for user in self.rng.sample(outsiders, members - len(organization.members)):
            self.join(organization, user)
        self.bulk = organization
        self.stories["bulk_import"] += 1
        return True

    # -- the finale: races whose late event nothing after them can mend, then ties --

    def delete_bulk_organization(self) -> bool:
        """The bulk-imported organization is deleted, its members unannounced: a sweep of many batches."""
        if self.bulk is not None and self.bulk.organization_id in self.organizations:
            self.stories["bulk_delete_members"] += len(self.bulk.members)
            self.delete_organization(self.bulk, announced=lambda _position: False)
        return True

    def race_organization_deletion(self) -> bool:
        """A member's role change and a rename arrive after the organization's deletion (all its members silent)."""
        organization = self.organization_with_members(2)
        self.change_role(self.rng.choice(list(organization.members.values())))
        self.straggle()
        self.rename_organization(organization)
        self.straggle()
        self.delete_organization(organization, announced=lambda _position: False)
        self.stories["race_upserts_after_organization_deletion"] += 1
        return True

    def race_user_deletion(self) -> bool:
        """A user's membership edit and rename arrive after the user's deletion."""
        members = [member for member in self.memberships() if member.membership_id not in self.quiet]
        if not members:
            organization = self.organization_with_members(1)
            members = list(organization.members.values())
        membership = self.rng.choice(members)
        self.edit_membership_metadata(membership)
        self.straggle()
        self.rename(membership.user)
        self.straggle()
        self.delete(membership.user)
        self.stories["race_upserts_after_user_deletion"] += 1
        return True

    def race_rejoin(self) -> bool:
        """A member leaves and joins again; the old membership's delete arrives after the new one's create."""
        organization = self.organization_with_members(2)
        membership = self.rng.choice(list(organization.members.values()))
        self.change_role(membership)
        self.leave(membership)
        self.straggle()
        self.quiet.add(self.rejoin(organization, membership.user).membership_id)
        self.stories["race_old_delete_after_rejoin"] += 1
        return True

    def story_ties(self) -> bool:
        """Two versions with one `updated_at`, for a user, an organization and a membership."""
        members = [member for member in self.memberships() if member.membership_id not in self.quiet]
        if not self.users or not members:
            return False
        self.tie_user(self.rng.choice(self.live()))
        self.tie_organization(self.rng.choice(list(self.organizations.values())))
        self.tie_membership(self.rng.choice(members))
        return True

    # -- billing: a payer's subscription, its items and payments --

    @staticmethod
    def subscription_path(subscription: _Subscription) -> str:
        collection = billing.billing_collection(PATHS, subscription.payer_type, subscription.payer_id)
        return f"{collection}/{billing.SUBSCRIPTION}"

    def subscribe(self, payer_type: str, payer_id: str) -> _Subscription:
        """Clerk gives a new payer the default plan: a subscription listing its free item."""
        subscription = _Subscription(self.next_id("csub"), payer_type, payer_id)
        self.subscriptions[payer_id] = subscription
        free = _BillingItem(self.next_id("csub_item"), "free", "active", self.tick())
        subscription.items[free.item_id] = free
        self.stories["billing_subscribe"] += 1
        self.list_items(subscription, "subscription.created")
        return subscription

    def list_items(self, subscription: _Subscription, event_type: str = "subscription.updated") -> None:
        """A subscription event listing every item the subscription has now."""
        subscription.updated_at = self.tick()
        subscription.status = (
            "past_due" if any(i.status == "past_due" for i in subscription.items.values()) else "active"
        )
        event = self.emit(event_type, subscription.data(), subscription.subscription_id, subscription.updated_at)
        subscription.last_listed = event.body

    def change_item(self, subscription: _Subscription, item: _BillingItem, event_type: str, **changes: Any) -> None:
        """An item changes: its own event, and often a subscription event listing it too."""
        for name, value in changes.items():
            setattr(item, name, value)
        item.updated_at = self.tick()
        subscription.items[item.item_id] = item
        data = standalone_item(
            item.data(), subscription.subscription_id, subscription.payer_type, subscription.payer_id
        )
        self.emit(event_type, data, subscription.subscription_id, item.updated_at)
        if self.rng.random() < 0.5:
            self.list_items(
                subscription, "subscription.pastDue" if item.status == "past_due" else "subscription.updated"
            )

    def prune(self, subscription: _Subscription) -> None:
        """Ended and abandoned items leave the subscription's list (a subscription event without them)."""
        gone = [item_id for item_id, item in subscription.items.items() if item.status in {"ended", "abandoned"}]
        for item_id in gone:
            del subscription.items[item_id]
        self.stories["billing_prune"] += len(gone)
        self.list_items(subscription)

    def pay(self, subscription: _Subscription, item: _BillingItem, statuses: tuple[str, ...]) -> None:
        """One payment for the item, attempt after attempt (a failed charge retried)."""
        payment_id = self.next_id("cpa")
        for status in statuses:
            updated_at = self.tick()
            data = payment_data(payment_id, subscription.payer_type, subscription.payer_id, status=status,
                                updated_at=updated_at, attempt_id=self.next_id("pa"), item_id=item.item_id,
                                slug=item.slug)  # fmt: skip
            subscription.payments[payment_id] = self.emit("paymentAttempt.updated", data, payment_id, updated_at).body
        self.stories["billing_payment"] += 1

    def new_item(
        self, subscription: _Subscription, slug: str, status: str, event_type: str, **fields: Any
    ) -> _BillingItem:
        item = _BillingItem(self.next_id("csub_item"), slug, status, 0, **fields)
        self.change_item(subscription, item, event_type)
        return item

    def billing_payer(self, payer_type: str) -> _Subscription:
        """A new user or organization, and its subscription."""
        if payer_type == "user":
            return self.subscribe("user", self.create("email").user_id)
        creator = self.rng.choice(self.live()) if self.users else self.create("email")
        return self.subscribe("organization", self.create_organization(creator).organization_id)

    def story_trial_to_ended(self, subscription: _Subscription) -> None:
        """Trial -> active -> past due -> canceled -> ended; the free plan comes back."""
        current = next((item for item in subscription.items.values() if item.status == "active"), None)
        pro = self.new_item(subscription, "pro", "active", "subscriptionItem.active", trial=True)
        if current is not None:
            self.change_item(subscription, current, "subscriptionItem.ended", status="ended", ended_at=self.clock)
        self.change_item(subscription, pro, "subscriptionItem.freeTrialEnding")
        self.change_item(subscription, pro, "subscriptionItem.updated", trial=False)
        self.pay(subscription, pro, ("paid",))
        self.change_item(subscription, pro, "subscriptionItem.pastDue", status="past_due", past_due_at=self.clock)
        self.pay(subscription, pro, ("failed", "failed"))
        self.change_item(subscription, pro, "subscriptionItem.canceled", status="canceled", canceled_at=self.clock)
        self.new_item(subscription, "free", "upcoming", "subscriptionItem.upcoming")
        self.change_item(subscription, pro, "subscriptionItem.ended", status="ended", ended_at=self.clock)
        comeback = next(item for item in subscription.items.values() if item.status == "upcoming")
        self.change_item(subscription, comeback, "subscriptionItem.active", status="active")
        if self.rng.random() < 0.7:
            self.prune(subscription)
        self.stories["billing_trial_to_ended"] += 1

    def story_upgrade(self, subscription: _Subscription) -> None:
        """Free -> Pro (a checkout), then maybe Pro -> Team; an abandoned checkout on the way."""
        slugs = ["pro", "team"] if self.rng.random() < 0.5 else ["pro"]
        current = next((item for item in subscription.items.values() if item.status == "active"), None)
        for slug in slugs:
            if self.rng.random() < 0.3:
                self.new_item(subscription, slug, "abandoned", "subscriptionItem.incomplete")
            upgraded = self.new_item(subscription, slug, "active", "subscriptionItem.active")
            self.pay(subscription, upgraded, ("paid",))
            if current is not None:
                self.change_item(subscription, current, "subscriptionItem.ended", status="ended", ended_at=self.clock)
            current = upgraded
        if self.rng.random() < 0.5:
            self.prune(subscription)
        self.stories["billing_upgrade"] += 1

    def story_seats(self, subscription: _Subscription) -> None:
        """A seat-based plan whose seats change (an organization adding and removing members' seats)."""
        team = self.new_item(subscription, "team", "active", "subscriptionItem.active", seats=self.rng.randint(3, 10))
        for _ in range(self.rng.randint(2, 4)):
            self.change_item(subscription, team, "subscriptionItem.updated", seats=self.rng.randint(1, 50))
        self.pay(subscription, team, ("paid",))
        self.stories["billing_seats"] += 1

    def story_payer_deleted_with_late_items(self, payer_type: str) -> None:
        """A payer with billing is deleted while its latest billing events are still on their way."""
        subscription = self.billing_payer(payer_type)
        pro = self.new_item(subscription, "pro", "active", "subscriptionItem.active")
        self.pay(subscription, pro, ("paid",))
        self.change_item(subscription, pro, "subscriptionItem.canceled", status="canceled", canceled_at=self.clock)
        self.straggle()
        self.change_item(subscription, pro, "subscriptionItem.ended", status="ended", ended_at=self.clock)
        self.straggle()
        del self.subscriptions[subscription.payer_id]
        if payer_type == "user":
            self.delete(self.users[subscription.payer_id])
        else:
            self.delete_organization(self.organizations[subscription.payer_id], announced=lambda _position: False)
        self.stories[f"billing_{payer_type}_deleted_with_late_items"] += 1

    def random_step(self, users_target: int, created: int, organizations_target: int) -> None:
        roll = self.rng.random()
        if not self.users or (created < users_target and roll < 0.25):
            self.create(self.rng.choices(["email", "phone", "username"], weights=[8, 2, 1])[0])
            return
        if organizations_target and self.rng.random() < 0.3:
            self.organization_step(organizations_target)
            return
        user = self.rng.choice(self.live())
        roll = self.rng.random()
        if roll < 0.05:
            self.ignored()
        elif roll < 0.20:
            self.rename(user)
        elif roll < 0.33:
            self.edit_metadata(user)
        elif roll < 0.48:
            self.add_email(user, make_primary=self.rng.random() < 0.6)
        elif roll < 0.58 and len(user.emails) >= 2:
            self.change_primary(user)
        elif roll < 0.72 and len(user.emails) >= 2:
            self.drop_email(user, self.rng.choice(user.emails)[0])
        elif roll < 0.74 and len(self.users) > 3 and len(self.deleted) < max(2, users_target // 5):
            self.delete(user)
        elif 0.74 <= roll < 0.76:  # not for rolls whose step above did not fit this user
            self.tie_user(user)
        else:
            self.sign_in_or_flags(user)

    def history(self) -> History:
        return History(
            seed=self.seed,
            events=self.events,
            final_bodies={key: event.body for key, event in self.final_users.items()},
            deleted=self.deleted,
            stories=self.stories,
            addresses=self.addresses,
            final_organizations={key: event.body for key, event in self.final_organizations.items()},
            final_memberships={key: event.body for key, event in self.final_memberships.items()},
            deleted_organizations=self.deleted_organizations,
            deleted_memberships=self.deleted_memberships,
            stragglers=self.stragglers,
            final_subscriptions={self.subscription_path(sub): sub.expected() for sub in self.subscriptions.values()},
            final_payments={
                f"{billing.payments_collection(PATHS, sub.payer_type, sub.payer_id)}/{payment_id}": expected_document(
                    body
                )
                for sub in self.subscriptions.values()
                for payment_id, body in sub.payments.items()
            },
        )


def generate(
    seed: int, *, users: int, events_target: int, organizations: int | None = None, bulk_members: int = 0
) -> History:
    """A legal Clerk history of about `events_target` events for about `users` users.

    About `organizations` organizations (default a fifth of `users`, at least 2); with
    `bulk_members`, one more that many members join at once, deleted in the finale. Every history
    tells each story below at least once, however short. Pairs of versions sharing one `updated_at`
    come at random too. The history ends in a finale nothing after it can mend: races whose late
    event (`History.stragglers`, which `plan` delivers late) meets a deletion or a re-join, then
    one more tie per kind, where the function's tie-break (the larger digest) decides the final
    state.
    """
    organizations = max(2, users // 5) if organizations is None else organizations
    generator = _Generator(seed)
    for contact in ["email"] * 3 + ["phone", "username"]:
        generator.create(contact)
    finale = (
        generator.delete_bulk_organization,
        generator.race_organization_deletion,
        generator.race_user_deletion,
        generator.race_rejoin,
        generator.story_ties,
    )
    main_target = events_target - 16 if events_target >= 120 else events_target  # the finale is about 16
    stories: list[Callable[[], bool]] = [
        generator.story_move,
        generator.story_primary_change,
        generator.story_delete_then_reuse,
        generator.story_move,
        generator.story_organization,
        generator.story_join_and_role_change,
        generator.story_leave_and_rejoin,
        generator.story_delete_organization_with_members,
        generator.story_delete_user_in_organizations,
    ]
    if bulk_members:
        stories.append(functools.partial(generator.story_bulk_import, bulk_members))
    generator.rng.shuffle(stories)
    story_at = sorted(generator.rng.randrange(5, max(6, main_target - 10)) for _ in stories)
    while len(generator.events) < main_target or stories:
        if stories and len(generator.events) >= story_at[0] and stories[0]():
            stories.pop(0)
            story_at.pop(0)
        else:
            created = sum(count for name, count in generator.stories.items() if name.startswith("create_"))
            generator.random_step(users, created, organizations)
        if len(generator.events) > 2 * events_target + 100:
            names = [getattr(story, "__name__", repr(story)) for story in stories]
            raise AssertionError(f"SIM_SEED={seed}: stories never found what they need: {names}")
    for story in finale:
        assert story(), f"SIM_SEED={seed}: {story.__name__} found nothing to work with"
    return generator.history()


def generate_billing(seed: int, *, payers: int) -> History:
    """A legal Clerk Billing history for about `payers` payers (a third organizations), ending with a user
    and an organization deleted while their items' last events are still to arrive.

    Every payer gets the default plan, then one or two stories: a trial that lapses into past due, is
    canceled and ends; upgrades (with payments, an abandoned checkout, the free item ended); seats that
    change. Stories of different payers interleave in Clerk's order; Svix then shuffles them.
    """
    generator = _Generator(seed)
    stories = {
        "trial": generator.story_trial_to_ended,
        "upgrade": generator.story_upgrade,
        "seats": generator.story_seats,
    }
    pending: list[tuple[_Subscription, Callable[[_Subscription], None]]] = []
    for index in range(max(3, payers)):
        subscription = generator.billing_payer("organization" if index % 3 == 2 else "user")
        names = (
            ["trial", "upgrade", "seats"]
            if index < 3
            else generator.rng.sample(sorted(stories), generator.rng.randint(1, 2))
        )
        pending += [(subscription, stories[name]) for name in names]
    generator.rng.shuffle(pending)
    for subscription, story in pending:
        if subscription.payer_id in generator.subscriptions:
            story(subscription)
        if generator.rng.random() < 0.2:
            generator.rename(generator.rng.choice(generator.live()))
    generator.story_payer_deleted_with_late_items("user")
    generator.story_payer_deleted_with_late_items("organization")
    return generator.history()


def single_user_history(seed: int, *, updates: int) -> History:
    """One user created, then changed `updates` times (names, metadata, addresses, primary)."""
    generator = _Generator(seed)
    user = generator.create("email")
    for _ in range(updates):
        step = generator.rng.choice([generator.rename, generator.edit_metadata, generator.sign_in_or_flags])
        if len(user.emails) >= 2 and generator.rng.random() < 0.3:
            generator.change_primary(user)
        elif len(user.emails) >= 3 and generator.rng.random() < 0.2:
            generator.drop_email(user, generator.rng.choice(user.emails)[0])
        elif generator.rng.random() < 0.2:
            generator.add_email(user, make_primary=generator.rng.random() < 0.5)
        else:
            step(user)
    return generator.history()


# ----------------------------------------------------------------------------------------------
# Svix: the delivery


@dataclass(frozen=True)
class Backoff:
    """Svix's schedule (0, 5 s, 5 min, 30 min, 2 h...) squeezed into milliseconds, with jitter."""

    first_seconds: float = 0.005
    factor: float = 4.0
    cap_seconds: float = 1.0

    def delay(self, failures: int, rng: random.Random) -> float:
        base = min(self.cap_seconds, self.first_seconds * self.factor ** max(0, failures - 1))
        return base * rng.uniform(0.5, 1.5)


@dataclass(frozen=True)
class Attempt:
    """One POST: its status (None when no HTTP answer came) and the outcome in the JSON body."""

    svix_id: str
    status: int | None
    outcome: str | None
    started: float
    finished: float

    @property
    def succeeded(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class Delivery:
    """One copy of an event that Svix must get acknowledged (a duplicate is a second copy)."""

    event: SimEvent
    copy: int
    attempts: int = 0
    last: Attempt | None = None
    due: float = 0.0
    straggler: bool = False  # goes out only once nothing sent before it is still in flight


@dataclass
class Report:
    """What the deliverer did."""

    deliveries: list[Delivery]
    attempts: list[Attempt]
    wall_seconds: float
    checkpoints: int = 0

    @property
    def undelivered(self) -> list[Delivery]:
        return [delivery for delivery in self.deliveries if delivery.last is None or not delivery.last.succeeded]

    def statuses(self) -> Counter[int | None]:
        return Counter(attempt.status for attempt in self.attempts)

    def summary(self) -> str:
        statuses = self.statuses()
        return (
            f"{len({d.event.svix_id for d in self.deliveries})} events, {len(self.deliveries)} deliveries, "
            f"{len(self.attempts)} attempts, 409s {statuses[409]}, 503s {statuses[503]}, "
            f"other non-2xx {sum(n for s, n in statuses.items() if s not in {200, 409, 503})}, "
            f"{self.checkpoints} checkpoints, {self.wall_seconds:.1f} s"
        )


def post(url: str, event: SimEvent, timeout: float = SVIX_TIMEOUT_SECONDS) -> Attempt:
    """One Svix attempt: signed now, so every retry carries a fresh timestamp and signature."""
    headers = signed_headers(event.body, message_id=event.svix_id)
    request = urllib.request.Request(url, data=event.body.encode(), headers=headers, method="POST")
    started = time.monotonic()
    status: int | None
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (OSError, http.client.HTTPException):  # refused, reset, timed out: no answer at all
        status, raw = None, b""
    finished = time.monotonic()
    try:
        outcome = json.loads(raw).get("outcome") if raw else None
    except (ValueError, AttributeError):
        outcome = None
    return Attempt(event.svix_id, status, outcome if isinstance(outcome, str) else None, started, finished)


def plan(
    sim_events: Iterable[SimEvent],
    rng: random.Random,
    *,
    duplicate_share: float,
    window: float,
    stragglers: Collection[str] = frozenset(),
) -> list[Delivery]:
    """Arrival order: each event within `window` places of its turn; some get a second copy later.

    A straggler (by svix id) arrives, every copy of it, after every other event up to `window`
    places after it, and `deliver` sends it only once the requests before it have been answered:
    it comes in as one whose first attempt failed does, after Svix's retry delay.
    """
    arrivals: list[tuple[float, Delivery]] = []
    for event in sim_events:
        late = event.svix_id in stragglers
        delay = 2 * window if late else 0
        arrivals.append((event.order + delay + rng.uniform(0, window), Delivery(event, 0, straggler=late)))
        if rng.random() < duplicate_share:
            arrivals.append((event.order + delay + rng.uniform(0, 3 * window), Delivery(event, 1, straggler=late)))
    arrivals.sort(key=lambda pair: pair[0])
    return [delivery for _, delivery in arrivals]


def deliver(
    url: str | list[str],
    deliveries: list[Delivery],
    *,
    rng: random.Random,
    concurrency: int = 8,
    max_attempts: int = 60,
    backoff: Backoff = Backoff(),
    wall_seconds: float = 120.0,
    request_timeout: float = SVIX_TIMEOUT_SECONDS,
    checkpoint: Callable[[], None] | None = None,
    checkpoint_every: int = 50,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> Report:
    """Deliver until every copy is acknowledged, attempts run out, or `wall_seconds` pass.

    With several URLs (instances of the function), each attempt goes to one picked at random.
    """
    urls = [url] if isinstance(url, str) else url
    started = time.monotonic()
    deadline = started + wall_seconds
    arrivals = deque(deliveries)
    retries: list[tuple[float, int, Delivery]] = []
    attempts: list[Attempt] = []
    in_flight: dict[Future[Attempt], Delivery] = {}
    tie = itertools.count()
    checkpoints = 0
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="svix") as pool:
        while (arrivals or retries or in_flight) and time.monotonic() < deadline:
            now = time.monotonic()
            while len(in_flight) < concurrency:
                if retries and retries[0][0] <= now:
                    delivery = heapq.heappop(retries)[2]
                elif arrivals and not (arrivals[0].straggler and in_flight):
                    delivery = arrivals.popleft()
                else:
                    break
                delivery.attempts += 1
                in_flight[pool.submit(post, rng.choice(urls), delivery.event, request_timeout)] = delivery
            next_due = retries[0][0] - now if retries else 0.05
            done, _ = wait(list(in_flight), timeout=max(0.001, min(0.05, next_due)), return_when=FIRST_COMPLETED)
            for future in done:
                delivery = in_flight.pop(future)
                attempt = future.result()
                attempts.append(attempt)
                delivery.last = attempt
                if on_attempt is not None:
                    on_attempt(attempt)
                if not attempt.succeeded and delivery.attempts < max_attempts:
                    delivery.due = time.monotonic() + backoff.delay(delivery.attempts, rng)
                    heapq.heappush(retries, (delivery.due, next(tie), delivery))
                if checkpoint is not None and len(attempts) % checkpoint_every == 0:
                    checkpoint()
                    checkpoints += 1
        for future in in_flight:  # wall time spent: let the running attempts finish, bounded
            future.cancel()
    if checkpoint is not None:
        checkpoint()
        checkpoints += 1
    return Report(deliveries, attempts, time.monotonic() - started, checkpoints)


# ----------------------------------------------------------------------------------------------
# Firestore against the final Clerk state


def _documents(db: firestore.Client, collection: str) -> dict[str, dict[str, Any]]:
    return {snapshot.id: snapshot.to_dict() or {} for snapshot in db.collection(collection).stream(timeout=30)}


def _members(db: firestore.Client) -> dict[str, dict[str, Any]]:
    """Every `memberships` document in the database (a collection-group query), by path."""
    return {
        snapshot.reference.path: snapshot.to_dict() or {}
        for snapshot in db.collection_group(paths.MEMBERSHIPS).stream(timeout=30)
    }


def _member_ids(path: str) -> tuple[str, str]:
    """(organization id, user id) of a member path; ('', '') for a path that is not one of ours."""
    if not PATHS.is_membership(path):
        return "", ""
    organization_id, _, user_id = path[len(PATHS.organizations) + 1 :].split("/")
    return organization_id, user_id


@dataclass
class _Store:
    """Everything the function writes, read collection by collection (at rest, that is a consistent view)."""

    users: dict[str, dict[str, Any]]
    claims: dict[str, dict[str, Any]]
    user_tombstones: dict[str, dict[str, Any]]
    organizations: dict[str, dict[str, Any]]
    organization_tombstones: dict[str, dict[str, Any]]
    members: dict[str, dict[str, Any]]
    membership_tombstones: dict[str, dict[str, Any]]
    records: dict[str, dict[str, Any]]

    @classmethod
    def read(cls, db: firestore.Client) -> _Store:
        return cls(
            users=_documents(db, PATHS.users),
            claims=_documents(db, PATHS.claims),
            user_tombstones=_documents(db, PATHS.user_tombstones),
            organizations=_documents(db, PATHS.organizations),
            organization_tombstones=_documents(db, PATHS.organization_tombstones),
            members=_members(db),
            membership_tombstones=_documents(db, PATHS.membership_tombstones),
            records=_documents(db, PATHS.events),
        )


def shared_primary_emails(db: firestore.Client) -> dict[str, list[str]]:
    """Normalised primary emails that more than one user document holds (one consistent query)."""
    owners: defaultdict[str, list[str]] = defaultdict(list)
    for user_id, document in _documents(db, PATHS.users).items():
        if isinstance(document.get("email"), str):
            owners[normalise_email(document["email"]) or ""].append(user_id)
    return {key: ids for key, ids in owners.items() if len(ids) > 1}


def consistency_problems(db: firestore.Client, history: History) -> list[str]:
    """What a half-written event would leave behind; only meaningful while nothing is in flight.

    Each event writes its document, claims, tombstone and record in one commit, so at rest: every
    document is exactly one recorded, applied event's state, every claim is held by the document
    that names it, every recorded deletion left a tombstone and no document, and no document holds
    what its own tombstone forbids. (A deletion's sweep of memberships runs after its commit, so
    members under an organization's or a user's tombstone are only wrong in the final state.)
    """
    store = _Store.read(db)
    return _consistency_problems(store, history)


def _consistency_problems(store: _Store, history: History) -> list[str]:
    return [
        f"SIM_SEED={history.seed}: {problem}"
        for problem in [
            *_document_problems(history, store),
            *_claim_problems(store.users, store.claims),
            *_record_problems(history, store),
        ]
    ]


def _epoch_ms(moment: object) -> int | None:
    return round((moment - EPOCH) / timedelta(milliseconds=1)) if isinstance(moment, datetime) else None


def _parked_problems(by_state: dict[tuple[object, ...], SimEvent], user_id: str, document: dict[str, Any]) -> list[str]:
    """A parked address move: all but the address is stored, and the 409 records nothing."""
    event = by_state.get((user_id, _epoch_ms(document.get("updated_at")), document.get(versions.DIGEST_FIELD)))
    problems = []
    if event is None or expected_document(event.body).get("email") != document[PENDING_FIELD]:
        problems.append(f"users/{user_id} waits for an address no event of its state holds")
    if document.get("email") is not None:
        problems.append(f"users/{user_id} waits for an address and still holds one")
    return problems


def _document_problems(history: History, store: _Store) -> list[str]:
    # A stored version is known by its object, `updated_at` and digest (versions may share a time).
    by_state: dict[tuple[object, ...], SimEvent] = {
        (event.clerk_id, event.clerk_ms, event.digest): event for event in history.stored_events if event.digest
    }
    problems = []

    def applied(clerk_id: str, document: dict[str, Any]) -> SimEvent | None:
        event = by_state.get((clerk_id, _epoch_ms(document.get("updated_at")), document.get(versions.DIGEST_FIELD)))
        record = store.records.get(event_log.record_id(event.svix_id)) if event else None
        return event if record is not None and record.get("outcome") == "applied" else None

    for user_id, document in store.users.items():
        if PENDING_FIELD in document:
            problems += _parked_problems(by_state, user_id, document)
        elif applied(user_id, document) is None:
            problems.append(f"users/{user_id} holds a state whose event is not recorded as applied")
        if user_id in store.user_tombstones:
            problems.append(f"users/{user_id} exists next to its tombstone")
        key = normalise_email(document["email"]) if isinstance(document.get("email"), str) else None
        if key is not None and store.claims.get(ids.document_id(key), {}).get("clerk_id") != user_id:
            problems.append(f"users/{user_id} holds an email whose claim is not theirs")
    for organization_id, document in store.organizations.items():
        if applied(organization_id, document) is None:
            problems.append(f"organizations/{organization_id} holds a state whose event is not recorded as applied")
        if organization_id in store.organization_tombstones:
            problems.append(f"organizations/{organization_id} exists next to its tombstone")
    for path, document in store.members.items():
        membership_id = str(document.get("membership_id"))
        event = applied(membership_id, document)
        if event is None or member_path(event.member.organization_id, event.member.user_id) != path:
            problems.append(f"{path} holds a state whose event is not recorded as applied there")
        if membership_id in store.membership_tombstones:
            problems.append(f"{path} holds membership {membership_id}, which has a tombstone")
    return problems


def _claim_problems(users: dict[str, dict[str, Any]], claims: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for claim_id, claim in claims.items():
        owner = users.get(str(claim.get("clerk_id")))
        owner_email = owner.get("email") if owner else None
        if not isinstance(owner_email, str) or ids.document_id(normalise_email(owner_email) or "") != claim_id:
            problems.append(f"claim {claim_id} names a user who does not hold that email")
    return problems


def _record_problems(history: History, store: _Store) -> list[str]:
    by_record = {event_log.record_id(event.svix_id): event for event in history.stored_events}
    problems = []
    for record_id, record in store.records.items():
        event = by_record.get(record_id)
        if event is None:
            problems.append(f"record {record_id} is for no event of the history")
            continue
        described = {"type": event.event_type, "clerk_id": event.clerk_id}
        if event.kind == "membership":
            described |= {"organization_id": event.member.organization_id, "user_id": event.member.user_id}
        if {name: record.get(name) for name in described} != described:
            problems.append(f"record {record_id} does not describe its event")
        if record.get("outcome") == "applied":
            problems += [f"applied {problem}" for problem in _effect_problems(event, record_id, store)]
    return problems


def _effect_problems(event: SimEvent, record_id: str, store: _Store) -> list[str]:
    """What an applied event must have left in place (unless something newer or a tombstone took over).

    Billing documents merge many events; `_billing_problems` compares them whole with Clerk's final state.
    """
    clerk_id = str(event.clerk_id)
    if event.kind in BILLING_KINDS:
        return []
    if event.kind == "user":
        if event.is_deletion:
            gone = clerk_id in store.user_tombstones and clerk_id not in store.users
            return [] if gone else [f"deletion {record_id} left no tombstone or a document"]
        stored_ms = _epoch_ms(store.users.get(clerk_id, {}).get("updated_at"))
        kept = clerk_id in store.user_tombstones or (stored_ms is not None and stored_ms >= event.clerk_ms)
        return [] if kept else [f"upsert {record_id} is not in users/{clerk_id}"]
    if event.kind == "organization":
        if event.is_deletion:
            gone = clerk_id in store.organization_tombstones and clerk_id not in store.organizations
            return [] if gone else [f"deletion {record_id} left no tombstone or a document"]
        stored_ms = _epoch_ms(store.organizations.get(clerk_id, {}).get("updated_at"))
        kept = clerk_id in store.organization_tombstones or (stored_ms is not None and stored_ms >= event.clerk_ms)
        return [] if kept else [f"upsert {record_id} is not in organizations/{clerk_id}"]
    member = event.member
    path = member_path(member.organization_id, member.user_id)
    stored = store.members.get(path)
    if event.is_deletion:
        gone = clerk_id in store.membership_tombstones and (stored or {}).get("membership_id") != clerk_id
        return [] if gone else [f"deletion {record_id} left no tombstone or its member"]
    stored_ms = _epoch_ms((stored or {}).get("updated_at"))
    forbidden = (
        clerk_id in store.membership_tombstones
        or member.organization_id in store.organization_tombstones
        or member.user_id in store.user_tombstones
    )
    kept = forbidden or (stored_ms is not None and stored_ms >= event.clerk_ms)
    return [] if kept else [f"upsert {record_id} is not in {path}"]


def _differences(
    seed: int, label: str, stored: dict[str, dict[str, Any]], expected: dict[str, dict[str, Any]]
) -> list[str]:
    """Documents missing or extra, and each document's fields that differ from its final Clerk state."""
    problems = []
    if set(stored) != set(expected):
        problems.append(
            f"SIM_SEED={seed}: {label} missing {sorted(set(expected) - set(stored))}, "
            f"extra {sorted(set(stored) - set(expected))}"
        )
    for key in sorted(set(stored) & set(expected)):
        document = dict(stored[key])
        if document.pop("synced_at", None) is None:
            problems.append(f"SIM_SEED={seed}: {key} has no synced_at")
        if document != expected[key]:
            names = sorted(
                name for name in {*document, *expected[key]} if document.get(name) != expected[key].get(name)
            )
            problems.append(f"SIM_SEED={seed}: {key} differs from its last Clerk state in {names}")
    return problems


def _set_problems(seed: int, label: str, found: Iterable[str], expected: Iterable[str]) -> list[str]:
    found, expected = set(found), set(expected)
    if found == expected:
        return []
    return [f"SIM_SEED={seed}: {label} missing {sorted(expected - found)}, extra {sorted(found - expected)}"]


def final_state_problems(db: firestore.Client, history: History, attempts: list[Attempt], log_text: str) -> list[str]:
    """Every difference between Firestore (and the server's log) and the final Clerk state."""
    seed = history.seed
    store = _Store.read(db)
    problems = _consistency_problems(store, history)
    users_by_path = {f"{PATHS.users}/{user_id}": document for user_id, document in store.users.items()}
    expected_users = {
        f"{PATHS.users}/{user_id}": document for user_id, document in history.expected_documents().items()
    }
    problems += _differences(seed, "users", users_by_path, expected_users)
    problems += _set_problems(seed, "user tombstones", store.user_tombstones, history.deleted)
    claims = {claim_id: (doc.get("email"), doc.get("clerk_id")) for claim_id, doc in store.claims.items()}
    if claims != history.expected_claims():
        problems.append(f"SIM_SEED={seed}: email claims differ from the final live primary emails")
    organizations_by_path = {f"{PATHS.organizations}/{org_id}": doc for org_id, doc in store.organizations.items()}
    expected_organizations = {
        f"{PATHS.organizations}/{org_id}": document for org_id, document in history.expected_organizations().items()
    }
    problems += _differences(seed, "organizations", organizations_by_path, expected_organizations)
    problems += _set_problems(
        seed, "organization tombstones", store.organization_tombstones, history.deleted_organizations
    )
    problems += _differences(seed, "memberships", store.members, history.expected_memberships())
    problems += _under_tombstone_problems(seed, store)
    problems += _set_problems(seed, "membership tombstones", store.membership_tombstones, history.deleted_memberships)
    for membership_id, (organization_id, user_id) in history.deleted_memberships.items():
        tombstone = store.membership_tombstones.get(membership_id)
        if tombstone and (tombstone.get("organization_id"), tombstone.get("user_id")) != (organization_id, user_id):
            problems.append(f"SIM_SEED={seed}: membership tombstone {membership_id} names another member")
    problems += _billing_problems(db, history)
    problems += _accounting_problems(history, store.records, attempts, log_text)
    return problems


def _billing_problems(db: firestore.Client, history: History) -> list[str]:
    """Every payer's subscription and payments exactly as Clerk's final state says; none of a deleted payer."""
    stored_subscriptions: dict[str, dict[str, Any]] = {}
    for snapshot in db.collection_group(billing.BILLING).stream(timeout=30):
        if billing.payer_of(PATHS, snapshot.reference.path, 1) is not None:
            stored_subscriptions[snapshot.reference.path] = snapshot.to_dict() or {}
    stored_payments: dict[str, dict[str, Any]] = {}
    for snapshot in db.collection_group(billing.PAYMENTS).stream(timeout=30):
        if billing.payer_of(PATHS, snapshot.reference.path, 3) is not None:
            stored_payments[snapshot.reference.path] = snapshot.to_dict() or {}
    return [
        *_differences(history.seed, "subscriptions", stored_subscriptions, history.final_subscriptions),
        *_differences(history.seed, "payments", stored_payments, history.final_payments),
    ]


def _under_tombstone_problems(seed: int, store: _Store) -> list[str]:
    """Members that a tombstone forbids: of a deleted organization, of a deleted user, or a deleted membership."""
    problems = []
    for path, document in sorted(store.members.items()):
        organization_id, user_id = _member_ids(path)
        forbidding = [
            name
            for name, forbidden in (
                ("organization", organization_id in store.organization_tombstones),
                ("user", user_id in store.user_tombstones),
                ("membership", document.get("membership_id") in store.membership_tombstones),
            )
            if forbidden
        ]
        if forbidding:
            problems.append(f"SIM_SEED={seed}: {path} is left behind under its {' and '.join(forbidding)} tombstone")
    return problems


def server_log_lines(log_text: str) -> list[dict[str, Any]]:
    """The function's structured JSON lines (gunicorn's own lines are skipped)."""
    lines = []
    for line in log_text.splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _accounting_problems(
    history: History, records: dict[str, dict[str, Any]], attempts: list[Attempt], log_text: str
) -> list[str]:
    """Every svix id ended applied, duplicate, stale or ignored, and the records and logs agree."""
    answered: defaultdict[str, Counter[tuple[int | None, str | None]]] = defaultdict(Counter)
    unanswered: Counter[str] = Counter()
    for attempt in attempts:
        if attempt.status is None:
            unanswered[attempt.svix_id] += 1
        else:
            answered[attempt.svix_id][(attempt.status, attempt.outcome)] += 1
    logged: defaultdict[str, Counter[tuple[int | None, str | None]]] = defaultdict(Counter)
    for line in server_log_lines(log_text):
        if "svix_id" in line:
            logged[str(line["svix_id"])][(line.get("status"), line.get("outcome"))] += 1
    problems = []
    for event in history.events:
        seen = answered[event.svix_id]
        # One log line per request: every answer seen is in the log, and more lines only for
        # requests whose answer never arrived.
        missing = seen - logged[event.svix_id]
        if missing or sum((logged[event.svix_id] - seen).values()) > unanswered[event.svix_id]:
            problems.append(f"SIM_SEED={history.seed}: {event.svix_id} log lines do not match the answers seen")
        problems += [
            f"SIM_SEED={history.seed}: {event.svix_id} ({event.event_type}) {problem}"
            for problem in _outcome_problems(event, seen, records.get(event_log.record_id(event.svix_id)))
        ]
    leaked = sorted(address for address in history.addresses if address in log_text)
    if leaked:
        problems.append(f"SIM_SEED={history.seed}: {len(leaked)} email addresses appear in the server log")
    return problems


def _outcome_problems(
    event: SimEvent, seen: Counter[tuple[int | None, str | None]], record: dict[str, Any] | None
) -> list[str]:
    successes = {outcome for (status, outcome) in seen if status is not None and 200 <= status < 300}
    if not successes or not successes <= SUCCESS_OUTCOMES:
        return [f"ended with {sorted(seen.items(), key=str)}"]
    if event.clerk_id is None:
        return [] if record is None and successes == {"ignored"} else ["was not simply ignored"]
    if record is None or record.get("outcome") not in {"applied", "stale"}:
        return ["has no applied/stale record"]
    first_answers = successes - {"duplicate"}
    if first_answers - {record["outcome"]}:
        return [f"answered {sorted(map(str, first_answers))}, recorded {record['outcome']}"]
    return []
