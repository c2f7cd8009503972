"""The one transaction core every kind of Clerk object uses: two round trips, one deadline, retries.

A transaction begins with its first read: `BatchGetDocuments` with `new_transaction` returns the
transaction id in its first streamed response, so an event costs `BatchGetDocuments` + `Commit`
instead of `BeginTransaction` + `BatchGetDocuments` + `Commit`. On Cloud Functions each call is a
network round trip to Firestore, so this is a third less waiting per event.

google-cloud-firestore (pinned exactly) does not offer this, so this module calls its generated
API client and reuses its snapshot parser; it is the only module that touches the library's private
attributes. `tests/test_transaction.py` fails loudly if the pinned library changes under it.
"""

from __future__ import annotations

import contextlib
import datetime
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.api_core import exceptions as api_exceptions
from google.api_core import retry as api_retry
from google.api_core.datetime_helpers import DatetimeWithNanoseconds
from google.api_core.gapic_v1 import routing_header
from google.auth import exceptions as auth_exceptions
from google.cloud import firestore
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import common, document, write
from google.cloud.firestore_v1.types import firestore as requests
from google.protobuf import empty_pb2, struct_pb2

from clerk_sync.outcome import StoreUnavailable

__all__ = ["MAX_ATTEMPTS", "NO_RETRY", "Attempt", "client", "encode", "remaining", "reset_client", "run", "turn"]

MAX_ATTEMPTS = 5
RETRY_PAUSE_SECONDS = 0.25
ROLLBACK_TIMEOUT_SECONDS = (0.5, 2.0)
LOCKS = 64

T = TypeVar("T")
# For queries: `retry=None` makes the library's stream crash with AttributeError on a mid-stream
# error (it calls `retry._predicate`); a policy that never retries raises the error itself.
NO_RETRY = api_retry.Retry(predicate=lambda _error: False)
Snapshot = firestore.DocumentSnapshot

# Write protobufs are built here, from the raw message classes: the library's `set(..., merge=[...])`
# spent about half of an event's CPU on field-path bookkeeping (quadratic in the number of fields)
# and on proto-plus wrappers. tests/test_transaction.py holds these to the library's own output.
_Value = document.Value.pb()
_ArrayValue = document.ArrayValue.pb()
_MapValue = document.MapValue.pb()
_Write = write.Write.pb()
_Transform = write.DocumentTransform.FieldTransform.pb()
_NULL = struct_pb2.NULL_VALUE
_REQUEST_TIME = write.DocumentTransform.FieldTransform.ServerValue.REQUEST_TIME
_TransactionOptions = common.TransactionOptions.pb()
_BatchGetRequest = requests.BatchGetDocumentsRequest.pb()
_BatchGetResponse = requests.BatchGetDocumentsResponse.pb()
_CommitRequest = requests.CommitRequest.pb()
_CommitResponse = requests.CommitResponse.pb()
_RollbackRequest = requests.RollbackRequest.pb()
_SERVICE = "/google.firestore.v1.Firestore/"
# Top-level field names written as they are in a mask (anything else would need backquotes).
_SIMPLE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Names found plain already: the sync writes the same few dozen, so each is checked once.
_plain_names: set[str] = set()
_PLAIN_NAMES_KEPT = 1024

_client: firestore.Client | None = None
_client_lock = threading.Lock()
# Deliveries for one object take turns inside an instance. Concurrent transactions on the same
# documents abort each other (the emulator only after a 2 s lock timeout each time), and a
# burst of retries for one user could keep every one of them aborting.
_turns = tuple(threading.Lock() for _ in range(LOCKS))


def client(project: str | None = None, database: str = "(default)") -> firestore.Client:
    """The instance's one Firestore client, created on first use and shared by all threads.

    Raises StoreUnavailable when credentials or the project cannot be found (yet).
    """
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                try:
                    _client = firestore.Client(project=project, database=database)
                except (auth_exceptions.GoogleAuthError, OSError) as error:
                    raise StoreUnavailable(type(error).__name__) from error
    return _client


