"""The words the declaration of the synced documents is written in: Firestore value types, fields, documents.

A document's declaration (clerk_sync/documents.py) says every field the sync writes, its type, whether it
may be null or absent, and who sets it: Clerk (parsed from its payload) or the sync itself. One
declaration serves everyone: the kind modules take their field lists from it, `check` and the tests
validate stored documents with `Document.problems`, and tools/generate.py exports it as JSON Schema
(draft 2020-12), the TypeScript client's types and the field tables of docs/data-model.md.

Why Python types rather than a JSON Schema file: the writers are Python and import their fields from
here, so nothing can be written that is not declared; Firestore values JSON Schema has no word for
(a Timestamp, metadata kept as JSON text when Firestore cannot hold the map) are types of their own,
checked against what the Firestore client returns without a validator library in the deployed
function; and mypy checks the declaration like any other code. The JSON Schema is derived from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from clerk_sync import ids

__all__ = [
    "BOOLEAN",
    "CLERK_ID",
    "DIGEST",
    "INTEGER",
    "METADATA",
    "STRING",
    "TIMESTAMP",
    "ArrayOf",
    "Document",
    "Field",
    "MapOf",
    "Nullable",
    "ObjectOf",
    "OneOf",
    "Source",
    "Type",
    "type_name",
]

Source = Literal["clerk", "sync"]  # parsed from Clerk's payload, or written by the sync itself
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
TIMESTAMP_KEYWORD = "x-firestore-type"  # JSON Schema has no Firestore Timestamp: this marks one
MAX_FIELDS_NAMED_INLINE = 6  # a map with more fields is named by its type in the docs' words


def type_name(value: object) -> str:
    """What a stored value is, without the value itself (messages never hold data)."""
    if value is None:
        return "null"
    names: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string", bytes: "bytes"}
    names |= {list: "list", dict: "map", datetime: "timestamp"}
    return next((name for kind, name in names.items() if isinstance(value, kind)), type(value).__name__)


class Type(Protocol):
    """A Firestore value type: how to check a value read back, and how to say it in each language."""

    def problems(self, value: object, where: str) -> list[str]:
        """Everything wrong with `value` (named `where`), inside it too; empty when it is right."""

    @property
    def words(self) -> str:
        """The type in the docs' words ("string or null")."""

    @property
    def expected(self) -> str:
        """What a value must be, in a problem's words ("Clerk id or null")."""

    def json_schema(self) -> dict[str, Any]:
        """The type as JSON Schema (2020-12)."""

    def typescript(self, indent: str) -> str:
        """The type as TypeScript, as the Firebase JS SDK returns it."""

    def descriptor(self) -> dict[str, Any]:
        """The type as the TypeScript client's validator reads it (client/src/schema.ts)."""


def _wrong(value: object, where: str, expected: str) -> str:
    return f"{where} is {type_name(value)}, not {expected}"


@dataclass(frozen=True)
class _Scalar:
    """A string, boolean, integer or timestamp, with an optional test of its own (ids, digests)."""

    kind: str  # the client's validator's name for it
    words: str
    schema: Mapping[str, Any]
    ts: str
    accepts: Callable[[object], bool]
    what: str = ""  # what a value must be, when more than `words` says (a Clerk id is a string)

    @property
    def expected(self) -> str:
        """What a value must be."""
        return self.what or self.words

    def problems(self, value: object, where: str) -> list[str]:
        """The value is of this type, or the problem."""
        return [] if self.accepts(value) else [_wrong(value, where, self.expected)]

    def json_schema(self) -> dict[str, Any]:
        """As JSON Schema."""
        return dict(self.schema)

    def typescript(self, indent: str) -> str:
        """As TypeScript."""
        return self.ts

    def descriptor(self) -> dict[str, Any]:
        """Its kind, and what a value must be."""
        return {"kind": self.kind, "expected": self.expected}


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        return False


