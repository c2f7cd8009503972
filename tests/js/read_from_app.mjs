// What an app does with the exchange, run by tests/test_token_end_to_end.py with the Firebase JS SDK
// (node_modules/firebase) against the Auth and Firestore emulators. docs/reading-from-your-app.md shows
// the same code in TypeScript with Clerk around it. Inputs come from the environment; the result is
// one JSON line on stdout. Exits 2 if anything takes longer than DEADLINE_MS.
import { deleteApp, initializeApp } from "firebase/app";
import { connectAuthEmulator, getAuth, signInWithCustomToken, signOut } from "firebase/auth";
import {
  collectionGroup,
  connectFirestoreEmulator,
  doc,
  getDoc,
  getDocs,
  getFirestore,
  onSnapshot,
  query,
  terminate,
  where,
} from "firebase/firestore";

const DEADLINE_MS = 45_000;
const SNAPSHOT_TIMEOUT_MS = 15_000;
setTimeout(() => {
  console.error(`read_from_app: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;
const app = initializeApp({ projectId: env.PROJECT_ID, apiKey: "any" });
const auth = getAuth(app);
connectAuthEmulator(auth, `http://${env.AUTH_EMULATOR_HOST}`, { disableWarnings: true });
const db = getFirestore(app);
const [firestoreHost, firestorePort] = env.FIRESTORE_EMULATOR_HOST.split(":");
connectFirestoreEmulator(db, firestoreHost, Number(firestorePort));

// The exchange: the Clerk session token in, a Firebase custom token out.
async function firebaseCustomToken(clerkSessionToken) {
  const response = await fetch(env.TOKEN_URL, {
    method: "POST",
    headers: { Authorization: `Bearer ${clerkSessionToken}`, Origin: env.APP_ORIGIN },
    signal: AbortSignal.timeout(10_000),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`token exchange answered ${response.status} ${body.error}`);
  return { token: body.token, allowOrigin: response.headers.get("access-control-allow-origin") };
}

async function errorCode(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return error.code ?? error.message;
  }
}

// The first snapshot the server confirmed (one from the local cache could predate the rules' answer);
// the cache-to-server step changes only metadata, which listeners see only when they ask for it.
function firstServerSnapshot(reference) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no snapshot in time")), SNAPSHOT_TIMEOUT_MS);
    const unsubscribe = onSnapshot(
      reference,
      { includeMetadataChanges: true },
      (snapshot) => {
        if (snapshot.metadata.fromCache) return;
        clearTimeout(timer);
        unsubscribe();
        resolve(snapshot);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      },
    );
  });
}

const exchanged = await firebaseCustomToken(env.CLERK_SESSION_TOKEN);
const refused = await errorCode(firebaseCustomToken(env.FORGED_SESSION_TOKEN));
const { user } = await signInWithCustomToken(auth, exchanged.token);
const { claims } = await user.getIdTokenResult();

const own = await getDoc(doc(db, "users", user.uid));
const otherError = await errorCode(getDoc(doc(db, "users", env.OTHER_UID)));
const live = await firstServerSnapshot(doc(db, "users", user.uid));

// The signed-in user's memberships across organizations: a collection-group query on user_id (the
// rules allow exactly this one), then each organization's document, which members may read.
const mine = await getDocs(query(collectionGroup(db, "memberships"), where("user_id", "==", user.uid)));
const memberships = mine.docs.map((member) => ({ organization_id: member.get("organization_id"), role: member.get("role") }));
const organization = await getDoc(doc(db, "organizations", claims.org_id));
const otherOrganizationError = await errorCode(getDoc(doc(db, "organizations", env.OTHER_ORG_ID)));
const everyonesError = await errorCode(getDocs(collectionGroup(db, "memberships")));

await signOut(auth);
const afterSignOutError = await errorCode(getDoc(doc(db, "users", user.uid)));

console.log(
  JSON.stringify({
    allow_origin: exchanged.allowOrigin,
    forged_exchange_error: refused,
    uid: user.uid,
    claims: { org_id: claims.org_id ?? null, org_role: claims.org_role ?? null, org_slug: claims.org_slug ?? null },
    sign_in_provider: claims.firebase?.sign_in_provider ?? null,
    own_exists: own.exists(),
    own_clerk_id: own.get("clerk_id") ?? null,
    other_error: otherError,
    snapshot_clerk_id: live.get("clerk_id") ?? null,
    snapshot_from_cache: live.metadata.fromCache,
    memberships,
    organization_name: organization.get("name") ?? null,
    other_organization_error: otherOrganizationError,
    all_memberships_error: everyonesError,
    after_sign_out_error: afterSignOutError,
  }),
);
await terminate(db);
await deleteApp(app);
process.exit(0);
