// The TypeScript client's validator (the built package) over the documents tests/test_client.py sends on
// stdin: one JSON line of {"name": "ClerkUser", "data": {...}} per document (or, for a declaration the
// package does not hold, {"descriptor": {...}, "data": {...}}), Firestore Timestamps written as
// {"$timestamp_ms": N}. Prints one JSON line per document: its problems, in the client's words.
import { Timestamp } from "firebase/firestore";
import {
  CLERK_MEMBERSHIP,
  CLERK_ORGANIZATION,
  CLERK_PAYMENT,
  CLERK_PLAN,
  CLERK_SUBSCRIPTION,
  CLERK_USER,
  documentProblems,
} from "clerk-firestore-sync";
import { readFileSync } from "node:fs";

const DECLARED = {
  ClerkUser: CLERK_USER,
  ClerkOrganization: CLERK_ORGANIZATION,
  ClerkMembership: CLERK_MEMBERSHIP,
  ClerkSubscription: CLERK_SUBSCRIPTION,
  ClerkPayment: CLERK_PAYMENT,
  ClerkPlan: CLERK_PLAN,
};

function revive(_key, value) {
  if (value && typeof value === "object" && !Array.isArray(value) && "$timestamp_ms" in value) {
    return Timestamp.fromMillis(value.$timestamp_ms);
  }
  return value;
}

for (const line of readFileSync(0, "utf8").split("\n")) {
  if (!line.trim()) continue;
  const { name, descriptor, data } = JSON.parse(line, revive);
  console.log(JSON.stringify(documentProblems(descriptor ?? DECLARED[name], data)));
}
