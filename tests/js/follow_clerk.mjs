// connectClerkToFirebase (the built package) following Clerk through every change an app sees: a 503 of
// the token function retried, the same state not exchanged twice, an organization switch (the ID token's
// claims follow), another user's session, sign-out, a state replaced before its exchange finished, and
// the failures it reports (no token, a JWT template's token, a token function that does not answer).
// Last, the same through an object shaped like @clerk/clerk-js's Clerk (its addListener: clerk-js itself
// needs a browser and Clerk's Frontend API). Run by tests/test_token_end_to_end.py against the Auth
// emulator and a real token function behind a proxy that answers its first call 503. One JSON line out.
import { onIdTokenChanged } from "firebase/auth";
import { connectClerkToFirebase } from "clerk-firestore-sync";
import { localDevelopment, startFirebase } from "../../build/docs-ts/firebase.ts";

const DEADLINE_MS = 45_000;
setTimeout(() => {
  console.error(`follow_clerk: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;
const settings = localDevelopment({ token: env.TOKEN_URL, auth: env.FIREBASE_AUTH_EMULATOR_HOST, firestore: "127.0.0.1:1" });
const { auth, tokenUrl } = startFirebase({ ...settings, firebase: { ...settings.firebase, projectId: env.PROJECT_ID } });
let signIns = 0;
onIdTokenChanged(auth, (user) => {
  if (user) signIns += 1;
});
const errors = [];
const onError = (error) => errors.push({ code: error.code, reason: error.reason ?? null, status: error.status ?? null });
const connection = connectClerkToFirebase({ auth, tokenUrl, onError });
const token = (name) => async () => env[name];
const A = (organizationId, getToken) => ({ sessionId: env.SESSION_A, organizationId, getToken });

async function state() {
  const user = auth.currentUser;
  if (!user) return { uid: null, org_id: null, sign_ins: signIns };
  const { claims } = await user.getIdTokenResult();
  return { uid: user.uid, org_id: claims.org_id ?? null, clerk_sid: claims.clerk_sid ?? null, sign_ins: signIns };
}

const steps = {};
const started = Date.now();
await connection.follow(A(env.ORG_1, token("TOKEN_A_ORG_1")));
steps.first_after_a_503 = { ...(await state()), took_ms: Date.now() - started };
await connection.follow(A(env.ORG_1, token("TOKEN_A_ORG_1")));
steps.same_state_again = await state();
await connection.follow(A(env.ORG_2, token("TOKEN_A_ORG_2")));
steps.organization_switch = await state();
await connection.follow({ sessionId: env.SESSION_B, getToken: token("TOKEN_B") });
steps.other_users_session = await state();
await connection.follow(null);
steps.signed_out = await state();
void connection.follow(A(env.ORG_1, token("TOKEN_A_ORG_1")));
await connection.follow(null);
steps.sign_in_replaced_by_sign_out = await state();
void connection.follow(null);
await connection.follow(A(env.ORG_2, token("TOKEN_A_ORG_2")));
steps.sign_out_replaced_by_sign_in = await state();
await connection.follow({ sessionId: "sess_gone", getToken: async () => null });
await connection.follow({ sessionId: "sess_template", getToken: token("TEMPLATE_TOKEN") });
steps.after_refusals = await state();
connection.disconnect();

const nobody = connectClerkToFirebase({ auth, tokenUrl: env.CLOSED_URL, onError, timeoutMs: 2_000 });
await nobody.follow({ sessionId: "sess_unreachable", getToken: token("TOKEN_B") });
nobody.disconnect();

// An object shaped like @clerk/clerk-js's Clerk: addListener emits at once and on each change.
let listener = () => undefined;
const clerk = {
  addListener(next) {
    listener = next;
    next({ session: null, organization: null });
    return () => {
      listener = () => undefined;
    };
  },
};
const following = connectClerkToFirebase({ auth, tokenUrl, onError, clerk });
listener({ session: { id: env.SESSION_B, getToken: token("TOKEN_B") }, organization: null });
await following.settled();
steps.clerk_listener_signed_in = await state();
listener({ session: null, organization: null });
await following.settled();
steps.clerk_listener_signed_out = await state();
following.disconnect();

console.log(JSON.stringify({ steps, errors }));
process.exit(0);
