// A FirestoreDataConverter for each synced document (documents.ts makes one per declaration with
// documentConverter): reads are checked against the declaration, writes may only touch the app's fields.
import type {
  DocumentData,
  DocumentSnapshot,
  FirestoreDataConverter,
  PartialWithFieldValue,
  QueryDocumentSnapshot,
  SetOptions,
  SnapshotOptions,
  WithFieldValue,
} from "firebase/firestore";
import { ClerkSyncSchemaError, documentProblems, holdsSyncedFields, type DocumentDescriptor } from "./schema.js";

/** Fields your app keeps in the same documents: any map (say `{ plan?: string }`); `{}` for none. */
export type AppFields = DocumentData;

/** A write through a converter that names a field the sync owns: the next event would overwrite it. */
export class ClerkSyncWriteError extends Error {
  override readonly name = "ClerkSyncWriteError";

  constructor(
    readonly document: string,
    readonly fields: readonly string[],
  ) {
    super(`${document}: ${fields.join(", ")} ${fields.length === 1 ? "is" : "are"} written by the sync only`);
  }
}

/**
 * The synced document's data, checked against its declaration: undefined when there is no document or it
 * holds only the app's fields (written before the first event arrived); ClerkSyncSchemaError when a
 * synced field is missing or of another type.
 */
export function syncedData<T>(document: DocumentDescriptor, snapshot: DocumentSnapshot): T | undefined {
  const data = snapshot.data();
  if (data === undefined || !holdsSyncedFields(document, data)) return undefined;
  const problems = documentProblems(document, data);
  if (problems.length > 0) throw new ClerkSyncSchemaError(snapshot.ref.path, problems);
  return data as T;
}

/** A converter for one declared document, with `App` as the type of the app's own fields. */
export function documentConverter<Synced extends DocumentData, App extends AppFields = {}>(
  document: DocumentDescriptor,
): FirestoreDataConverter<Synced & App, DocumentData> {
  const owned = new Set(document.sync_fields);
  return {
    toFirestore(model: PartialWithFieldValue<Synced & App> | WithFieldValue<Synced & App>, _options?: SetOptions) {
      const named = Object.keys(model).filter((name) => owned.has(name));
      if (named.length > 0) throw new ClerkSyncWriteError(document.name, named);
      return model as DocumentData;
    },
    fromFirestore(snapshot: QueryDocumentSnapshot, options?: SnapshotOptions): Synced & App {
      const data = snapshot.data(options);
      if (!holdsSyncedFields(document, data)) {
        throw new ClerkSyncSchemaError(snapshot.ref.path, ["none of the sync's fields (not synced yet)"]);
      }
      const problems = documentProblems(document, data);
      if (problems.length > 0) throw new ClerkSyncSchemaError(snapshot.ref.path, problems);
      return data as Synced & App;
    },
  };
}
