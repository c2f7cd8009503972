"""A local stand-in for Clerk's Backend API on loopback: users, organizations, memberships, roles, permissions.

It serves the documented response shapes (lists with limit/offset and the orderings Clerk offers,
users also by cursor, `GET` by id answering 404 for what is gone), so the real `clerk-backend-api`
client parses them, and answers chosen requests with a fault (429 + Retry-After, 500) to exercise
the retries. The tests serve it in-process; people start it on its own to try reconcile without a
Clerk instance (`.venv/bin/python tests/clerk_api.py --help`, docs/local-development.md). Generated
users and memberships (`Generated`) are made when a request asks for them, so a million of each
cost no memory.

  GET /v1/instance (the key's instance: id and environment_type)
  GET /v1/users (also `starting_after=<user id>`), /v1/users/count, /v1/users/{id}
  GET /v1/organizations, /v1/organizations/{id}, /v1/organizations/{id}/memberships?user_id=...
  GET /v1/organization_memberships
  GET /v1/billing/plans, /v1/billing/subscription_items
  GET /v1/users/{id}/billing/subscription, /v1/organizations/{id}/billing/subscription
  GET /v1/organization_roles, /v1/organization_roles/{id}
  GET /v1/organization_permissions, /v1/organization_permissions/{id}
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, overload

from loopback import serving

SECRET_KEY = "sk_test_backfill0000000000000000000000000000"
INSTANCE_ID = "ins_2standin000000000000000000"
BASE_MS = 1_756_382_400_000


def api_user(
    user_id: str,
    *,
    email: str | None,
    created_at: int,
    updated_at: int,
    first_name: str | None = "Grace",
    last_name: str | None = "Hopper",
) -> dict[str, Any]:
    """A User object exactly as `GET /v1/users` returns it (verification objects carry `object`)."""
    email_id = f"idn_{user_id}_email"
    addresses = (
        [
            {
                "id": email_id,
                "object": "email_address",
                "email_address": email,
                "reserved": False,
                "verification": {
                    "object": "verification_otp",
                    "status": "verified",
                    "strategy": "email_code",
                    "attempts": 1,
                    "expire_at": created_at + 600_000,
                },
                "linked_to": [],
                "matches_sso_connection": False,
                "created_at": created_at,
                "updated_at": updated_at,
            }
        ]
        if email
        else []
    )
    return {
        "id": user_id,
        "object": "user",
        "external_id": None,
        "primary_email_address_id": email_id if email else None,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "username": None,
        "first_name": first_name,
        "last_name": last_name,
        "profile_image_url": "https://www.gravatar.com/avatar?d=mp",
        "image_url": "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCJ9",
        "has_image": False,
        "public_metadata": {"plan": "pro"},
        "private_metadata": {"stripe_customer": "cus_backfill_secret"},
        "unsafe_metadata": {},
        "email_addresses": addresses,
        "phone_numbers": [],
        "web3_wallets": [],
        "passkeys": [],
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "mfa_enabled_at": None,
        "mfa_disabled_at": None,
        "external_accounts": [],
        "saml_accounts": [],
        "enterprise_accounts": [],
        "last_sign_in_at": updated_at - 1000,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "created_at": created_at,
        "updated_at": updated_at,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "create_organizations_limit": None,
        "last_active_at": updated_at,
        "legal_accepted_at": None,
        "locale": None,
    }


def api_organization(organization_id: str, *, name: str, created_at: int, updated_at: int) -> dict[str, Any]:
    """An Organization object as `GET /v1/organizations` returns it."""
    return {
        "object": "organization",
        "id": organization_id,
        "name": name,
        "slug": name.lower().replace(" ", "-"),
        "image_url": "https://img.clerk.com/org",
        "has_image": False,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {"tier": "gold"},
        "private_metadata": {"billing": "org_backfill_secret"},
        "created_by": None,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def api_membership(
    membership_id: str, organization: dict[str, Any], user: dict[str, Any], *, role: str, updated_at: int
) -> dict[str, Any]:
    """An OrganizationMembership object as the membership lists return it."""
    return {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": role.removeprefix("org:").title(),
        "permissions": ["org:sys_memberships:read"],
        "public_metadata": {},
        "private_metadata": {"seat": "member_secret"},
        "organization": {key: value for key, value in organization.items() if key != "private_metadata"},
        "public_user_data": {
            "user_id": user["id"],
            "first_name": user.get("first_name"),
            "last_name": user.get("last_name"),
            "image_url": user.get("image_url"),
            "has_image": False,
            "identifier": f"{user['id']}@example.com",
            "username": None,
            "profile_image_url": None,
        },
        "created_at": updated_at - 1000,
        "updated_at": updated_at,
    }


def _money(amount: int) -> dict[str, Any]:
    return {"amount": amount, "amount_formatted": f"${amount / 100:.2f}", "currency": "USD", "currency_symbol": "$"}


def api_plan(slug: str, features: list[str], *, amount: int = 2000, payer_type: str = "user") -> dict[str, Any]:
    """A CommercePlan as `GET /v1/billing/plans` returns it."""
    return {
        "object": "commerce_plan",
        "id": f"cplan_{slug}",
        "name": slug.replace("-", " ").title(),
        "fee": _money(amount),
        "annual_monthly_fee": _money(amount * 10 // 12),
        "annual_fee": _money(amount * 10),
        "description": None,
        "product_id": "cprod_standin",
        "is_default": amount == 0,
        "is_recurring": amount > 0,
        "publicly_visible": True,
        "has_base_fee": amount > 0,
        "for_payer_type": payer_type,
        "slug": slug,
        "avatar_url": None,
        "features": [
            {
                "object": "feature",
                "id": f"feat_{name}",
                "name": name.title(),
                "slug": name,
                "description": None,
                "avatar_url": None,
            }
            for name in features
        ],
        "free_trial_enabled": False,
        "free_trial_days": None,
    }


def api_payer(payer_type: str, payer_id: str) -> dict[str, Any]:
    """A CommercePayer (the user or organization that pays)."""
    is_user = payer_type == "user"
    return {
        "object": "commerce_payer",
        "id": f"cpayer_{payer_id}",
        "instance_id": INSTANCE_ID,
        "user_id": payer_id if is_user else None,
        "organization_id": None if is_user else payer_id,
        "first_name": "Grace" if is_user else None,
        "last_name": "Hopper" if is_user else None,
        "email": "grace.hopper@example.com" if is_user else "billing@example.com",
        "organization_name": None if is_user else "Acme",
        "image_url": "https://img.clerk.com/xxxxxx",
        "created_at": BASE_MS,
        "updated_at": BASE_MS,
    }


def api_subscription_item(
    item_id: str,
    plan: dict[str, Any],
    payer_type: str,
    payer_id: str,
    *,
    status: str = "active",
    updated_at: int = BASE_MS,
    seats: int | None = None,
) -> dict[str, Any]:
    """A CommerceSubscriptionItem as the Backend API returns it (listed, or nested in the payer's subscription)."""
    return {
        "object": "commerce_subscription_item",
        "id": item_id,
        "instance_id": INSTANCE_ID,
        "status": status,
        "plan_id": plan["id"],
        "price_id": None,
        "plan": plan,
        "plan_period": "month",
        "payer_id": f"cpayer_{payer_id}",
        "payer": api_payer(payer_type, payer_id),
        "is_free_trial": False,
        "period_start": BASE_MS - 60_000,
        "period_end": None if status == "ended" else BASE_MS - 60_000 + 30 * 24 * 3600 * 1000,
        "canceled_at": updated_at if status == "canceled" else None,
        "past_due_at": updated_at if status == "past_due" else None,
        "ended_at": updated_at if status == "ended" else None,
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
        "seats": {"quantity": seats} if seats is not None else None,
    }


def api_subscription(
    subscription_id: str, payer_type: str, payer_id: str, items: list[dict[str, Any]], *, updated_at: int = BASE_MS
) -> dict[str, Any]:
    """A CommerceSubscription as `GET /v1/users/{id}/billing/subscription` returns it: no payer object."""
    past_due = any(item["status"] == "past_due" for item in items)
    return {
        "object": "commerce_subscription",
        "id": subscription_id,
        "instance_id": INSTANCE_ID,
        "status": "past_due" if past_due else "active",
        "payer_id": f"cpayer_{payer_id}",
        "created_at": BASE_MS - 60_000,
        "updated_at": updated_at,
        "active_at": BASE_MS - 60_000,
        "past_due_at": updated_at if past_due else None,
        "subscription_items": items,
        "eligible_for_free_trial": False,
    }


class Generated(Sequence[dict[str, Any]]):
    """`count` objects made on demand, oldest first (object `index` is `make(index)`, its id `prefix + index`).

    Each is made when a request lists or asks for it and dropped after: a million users take no memory.
    """

    def __init__(self, count: int, make: Callable[[int], dict[str, Any]], prefix: str) -> None:
        self.size, self.make, self.prefix = count, make, prefix

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self.make(position) for position in range(*index.indices(self.size))]
        if not -self.size <= index < self.size:
            raise IndexError(index)
        return self.make(index % self.size)

    def index_of(self, object_id: str) -> int | None:
        """Where the object with this id is (None: not one of these)."""
        digits = object_id.removeprefix(self.prefix)
        if digits == object_id or not digits.isdigit():
            return None
        index = int(digits)
        return index if index < self.size and self.make(index)["id"] == object_id else None


