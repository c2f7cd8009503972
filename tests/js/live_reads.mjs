// A signed-in app's live reads while Clerk bans its user: the built package (connectClerkToFirebase
// watching the user's own document, clerkData's four watches) with the docs' firebase.ts, against both
// emulators, the token function and the webhook of tests/test_access_end_to_end.py.
//
// Prints {"ready": ...} once every watch has its first answer; the test then applies the ban through
// the webhook and writes "banned" on stdin. Then it tries a new Clerk session (whose sign-in Firebase
// refuses: the webhook disabled the Auth user) and prints every event with its epoch milliseconds as one
// JSON line. Exits 2 if anything takes longer than DEADLINE_MS.
import { createInterface } from "node:readline";
import { terminate } from "firebase/firestore";
import { clerkData, connectClerkToFirebase } from "clerk-firestore-sync";
import { localDevelopment, startFirebase } from "../../build/docs-ts/firebase.ts";

const DEADLINE_MS = 60_000;
setTimeout(() => {
  console.error(`live_reads: no result after ${DEADLINE_MS} ms; events so far: ${JSON.stringify(events)}`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;
const events = [];
const note = (what, detail = {}) => events.push({ what, at: Date.now(), ...detail });

const settings = localDevelopment({
  token: env.TOKEN_URL,
  auth: env.FIREBASE_AUTH_EMULATOR_HOST,
  firestore: env.FIRESTORE_EMULATOR_HOST,
});
const { auth, db, tokenUrl } = startFirebase({ ...settings, firebase: { ...settings.firebase, projectId: env.PROJECT_ID } });
const connection = connectClerkToFirebase({
  auth,
  tokenUrl,
  firestore: db,
  onError: (error) => note(`connection ${error.code}`, { reason: error.reason ?? null }),
});
auth.onAuthStateChanged((user) => note(user ? "firebase signed in" : "firebase signed out"));
const data = clerkData(db, auth);

await connection.follow({ sessionId: env.SESSION_ID, organizationId: env.ORG_ID, getToken: async () => env.CLERK_SESSION_TOKEN });
const firstAnswers = new Map();
const stops = [];
let ended = 0;
const ready = new Promise((resolve) => {
  const watch = (name, start) =>
    stops.push(start(
      (value) => {
        if (!firstAnswers.has(name)) firstAnswers.set(name, value);
        note(`${name} data`);
        if (firstAnswers.size === 4) resolve();
      },
      (error) => {
        ended += 1;
        note(`${name} ended`, { reason: error.code ?? error.name });
      },
    ));
  watch("own user", data.watchOwnUser);
  watch("own memberships", data.watchOwnMemberships);
  watch("organization", (next, fail) => data.watchOrganization(env.ORG_ID, next, fail));
  watch("members", (next, fail) => data.watchMembers(env.ORG_ID, next, fail));
});
await ready;
console.log(
  JSON.stringify({
    ready: {
      banned: firstAnswers.get("own user")?.banned ?? null,
      memberships: firstAnswers.get("own memberships").length,
      organization: firstAnswers.get("organization")?.clerk_id ?? null,
      members: firstAnswers.get("members").length,
    },
  }),
);

const lines = createInterface({ input: process.stdin });
for await (const line of lines) if (line.trim() === "banned") break;
note("told: banned");
while (ended < 4 || auth.currentUser !== null) await new Promise((resolve) => setTimeout(resolve, 50));

// The same session is not exchanged again; a new one is, and Firebase refuses the disabled user.
await connection.follow({ sessionId: env.SESSION_ID, organizationId: env.ORG_ID, getToken: async () => env.CLERK_SESSION_TOKEN });
note("followed the ended session again");
await connection.follow({ sessionId: env.NEW_SESSION_ID, organizationId: env.ORG_ID, getToken: async () => env.NEW_CLERK_SESSION_TOKEN });
note("followed a new session");
console.log(JSON.stringify({ events, current_user: auth.currentUser?.uid ?? null }));
// Every listener closed before the process ends: the emulator keeps a dead one registered otherwise.
for (const stop of stops) stop();
connection.disconnect();
await terminate(db);
process.exit(0);
