// Firebase signed in as the Clerk user, and kept in step with Clerk: a sign-out signs out of Firebase, a
// session or organization switch exchanges again (so the ID token's claims follow), and when the rules stop
// allowing the user's own document (a ban, deprovisioning, deletion, or this Clerk session ended) the
// Firebase session ends too. Every failure goes to onError; nothing is thrown at the caller, nothing dropped.
import { signInWithCustomToken, signOut, type Auth } from "firebase/auth";
import { doc, onSnapshot, type Firestore, type Unsubscribe } from "firebase/firestore";

/** Who Clerk says is signed in, as `useAuth()` or a Clerk session gives it. */
export interface ClerkSignIn {
  /** Clerk's session id (`sess_...`): another session (a switch of account) exchanges again. */
  readonly sessionId: string;
  /** The active organization: a switch exchanges again, so `org_id` / `org_role` in the ID token follow it. */
  readonly organizationId?: string | null | undefined;
  /** Clerk's `getToken` without a template: a current session token (they live 60 s). */
  readonly getToken: () => Promise<string | null>;
}

/** The part of `@clerk/clerk-js`'s `Clerk` the connection follows by itself (its `addListener`). */
export interface ClerkEmitter {
  addListener(
    listener: (resources: {
      session?: { id: string; getToken(): Promise<string | null> } | null | undefined;
      organization?: { id: string } | null | undefined;
    }) => void,
  ): () => void;
}

/** Why Firebase could not follow Clerk. */
export type ClerkFirebaseErrorCode =
  /** Clerk's getToken gave no token: Clerk is signed out, or the session is not active. */
  | "no-session-token"
  /** The token function refused the session token (4xx or 500); `reason` is its error code. */
  | "exchange-refused"
  /** The token function did not answer, or answered 503, after the retries. */
  | "exchange-unavailable"
  /** Firebase Auth refused the custom token (`auth/user-disabled`: Clerk banned or deprovisioned the user). */
  | "sign-in-failed"
  /** Signing out of Firebase failed. */
  | "sign-out-failed"
  /** The rules stopped allowing the user's own document: banned, deprovisioned, deleted, or this session ended. */
  | "access-ended"
  /** The watch of the user's own document failed for another reason (`reason` is Firestore's code). */
  | "watch-failed";

/** A failure to keep Firebase in step with Clerk; `reason` is the token function's or Firebase's error code. */
export class ClerkFirebaseError extends Error {
  override readonly name = "ClerkFirebaseError";
  readonly status: number | undefined;
  readonly reason: string | undefined;

  constructor(
    readonly code: ClerkFirebaseErrorCode,
    message: string,
    details: { status?: number; reason?: string; cause?: unknown } = {},
  ) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.status = details.status;
    this.reason = details.reason;
  }
}

export interface ConnectOptions {
  /** The app's Firebase Auth (`getAuth(app)`). */
  readonly auth: Auth;
  /** The `firebase_token` function's URL. */
  readonly tokenUrl: string;
  /** Every failure, as it happens (there is no one to throw at when Clerk's listener drives the connection). */
  readonly onError: (error: ClerkFirebaseError) => void;
  /** `@clerk/clerk-js`'s `Clerk`, to be followed by itself; without it, call `follow` (React: from `useAuth`). */
  readonly clerk?: ClerkEmitter;
  /**
   * The app's Firestore: the connection then watches the user's own document (one listener) and, when the
   * rules refuse it, signs out of Firebase and reports `access-ended`, which ends every other live read too.
   */
  readonly firestore?: Firestore;
  /** `USERS_COLLECTION` of the sync (`users`). */
  readonly usersCollection?: string;
  /** How long one call of the token function may take (10 s); 503s and failed calls are retried twice. */
  readonly timeoutMs?: number;
}

export interface ClerkFirebaseConnection {
  /**
   * Make Firebase follow this Clerk state (null: signed out). Resolves when Firebase has caught up, or the
   * attempt failed (onError has it) or a newer state replaced it; never rejects.
   */
  follow(signIn: ClerkSignIn | null): Promise<void>;
  /** Resolves when Firebase has caught up with the last state followed (or that attempt failed). */
  settled(): Promise<void>;
  /** Stop following Clerk and watching the own document; Firebase's session stays as it is. */
  disconnect(): void;
}

const RETRY_DELAYS_MS = [500, 1500];
const DEFAULT_TIMEOUT_MS = 10_000;

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      reject(signal.reason);
    });
  });
}

async function answerOf(response: Response): Promise<{ token?: unknown; error?: unknown }> {
  try {
    const body: unknown = await response.json();
    return typeof body === "object" && body !== null ? body : {};
  } catch {
    return {};
  }
}

/** Exchange a Clerk session token for a Firebase custom token; 503s and failed calls are retried. */
async function exchange(tokenUrl: string, clerkToken: string, timeoutMs: number, signal: AbortSignal): Promise<string> {
  for (let attempt = 0; ; attempt += 1) {
    const retry = RETRY_DELAYS_MS[attempt];
    let response: Response;
    try {
      response = await fetch(tokenUrl, {
        method: "POST",
        headers: { Authorization: `Bearer ${clerkToken}` },
        signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]),
      });
    } catch (error) {
      if (signal.aborted) throw error;
      if (retry !== undefined) {
        await sleep(retry, signal);
        continue;
      }
      throw new ClerkFirebaseError("exchange-unavailable", `token exchange: no answer from ${tokenUrl}`, {
        cause: error,
      });
    }
    const answer = await answerOf(response);
    if (response.ok && typeof answer.token === "string") return answer.token;
    if (response.status === 503 && retry !== undefined) {
      await sleep(retry, signal);
      continue;
    }
    const reason = typeof answer.error === "string" ? answer.error : "no_error_code";
    const code = response.status === 503 ? "exchange-unavailable" : "exchange-refused";
    throw new ClerkFirebaseError(code, `token exchange: ${response.status} ${reason}`, {
      status: response.status,
      reason,
    });
  }
}

