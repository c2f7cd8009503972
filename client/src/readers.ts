// Typed reads of what the rules let a signed-in user read: their own user document, their memberships, the
// organizations they belong to and their members. Each as a one-off read and as a live subscription; every
// document is checked against its declaration (ClerkSyncSchemaError when it is not what the sync writes).
import { onAuthStateChanged, type Auth } from "firebase/auth";
import {
  collection,
  collectionGroup,
  doc,
  getDoc,
  getDocs,
  limit,
  onSnapshot,
  orderBy,
  query,
  where,
  type DocumentReference,
  type DocumentSnapshot,
  type Firestore,
  type Query,
  type QuerySnapshot,
  type Unsubscribe,
} from "firebase/firestore";
import { syncedData, type AppFields } from "./converters.js";
import {
  CLERK_MEMBERSHIP,
  CLERK_ORGANIZATION,
  CLERK_PAYMENT,
  CLERK_PLAN,
  CLERK_SUBSCRIPTION,
  CLERK_USER,
  type ClerkMembership,
  type ClerkOrganization,
  type ClerkPayment,
  type ClerkPlan,
  type ClerkSubscription,
  type ClerkUser,
} from "./documents.js";
import type { DocumentDescriptor } from "./schema.js";

/** The app's own fields in each kind of document, e.g. `{ user: { plan?: string } }`. */
export interface AppFieldsOf {
  readonly user?: AppFields;
  readonly organization?: AppFields;
  readonly membership?: AppFields;
}

type Extra<A, K extends keyof AppFieldsOf> = A extends { readonly [key in K]?: infer F } ? (F extends AppFields ? F : {}) : {};
/** A user document: the sync's fields and the app's. */
export type UserOf<A extends AppFieldsOf = {}> = ClerkUser & Extra<A, "user">;
/** An organization document: the sync's fields and the app's. */
export type OrganizationOf<A extends AppFieldsOf = {}> = ClerkOrganization & Extra<A, "organization">;
/** A membership document: the sync's fields and the app's. */
export type MembershipOf<A extends AppFieldsOf = {}> = ClerkMembership & Extra<A, "membership">;

/** Where the sync writes (its USERS_COLLECTION and ORGANIZATIONS_COLLECTION settings). */
export interface CollectionsOptions {
  readonly usersCollection?: string;
  readonly organizationsCollection?: string;
}

/** Called with every failure of a live read: the rules' `permission-denied` ends it (say, after a ban). */
export type OnError = (error: Error) => void;

export interface ClerkData<A extends AppFieldsOf = {}> {
  /** The signed-in user's own document; undefined until the webhook has written it. */
  readOwnUser(): Promise<UserOf<A> | undefined>;
  watchOwnUser(onData: (user: UserOf<A> | undefined) => void, onError: OnError): Unsubscribe;
  /** The signed-in user's memberships across organizations (the one query the rules allow on memberships). */
  readOwnMemberships(): Promise<MembershipOf<A>[]>;
  watchOwnMemberships(onData: (memberships: MembershipOf<A>[]) => void, onError: OnError): Unsubscribe;
  /** An organization the user is a member of. */
  readOrganization(organizationId: string): Promise<OrganizationOf<A> | undefined>;
  watchOrganization(
    organizationId: string,
    onData: (organization: OrganizationOf<A> | undefined) => void,
    onError: OnError,
  ): Unsubscribe;
  /** Every member of an organization the user is a member of. */
  readMembers(organizationId: string): Promise<MembershipOf<A>[]>;
  watchMembers(organizationId: string, onData: (members: MembershipOf<A>[]) => void, onError: OnError): Unsubscribe;
  /** The signed-in user's Clerk Billing subscription; undefined until Clerk Billing has sent one. */
  readOwnSubscription(): Promise<ClerkSubscription | undefined>;
  watchOwnSubscription(onData: (subscription: ClerkSubscription | undefined) => void, onError: OnError): Unsubscribe;
  /** An organization's subscription (its members may read it). */
  readOrganizationSubscription(organizationId: string): Promise<ClerkSubscription | undefined>;
  watchOrganizationSubscription(
    organizationId: string,
    onData: (subscription: ClerkSubscription | undefined) => void,
    onError: OnError,
  ): Unsubscribe;
  /** The signed-in user's newest payments (`count` of them, 10 by default), newest first. */
  readOwnPayments(count?: number): Promise<ClerkPayment[]>;
  watchOwnPayments(onData: (payments: ClerkPayment[]) => void, onError: OnError, count?: number): Unsubscribe;
  /** Every plan `backfill` / `reconcile` copied from Clerk (any signed-in user may read them). */
  readPlans(): Promise<ClerkPlan[]>;
  watchPlans(onData: (plans: ClerkPlan[]) => void, onError: OnError): Unsubscribe;
  /**
   * Run `start` (a watch above) whenever a user is signed in to Firebase, stop what it returned when they
   * sign out or another user signs in (then `onSignedOut`). The watches above are bound to the user signed
   * in when they start; this keeps them following whoever is signed in.
   */
  whileSignedIn(start: () => Unsubscribe, onSignedOut?: () => void): Unsubscribe;
}