def reset_client() -> None:
    """Forget the client so the next call builds one from the current environment."""
    global _client
    with _client_lock:
        _client = None


def remaining(deadline: float) -> float:
    """Seconds left before `deadline` (a `time.monotonic()` value); StoreUnavailable once spent."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise StoreUnavailable("deadline spent")
    return left


@contextlib.contextmanager
def turn(key: str, deadline: float) -> Iterator[None]:
    """Wait (no longer than the deadline) for earlier deliveries about `key` in this instance."""
    lock = _turns[hash(key) % LOCKS]
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise StoreUnavailable("earlier deliveries for this object outlasted the deadline")
    try:
        yield
    finally:
        lock.release()


def _put_timestamp(target: Any, moment: datetime.datetime) -> None:
    """As the library encodes it: a naive datetime is UTC; nanoseconds when the value carries them."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    target.seconds = int(moment.replace(microsecond=0).timestamp())
    target.nanos = getattr(moment, "nanosecond", 0) or moment.microsecond * 1000


def _put(target: Any, value: object) -> None:
    """Write a Python value into a Firestore `Value` protobuf in place (no copies of nested messages).

    TypeError for anything a synced document never holds.
    """
    if value is None:
        target.null_value = _NULL
    elif value is True or value is False:
        target.boolean_value = value
    elif isinstance(value, int):
        target.integer_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, datetime.datetime):
        _put_timestamp(target.timestamp_value, value)
    elif isinstance(value, dict):
        target.map_value.SetInParent()  # an empty map is still a map
        fields = target.map_value.fields
        for key, item in value.items():
            _put(fields[key], item)
    elif isinstance(value, list | tuple):
        target.array_value.SetInParent()
        values = target.array_value.values
        for item in value:
            _put(values.add(), item)
    elif isinstance(value, bytes):
        target.bytes_value = value
    else:
        raise TypeError(f"{type(value).__name__} is not written by the sync")


def encode(value: object) -> Any:
    """A Python value as a Firestore `Value` protobuf; TypeError for anything a synced document never holds."""
    encoded = _Value()
    _put(encoded, value)
    return encoded


@dataclass(frozen=True)
class _Stubs:
    """The three calls a transaction makes, on the client's own channel, with raw protobuf messages.

    The library's generated client wraps every call in proto-plus messages, retry and timeout
    decorators and a logging interceptor: a fifth of an event's CPU once the writes were raw. The
    channel, its credentials and the metadata are the client's; only the wrapping is skipped.
    """

    batch_get: Any
    commit: Any
    rollback: Any
    metadata: tuple[tuple[str, str], ...]


_stubs: dict[int, tuple[firestore.Client, _Stubs]] = {}
_stub_lock = threading.Lock()


def _single_threaded_unary_stream(channel: Any, method: str, **serializers: Any) -> Any:
    """A unary-stream stub read on the calling thread, on the client's own channel.

    gRPC's default unary-stream call hands every response through a channel thread, locks and
    condition waits: measured here, a third more CPU per BatchGetDocuments (0.65 against 0.46 ms).
    Its single-threaded variant (`grpc.experimental.ChannelOptions.SingleThreadedUnaryStream`) is a
    channel option, read when a stub is made; it is switched on for this one stub only, so the
    library's own calls on the channel stay as they are. A wrapped channel (tests count calls
    through an interceptor) has no such switch and gets the default stub.
    """
    default = getattr(channel, "_single_threaded_unary_stream", None)
    if not isinstance(default, bool):
        return channel.unary_stream(method, **serializers)
    with _stub_lock:
        channel._single_threaded_unary_stream = True
        try:
            return channel.unary_stream(method, **serializers)
        finally:
            channel._single_threaded_unary_stream = default


