// The app's billing reads with the built package, against both emulators and a real token function, run
// by tests/test_token_end_to_end.py: the signed-in user's subscription (hasPlan, hasFeature, trialEndsAt),
// their organization's, their payments and the plans, once; then the own subscription live while the test
// applies a downgrade through the webhook (it writes "downgraded" on stdin once the webhook answered).
// Prints {"ready": ...} before the downgrade and the report after, one JSON line each.
import { createInterface } from "node:readline";
import { terminate } from "firebase/firestore";
import { clerkData, connectClerkToFirebase, hasFeature, hasPlan, trialEndsAt } from "clerk-firestore-sync";
import { localDevelopment, startFirebase } from "../../build/docs-ts/firebase.ts";

const DEADLINE_MS = 45_000;
setTimeout(() => {
  console.error(`billing_reads: no result after ${DEADLINE_MS} ms`);
  process.exit(2);
}, DEADLINE_MS).unref();

const env = process.env;
const settings = localDevelopment({
  token: env.TOKEN_URL,
  auth: env.FIREBASE_AUTH_EMULATOR_HOST,
  firestore: env.FIRESTORE_EMULATOR_HOST,
});
const { auth, db, tokenUrl } = startFirebase({ ...settings, firebase: { ...settings.firebase, projectId: env.PROJECT_ID } });
const errors = [];
const connection = connectClerkToFirebase({ auth, tokenUrl, onError: (error) => errors.push(error.code) });
await connection.follow({ sessionId: env.SESSION_ID, organizationId: env.ORG_ID, getToken: async () => env.CLERK_SESSION_TOKEN });
const data = clerkData(db, auth);

const own = await data.readOwnSubscription();
const organization = await data.readOrganizationSubscription(env.ORG_ID);
const payments = await data.readOwnPayments();
const plans = await data.readPlans();
const seen = [];
let changed;
const downgradeSeen = new Promise((resolve) => {
  changed = resolve;
});
const stop = data.watchOwnSubscription(
  (subscription) => {
    seen.push({ pro: hasPlan(subscription, "pro"), export: hasFeature(subscription, "export") });
    if (!hasPlan(subscription, "pro")) changed();
  },
  (error) => seen.push({ error: error.code ?? error.name }),
);
await new Promise((resolve) => setTimeout(resolve, 300)); // the watch's first answer
console.log(
  JSON.stringify({
    ready: {
      own: {
        payer: `${own?.payer_type}/${own?.payer_id}`,
        pro: hasPlan(own, "pro"),
        export: hasFeature(own, "export"),
        team: hasPlan(own, "team"),
        trial_ends_ms: trialEndsAt(own)?.getTime() ?? null,
        items: Object.keys(own?.items ?? {}).length,
      },
      organization: { payer: `${organization?.payer_type}/${organization?.payer_id}`, team: hasPlan(organization, "team"),
                      seats: Object.values(organization?.items ?? {})[0]?.seats ?? null },
      payments: payments.map((payment) => `${payment.status} ${payment.totals?.grand_total?.amount_formatted}`),
      plans: plans.map((plan) => `${plan.slug}: ${plan.features.join(",")}`).sort(),
    },
  }),
);

for await (const line of createInterface({ input: process.stdin })) if (line.trim() === "downgraded") break;
await downgradeSeen;
stop();
await connection.follow(null);
console.log(JSON.stringify({ seen: seen.filter((value, index) => JSON.stringify(value) !== JSON.stringify(seen[index - 1])), errors }));
await terminate(db);
process.exit(0);