function signedInUid(auth: Auth): string {
  const uid = auth.currentUser?.uid; // the Clerk user id
  if (!uid) throw new Error("not signed in to Firebase");
  return uid;
}

function listOf<T>(descriptor: DocumentDescriptor, snapshot: QuerySnapshot): T[] {
  // A document with only the app's fields (no synced copy yet) is left out.
  return snapshot.docs.flatMap((found) => {
    const data = syncedData<T>(descriptor, found);
    return data === undefined ? [] : [data];
  });
}

function watchDocument<T>(
  descriptor: DocumentDescriptor,
  reference: () => DocumentReference,
  onData: (value: T | undefined) => void,
  onError: OnError,
): Unsubscribe {
  let target: DocumentReference;
  try {
    target = reference();
  } catch (error) {
    queueMicrotask(() => onError(error as Error));
    return () => undefined;
  }
  return onSnapshot(
    target,
    (snapshot: DocumentSnapshot) => {
      let value: T | undefined;
      try {
        value = syncedData<T>(descriptor, snapshot);
      } catch (error) {
        onError(error as Error);
        return;
      }
      onData(value);
    },
    onError,
  );
}

function watchQuery<T>(
  descriptor: DocumentDescriptor,
  target: () => Query,
  onData: (values: T[]) => void,
  onError: OnError,
): Unsubscribe {
  let built: Query;
  try {
    built = target();
  } catch (error) {
    queueMicrotask(() => onError(error as Error));
    return () => undefined;
  }
  return onSnapshot(
    built,
    (snapshot) => {
      let values: T[];
      try {
        values = listOf<T>(descriptor, snapshot);
      } catch (error) {
        onError(error as Error);
        return;
      }
      onData(values);
    },
    onError,
  );
}