function codeOf(error: unknown): string {
  const code = typeof error === "object" && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === "string" ? code : "unknown";
}

/** Keep Firebase Auth signed in as the Clerk user (uid = Clerk user id) for as long as Clerk says so. */
export function connectClerkToFirebase(options: ConnectOptions): ClerkFirebaseConnection {
  const { auth, tokenUrl } = options;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  let latest = 0; // the newest follow's turn: an older one still queued or running gives way
  let running: AbortController | undefined;
  let queue: Promise<void> = Promise.resolve();
  let followed: string | null = null; // the Clerk state Firebase is signed in for
  let ended: string | null = null; // the state whose access ended: not exchanged again until Clerk's changes
  let stopWatching: Unsubscribe | undefined;
  let stopFollowingClerk: (() => void) | undefined;

  function report(error: ClerkFirebaseError): void {
    try {
      options.onError(error);
    } catch (thrown) {
      setTimeout(() => {
        throw thrown; // the app's own handler failed: let the host see it
      });
    }
  }

  function unwatch(): void {
    stopWatching?.();
    stopWatching = undefined;
  }

  function watchOwnDocument(uid: string, key: string): void {
    if (options.firestore === undefined) return;
    const own = doc(options.firestore, options.usersCollection ?? "users", uid);
    stopWatching = onSnapshot(
      own,
      () => undefined, // allowed: nothing to do
      (error) => {
        stopWatching = undefined;
        if (error.code !== "permission-denied") {
          report(new ClerkFirebaseError("watch-failed", `watching ${own.path}: ${error.code}`, { reason: error.code }));
          return;
        }
        ended = key;
        report(
          new ClerkFirebaseError(
            "access-ended",
            `${own.path}: the rules refuse it (banned, deprovisioned, deleted, or the Clerk session ended); ` +
              "signing out of Firebase",
            { reason: error.code },
          ),
        );
        void follow(null, key);
      },
    );
  }

  async function leave(): Promise<void> {
    unwatch();
    followed = null;
    if (auth.currentUser === null) return;
    try {
      await signOut(auth);
    } catch (error) {
      throw new ClerkFirebaseError("sign-out-failed", `Firebase sign-out: ${codeOf(error)}`, {
        reason: codeOf(error),
        cause: error,
      });
    }
  }

  async function apply(turn: number, signIn: ClerkSignIn | null, endedKey: string | null): Promise<void> {
    if (turn !== latest) return;
    const controller = new AbortController();
    running = controller;
    const stale = (): boolean => turn !== latest || controller.signal.aborted;
    try {
      await auth.authStateReady(); // a session restored from persistence must not outlive Clerk's
      if (signIn === null) {
        await leave();
        ended = endedKey;
        return;
      }
      const key = `${signIn.sessionId}/${signIn.organizationId ?? ""}`;
      if (key === ended) return; // its access ended: Clerk's next change (sign-out, another session) decides
      if (key === followed && auth.currentUser !== null) return;
      ended = null;
      const clerkToken = await signIn.getToken();
      if (stale()) return;
      if (!clerkToken) throw new ClerkFirebaseError("no-session-token", "Clerk's getToken() gave no session token");
      const customToken = await exchange(tokenUrl, clerkToken, timeoutMs, controller.signal);
      if (stale()) return;
      unwatch();
      try {
        await signInWithCustomToken(auth, customToken);
      } catch (error) {
        followed = null;
        throw new ClerkFirebaseError("sign-in-failed", `Firebase sign-in: ${codeOf(error)}`, {
          reason: codeOf(error),
          cause: error,
        });
      }
      followed = key;
      const uid = auth.currentUser?.uid;
      if (uid !== undefined) watchOwnDocument(uid, key);
    } catch (error) {
      if (stale()) return; // replaced by a newer state: not a failure
      report(
        error instanceof ClerkFirebaseError
          ? error
          : new ClerkFirebaseError("exchange-unavailable", `token exchange: ${String(error)}`, { cause: error }),
      );
      // Firebase is signed in as the state Clerk reports, or not at all: never as the one before it.
      if (signIn !== null) await leave().catch((failed: unknown) => report(failed as ClerkFirebaseError));
    } finally {
      if (running === controller) running = undefined;
    }
  }

  function follow(signIn: ClerkSignIn | null, endedKey: string | null = null): Promise<void> {
    latest += 1;
    const turn = latest;
    running?.abort(); // a newer state: the exchange under way is of no use any more
    queue = queue.then(() => apply(turn, signIn, endedKey));
    return queue;
  }

  if (options.clerk !== undefined) {
    stopFollowingClerk = options.clerk.addListener(({ session, organization }) => {
      void follow(
        session ? { sessionId: session.id, organizationId: organization?.id ?? null, getToken: () => session.getToken() } : null,
      );
    });
  }

  return {
    follow: (signIn) => follow(signIn),
    settled: () => queue,
    disconnect(): void {
      stopFollowingClerk?.();
      stopFollowingClerk = undefined;
      latest += 1;
      running?.abort();
      unwatch();
    },
  };
}
