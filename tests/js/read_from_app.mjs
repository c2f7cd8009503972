// The app's side as docs/reading-from-your-app.md writes it: the built package (clerk-firestore-sync,
// node_modules links it to client/) with the page's firebase.ts (as `make docs-ts` writes it to
// build/docs-ts/), run by tsx against the Auth and Firestore emulators and a real token function, by
// tests/test_token_end_to_end.py. Only what the package cannot show is done here directly: the reads
// and writes the rules must refuse. Inputs come from the environment; the result is one JSON line on
// stdout. Exits 2 if anything takes longer than DEADLINE_MS.
import { deleteApp, getApp } from "firebase/app";
import { collectionGroup, doc, getDoc, getDocs, setDoc, terminate } from "firebase/firestore";
import { clerkData, clerkUserConverter, connectClerkToFirebase, metadataOf } from "clerk-firestore-sync";
import { localDevelopment, startFirebase } from "../../build/docs-ts/firebase.ts";

const DEADLINE_MS = 45_000;
const WATCH_TIMEOUT_MS = 15_000;
setTimeout(() => {
  console.error(`read_from_app: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;

// What a call fails with (a converter's refusal is thrown before any promise exists, so calls are thunks).
async function errorOf(call) {
  try {
    await call();
    return null;
  } catch (error) {
    return { name: error.name, code: error.code ?? null, message: error.message };
  }
}

// The first answer (or error) of one of the package's watches that `accept`s it, then the watch is
// stopped: a listener left open when the process ends stays registered in the emulator, whose next
// wipe then fails (500 "Stream is already completed").
function firstAnswer(watch, accept = () => true) {
  return new Promise((resolve, reject) => {
    let stop = () => undefined;
    const settle = (settleWith, value) => {
      clearTimeout(timer);
      queueMicrotask(() => stop());
      settleWith(value);
    };
    const timer = setTimeout(() => settle(reject, new Error("no answer from the listener in time")), WATCH_TIMEOUT_MS);
    stop = watch(
      (answer) => {
        if (accept(answer)) settle(resolve, answer);
      },
      (error) => settle(reject, error),
    );
  });
}

const settings = localDevelopment({
  token: env.TOKEN_URL,
  auth: env.FIREBASE_AUTH_EMULATOR_HOST,
  firestore: env.FIRESTORE_EMULATOR_HOST,
});
const { auth, db, tokenUrl } = startFirebase({ ...settings, firebase: { ...settings.firebase, projectId: env.PROJECT_ID } });
const errors = [];
const connection = connectClerkToFirebase({ auth, tokenUrl, onError: (error) => errors.push(error) });
const data = clerkData(db, auth);

// whileSignedIn keeps a watch following whoever is signed in: it starts at sign-in, stops at sign-out.
const followed = [];
const stopFollowing = data.whileSignedIn(
  () => data.watchOwnUser((found) => found && followed.push(`data ${found.clerk_id}`), (error) => followed.push(error.code)),
  () => followed.push("signed out"),
);
await connection.follow({ sessionId: "forged", getToken: async () => env.FORGED_SESSION_TOKEN });
const forged = errors.splice(0).map((error) => `${error.code}: ${error.message}`);
const beforeSignIn = await errorOf(() => data.readOwnUser());
await connection.follow({ sessionId: env.SESSION_ID, organizationId: env.ORG_ID, getToken: async () => env.CLERK_SESSION_TOKEN });
const user = auth.currentUser;
const { claims } = await user.getIdTokenResult();

const own = await data.readOwnUser();
const live = await firstAnswer(data.watchOwnUser, (found) => found !== undefined);
const memberships = await data.readOwnMemberships();
const liveMemberships = await firstAnswer(data.watchOwnMemberships);
const organization = await data.readOrganization(env.ORG_ID);
const liveOrganization = await firstAnswer((next, fail) => data.watchOrganization(env.ORG_ID, next, fail));
const members = await data.readMembers(env.ORG_ID);
const liveMembers = await firstAnswer((next, fail) => data.watchMembers(env.ORG_ID, next, fail));
const mistyped = await errorOf(() => data.readOrganization(env.MISTYPED_ORG_ID));
const mistypedLive = await errorOf(() => firstAnswer((next, fail) => data.watchOrganization(env.MISTYPED_ORG_ID, next, fail)));
const ownRef = doc(db, "users", user.uid).withConverter(clerkUserConverter());
const syncFieldWrite = await errorOf(() => setDoc(ownRef, { email: "me@example.com" }, { merge: true }));
const appFieldWrite = await errorOf(() => setDoc(ownRef, { nickname: "Al" }, { merge: true }));
const otherError = await errorOf(() => getDoc(doc(db, "users", env.OTHER_UID)));
const otherOrganizationError = await errorOf(() => data.readOrganization(env.OTHER_ORG_ID));
const everyonesError = await errorOf(() => getDocs(collectionGroup(db, "memberships")));

await connection.follow(null);
await new Promise((resolve) => setTimeout(resolve, 200)); // onAuthStateChanged is asynchronous
stopFollowing();
const afterSignOutError = await errorOf(() => getDoc(doc(db, "users", user.uid)));
const afterSignOutRead = await errorOf(() => data.readOwnUser());

const codeOf = (found) => found?.code ?? found?.name ?? null;
console.log(
  JSON.stringify({
    forged_exchange: forged,
    before_sign_in_error: beforeSignIn?.message ?? null,
    uid: user.uid,
    claims: { org_id: claims.org_id ?? null, org_role: claims.org_role ?? null, org_slug: claims.org_slug ?? null },
    sign_in_provider: claims.firebase?.sign_in_provider ?? null,
    own: { clerk_id: own?.clerk_id ?? null, email: own?.email ?? null, updated_at_ms: own?.updated_at.toMillis() ?? null },
    watched_clerk_id: live?.clerk_id ?? null,
    memberships: memberships.map((member) => ({ organization_id: member.organization_id, role: member.role })),
    live_memberships: liveMemberships.map((member) => member.membership_id),
    organization_name: organization?.name ?? null,
    live_organization_name: liveOrganization?.name ?? null,
    members: members.map((member) => member.user_id),
    live_members: liveMembers.map((member) => member.user_id),
    mistyped: mistyped && `${mistyped.name}: ${mistyped.message}`,
    mistyped_live: mistypedLive && `${mistypedLive.name}: ${mistypedLive.message}`,
    sync_field_write: syncFieldWrite && `${syncFieldWrite.name}: ${syncFieldWrite.message}`,
    app_field_write: codeOf(appFieldWrite),
    other_error: codeOf(otherError),
    other_organization_error: codeOf(otherOrganizationError),
    all_memberships_error: codeOf(everyonesError),
    after_sign_out_error: codeOf(afterSignOutError),
    after_sign_out_read: afterSignOutRead?.message ?? null,
    current_user_after_sign_out: auth.currentUser?.uid ?? null,
    errors: errors.map((error) => error.code),
    while_signed_in: [...new Set(followed)],
    metadata: [metadataOf(own.public_metadata), metadataOf('{"plan":"pro"}')],
  }),
);
await terminate(db);
await deleteApp(getApp());
process.exit(0);
