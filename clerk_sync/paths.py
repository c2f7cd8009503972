"""Where every collection lives, derived once from the two configurable collection paths.

The app chooses where users and organizations go (`USERS_COLLECTION`, `ORGANIZATIONS_COLLECTION`,
nested paths allowed). The bookkeeping collections live beside the users collection, so two syncs
writing `tenants/a/users` and `tenants/b/users` in one database never share email claims,
tombstones, event records or ended sessions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BILLING_PLANS",
    "BOOKKEEPING",
    "DEFINITIONS",
    "INVITATIONS",
    "MEMBERSHIPS",
    "Paths",
    "collection_path_problem",
    "paths_for",
]

# A collection path has an odd number of segments: `users`, `tenants/acme/users`.
COLLECTION_PATH = re.compile(r"[^/]+(/[^/]+/[^/]+)*")
RESERVED_SEGMENT = re.compile(r"__.*__", re.DOTALL)
MAX_SEGMENT_BYTES = 1500
MEMBERSHIPS = "memberships"  # subcollection of each organization; also the collection-group id
INVITATIONS = "invitations"  # subcollection of each organization: its pending invitations
BOOKKEEPING = (
    "email_claims",
    "user_tombstones",
    "organization_tombstones",
    "membership_tombstones",
    "webhook_events",
    "sync_state",
    "ended_sessions",
    "billing_tombstones",
    "role_tombstones",
    "permission_tombstones",
    "invitation_tombstones",
)
# Clerk Billing's plans, copied by backfill and reconcile; beside the users collection too, but
# client-readable (an app maps plans to features and shows prices), so not bookkeeping.
BILLING_PLANS = "billing_plans"
# The instance's organization roles and permissions: beside the users collection too, but readable by
# signed-in users (the rules decide permissions with them), so not bookkeeping. Named as Clerk's API
# names them, so they do not meet an app's own `roles` collection.
DEFINITIONS = ("organization_roles", "organization_role_keys", "organization_permissions")


@dataclass(frozen=True)
class Paths:
    """Collection paths for one deployment."""

    users: str
    organizations: str
    claims: str
    user_tombstones: str
    organization_tombstones: str
    membership_tombstones: str
    events: str
    state: str
    ended_sessions: str  # Clerk sessions that ended: the rules deny Firebase sessions exchanged from them
    billing_tombstones: str  # subscriptions and payments reconcile found gone from Clerk
    billing_plans: str
    roles: str  # organization roles by role id
    role_keys: str  # which role a role key names (a membership carries the key)
    permissions: str  # organization permissions by permission id
    role_tombstones: str
    permission_tombstones: str
    invitation_tombstones: str  # invitations accepted or revoked

    def memberships(self, organization_id: str) -> str:
        """An organization's memberships, one document per member keyed by Clerk user id."""
        return f"{self.organizations}/{organization_id}/{MEMBERSHIPS}"

    def invitations(self, organization_id: str) -> str:
        """An organization's pending invitations, one document per invitation id."""
        return f"{self.organizations}/{organization_id}/{INVITATIONS}"

    def top_level(self, family: str) -> str:
        """The collection of a kind whose documents are not nested under another object, by its family."""
        top = {
            "user": self.users,
            "organization": self.organizations,
            "role": self.roles,
            "permission": self.permissions,
        }
        if family not in top:
            raise KeyError(f"no top-level collection for {family!r}: the kind declares its collection")
        return top[family]

    def tombstones(self, family: str) -> str:
        """Where a kind's tombstones live, by its family (Billing's kinds share one collection)."""
        return {
            "user": self.user_tombstones,
            "organization": self.organization_tombstones,
            "organizationMembership": self.membership_tombstones,
            "organizationInvitation": self.invitation_tombstones,
            "role": self.role_tombstones,
            "permission": self.permission_tombstones,
            "subscription": self.billing_tombstones,
            "paymentAttempt": self.billing_tombstones,
        }[family]

    def is_membership(self, document_path: str) -> bool:
        """Whether a `memberships` document (found by a collection-group query) is one of ours."""
        prefix = f"{self.organizations}/"
        if not document_path.startswith(prefix):
            return False
        rest = document_path[len(prefix) :].split("/")
        return len(rest) == 3 and rest[1] == MEMBERSHIPS


def collection_path_problem(path: str) -> str | None:
    """Why `path` cannot name a collection, or None when Firestore accepts it."""
    if not COLLECTION_PATH.fullmatch(path):
        return "is not a collection path (one segment, or segments separated by / in odd number)"
    for segment in path.split("/"):
        if segment in {".", ".."} or RESERVED_SEGMENT.fullmatch(segment):
            return f"has a segment Firestore reserves ({segment!r})"
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            return "has a segment over 1500 bytes"
        if segment.strip() != segment or not segment.isprintable():
            return "has a segment with spaces around it or unprintable characters"
    return None


def paths_for(users: str, organizations: str) -> Paths:
    """All collection paths, the bookkeeping ones beside `users` (same parent document)."""
    parent = users.rpartition("/")[0]
    beside = f"{parent}/" if parent else ""
    names = {name: f"{beside}{name}" for name in (*BOOKKEEPING, *DEFINITIONS)}
    return Paths(
        users=users,
        organizations=organizations,
        claims=names["email_claims"],
        user_tombstones=names["user_tombstones"],
        organization_tombstones=names["organization_tombstones"],
        membership_tombstones=names["membership_tombstones"],
        events=names["webhook_events"],
        state=names["sync_state"],
        ended_sessions=names["ended_sessions"],
        billing_tombstones=names["billing_tombstones"],
        billing_plans=f"{beside}{BILLING_PLANS}",
        roles=names["organization_roles"],
        role_keys=names["organization_role_keys"],
        permissions=names["organization_permissions"],
        role_tombstones=names["role_tombstones"],
        permission_tombstones=names["permission_tombstones"],
        invitation_tombstones=names["invitation_tombstones"],
    )
