"""Every document the sync writes for apps to read, declared once: fields, types, null or absent, who sets them.

This is the data contract. The kind modules take their field lists from here (users.SYNCED_FIELDS is
`USER.names_set_by("clerk")`), `check` and the tests validate stored documents against it, and
`python3 -m tools.generate` derives from it the JSON Schema (client/clerk-sync.schema.json), the
TypeScript client's types and converters (client/src/documents.ts) and the field tables of
docs/data-model.md; a test fails when any of them differs from what this declares. Any field not
declared here is the app's: the sync never writes it. The bookkeeping collections (claims,
tombstones, event records, sync state, ended sessions) are not for apps and are not declared here.
"""

from __future__ import annotations

from clerk_sync import versions
from clerk_sync.schema import (
    BOOLEAN,
    CLERK_ID,
    DIGEST,
    INTEGER,
    METADATA,
    STRING,
    TIMESTAMP,
    ArrayOf,
    Document,
    Field,
    Nullable,
)

__all__ = ["DOCUMENTS", "MEMBERSHIP", "ORGANIZATION", "USER"]

OPTIONAL_STRING = Nullable(STRING)
OPTIONAL_TIMESTAMP = Nullable(TIMESTAMP)
AS_SENT = "as sent"
CLERK_TIME = "Clerk's epoch milliseconds as a Firestore Timestamp, exact to the millisecond"
METADATA_DOC = (
    "as sent. Metadata Firestore cannot hold as a map (arrays directly inside arrays, more than 20 levels "
    "of nesting, integers beyond 64 bits, field names like `__x__` or over 1,500 bytes) is stored as its "
    "JSON text instead of failing the event"
)
AS_FOR_USERS = "as for users"


def _written(tie_breaker_doc: str) -> tuple[Field, Field]:
    """The two fields every synced document gets from the sync itself."""
    return (
        Field("synced_at", TIMESTAMP, "server time of the write", source="sync"),
        Field(versions.DIGEST_FIELD, DIGEST, tie_breaker_doc, source="sync"),
    )


USER = Document(
    name="ClerkUser",
    title="user",
    path="{USERS_COLLECTION}/{user_id}",
    ids={"user_id": "clerk_id"},
    doc="A Clerk user, readable by that user's own client (uid = Clerk user id).",
    fields=(
        Field("clerk_id", CLERK_ID, "`data.id` (also the document id)"),
        Field(
            "email",
            OPTIONAL_STRING,
            "the primary address: the entry of `email_addresses` whose `id` is `primary_email_address_id` "
            "(not necessarily the first), exactly as Clerk sends it; null for users without one (phone-only, "
            "username-only, web3), and while `pending_email` waits",
        ),
        Field(
            "email_verified",
            BOOLEAN,
            'that entry\'s `verification.status == "verified"`; false without a primary email',
        ),
        Field("email_addresses", ArrayOf(STRING), "every address of the user, in Clerk's order"),
        Field("phone_number", OPTIONAL_STRING, "the primary phone number (`primary_phone_number_id`)"),
        Field("username", OPTIONAL_STRING, AS_SENT),
        Field("first_name", OPTIONAL_STRING, AS_SENT),
        Field("last_name", OPTIONAL_STRING, AS_SENT),
        Field("image_url", OPTIONAL_STRING, AS_SENT),
        Field("external_id", OPTIONAL_STRING, AS_SENT),
        Field("public_metadata", METADATA, METADATA_DOC),
        Field("unsafe_metadata", METADATA, METADATA_DOC),
        Field(
            "banned",
            BOOLEAN,
            "as sent (false when absent). The rules deny a banned or deprovisioned user every read, and the "
            "webhook disables their Firebase Auth user ([when access ends](reading-from-your-app.md#when-access-ends))",
        ),
        Field(
            "deprovisioned",
            BOOLEAN,
            "as sent (false when absent). The rules deny a banned or deprovisioned user every read, and the "
            "webhook disables their Firebase Auth user ([when access ends](reading-from-your-app.md#when-access-ends))",
        ),
        Field(
            "locked",
            BOOLEAN,
            "as sent (false when absent); changes nothing for access (Clerk's lockout only stops new sign-ins)",
        ),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("last_sign_in_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(
            "64 hex characters: a digest of the synced fields, used only to [break ties](#ordering-which-version-wins)"
        ),
        Field(
            "pending_email",
            STRING,
            "only while waiting: the new primary address while another user's document still holds it; `email` "
            "is null meanwhile ([email uniqueness](#ordering-which-version-wins))",
            source="sync",
            optional=True,
        ),
    ),
)

ORGANIZATION = Document(
    name="ClerkOrganization",
    title="organization",
    path="{ORGANIZATIONS_COLLECTION}/{organization_id}",
    ids={"organization_id": "clerk_id"},
    doc="A Clerk organization, readable by its members.",
    fields=(
        Field("clerk_id", CLERK_ID, "`data.id` (also the document id)"),
        Field("name", OPTIONAL_STRING, AS_SENT),
        Field("slug", OPTIONAL_STRING, AS_SENT),
        Field("image_url", OPTIONAL_STRING, AS_SENT),
        Field("public_metadata", METADATA, AS_FOR_USERS),
        Field("max_allowed_memberships", Nullable(INTEGER), AS_SENT),
        Field("created_by", OPTIONAL_STRING, "the creating user's id"),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(AS_FOR_USERS),
    ),
)

MEMBERSHIP = Document(
    name="ClerkMembership",
    title="membership",
    path="{ORGANIZATIONS_COLLECTION}/{organization_id}/memberships/{user_id}",
    ids={"organization_id": "organization_id", "user_id": "user_id"},
    doc="One member of one organization, readable by the organization's members.",
    fields=(
        Field("membership_id", CLERK_ID, "`data.id` (`orgmem_...`)"),
        Field("organization_id", CLERK_ID, "`data.organization.id` (also the parent document's id)"),
        Field("user_id", CLERK_ID, "`data.public_user_data.user_id` (also the document id)"),
        Field("role", OPTIONAL_STRING, "as sent, e.g. `org:admin`"),
        Field("role_name", OPTIONAL_STRING, "as sent, e.g. `Admin`"),
        Field("permissions", ArrayOf(STRING), AS_SENT),
        Field("public_metadata", METADATA, "the membership's, as for users"),
        Field(
            "identifier",
            OPTIONAL_STRING,
            "from `public_user_data`: usually the member's email, and every member of the organization can read it",
        ),
        Field("first_name", OPTIONAL_STRING, "from `public_user_data`"),
        Field("last_name", OPTIONAL_STRING, "from `public_user_data`"),
        Field("image_url", OPTIONAL_STRING, "from `public_user_data`"),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(AS_FOR_USERS),
    ),
)

# Every synced document, in the order the docs and the generated code show them.
DOCUMENTS: tuple[Document, ...] = (USER, ORGANIZATION, MEMBERSHIP)
