"""Plays Clerk and Svix against the real function: a seeded, legal user history, delivered messily.

`generate` writes a random but legal Clerk history (every address belongs to at most one live user
at any moment, `updated_at` only grows per user, nothing happens to a user after its deletion).
`deliver` then sends it the way Svix does: every event at least once, some twice with the same
svix id, shuffled within a window, from a thread pool, retrying every non-2xx after a compressed
backoff with a fresh timestamp and signature. The `*_problems` functions compare Firestore with
the final Clerk state; every message they produce names the seed, so `SIM_SEED=N` replays it.
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import json
import os
import random
import string
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from clerk_events import BASE_MS, email_entry, envelope, signed_headers
from conftest import PATHS
from google.cloud import firestore

from clerk_sync import events, ids, users, versions
from clerk_sync.users import normalise_email

SVIX_TIMEOUT_SECONDS = 15.0
SUCCESS_OUTCOMES = frozenset({"applied", "duplicate", "stale", "ignored"})
IGNORED_TYPES = ("session.created", "session.ended", "email.created", "organizationInvitation.created")
FIRST_NAMES = ("Alice", "Bob", "Chidi", "Dana", "Émile", "Fatima", "Göran", "Hiro", "Inés", "Jun", "Zoë", "李")
LAST_NAMES = ("Anders", "Brown", "Okafor", "Nguyen", "Müller", "Haddad", "Sato", "García", None)
DOMAINS = ("example.com", "Example.ORG", "mail.example.net", "example.co.uk")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Direct proxies off: every request of the simulator goes to loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def seed_from_environment() -> int:
    """`SIM_SEED=N` replays run N; otherwise a fresh seed, which every failure message prints."""
    raw = os.environ.get("SIM_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(1, 10**6)


# ----------------------------------------------------------------------------------------------
# Clerk: the history


@dataclass(frozen=True)
class SimEvent:
    """One Clerk event as Svix sends it; the svix id stays the same on every retry."""

    svix_id: str
    event_type: str
    user_id: str | None
    body: str
    order: int
    clerk_ms: int


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


@dataclass
class History:
    """A Clerk history and the final Clerk state it leads to."""

    seed: int
    events: list[SimEvent]
    final_bodies: dict[str, str]
    deleted: set[str]
    stories: Counter[str]
    addresses: set[str]

    @property
    def user_events(self) -> list[SimEvent]:
        """The events the store writes (upserts and deletions)."""
        return [event for event in self.events if event.user_id is not None]

    @property
    def ignored_events(self) -> list[SimEvent]:
        """Events of other types: acknowledged, never stored."""
        return [event for event in self.events if event.user_id is None]

    def expected_documents(self) -> dict[str, dict[str, Any]]:
        """Each live user's document as the function builds it from that user's last state."""
        documents: dict[str, dict[str, Any]] = {}
        for user_id, body in self.final_bodies.items():
            parsed = events.parse_event(body.encode())
            assert isinstance(parsed, users.UserUpsert)
            documents[user_id] = {**parsed.document, versions.DIGEST_FIELD: parsed.digest}
        return documents

    def expected_claims(self) -> dict[str, tuple[str, str]]:
        """Claim document id -> (normalised primary email, owner) for the final state."""
        claims: dict[str, tuple[str, str]] = {}
        for user_id, document in self.expected_documents().items():
            if document["email"]:
                key = normalise_email(document["email"])
                assert key is not None
                claims[ids.document_id(key)] = (key, user_id)
        return claims


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
        self.final_bodies: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.stories: Counter[str] = Counter()
        self.addresses: set[str] = set()

    def tick(self) -> int:
        self.clock += self.rng.randint(1, 4000)
        return self.clock

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_s{self.seed}n{next(self.counter):05d}"

    def emit(self, event_type: str, data: dict[str, Any], user_id: str | None, clerk_ms: int) -> None:
        body = json.dumps(envelope(event_type, data, timestamp=clerk_ms))
        svix_id = f"msg_{self.seed}x{len(self.events):06d}"
        self.events.append(SimEvent(svix_id, event_type, user_id, body, len(self.events), clerk_ms))

    def emit_user(self, user: _User, event_type: str = "user.updated") -> None:
        user.updated_at = self.tick()
        self.emit(event_type, user.data(), user.user_id, user.updated_at)
        self.final_bodies[user.user_id] = self.events[-1].body

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

    # -- actions --

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

    def rename(self, user: _User) -> None:
        user.first_name = self.rng.choice(FIRST_NAMES)
        user.last_name = self.rng.choice(LAST_NAMES)
        self.stories["rename"] += 1
        self.emit_user(user)

    def edit_metadata(self, user: _User) -> None:
        user.public_metadata = {
            "plan": self.rng.choice(["free", "pro", "team"]),
            "seats": self.rng.randint(1, 500),
            "tags": self.rng.sample(["beta", "admin", "ops", "eu", "us"], self.rng.randint(0, 3)),
            "limits": {"projects": self.rng.randint(0, 9), "ratio": round(self.rng.random(), 3)},
        }
        user.unsafe_metadata = {"theme": self.rng.choice(["dark", "light"]), "onboarded": self.rng.random() < 0.5}
        user.private_metadata = {"stripe_customer": "cus_" + "".join(self.rng.choices(string.ascii_letters, k=10))}
        self.stories["metadata"] += 1
        self.emit_user(user)

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
        for _, address in user.emails:
            self.release(address)
        del self.users[user.user_id]
        self.final_bodies.pop(user.user_id, None)
        self.deleted.add(user.user_id)
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

    def ignored(self) -> None:
        event_type = self.rng.choice(IGNORED_TYPES)
        someone = self.rng.choice(self.live()).user_id if self.users else "user_unknown"
        data: dict[str, Any] = {"id": self.next_id("obj"), "object": event_type.split(".")[0], "user_id": someone}
        self.stories["ignored"] += 1
        self.emit(event_type, data, None, self.tick())

    # -- stories that every history tells at least once --

    def story_move(self) -> bool:
        """A drops its primary address; later B takes it as primary (the 409 path)."""
        owners = [user for user in self.with_emails() if user.primary_email]
        if not owners or len(self.users) < 2:
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
        if not candidates:
            return False
        self.change_primary(self.rng.choice(candidates))
        return True

    def random_step(self, users_target: int, created: int) -> None:
        roll = self.rng.random()
        if not self.users or (created < users_target and roll < 0.25):
            self.create(self.rng.choices(["email", "phone", "username"], weights=[8, 2, 1])[0])
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
        else:
            self.sign_in_or_flags(user)


def generate(seed: int, *, users: int, events_target: int) -> History:
    """A legal Clerk history of about `events_target` events for about `users` users."""
    generator = _Generator(seed)
    for kind in ["email"] * 3 + ["phone", "username"]:
        generator.create(kind)
    stories: list[Callable[[], bool]] = [
        generator.story_move,
        generator.story_primary_change,
        generator.story_delete_then_reuse,
        generator.story_move,
    ]
    story_steps = sorted(generator.rng.sample(range(10, max(11, events_target - 10)), len(stories)))
    step = 0
    while len(generator.events) < events_target:
        if stories and story_steps and step >= story_steps[0] and stories[0]():
            stories.pop(0)
            story_steps.pop(0)
        else:
            created = sum(count for name, count in generator.stories.items() if name.startswith("create_"))
            generator.random_step(users, created)
        step += 1
    return History(
        seed=seed,
        events=generator.events,
        final_bodies=generator.final_bodies,
        deleted=generator.deleted,
        stories=generator.stories,
        addresses=generator.addresses,
    )


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
    return History(
        seed=seed,
        events=generator.events,
        final_bodies=generator.final_bodies,
        deleted=generator.deleted,
        stories=generator.stories,
        addresses=generator.addresses,
    )


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
    sim_events: Iterable[SimEvent], rng: random.Random, *, duplicate_share: float, window: float
) -> list[Delivery]:
    """Arrival order: each event within `window` places of its turn; some get a second copy later."""
    arrivals: list[tuple[float, Delivery]] = []
    for event in sim_events:
        arrivals.append((event.order + rng.uniform(0, window), Delivery(event, 0)))
        if rng.random() < duplicate_share:
            arrivals.append((event.order + rng.uniform(0, 3 * window), Delivery(event, 1)))
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
                elif arrivals:
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


def shared_primary_emails(db: firestore.Client) -> dict[str, list[str]]:
    """Normalised primary emails that more than one user document holds (one consistent query)."""
    owners: defaultdict[str, list[str]] = defaultdict(list)
    for user_id, document in _documents(db, PATHS.users).items():
        if isinstance(document.get("email"), str):
            owners[normalise_email(document["email"]) or ""].append(user_id)
    return {key: ids for key, ids in owners.items() if len(ids) > 1}


def consistency_problems(db: firestore.Client, history: History) -> list[str]:
    """What a half-written event would leave behind; only meaningful while nothing is in flight.

    Each event writes its user document, claims and record in one commit, so at rest: every
    document is exactly one recorded, applied event's state, every claim is held by the document
    that names it, and every recorded deletion left a tombstone and no document.
    """
    users = _documents(db, PATHS.users)
    claims = _documents(db, PATHS.claims)
    tombstones = _documents(db, PATHS.user_tombstones)
    records = _documents(db, PATHS.events)
    return [
        f"SIM_SEED={history.seed}: {problem}"
        for problem in [
            *_document_problems(history, users, claims, tombstones, records),
            *_claim_problems(users, claims),
            *_record_problems(history, users, tombstones, records),
        ]
    ]


def _epoch_ms(moment: datetime) -> int:
    return round((moment - EPOCH) / timedelta(milliseconds=1))


def _document_problems(
    history: History,
    users: dict[str, dict[str, Any]],
    claims: dict[str, dict[str, Any]],
    tombstones: dict[str, dict[str, Any]],
    records: dict[str, dict[str, Any]],
) -> list[str]:
    by_state = {(event.user_id, event.clerk_ms): event for event in history.user_events}
    problems = []
    for user_id, document in users.items():
        updated = document.get("updated_at")
        event = by_state.get((user_id, _epoch_ms(updated))) if isinstance(updated, datetime) else None
        record = records.get(ids.document_id(event.svix_id)) if event else None
        if record is None or record.get("outcome") != "applied":
            problems.append(f"users/{user_id} holds a state whose event is not recorded as applied")
        if user_id in tombstones:
            problems.append(f"users/{user_id} exists next to its tombstone")
        key = normalise_email(document["email"]) if isinstance(document.get("email"), str) else None
        if key is not None and claims.get(ids.document_id(key), {}).get("clerk_id") != user_id:
            problems.append(f"users/{user_id} holds an email whose claim is not theirs")
    return problems


def _claim_problems(users: dict[str, dict[str, Any]], claims: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for claim_id, claim in claims.items():
        owner = users.get(str(claim.get("clerk_id")))
        owner_email = owner.get("email") if owner else None
        if not isinstance(owner_email, str) or ids.document_id(normalise_email(owner_email) or "") != claim_id:
            problems.append(f"claim {claim_id} names a user who does not hold that email")
    return problems


def _record_problems(
    history: History,
    users: dict[str, dict[str, Any]],
    tombstones: dict[str, dict[str, Any]],
    records: dict[str, dict[str, Any]],
) -> list[str]:
    by_record = {ids.document_id(event.svix_id): event for event in history.user_events}
    problems = []
    for record_id, record in records.items():
        event = by_record.get(record_id)
        if event is None:
            problems.append(f"record {record_id} is for no event of the history")
            continue
        if record.get("type") != event.event_type or record.get("clerk_id") != event.user_id:
            problems.append(f"record {record_id} does not describe its event")
        if record.get("outcome") != "applied":
            continue
        if event.event_type == "user.deleted":
            if event.user_id not in tombstones or event.user_id in users:
                problems.append(f"applied deletion {record_id} left no tombstone or a document")
            continue
        stored_at = users.get(str(event.user_id), {}).get("updated_at")
        if event.user_id not in tombstones and (
            not isinstance(stored_at, datetime) or _epoch_ms(stored_at) < event.clerk_ms
        ):
            problems.append(f"applied upsert {record_id} is not in users/{event.user_id}")
    return problems


def final_state_problems(db: firestore.Client, history: History, attempts: list[Attempt], log_text: str) -> list[str]:
    """Every difference between Firestore (and the server's log) and the final Clerk state."""
    seed = history.seed
    problems = consistency_problems(db, history)
    users = _documents(db, PATHS.users)
    expected = history.expected_documents()
    if set(users) != set(expected):
        problems.append(
            f"SIM_SEED={seed}: users missing {sorted(set(expected) - set(users))}, "
            f"extra {sorted(set(users) - set(expected))}"
        )
    for user_id in set(users) & set(expected):
        stored = dict(users[user_id])
        if stored.pop("synced_at", None) is None:
            problems.append(f"SIM_SEED={seed}: users/{user_id} has no synced_at")
        if stored != expected[user_id]:
            fields = sorted(name for name in expected[user_id] if stored.get(name) != expected[user_id][name])
            problems.append(f"SIM_SEED={seed}: users/{user_id} differs from its last Clerk state in {fields}")
    tombstones = set(_documents(db, PATHS.user_tombstones))
    if tombstones != history.deleted:
        problems.append(
            f"SIM_SEED={seed}: tombstones missing {sorted(history.deleted - tombstones)}, "
            f"extra {sorted(tombstones - history.deleted)}"
        )
    claims = {
        claim_id: (doc.get("email"), doc.get("clerk_id")) for claim_id, doc in _documents(db, PATHS.claims).items()
    }
    if claims != history.expected_claims():
        problems.append(f"SIM_SEED={seed}: email claims differ from the final live primary emails")
    problems += _accounting_problems(db, history, attempts, log_text)
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


def _accounting_problems(db: firestore.Client, history: History, attempts: list[Attempt], log_text: str) -> list[str]:
    """Every svix id ended applied, duplicate, stale or ignored, and the records and logs agree."""
    records = _documents(db, PATHS.events)
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
            for problem in _outcome_problems(event, seen, records.get(ids.document_id(event.svix_id)))
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
    if event.user_id is None:
        return [] if record is None and successes == {"ignored"} else ["was not simply ignored"]
    if record is None or record.get("outcome") not in {"applied", "stale"}:
        return ["has no applied/stale record"]
    first_answers = successes - {"duplicate"}
    if first_answers - {record["outcome"]}:
        return [f"answered {sorted(map(str, first_answers))}, recorded {record['outcome']}"]
    return []
