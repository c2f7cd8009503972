"""Every document the sync writes for apps to read, declared once: fields, types, null or absent, who sets them.

This is the data contract. The kind modules take their field lists from here (users.SYNCED_FIELDS is
`USER.names_set_by("clerk")`), `check` and the tests validate stored documents against it, and
`python3 -m tools.generate` derives from it the JSON Schema (client/clerk-sync.schema.json), the
TypeScript client's types and converters (client/src/documents.ts) and the field tables of
docs/data-model.md; a test fails when any of them differs from what this declares. Any field not
declared here is the app's: the sync never writes it. The bookkeeping collections (claims,
tombstones, event records, sync state, ended sessions, billing tombstones) are not for apps and are
not declared here.
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
    MapOf,
    Nullable,
    ObjectOf,
    OneOf,
)

__all__ = [
    "DOCUMENTS",
    "INVITATION",
    "MEMBERSHIP",
    "ORGANIZATION",
    "PAYMENT",
    "PERMISSION",
    "PLAN",
    "ROLE",
    "SUBSCRIPTION",
    "SUBSCRIPTION_ITEM",
    "USER",
]

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
        Field(
            "permissions",
            ArrayOf(STRING),
            "as sent: Clerk's list **when the membership last changed**. Clerk sends no membership event when "
            "its role's permissions change, so this list goes stale then; what the member may do now is the "
            "role's `permissions` ([roles and permissions](#roles-and-permissions))",
        ),
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
        Field(
            "role_id",
            CLERK_ID,
            "once the role is stored: the id of the role its key named when the membership was written (from "
            "`organization_role_keys`); absent while the sync knows no role by that key",
            source="sync",
            optional=True,
        ),
    ),
)


# --- Clerk Billing (subscriptions.py, payments.py, plans.py) ---------------------------------------

PAYER_TYPES = ("user", "organization")  # billing.PAYER_TYPES
OPTIONAL_INTEGER = Nullable(INTEGER)
SUBSCRIPTION_PATH = "{USERS_COLLECTION or ORGANIZATIONS_COLLECTION}/{payer_id}/billing/subscription"
MONEY = ObjectOf(
    name="ClerkMoney",
    fields=(
        Field("amount", OPTIONAL_INTEGER, "in the currency's smallest unit: 2000 is $20.00"),
        Field("amount_formatted", OPTIONAL_STRING, "as Clerk formats it: `$20.00`"),
        Field("currency", OPTIONAL_STRING, "`USD`, ..."),
    ),
)
ITEM_PLAN = ObjectOf(
    name="ClerkItemPlan",
    fields=(
        Field("id", OPTIONAL_STRING, "the plan's id (`cplan_...`)"),
        Field("slug", OPTIONAL_STRING, "what `active_plans` lists and the rules' `clerkSyncHasPlan` takes"),
        Field("name", OPTIONAL_STRING, AS_SENT),
        Field("amount", OPTIONAL_INTEGER, "in the currency's smallest unit: 2000 is $20.00"),
        Field("currency", OPTIONAL_STRING, AS_SENT),
        Field("is_recurring", BOOLEAN, "false for a free plan"),
    ),
)
SUBSCRIPTION_ITEM = ObjectOf(
    name="ClerkSubscriptionItem",
    fields=(
        Field(
            "status",
            OPTIONAL_STRING,
            "`active`, `past_due`, `canceled`, `ended`, `abandoned`, `incomplete`, `upcoming`, `expired`",
        ),
        Field("plan_id", OPTIONAL_STRING, "`plan_id` (`cplan_...`)"),
        Field(
            "plan",
            Nullable(ITEM_PLAN),
            "the item's plan as a billing page shows it (`amount` in the currency's smallest unit: 2000 is $20.00)",
        ),
        Field("interval", OPTIONAL_STRING, "`month` or `annual` (`plan_period` in the Backend API)"),
        Field("period_start", OPTIONAL_TIMESTAMP, "the current period (for a trial: the trial)"),
        Field("period_end", OPTIONAL_TIMESTAMP, "the current period (for a trial: the trial)"),
        Field("is_free_trial", BOOLEAN, "the item is a free trial"),
        Field("seats", OPTIONAL_INTEGER, "`seats.quantity` of a seat-based plan; null otherwise"),
        Field("canceled_at", OPTIONAL_TIMESTAMP, "the item's"),
        Field("past_due_at", OPTIONAL_TIMESTAMP, "the item's"),
        Field("ended_at", OPTIONAL_TIMESTAMP, "the item's"),
        Field("created_at", OPTIONAL_TIMESTAMP, "the item's"),
        Field("updated_at", TIMESTAMP, "the item's; orders the item"),
        Field(versions.DIGEST_FIELD, DIGEST, "a digest of the fields above: breaks the item's ties", source="sync"),
        Field(
            "features",
            Nullable(ArrayOf(STRING)),
            "the features of the item's plan in `billing_plans` when the item was written; null when the plan "
            "was not copied yet (run `backfill`)",
            source="sync",
        ),
    ),
)
SUBSCRIPTION = Document(
    name="ClerkSubscription",
    title="subscription",
    path=SUBSCRIPTION_PATH,
    ids={"payer_id": "payer_id"},
    doc="A payer's (a user's or an organization's) Clerk Billing subscription, readable by the user, or by the "
    "organization's members.",
    fields=(
        Field(
            "subscription_id",
            CLERK_ID,
            "`data.id` (`csub_...`); from an item event's `subscription_id` while only items have arrived",
        ),
        Field("payer_type", OneOf(PAYER_TYPES), "who pays"),
        Field("payer_id", CLERK_ID, "that user's or organization's Clerk id (the parent document's id)"),
        Field("clerk_payer_id", OPTIONAL_STRING, "Clerk's payer id (`cpayer_...`)"),
        Field(
            "status",
            OPTIONAL_STRING,
            "the subscription's: `active`, `past_due`, `canceled`, `ended`, `incomplete`, `abandoned`; null "
            "until a `subscription.*` event arrives",
        ),
        Field("active_at", OPTIONAL_TIMESTAMP, "the subscription's"),
        Field("past_due_at", OPTIONAL_TIMESTAMP, "the subscription's"),
        Field("canceled_at", OPTIONAL_TIMESTAMP, "the subscription's"),
        Field("ended_at", OPTIONAL_TIMESTAMP, "the subscription's"),
        Field("created_at", OPTIONAL_TIMESTAMP, "the subscription's"),
        Field(
            "updated_at",
            OPTIONAL_TIMESTAMP,
            "the subscription's; orders its own fields; null until a `subscription.*` event arrives",
        ),
        Field("latest_payment_id", OPTIONAL_STRING, "names a document of `payments` once that payment's event arrived"),
        Field(
            "subscription_digest",
            Nullable(DIGEST),
            "a digest of the subscription's own fields but `canceled_at`, `ended_at` and `latest_payment_id` "
            "(which the Backend API's subscription lacks): breaks their `updated_at` ties",
            source="sync",
        ),
        Field(
            "items",
            MapOf(SUBSCRIPTION_ITEM, key_words="item id", keys=CLERK_ID),
            "item id (`csub_item_...`) -> the item",
        ),
        Field(
            "active_plans",
            ArrayOf(STRING),
            "the plan slugs of the items that [grant access now](#which-items-grant-access), sorted",
            source="sync",
        ),
        Field(
            "active_features",
            ArrayOf(STRING),
            "the features of those items' plans, where the plan has been copied to `billing_plans`, sorted",
            source="sync",
        ),
        Field("synced_at", TIMESTAMP, "server time of the write", source="sync"),
        Field(
            versions.DIGEST_FIELD,
            DIGEST,
            "a digest of `subscription_digest` and every item's `sync_digest`: equal content, equal digest, "
            "however it was merged (reconcile compares it)",
            source="sync",
        ),
    ),
)
PAYMENT = Document(
    name="ClerkPayment",
    title="payment",
    path=SUBSCRIPTION_PATH + "/payments/{payment_id}",
    ids={"payer_id": "payer_id", "payment_id": "payment_id"},
    doc="A payment of a payer, as its newest attempt left it; readable by the user, or by the organization's "
    "admins and members with `org:sys_billing:read`.",
    fields=(
        Field("payment_id", CLERK_ID, "`data.payment_id` (`cpa_...`, also the document id)"),
        Field("attempt_id", OPTIONAL_STRING, "`data.id`, the newest attempt's"),
        Field("payer_type", OneOf(PAYER_TYPES), "as for the subscription"),
        Field("payer_id", CLERK_ID, "as for the subscription"),
        Field("clerk_payer_id", OPTIONAL_STRING, "as for the subscription"),
        Field("statement_id", OPTIONAL_STRING, "the statement the payment is on"),
        Field("status", OPTIONAL_STRING, "`pending`, `paid` or `failed`"),
        Field("charge_type", OPTIONAL_STRING, "`checkout` or `recurring`"),
        Field(
            "failed_reason",
            Nullable(
                ObjectOf(
                    name="ClerkFailedReason",
                    fields=(
                        Field("code", OPTIONAL_STRING, AS_SENT),
                        Field("decline_code", OPTIONAL_STRING, AS_SENT),
                    ),
                )
            ),
            "why a failed attempt failed",
        ),
        Field(
            "totals",
            Nullable(
                ObjectOf(
                    name="ClerkPaymentTotals",
                    fields=(
                        Field("subtotal", Nullable(MONEY), AS_SENT),
                        Field("tax_total", Nullable(MONEY), AS_SENT),
                        Field("grand_total", Nullable(MONEY), AS_SENT),
                    ),
                )
            ),
            "what was charged",
        ),
        Field(
            "payment_source",
            Nullable(
                ObjectOf(
                    name="ClerkPaymentSource",
                    fields=(
                        Field("payment_method", OPTIONAL_STRING, "`card`, ..."),
                        Field("card_type", OPTIONAL_STRING, "`visa`, ..."),
                        Field("last4", OPTIONAL_STRING, "the card's last four digits"),
                    ),
                )
            ),
            'what a billing page shows ("Visa •••• 4242"), never the gateway\'s ids',
        ),
        Field(
            "subscription_items",
            ArrayOf(
                ObjectOf(
                    name="ClerkPaidItem",
                    fields=(
                        Field("id", CLERK_ID, "the item's id (`csub_item_...`)"),
                        Field("plan_id", OPTIONAL_STRING, AS_SENT),
                        Field("plan_slug", OPTIONAL_STRING, "the item's plan's slug"),
                        Field("plan_name", OPTIONAL_STRING, "the item's plan's name"),
                        Field("interval", OPTIONAL_STRING, "`month` or `annual`"),
                    ),
                )
            ),
            "what was paid for",
        ),
        Field("billing_date", OPTIONAL_TIMESTAMP, AS_SENT),
        Field("paid_at", OPTIONAL_TIMESTAMP, AS_SENT),
        Field("failed_at", OPTIONAL_TIMESTAMP, AS_SENT),
        Field("created_at", OPTIONAL_TIMESTAMP, AS_SENT),
        Field("updated_at", TIMESTAMP, "the attempt's; orders the attempts"),
        *_written(AS_FOR_USERS),
    ),
)
PLAN = Document(
    name="ClerkPlan",
    title="plan",
    path="billing_plans/{plan_id} (beside USERS_COLLECTION)",
    ids={"plan_id": "plan_id"},
    doc="A Clerk Billing plan as a pricing page shows it, copied from the Backend API by `backfill` and "
    "`reconcile`; readable by every signed-in user.",
    fields=(
        Field("plan_id", CLERK_ID, "the plan's id (`cplan_...`, also the document id)"),
        Field("slug", OPTIONAL_STRING, "as listed"),
        Field("name", OPTIONAL_STRING, "as listed"),
        Field("description", OPTIONAL_STRING, "as listed"),
        Field("for_payer_type", OPTIONAL_STRING, "`user` or `org`"),
        Field("is_default", BOOLEAN, "as listed"),
        Field("is_recurring", BOOLEAN, "as listed"),
        Field("publicly_visible", BOOLEAN, "as listed"),
        Field("fee", Nullable(MONEY), "as listed"),
        Field("annual_fee", Nullable(MONEY), "as listed"),
        Field("annual_monthly_fee", Nullable(MONEY), "as listed"),
        Field("free_trial_enabled", BOOLEAN, "as listed"),
        Field("free_trial_days", OPTIONAL_INTEGER, "as listed"),
        Field("features", ArrayOf(STRING), "the plan's features' slugs (what `active_features` is made of)"),
        Field(
            "feature_details",
            ArrayOf(
                ObjectOf(
                    name="ClerkPlanFeature",
                    fields=(
                        Field("slug", STRING, "the feature's slug"),
                        Field("name", OPTIONAL_STRING, AS_SENT),
                        Field("description", OPTIONAL_STRING, AS_SENT),
                    ),
                )
            ),
            "each feature, for a pricing page",
        ),
        Field("synced_at", TIMESTAMP, "server time of the copy", source="sync"),
    ),
)

# --- Organization roles, permissions and invitations (roles.py, permissions.py, invitations.py) ----

ROLE = Document(
    name="ClerkRole",
    title="organization role",
    path="organization_roles/{role_id} (beside USERS_COLLECTION)",
    ids={"role_id": "clerk_id"},
    doc="A role of the instance's organizations; its `permissions` decide `clerkSyncHasPermission` in the "
    "rules; readable by every signed-in user the sync lets in.",
    fields=(
        Field("clerk_id", CLERK_ID, "`data.id` (`role_...`, also the document id)"),
        Field("key", STRING, "the role's key as members carry it, e.g. `org:admin`"),
        Field("name", OPTIONAL_STRING, AS_SENT),
        Field("description", OPTIONAL_STRING, AS_SENT),
        Field("is_creator_eligible", BOOLEAN, "as sent (false when absent)"),
        Field(
            "permission_ids",
            ArrayOf(CLERK_ID),
            "the ids of the permissions the event carried (how a permission's change finds the roles holding it)",
        ),
        Field(
            "clerk_permissions",
            ArrayOf(
                ObjectOf(
                    name="ClerkRolePermission",
                    fields=(
                        Field("id", CLERK_ID, "the permission's id"),
                        Field("key", STRING, "its key as the role event carried it"),
                        Field("updated_at", TIMESTAMP, "the permission's, as the role event carried it"),
                    ),
                )
            ),
            "the permissions as the role's last event carried them (the source of `permissions`)",
        ),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(AS_FOR_USERS),
        Field(
            "permissions",
            ArrayOf(STRING),
            "**what the role grants**: the keys of the permissions its event carried, each under the newer of the "
            "key the event carried and the permission's own document's, and without the permissions deleted "
            "since. The rules decide with this list",
            source="sync",
        ),
    ),
)
PERMISSION = Document(
    name="ClerkPermission",
    title="organization permission",
    path="organization_permissions/{permission_id} (beside USERS_COLLECTION)",
    ids={"permission_id": "clerk_id"},
    doc="A permission of the instance; readable by every signed-in user the sync lets in.",
    fields=(
        Field("clerk_id", CLERK_ID, "`data.id` (`perm_...`, also the document id)"),
        Field("key", STRING, "e.g. `org:posts:edit`"),
        Field("name", OPTIONAL_STRING, AS_SENT),
        Field("description", OPTIONAL_STRING, AS_SENT),
        Field("type", OPTIONAL_STRING, "`system` or `user`"),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(AS_FOR_USERS),
    ),
)
INVITATION = Document(
    name="ClerkInvitation",
    title="organization invitation",
    path="{ORGANIZATIONS_COLLECTION}/{organization_id}/invitations/{invitation_id}",
    ids={"organization_id": "organization_id", "invitation_id": "invitation_id"},
    doc="A pending invitation to an organization (never its ticket URL or private metadata), readable by the "
    "organization's members whose role may manage members; it goes when accepted or revoked.",
    fields=(
        Field("invitation_id", CLERK_ID, "`data.id` (`orginv_...`, also the document id)"),
        Field("organization_id", CLERK_ID, "`data.organization_id` (also the parent document's id)"),
        Field("email_address", OPTIONAL_STRING, "the invited address"),
        Field("role", OPTIONAL_STRING, "the role's key, e.g. `org:member`"),
        Field("role_name", OPTIONAL_STRING, AS_SENT),
        Field("status", OPTIONAL_STRING, "`pending` while stored"),
        Field("public_metadata", METADATA, METADATA_DOC),
        Field("inviter_id", OPTIONAL_STRING, "the inviting user's id"),
        Field("expires_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("created_at", OPTIONAL_TIMESTAMP, CLERK_TIME),
        Field("updated_at", TIMESTAMP, CLERK_TIME + "; orders the versions"),
        *_written(AS_FOR_USERS),
    ),
)

# Every synced document, in the order the docs and the generated code show them.
DOCUMENTS: tuple[Document, ...] = (
    USER,
    ORGANIZATION,
    MEMBERSHIP,
    INVITATION,
    ROLE,
    PERMISSION,
    SUBSCRIPTION,
    PAYMENT,
    PLAN,
)