def generated_user(index: int) -> dict[str, Any]:
    """The stand-in's generated user `index` (`user_standin0000`, created a second after the one before)."""
    return api_user(
        f"user_standin{index:04d}",
        email=f"person{index}@example.com",
        created_at=BASE_MS + index * 1000,
        updated_at=BASE_MS + index * 1000 + 500,
        first_name="Person",
        last_name=str(index),
    )


def generated_users(count: int) -> Generated:
    """`count` generated users, made on demand."""
    return Generated(count, generated_user, "user_standin")


def generated_organizations(count: int) -> list[dict[str, Any]]:
    """`count` organizations (`org_standin0000` ...); few enough to hold."""
    return [
        api_organization(f"org_standin{index:04d}", name=f"Standin {index}", created_at=BASE_MS + index,
                         updated_at=BASE_MS + index)
        for index in range(count)
    ]  # fmt: skip


def generated_memberships(count: int, organizations: list[dict[str, Any]], users: int) -> Generated:
    """`count` memberships made on demand: the i-th puts generated user `i % users` in `organizations[i % len]`.

    Every pair differs while `count` is at most the least common multiple of the two counts.
    """
    if count > math.lcm(len(organizations), users):
        raise ValueError(f"{count} memberships would repeat a pair: at most lcm({len(organizations)}, {users})")

    def make(index: int) -> dict[str, Any]:
        organization = organizations[index % len(organizations)]
        user = generated_user(index % users)
        return api_membership(f"orgmem_standin{index:07d}", organization, user, role="org:member",
                              updated_at=BASE_MS + 10_000 + index)  # fmt: skip

    return Generated(count, make, "orgmem_standin")


