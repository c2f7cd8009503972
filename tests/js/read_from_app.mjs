// The app's code from docs/reading-from-your-app.md (firebase.ts, as `make docs-ts` writes it to
// build/docs-ts/) run by tsx against the Auth and Firestore emulators and a real token function, by
// tests/test_token_end_to_end.py. Only what the page's functions cannot show is done here directly:
// the reads the rules must refuse. Inputs come from the environment; the result is one JSON line on
// stdout. Exits 2 if anything takes longer than DEADLINE_MS.
import { deleteApp, getApp } from "firebase/app";
import { getAuth } from "firebase/auth";
import { collectionGroup, doc, getDoc, getDocs, getFirestore, terminate } from "firebase/firestore";
import {
  localDevelopment,
  readOrganization,
  readOwnUser,
  signInToFirebase,
  signOutOfFirebase,
  startFirebase,
  watchOwnMemberships,
  watchOwnUser,
} from "../../build/docs-ts/firebase.ts";

const DEADLINE_MS = 45_000;
const WATCH_TIMEOUT_MS = 15_000;
setTimeout(() => {
  console.error(`read_from_app: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;

async function errorOf(promise) {
  try {
    await promise;
    return null;
  } catch (error) {
    return error.code ?? error.message;
  }
}

// The first answer of one of the page's watch functions, then its listener is removed.
function firstAnswer(watch, accept = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no answer from the listener in time")), WATCH_TIMEOUT_MS);
    const stop = watch((answer) => {
      if (!accept(answer)) return;
      clearTimeout(timer);
      stop();
      resolve(answer);
    });
  });
}

const settings = localDevelopment({
  token: env.TOKEN_URL,
  auth: env.FIREBASE_AUTH_EMULATOR_HOST,
  firestore: env.FIRESTORE_EMULATOR_HOST,
});
startFirebase({ ...settings, firebase: { ...settings.firebase, projectId: env.PROJECT_ID } });
const db = getFirestore(); // the page's Firestore: startFirebase set up the default app

const forged = await errorOf(signInToFirebase(env.FORGED_SESSION_TOKEN));
const beforeSignIn = await errorOf(readOwnUser());
await signInToFirebase(env.CLERK_SESSION_TOKEN);
const user = getAuth().currentUser;
const { claims } = await user.getIdTokenResult();

const own = await readOwnUser();
const live = await firstAnswer(watchOwnUser, (data) => data !== undefined);
const memberships = await firstAnswer(watchOwnMemberships);
const organization = await readOrganization(claims.org_id);
const otherError = await errorOf(getDoc(doc(db, "users", env.OTHER_UID)));
const otherOrganizationError = await errorOf(readOrganization(env.OTHER_ORG_ID));
const everyonesError = await errorOf(getDocs(collectionGroup(db, "memberships")));

await signOutOfFirebase();
const afterSignOutError = await errorOf(getDoc(doc(db, "users", user.uid)));

console.log(
  JSON.stringify({
    forged_exchange_error: forged,
    before_sign_in_error: beforeSignIn,
    uid: user.uid,
    claims: { org_id: claims.org_id ?? null, org_role: claims.org_role ?? null, org_slug: claims.org_slug ?? null },
    sign_in_provider: claims.firebase?.sign_in_provider ?? null,
    own_clerk_id: own?.clerk_id ?? null,
    watched_clerk_id: live?.clerk_id ?? null,
    memberships: memberships.map((member) => ({ organization_id: member.organization_id, role: member.role })),
    organization_name: organization?.name ?? null,
    other_error: otherError,
    other_organization_error: otherOrganizationError,
    all_memberships_error: everyonesError,
    after_sign_out_error: afterSignOutError,
  }),
);
await terminate(db);
await deleteApp(getApp());
process.exit(0);