def _stubs_for(db: firestore.Client) -> _Stubs:
    cached = _stubs.get(id(db))
    if cached is not None and cached[0] is db:
        return cached[1]
    channel = db._firestore_api._transport.grpc_channel
    stubs = _Stubs(
        batch_get=_single_threaded_unary_stream(
            channel,
            f"{_SERVICE}BatchGetDocuments",
            request_serializer=_BatchGetRequest.SerializeToString,
            response_deserializer=_BatchGetResponse.FromString,
        ),
        commit=channel.unary_unary(
            f"{_SERVICE}Commit",
            request_serializer=_CommitRequest.SerializeToString,
            response_deserializer=_CommitResponse.FromString,
        ),
        rollback=channel.unary_unary(
            f"{_SERVICE}Rollback",
            request_serializer=_RollbackRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        ),
        metadata=(
            *db._rpc_metadata,
            routing_header.to_grpc_metadata((("database", db._database_string),)),  # type: ignore[no-untyped-call]
            db._client_info.to_grpc_metadata(),
        ),
    )
    _stubs[id(db)] = (db, stubs)  # the client is kept alive with its stubs, so its id is never reused
    return stubs


def _time(stamp: Any) -> datetime.datetime:
    """A protobuf Timestamp as the library decodes it (nanoseconds kept)."""
    moment: datetime.datetime = DatetimeWithNanoseconds.from_timestamp_pb(stamp)  # type: ignore[no-untyped-call]
    return moment


def _mapped(error: grpc.RpcError) -> Exception:
    """The gRPC error as the library would raise it (Aborted, DeadlineExceeded, ...)."""
    mapped: Exception = api_exceptions.from_grpc_error(error)  # type: ignore[no-untyped-call]
    return mapped


def _snapshot(db: firestore.Client, response: Any, paths: dict[str, firestore.DocumentReference]) -> Snapshot[Any]:
    """A library DocumentSnapshot from a raw response, decoded by the library's own decoder."""
    read_time = _time(response.read_time)
    if response.HasField("found"):
        found = response.found
        return Snapshot(
            paths[found.name],
            _helpers.decode_dict(found.fields, db),
            exists=True,
            read_time=read_time,
            create_time=_time(found.create_time),
            update_time=_time(found.update_time),
        )
    return Snapshot(
        paths[response.missing], None, exists=False, read_time=read_time, create_time=None, update_time=None
    )


