// clerk-firestore-sync's client: Firebase signed in as the Clerk user, and the synced Clerk data read typed.
export {
  ClerkFirebaseError,
  connectClerkToFirebase,
  type ClerkEmitter,
  type ClerkFirebaseConnection,
  type ClerkFirebaseErrorCode,
  type ClerkSignIn,
  type ConnectOptions,
} from "./connect.js";
export { ClerkSyncWriteError, documentConverter, syncedData, type AppFields } from "./converters.js";
export * from "./documents.js";
export {
  clerkData,
  hasFeature,
  hasPlan,
  metadataOf,
  trialEndsAt,
  type AppFieldsOf,
  type ClerkData,
  type CollectionsOptions,
  type MembershipOf,
  type OnError,
  type OrganizationOf,
  type UserOf,
} from "./readers.js";
export {
  ClerkSyncSchemaError,
  documentProblems,
  holdsSyncedFields,
  typeName,
  typeProblems,
  type DocumentDescriptor,
  type FieldDescriptor,
  type TypeDescriptor,
} from "./schema.js";