/** Typed readers of the Clerk data the sync keeps in `db`, for the user signed in to `auth`. */
export function clerkData<A extends AppFieldsOf = {}>(
  db: Firestore,
  auth: Auth,
  options: CollectionsOptions = {},
): ClerkData<A> {
  const users = options.usersCollection ?? "users";
  const organizations = options.organizationsCollection ?? "organizations";
  const ownUser = (): DocumentReference => doc(db, users, signedInUid(auth));
  const ownMemberships = (): Query =>
    query(collectionGroup(db, "memberships"), where("user_id", "==", signedInUid(auth)));
  const organization = (id: string): DocumentReference => doc(db, organizations, id);
  const members = (id: string): Query => collection(db, organizations, id, "memberships");
  // Billing lives under its payer; the plans beside the users collection, as the bookkeeping does.
  const ownSubscription = (): DocumentReference => doc(db, users, signedInUid(auth), "billing", "subscription");
  const organizationSubscription = (id: string): DocumentReference =>
    doc(db, organizations, id, "billing", "subscription");
  const ownPayments = (count: number): Query =>
    query(collection(ownSubscription(), "payments"), orderBy("updated_at", "desc"), limit(count));
  const plans = (): Query => collection(db, [...users.split("/").slice(0, -1), "billing_plans"].join("/"));
  return {
    async readOwnUser() {
      return syncedData<UserOf<A>>(CLERK_USER, await getDoc(ownUser()));
    },
    watchOwnUser: (onData, onError) => watchDocument(CLERK_USER, ownUser, onData, onError),
    async readOwnMemberships() {
      return listOf<MembershipOf<A>>(CLERK_MEMBERSHIP, await getDocs(ownMemberships()));
    },
    watchOwnMemberships: (onData, onError) => watchQuery(CLERK_MEMBERSHIP, ownMemberships, onData, onError),
    async readOrganization(id) {
      return syncedData<OrganizationOf<A>>(CLERK_ORGANIZATION, await getDoc(organization(id)));
    },
    watchOrganization: (id, onData, onError) =>
      watchDocument(CLERK_ORGANIZATION, () => organization(id), onData, onError),
    async readMembers(id) {
      return listOf<MembershipOf<A>>(CLERK_MEMBERSHIP, await getDocs(members(id)));
    },
    watchMembers: (id, onData, onError) => watchQuery(CLERK_MEMBERSHIP, () => members(id), onData, onError),
    async readOwnSubscription() {
      return syncedData<ClerkSubscription>(CLERK_SUBSCRIPTION, await getDoc(ownSubscription()));
    },
    watchOwnSubscription: (onData, onError) => watchDocument(CLERK_SUBSCRIPTION, ownSubscription, onData, onError),
    async readOrganizationSubscription(id) {
      return syncedData<ClerkSubscription>(CLERK_SUBSCRIPTION, await getDoc(organizationSubscription(id)));
    },
    watchOrganizationSubscription: (id, onData, onError) =>
      watchDocument(CLERK_SUBSCRIPTION, () => organizationSubscription(id), onData, onError),
    async readOwnPayments(count = 10) {
      return listOf<ClerkPayment>(CLERK_PAYMENT, await getDocs(ownPayments(count)));
    },
    watchOwnPayments: (onData, onError, count = 10) =>
      watchQuery(CLERK_PAYMENT, () => ownPayments(count), onData, onError),
    async readPlans() {
      return listOf<ClerkPlan>(CLERK_PLAN, await getDocs(plans()));
    },
    watchPlans: (onData, onError) => watchQuery(CLERK_PLAN, plans, onData, onError),
    whileSignedIn(start, onSignedOut) {
      let uid: string | undefined;
      let stop: Unsubscribe | undefined;
      const stopFollowing = onAuthStateChanged(auth, (user) => {
        if (user?.uid === uid) return;
        stop?.();
        stop = undefined;
        if (uid !== undefined) onSignedOut?.();
        uid = user?.uid;
        if (user) stop = start();
      });
      return () => {
        stopFollowing();
        stop?.();
      };
    },
  };
}

/** Metadata as a map: the sync keeps metadata Firestore cannot hold as a map as its JSON text. */
export function metadataOf(value: ClerkUser["public_metadata"]): Record<string, unknown> {
  if (typeof value !== "string") return value;
  const parsed: unknown = JSON.parse(value);
  return typeof parsed === "object" && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : {};
}

/**
 * Whether the subscription grants the plan now (its slug, say `"pro"`): what the rules' `clerkSyncHasPlan`
 * reads. `active` items grant it (trials too), `canceled` ones until their period ends, `past_due` ones while
 * Clerk retries the charge (docs/data-model.md, "Which items grant access").
 */
export function hasPlan(subscription: ClerkSubscription | undefined, plan: string): boolean {
  return subscription?.active_plans.includes(plan) ?? false;
}

/** Whether the subscription grants the feature now (a plan's feature slug): the rules' `clerkSyncHasFeature`. */
export function hasFeature(subscription: ClerkSubscription | undefined, feature: string): boolean {
  return subscription?.active_features.includes(feature) ?? false;
}

/** When the subscription's active free trial ends, for a banner ("your trial ends in 3 days"); null without one. */
export function trialEndsAt(subscription: ClerkSubscription | undefined): Date | null {
  const items = Object.values(subscription?.items ?? {});
  const trial = items.find((item) => item.is_free_trial && item.status === "active");
  return trial?.period_end?.toDate() ?? null;
}