class Attempt:
    """One attempt of a read-write transaction: the first read begins it, the commit sends the writes."""

    def __init__(self, db: firestore.Client, deadline: float, retry_id: bytes | None) -> None:
        self.db = db
        self.deadline = deadline
        self.retry_id = retry_id
        self.id: bytes | None = None
        self._writes: list[Any] = []  # raw Write protobufs
        self._stubs = _stubs_for(db)

    def read(self, references: Sequence[firestore.DocumentReference]) -> dict[str, Snapshot[Any]]:
        """All these documents in one round trip, keyed by path; the first read begins the transaction.

        Raises the library's exceptions (`google.api_core.exceptions`) for gRPC errors.
        """
        if self._writes:
            raise RuntimeError("reads must come before writes in a transaction")
        paths = {reference._document_path: reference for reference in references}
        request = _BatchGetRequest(database=self.db._database_string, documents=list(paths))
        if self.id is None:
            request.new_transaction.CopyFrom(
                _TransactionOptions(read_write=_TransactionOptions.ReadWrite(retry_transaction=self.retry_id or b""))
            )
        else:
            request.transaction = self.id
        snapshots: dict[str, Snapshot[Any]] = {}
        try:
            for response in self._stubs.batch_get(
                request, metadata=self._stubs.metadata, timeout=remaining(self.deadline)
            ):
                if response.transaction:
                    self.id = response.transaction
                if response.WhichOneof("result") is None:
                    continue  # the first response carries only the new transaction's id
                snapshot = _snapshot(self.db, response, paths)
                snapshots[snapshot.reference.path] = snapshot
        except grpc.RpcError as error:
            raise _mapped(error) from error
        if self.id is None:
            raise RuntimeError("BatchGetDocuments did not begin a transaction (has the Firestore API changed?)")
        return snapshots

    def set(self, reference: firestore.DocumentReference, data: dict[str, Any], *, merge: Sequence[str] = ()) -> None:
        """Write `data`; with `merge`, only those fields (each replaced whole) and nothing else.

        `firestore.SERVER_TIMESTAMP` and (with `merge`) `firestore.DELETE_FIELD` work at the top
        level, as the library's `set` has them.
        """
        pb = _Write()
        pb.update.name = reference._document_path
        fields = pb.update.fields
        masked: list[str] = []
        stamped: list[str] = []
        for name in merge or data:
            if name not in data:
                raise ValueError(f"merge names {name!r}, which the data does not hold")
            if name not in _plain_names:
                if not _SIMPLE_FIELD.fullmatch(name):
                    raise ValueError(f"field name {name!r} needs a field path; the sync writes plain names")
                if len(_plain_names) < _PLAIN_NAMES_KEPT:
                    _plain_names.add(name)
            value = data[name]
            if value is firestore.SERVER_TIMESTAMP:
                stamped.append(name)
                continue
            if value is firestore.DELETE_FIELD:
                if not merge:
                    raise ValueError("DELETE_FIELD needs merge")
            else:
                _put(fields[name], value)
            masked.append(name)
        if merge:
            pb.update_mask.field_paths.extend(sorted(masked))
        if stamped:
            pb.update_transforms.extend(
                _Transform(field_path=name, set_to_server_value=_REQUEST_TIME) for name in stamped
            )
        self._writes.append(pb)

    def delete(self, reference: firestore.DocumentReference) -> None:
        """Delete the document (its subcollections stay, as Firestore always does)."""
        self._writes.append(_Write(delete=reference._document_path))

    @property
    def write_count(self) -> int:
        """How many writes the commit will send."""
        return len(self._writes)

    def commit(self) -> None:
        """Send every write with the transaction (an empty commit just ends it and frees its locks)."""
        if self.id is None:
            raise RuntimeError("a transaction body must read before it commits")
        request = _CommitRequest(database=self.db._database_string, writes=self._writes, transaction=self.id)
        try:
            self._stubs.commit(request, metadata=self._stubs.metadata, timeout=remaining(self.deadline))
        except grpc.RpcError as error:
            raise _mapped(error) from error

    def rollback(self) -> None:
        """Release the transaction's locks now rather than when Firestore expires it."""
        if self.id is None:
            return
        low, high = ROLLBACK_TIMEOUT_SECONDS
        request = _RollbackRequest(database=self.db._database_string, transaction=self.id)
        try:
            self._stubs.rollback(
                request, metadata=self._stubs.metadata, timeout=max(low, min(high, self.deadline - time.monotonic()))
            )
        except grpc.RpcError as error:
            raise _mapped(error) from error


def run(db: firestore.Client, deadline: float, body: Callable[[Attempt], T]) -> T:
    """Run `body` in a transaction and commit, re-running it on contention while the deadline allows.

    Raises StoreUnavailable for Firestore trouble of any kind; nothing is ever half-written.
    """
    retry_id: bytes | None = None
    try:
        for attempt_number in range(MAX_ATTEMPTS):
            attempt = Attempt(db, deadline, retry_id)
            try:
                result = body(attempt)
                attempt.commit()
                return result
            except api_exceptions.Aborted:
                # Contention: Firestore already dropped this attempt; run the body again after a
                # random pause, or the contenders that aborted together collide again together.
                retry_id = retry_id or attempt.id
                pause = random.uniform(0, RETRY_PAUSE_SECONDS * 2**attempt_number)  # noqa: S311 - jitter
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            except BaseException:
                # The original error matters more; an abandoned transaction expires on its own.
                with contextlib.suppress(api_exceptions.GoogleAPICallError, api_exceptions.RetryError):
                    attempt.rollback()
                raise
    except (api_exceptions.GoogleAPICallError, api_exceptions.RetryError, auth_exceptions.GoogleAuthError) as error:
        raise StoreUnavailable(type(error).__name__) from error
    raise StoreUnavailable(f"contention persisted through {MAX_ATTEMPTS} attempts")