# Clerk's system permissions, and its two default roles (every instance with organizations has them).
SYSTEM_PERMISSIONS = (
    "org:sys_profile:manage",
    "org:sys_profile:delete",
    "org:sys_memberships:read",
    "org:sys_memberships:manage",
    "org:sys_domains:read",
    "org:sys_domains:manage",
    "org:sys_billing:read",
    "org:sys_billing:manage",
)
DEFAULT_ROLES = {"org:admin": SYSTEM_PERMISSIONS, "org:member": ("org:sys_memberships:read",)}


def api_permission(permission_id: str, key: str, *, created_at: int, updated_at: int) -> dict[str, Any]:
    """A Permission object as `GET /v1/organization_permissions` returns it (and roles nest it)."""
    system = key.startswith("org:sys_")
    return {
        "object": "permission",
        "id": permission_id,
        "name": key.rsplit(":", 1)[-1].replace("_", " ").title(),
        "key": key,
        "description": f"{'System permission' if system else 'Permission'} {key}",
        "type": "system" if system else "user",
        "created_at": created_at,
        "updated_at": updated_at,
    }


def api_role(
    role_id: str, key: str, permissions: list[dict[str, Any]], *, created_at: int, updated_at: int
) -> dict[str, Any]:
    """A Role object as `GET /v1/organization_roles` returns it: its permissions nested whole."""
    return {
        "object": "role",
        "id": role_id,
        "name": key.removeprefix("org:").replace("_", " ").title(),
        "key": key,
        "description": None,
        "is_creator_eligible": key == "org:admin",
        "permissions": permissions,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def roles_with_permissions(
    roles: dict[str, tuple[str, ...]], *, created_at: int, updated_at: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Roles by key with their permission keys, as Clerk would list them: (roles, permissions)."""
    permissions: dict[str, dict[str, Any]] = {}
    for keys in roles.values():
        for key in keys:
            permission_id = "perm_standin_" + key.replace(":", "_")
            permissions.setdefault(
                key, api_permission(permission_id, key, created_at=created_at, updated_at=updated_at)
            )
    listed = [
        api_role(
            "role_standin_" + key.replace(":", "_"),
            key,
            [permissions[permission] for permission in keys],
            created_at=created_at,
            updated_at=updated_at,
        )
        for key, keys in roles.items()
    ]
    return listed, list(permissions.values())


@dataclass
class Request:
    """One request the fake API saw."""

    at: float
    path: str
    query: dict[str, str]
    authorization: str | None
    status: int


@dataclass
class FakeClerk:
    """What the fake API serves and the faults it injects.

    `faults` answers the n-th `GET /v1/users` list request; `path_faults` the n-th request of any path;
    `after` runs after the n-th request of a path is answered (Clerk changing during a run).
    """

    users: list[dict[str, Any]]
    organizations: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)
    generated: dict[str, Generated] = field(default_factory=dict)  # "users" / "memberships": served instead
    plans: list[dict[str, Any]] = field(default_factory=list)
    subscriptions: dict[str, dict[str, Any]] = field(default_factory=dict)  # payer id -> its subscription
    roles: list[dict[str, Any]] = field(default_factory=list)
    permissions: list[dict[str, Any]] = field(default_factory=list)
    unlisted: set[str] = field(default_factory=set)  # ids a listing misses, though GET by id finds them
    faults: dict[int, tuple[int, dict[str, str]]] = field(default_factory=dict)
    path_faults: dict[tuple[str, int], tuple[int, dict[str, str]]] = field(default_factory=dict)
    after: dict[tuple[str, int], Callable[[], None]] = field(default_factory=dict)
    instance_id: str = INSTANCE_ID
    environment_type: str = "development"
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def list_requests(self, path: str = "/v1/users") -> list[Request]:
        """The requests for `path`, in arrival order."""
        return [request for request in self.requests if request.path == path]

    def served(self, kind: str) -> list[dict[str, Any]] | Generated:
        """The users or memberships served: the generated ones if any, else the list."""
        return self.generated.get(kind) or (self.users if kind == "users" else self.memberships)

    def answer(  # noqa: PLR0912 (one branch per endpoint)
        self, path: str, query: dict[str, str], authorization: str | None
    ) -> tuple[int, dict[str, str], Any]:
        """Status, headers and JSON body for one request, as Clerk documents them."""
        if authorization != f"Bearer {SECRET_KEY}":
            return 401, {}, _errors("authentication_invalid", "Invalid authentication")
        index = len(self.list_requests(path)) - 1
        fault = self.path_faults.get((path, index)) or (self.faults.get(index) if path == "/v1/users" else None)
        if fault is not None:
            status, headers = fault
            return status, headers, _errors("rate_limit_exceeded" if status == 429 else "internal_error", "fault")
        limit = int(query.get("limit", "10"))
        offset = int(query.get("offset", "0"))
        if not 1 <= limit <= 500 or offset < 0:
            return 422, {}, _errors("form_param_value_invalid", "limit must be 1-500")
        parts = path.removeprefix("/v1/").split("/")
        if parts == ["instance"]:
            instance = {"object": "instance", "id": self.instance_id, "environment_type": self.environment_type}
            return 200, {}, {**instance, "allowed_origins": None}
        users, memberships = self.served("users"), self.served("memberships")
        if parts == ["users", "count"]:
            return 200, {}, {"object": "total_count", "total_count": len(users)}
        if parts == ["users"]:
            listed = users
            if self.unlisted:
                listed = [user for user in users if user["id"] not in self.unlisted]
            if "starting_after" in query:
                # Clerk's cursor (with created_at ordering): the page after that user. One it does
                # not know (deleted since) is refused; Clerk does not document what it answers then.
                after = _position(listed, query, query["starting_after"])
                if after is None:
                    return 422, {}, _errors("form_param_value_invalid", "starting_after: no such user")
                offset = after + 1
            return 200, {}, _page(listed, query, limit, offset)
        if parts in (["organizations"], ["organization_memberships"]):
            listed = self.organizations if parts == ["organizations"] else memberships
            return 200, {}, _listing(_page(listed, query, limit, offset), len(listed))
        if parts[0] == "billing" or parts[2:] == ["billing", "subscription"]:
            return self.billing(parts, limit, offset)
        definitions = {"organization_roles": self.roles, "organization_permissions": self.permissions}
        if len(parts) == 1 and parts[0] in definitions:
            listed = [item for item in definitions[parts[0]] if item["id"] not in self.unlisted]
            return 200, {}, _listing(_page(listed, query, limit, offset), len(listed))
        objects = {"users": users, "organizations": self.organizations, **definitions}
        if len(parts) == 2 and parts[0] in objects:
            found = _by_id(objects[parts[0]], parts[1])
            return (200, {}, found) if found else (404, {}, _errors("resource_not_found", "not found"))
        if len(parts) == 3 and parts[0] == "organizations" and parts[2] == "memberships":
            if not _by_id(self.organizations, parts[1]):
                return 404, {}, _errors("resource_not_found", "not found")
            wanted = set(query.get("user_id", "").split(",")) - {""}
            members = [
                member
                for member in memberships
                if member["organization"]["id"] == parts[1]
                and (not wanted or member["public_user_data"]["user_id"] in wanted)
            ]
            return 200, {}, _listing(_page(members, query, limit, offset), len(members))
        return 404, {}, _errors("resource_not_found", "Not found")

    def billing(self, parts: list[str], limit: int, offset: int) -> tuple[int, dict[str, str], Any]:
        """Plans, every subscription item, and a payer's subscription (404 for a payer without one)."""
        if parts == ["billing", "plans"]:
            return 200, {}, _listing(self.plans[offset : offset + limit], len(self.plans))
        if parts == ["billing", "subscription_items"]:
            items = [
                item for subscription in self.subscriptions.values() for item in subscription["subscription_items"]
            ]
            return 200, {}, _listing(items[offset : offset + limit], len(items))
        found = self.subscriptions.get(parts[1]) if len(parts) == 4 else None
        return (200, {}, found) if found else (404, {}, _errors("resource_not_found", "not found"))


def _by_id(objects: list[dict[str, Any]] | Generated, object_id: str) -> dict[str, Any] | None:
    if isinstance(objects, Generated):
        index = objects.index_of(object_id)
        return None if index is None else objects[index]
    return next((item for item in objects if item["id"] == object_id), None)


def _ordered(objects: list[dict[str, Any]] | Generated, query: dict[str, str]) -> Sequence[dict[str, Any]]:
    """The objects in the order asked for (`created_at` or `updated_at`, `+` or `-`), ties by id."""
    order = query.get("order_by", "-created_at")
    if isinstance(objects, Generated):  # made oldest first, each changed after the one before
        return objects if order.startswith("+") else _Reversed(objects)
    field_name = order.lstrip("+-")
    return sorted(objects, key=lambda item: (item[field_name], item["id"]), reverse=order.startswith("-"))


class _Reversed(Sequence[dict[str, Any]]):
    """Generated objects newest first, still made on demand."""

    def __init__(self, objects: Generated) -> None:
        self.objects = objects

    def __len__(self) -> int:
        return len(self.objects)

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        count = len(self.objects)
        if isinstance(index, slice):
            return [self.objects[count - 1 - position] for position in range(*index.indices(count))]
        return self.objects[count - 1 - (index % count)]


def _page(
    objects: list[dict[str, Any]] | Generated, query: dict[str, str], limit: int, offset: int
) -> list[dict[str, Any]]:
    """One page in the order asked for."""
    return list(_ordered(objects, query)[offset : offset + limit])


def _position(objects: list[dict[str, Any]] | Generated, query: dict[str, str], object_id: str) -> int | None:
    """Where the object with this id is in the order asked for (None: not there)."""
    if isinstance(objects, Generated):
        index = objects.index_of(object_id)
        if index is None:
            return None
        return index if query.get("order_by", "-created_at").startswith("+") else len(objects) - 1 - index
    ordered = _ordered(objects, query)
    return next((position for position, item in enumerate(ordered) if item["id"] == object_id), None)


def _listing(data: list[dict[str, Any]], total: int) -> dict[str, Any]:
    return {"data": data, "total_count": total}


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "long_message": message, "code": code}], "meta": {}}


