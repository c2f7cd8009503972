// How a synced document is checked as it is read: the declaration's descriptors (generated into
// documents.ts from clerk_sync/documents.py) and the validator that reads them. The messages are the
// Python side's (`check`), word for word: a field's name and type, never its value.
import { Timestamp } from "firebase/firestore";

/** A field type of the declaration. */
export type TypeDescriptor =
  | {
      readonly kind: "string" | "boolean" | "integer" | "timestamp" | "clerk_id" | "digest" | "metadata";
      readonly expected: string;
    }
  | { readonly kind: "one_of"; readonly values: readonly string[]; readonly expected: string }
  | { readonly kind: "nullable" | "array"; readonly of: TypeDescriptor; readonly expected: string }
  | { readonly kind: "map"; readonly of: TypeDescriptor; readonly keys?: TypeDescriptor; readonly expected: string }
  | { readonly kind: "object"; readonly fields: readonly FieldDescriptor[]; readonly expected: string };

/** A field of the declaration: its name, its type, whether it may be absent. */
export interface FieldDescriptor {
  readonly name: string;
  readonly type: TypeDescriptor;
  readonly optional: boolean;
}

/** A synced document as declared: its TypeScript name, where it lives, its fields. */
export interface DocumentDescriptor {
  readonly name: string;
  readonly path: string;
  readonly fields: readonly FieldDescriptor[];
  /** Every field the sync writes; any other field of the document is the app's. */
  readonly sync_fields: readonly string[];
}

/** A synced document that is not what the declaration says (a hand edit, or a sync of another version). */
export class ClerkSyncSchemaError extends Error {
  override readonly name = "ClerkSyncSchemaError";

  constructor(
    readonly path: string,
    readonly problems: readonly string[],
  ) {
    super(`${path}: ${problems.join("; ")}`);
  }
}

const CLERK_ID = /^[A-Za-z0-9_-]{1,128}$/;
const RESERVED_ID = /^__.+__$/s;
const HEX_DIGEST = /^[0-9a-f]{64}$/;

/** What a value is, in the declaration's words, without the value itself. */
export function typeName(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "boolean") return "boolean";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  if (typeof value === "string") return "string";
  if (Array.isArray(value)) return "list";
  if (value instanceof Timestamp) return "timestamp";
  if (typeof value === "object") return "map";
  return typeof value;
}

function isMap(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Timestamp);
}

function isJsonObject(text: string): boolean {
  try {
    return isMap(JSON.parse(text));
  } catch {
    return false;
  }
}

function accepts(kind: string, value: unknown): boolean {
  switch (kind) {
    case "string":
      return typeof value === "string";
    case "boolean":
      return typeof value === "boolean";
    case "integer":
      return typeof value === "number" && Number.isInteger(value);
    case "timestamp":
      return value instanceof Timestamp;
    case "clerk_id":
      return typeof value === "string" && CLERK_ID.test(value) && !RESERVED_ID.test(value);
    case "digest":
      return typeof value === "string" && HEX_DIGEST.test(value);
    case "metadata":
      return isMap(value) || (typeof value === "string" && isJsonObject(value));
    default:
      return false;
  }
}

function wrong(value: unknown, where: string, expected: string): string {
  return `${where} is ${typeName(value)}, not ${expected}`;
}

/** Everything wrong with one value of a declared type (named `where`), inside it too; empty when right. */
export function typeProblems(type: TypeDescriptor, value: unknown, where: string): string[] {
  switch (type.kind) {
    case "nullable": {
      if (value === null) return [];
      const inner = typeProblems(type.of, value, where);
      return inner[0]?.startsWith(`${where} is `) ? [wrong(value, where, type.expected)] : inner;
    }
    case "one_of":
      return typeof value === "string" && type.values.includes(value) ? [] : [wrong(value, where, type.expected)];
    case "array":
      if (!Array.isArray(value)) return [wrong(value, where, type.expected)];
      return value.flatMap((item, index) => typeProblems(type.of, item, `${where}[${index}]`));
    case "map": {
      if (!isMap(value)) return [wrong(value, where, type.expected)];
      return Object.entries(value).flatMap(([key, item]) =>
        type.keys && typeProblems(type.keys, key, "key").length > 0
          ? [`${where} has a key that is not a ${type.keys.expected}`]
          : typeProblems(type.of, item, `${where}.${key}`),
      );
    }
    case "object":
      if (!isMap(value)) return [wrong(value, where, type.expected)];
      return fieldProblems(type.fields, value, `${where}.`);
    default:
      return accepts(type.kind, value) ? [] : [wrong(value, where, type.expected)];
  }
}

function fieldProblems(fields: readonly FieldDescriptor[], data: Record<string, unknown>, prefix = ""): string[] {
  const problems: string[] = [];
  for (const field of fields) {
    const where = prefix + field.name;
    if (!(field.name in data)) {
      if (!field.optional) problems.push(`${where} missing`);
      continue;
    }
    problems.push(...typeProblems(field.type, data[field.name], where));
  }
  return problems;
}

/** What is wrong with a stored document, field by field, in declaration order; the app's fields are free. */
export function documentProblems(document: DocumentDescriptor, data: Record<string, unknown>): string[] {
  return fieldProblems(document.fields, data);
}

/** Whether a document holds any of the sync's fields (one with only the app's is not synced yet). */
export function holdsSyncedFields(document: DocumentDescriptor, data: Record<string, unknown>): boolean {
  return document.sync_fields.some((name) => name in data);
}