STRING = _Scalar("string", "string", {"type": "string"}, "string", lambda value: isinstance(value, str))
BOOLEAN = _Scalar("boolean", "boolean", {"type": "boolean"}, "boolean", lambda value: isinstance(value, bool))
INTEGER = _Scalar(
    "integer",
    "integer",
    {"type": "integer"},
    "number",
    lambda value: isinstance(value, int) and not isinstance(value, bool),
)
TIMESTAMP = _Scalar(
    "timestamp", "timestamp", {TIMESTAMP_KEYWORD: "timestamp"}, "Timestamp", lambda value: isinstance(value, datetime)
)
# A Clerk id doubles as a document id (ids.is_clerk_id): URL-safe, at most 128 characters, never `__x__`.
CLERK_ID = _Scalar(
    "clerk_id",
    "string",
    {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "not": {"pattern": "^__.+__$"}},
    "string",
    ids.is_clerk_id,
    "Clerk id",
)
DIGEST = _Scalar(
    "digest",
    "string",
    {"type": "string", "pattern": "^[0-9a-f]{64}$"},
    "string",
    lambda value: isinstance(value, str) and HEX_DIGEST.fullmatch(value) is not None,
    "64 hex digits",
)
# Metadata is stored as a map, or as the JSON text of the object when Firestore cannot hold it as a map.
METADATA = _Scalar(
    "metadata",
    "map, or string",
    {
        "anyOf": [
            {"type": "object"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": {"type": "object"}},
        ]
    },
    "ClerkMetadata",
    lambda value: isinstance(value, dict) or (isinstance(value, str) and _json_object(value)),
    "map or the JSON text of an object",
)


@dataclass(frozen=True)
class OneOf:
    """A string that is one of a few values (a payer's type)."""

    values: tuple[str, ...]

    def problems(self, value: object, where: str) -> list[str]:
        """One of the values, or the problem (a string outside them is named as a string, never quoted)."""
        return [] if value in self.values else [_wrong(value, where, self.expected)]

    @property
    def words(self) -> str:
        """`` `user` or `organization` ``."""
        return " or ".join(f"`{value}`" for value in self.values)

    @property
    def expected(self) -> str:
        """`user or organization`."""
        return " or ".join(self.values)

    def json_schema(self) -> dict[str, Any]:
        """An enum."""
        return {"enum": list(self.values)}

    def typescript(self, indent: str) -> str:
        """A union of string literals."""
        return " | ".join(f'"{value}"' for value in self.values)

    def descriptor(self) -> dict[str, Any]:
        """Its values."""
        return {"kind": "one_of", "values": list(self.values), "expected": self.expected}


@dataclass(frozen=True)
class Nullable:
    """The type, or null."""

    of: Type

    def problems(self, value: object, where: str) -> list[str]:
        """Null, or a value of the type."""
        if value is None:
            return []
        inner = self.of.problems(value, where)
        if inner and inner[0].startswith(f"{where} is "):
            return [_wrong(value, where, self.expected)]  # the value itself, not something inside it
        return inner

    @property
    def words(self) -> str:
        """`X or null`."""
        return f"{self.of.words} or null"

    @property
    def expected(self) -> str:
        """`X or null`."""
        return f"{self.of.expected} or null"

    def json_schema(self) -> dict[str, Any]:
        """anyOf the type and null."""
        return {"anyOf": [self.of.json_schema(), {"type": "null"}]}

    def typescript(self, indent: str) -> str:
        """`X | null`."""
        return f"{self.of.typescript(indent)} | null"

    def descriptor(self) -> dict[str, Any]:
        """Null, or the type."""
        return {"kind": "nullable", "of": self.of.descriptor(), "expected": self.expected}


@dataclass(frozen=True)
class ArrayOf:
    """A Firestore array of one type."""

    of: Type

    def problems(self, value: object, where: str) -> list[str]:
        """A list whose every item is of the type."""
        if not isinstance(value, list):
            return [_wrong(value, where, self.expected)]
        return [found for index, item in enumerate(value) for found in self.of.problems(item, f"{where}[{index}]")]

    @property
    def words(self) -> str:
        """`array of strings`, `` array of maps `{id, slug}` ``."""
        inner = self.of.words
        return f"array of maps{inner[3:]}" if inner.startswith("map ") else f"array of {inner}s"

    @property
    def expected(self) -> str:
        """`list of Xs`."""
        return f"list of {self.of.expected}s"

    def json_schema(self) -> dict[str, Any]:
        """An array of the type's items."""
        return {"type": "array", "items": self.of.json_schema()}

    def typescript(self, indent: str) -> str:
        """`X[]`, parenthesised when X is a union."""
        inner = self.of.typescript(indent)
        return f"({inner})[]" if "|" in inner else f"{inner}[]"

    def descriptor(self) -> dict[str, Any]:
        """A list of the type."""
        return {"kind": "array", "of": self.of.descriptor(), "expected": self.expected}


@dataclass(frozen=True)
class MapOf:
    """A Firestore map whose keys are data (ids), every value of one type."""

    of: Type
    key_words: str = "id"
    keys: Type | None = None  # what every key must be (a Clerk id), when it must be something

    def problems(self, value: object, where: str) -> list[str]:
        """A map whose every key is of `keys` and every value of the type (a key is data: never printed)."""
        if not isinstance(value, dict):
            return [_wrong(value, where, self.expected)]
        found = []
        for key, item in value.items():
            if self.keys is not None and self.keys.problems(key, "key"):
                found.append(f"{where} has a key that is not a {self.keys.expected}")
                continue
            found += self.of.problems(item, f"{where}.{key}")
        return found

    @property
    def words(self) -> str:
        """`map: item id → X`."""
        return f"map: {self.key_words} → {self.of.words}"

    @property
    def expected(self) -> str:
        """`map`."""
        return "map"

    def json_schema(self) -> dict[str, Any]:
        """An object whose additional properties are the type."""
        keys = {"propertyNames": self.keys.json_schema()} if self.keys is not None else {}
        return {"type": "object", **keys, "additionalProperties": self.of.json_schema()}

    def typescript(self, indent: str) -> str:
        """`{ [id: string]: X }`."""
        return f"{{ [{self.key_words.replace(' ', '_')}: string]: {self.of.typescript(indent)} }}"

    def descriptor(self) -> dict[str, Any]:
        """A map of the type."""
        keys = {"keys": self.keys.descriptor()} if self.keys is not None else {}
        return {"kind": "map", "of": self.of.descriptor(), **keys, "expected": self.expected}


@dataclass(frozen=True)
class Field:
    """One field the sync writes: its type, who sets it, whether it may be absent, what it holds."""

    name: str
    type: Type
    doc: str  # what it holds and where it comes from (docs' table, the TypeScript comment)
    source: Source = "clerk"
    optional: bool = False  # absent at times (say, only while an address move waits)


@dataclass(frozen=True)
class ObjectOf:
    """A Firestore map with named fields (an item's plan)."""

    fields: tuple[Field, ...]
    name: str = ""  # the TypeScript type's name, when it has one of its own

    def problems(self, value: object, where: str) -> list[str]:
        """A map holding each field, of its type (more keys are allowed: Clerk adds fields)."""
        if not isinstance(value, dict):
            return [_wrong(value, where, self.expected)]
        return _field_problems(self.fields, value, where + ".")

    @property
    def words(self) -> str:
        """`` map `{id, slug}` ``; a big one by its name (the docs give it a table of its own)."""
        names = [declared.name for declared in self.fields]
        if len(names) > MAX_FIELDS_NAMED_INLINE and self.name:
            return f"map ({self.name})"
        return f"map `{{{', '.join(names)}}}`"

    @property
    def expected(self) -> str:
        """`map`."""
        return "map"

    def json_schema(self) -> dict[str, Any]:
        """An object with its properties, each required unless optional."""
        return {**({"title": self.name} if self.name else {}), **_object_schema(self.fields)}

    def typescript(self, indent: str) -> str:
        """Its name, or the object type spelled out."""
        return self.name or _typescript_object(self.fields, indent)

    def descriptor(self) -> dict[str, Any]:
        """A map of named fields."""
        return {"kind": "object", "fields": _field_descriptors(self.fields), "expected": self.expected}


def _field_descriptors(fields: tuple[Field, ...]) -> list[dict[str, Any]]:
    return [
        {"name": declared.name, "type": declared.type.descriptor(), "optional": declared.optional}
        for declared in fields
    ]


def _field_problems(
    fields: tuple[Field, ...], data: Mapping[str, Any], prefix: str = "", same_as: Mapping[str, str] | None = None
) -> list[str]:
    """Each field's problem, in declaration order; `same_as`: ids the fields must equal."""
    problems = []
    for declared in fields:
        where = prefix + declared.name
        if declared.name not in data:
            if not declared.optional:
                problems.append(f"{where} missing")
            continue
        value = data[declared.name]
        found = declared.type.problems(value, where)
        if found:
            problems += found
        elif same_as and declared.name in same_as and value != same_as[declared.name]:
            problems.append(f"{where} is not {same_as[declared.name]}")
    return problems


def _object_schema(fields: tuple[Field, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            declared.name: {**declared.type.json_schema(), "description": declared.doc, "x-set-by": declared.source}
            for declared in fields
        },
        "required": [declared.name for declared in fields if not declared.optional],
    }


def _typescript_object(fields: tuple[Field, ...], indent: str) -> str:
    inner = indent + "  "
    lines = ["{"]
    for declared in fields:
        lines.append(f"{inner}/** {_comment(declared.doc)} */")
        lines.append(f"{inner}{declared.name}{'?' if declared.optional else ''}: {declared.type.typescript(inner)};")
    lines.append(indent + "}")
    return "\n".join(lines)


def _comment(text: str) -> str:
    """Markdown as a one-line doc comment (no backticks' pairs broken, no comment end)."""
    return text.replace("*/", "* /")


@dataclass(frozen=True)
class Document:
    """A document the sync writes for apps to read: where it lives, its fields, its TypeScript name.

    Any field not declared is the app's: the sync never writes it, and validation ignores it.
    """

    name: str  # the TypeScript type: ClerkUser
    title: str  # what the docs call it: a user
    path: str  # where it lives, its ids in braces: {USERS_COLLECTION}/{user_id}
    fields: tuple[Field, ...]
    ids: Mapping[str, str]  # path placeholder -> the field that holds the same id
    doc: str = ""  # one paragraph for the TypeScript type's comment
    extra: tuple[str, ...] = field(default=())  # names the sync writes only when deleting (not for apps)

    def __post_init__(self) -> None:
        """Field names are unique, and every id of the path is a field."""
        names = [declared.name for declared in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"{self.name}: a field is declared twice")
        missing = [name for name in self.ids.values() if name not in names]
        if missing:
            raise ValueError(f"{self.name}: the path's ids are not fields: {missing}")

    @property
    def field_names(self) -> tuple[str, ...]:
        """Every field the sync writes into the document."""
        return tuple(declared.name for declared in self.fields)

    def names_set_by(self, source: Source, *, optional: bool | None = None) -> tuple[str, ...]:
        """The fields Clerk's payload sets (a kind's synced fields), or the sync's own."""
        return tuple(
            declared.name
            for declared in self.fields
            if declared.source == source and (optional is None or declared.optional == optional)
        )

    def field(self, name: str) -> Field:
        """One field's declaration (KeyError if undeclared)."""
        for declared in self.fields:
            if declared.name == name:
                return declared
        raise KeyError(name)

    def problems(self, data: Mapping[str, Any], same_as: Mapping[str, str] | None = None) -> list[str]:
        """What is wrong with a stored document, field by field, by name and type only (never a value).

        `same_as` maps id fields to the ids the document's path holds: they must be equal.
        """
        return _field_problems(self.fields, data, same_as=same_as)

    def json_schema(self) -> dict[str, Any]:
        """The document as JSON Schema: the sync's fields; any other property is the app's."""
        return {
            "title": self.name,
            "description": self.doc,
            "x-firestore-path": self.path,
            **_object_schema(self.fields),
            "additionalProperties": True,
        }

    def typescript(self) -> str:
        """The document's TypeScript interface (its fields, as the JS SDK returns them)."""
        return _typescript_object(self.fields, "")

    def descriptor(self) -> dict[str, Any]:
        """The document as the TypeScript client's validator and converters read it."""
        return {
            "name": self.name,
            "path": self.path,
            "fields": _field_descriptors(self.fields),
            "sync_fields": list(self.field_names),
        }