@contextmanager
def serve(fake: FakeClerk, port: int = 0) -> Iterator[FakeClerk]:
    """Serve `fake` on loopback (a free port unless `port`; `url` is the client's server_url) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parsed = urllib.parse.urlsplit(self.path)
            pairs = urllib.parse.parse_qsl(parsed.query)
            query = {name: ",".join(value for key, value in pairs if key == name) for name, _ in pairs}
            with fake.lock:
                record = Request(time.monotonic(), parsed.path, query, self.headers.get("Authorization"), 0)
                fake.requests.append(record)
                status, headers, body = fake.answer(parsed.path, query, record.authorization)
                record.status = status
                then = fake.after.get((parsed.path, len(fake.list_requests(parsed.path)) - 1))
                if then is not None:
                    then()
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test asserts on `fake.requests` instead."""

    with serving(Handler, port) as base:
        fake.url = f"{base}/v1"
        yield fake


def _pair(text: str, count: int, what: str) -> list[str]:
    parts = text.split(":", count - 1)
    if len(parts) != count or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return parts


def standing_in(argv: list[str] | None = None) -> tuple[FakeClerk, int]:
    """The Clerk a command line describes: generated users, and named users, organizations, memberships."""
    parser = argparse.ArgumentParser(
        prog=".venv/bin/python tests/clerk_api.py",
        description="Serve a stand-in for Clerk's Backend API on 127.0.0.1 until Ctrl-C. It accepts one "
        f"secret key, {SECRET_KEY}, and belongs to instance {INSTANCE_ID}.",
    )
    parser.add_argument("--port", type=int, default=8099, help="default: %(default)s")
    parser.add_argument("--users", type=int, default=0, metavar="N", help="N generated users (user_standin0000 ...)")
    parser.add_argument("--organizations", type=int, default=0, metavar="N",
                        help="N generated organizations (org_standin0000 ...)")  # fmt: skip
    parser.add_argument("--memberships", type=int, default=0, metavar="N",
                        help="N generated memberships: the i-th puts generated user i %% users in generated "
                        "organization i %% organizations")  # fmt: skip
    parser.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="ID:EMAIL:FIRST:LAST",
        type=lambda text: _pair(text, 4, "ID:EMAIL:FIRST:LAST"),
        help="a user (repeatable)",
    )
    parser.add_argument(
        "--organization",
        action="append",
        default=[],
        metavar="ID:NAME",
        type=lambda text: _pair(text, 2, "ID:NAME"),
        help="an organization (repeatable)",
    )
    parser.add_argument(
        "--membership",
        action="append",
        default=[],
        metavar="ORG_ID:USER_ID:ROLE",
        type=lambda text: _pair(text, 3, "ORG_ID:USER_ID:ROLE"),
        help="a member of a named organization (repeatable; ROLE like org:admin)",
    )
    parser.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="KEY:PERMISSION,...",
        help="a custom role and its permission keys, besides Clerk's org:admin and org:member (repeatable), "
        "e.g. org:editor:org:posts:edit,org:posts:read",
    )
    parser.add_argument("--environment", default="development", help="the instance's environment_type")
    parser.add_argument("--instance-id", default=INSTANCE_ID, help="another instance's id (its key stays the same)")
    parser.add_argument("--answer-429", action="append", default=[], metavar="PATH:N",
                        type=lambda text: _pair(text, 2, "PATH:N"),
                        help="the N-th request (from 0) of PATH answers 429 (repeatable)")  # fmt: skip
    parser.add_argument("--retry-after", default="1", metavar="SECONDS",
                        help="the Retry-After of those 429s (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    now = int(time.time() * 1000)
    generated: dict[str, Generated] = {"users": generated_users(args.users)}
    users: list[dict[str, Any]] = []
    if args.user:  # named users too: a list (the generated ones made now)
        users = [*generated.pop("users"), *(api_user(user_id, email=email, created_at=BASE_MS, updated_at=now,
                 first_name=first, last_name=last) for user_id, email, first, last in args.user)]  # fmt: skip
    organizations = generated_organizations(args.organizations) + [
        api_organization(organization_id, name=name, created_at=BASE_MS, updated_at=now)
        for organization_id, name in args.organization
    ]
    memberships: list[dict[str, Any]] = []
    if args.memberships:
        if not args.users or not args.organizations:
            parser.error("--memberships N needs --users and --organizations (the generated ones it joins)")
        try:
            generated["memberships"] = generated_memberships(
                args.memberships, organizations[: args.organizations], args.users
            )
        except ValueError as problem:
            parser.error(str(problem))
    if args.membership:
        memberships = list(generated.pop("memberships", []))
    for organization_id, user_id, role in args.membership:
        organization, member = _by_id(organizations, organization_id), _by_id(users, user_id)
        if organization is None or member is None:
            parser.error(f"--membership {organization_id}:{user_id}: name the organization and the user too")
        memberships.append(
            api_membership(f"orgmem_{organization_id}_{user_id}", organization, member, role=role, updated_at=now)
        )
    custom = dict(_role(parser, text) for text in args.role)
    roles, permissions = roles_with_permissions({**DEFAULT_ROLES, **custom}, created_at=BASE_MS, updated_at=BASE_MS)
    faults = {(path, int(index)): (429, {"Retry-After": args.retry_after}) for path, index in args.answer_429}
    clerk = FakeClerk(
        users, organizations, memberships, generated=generated, roles=roles, permissions=permissions, path_faults=faults
    )
    clerk.environment_type, clerk.instance_id = args.environment, args.instance_id
    return clerk, args.port


def _role(parser: argparse.ArgumentParser, text: str) -> tuple[str, tuple[str, ...]]:
    """`org:editor:org:posts:edit,org:posts:read`: the role's key is its first two `:` parts."""
    key, _, permissions = text.partition(":")
    rest, _, permissions = permissions.partition(":")
    keys = tuple(permission for permission in permissions.split(",") if permission)
    if not rest or not keys:
        parser.error(f"--role {text}: name the key (org:editor) and its permissions")
    return f"{key}:{rest}", keys


if __name__ == "__main__":
    clerk, chosen_port = standing_in()
    with serve(clerk, chosen_port):
        counted = (
            f"{len(clerk.served('users'))} users, {len(clerk.organizations)} organizations, "
            f"{len(clerk.served('memberships'))}"
        )
        defined = f"{len(clerk.roles)} roles, {len(clerk.permissions)} permissions"
        print(
            f"Clerk stand-in on {clerk.url}: instance {clerk.instance_id} ({clerk.environment_type}), "
            f"{counted} memberships, {defined}\nits secret key (it accepts no other): {SECRET_KEY}\nCtrl-C stops it",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
