"""The keys a run listed in Clerk, 8 bytes each: what the deletion phases compare Firestore's ids against.

A set of id strings took about 108 MiB per million users and 170 MiB per million memberships
(`org_…/user_…` keys), against the function's 512 MiB. Each key is kept instead as a 64-bit hash
(blake2b) in one of 4,096 sorted arrays: about 8 MiB per million keys, looked up by bisection.

Two different keys with the same hash (about one chance in 10^7 among a million keys) only make
the later one look listed: a deletion is then missed by this run, never made wrongly (an id is
deleted only when Clerk answers 404 for it), and an incremental run skips nothing it has not seen.
"""

from __future__ import annotations

import bisect
import hashlib
from array import array

__all__ = ["BUCKETS", "Seen"]

BUCKETS = 4096  # a million keys: about 250 per bucket, so an insertion moves about 1 KiB
BUCKET_SHIFT = 64 - 12


class Seen:
    """A set of strings that answers `in`, holding 8 bytes per key (no strings kept)."""

    def __init__(self) -> None:
        self._buckets: list[array[int]] = [array("Q") for _ in range(BUCKETS)]
        self._size = 0

    @staticmethod
    def _hash(key: str) -> int:
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")

    def add(self, key: str) -> None:
        """Remember `key` (again: no change)."""
        value = self._hash(key)
        bucket = self._buckets[value >> BUCKET_SHIFT]
        place = bisect.bisect_left(bucket, value)
        if place == len(bucket) or bucket[place] != value:
            bucket.insert(place, value)
            self._size += 1

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        value = self._hash(key)
        bucket = self._buckets[value >> BUCKET_SHIFT]
        place = bisect.bisect_left(bucket, value)
        return place < len(bucket) and bucket[place] == value

    def __len__(self) -> int:
        return self._size

    def nbytes(self) -> int:
        """The bytes its arrays hold (what the keys cost, without Python's per-array overhead)."""
        return sum(bucket.buffer_info()[1] * bucket.itemsize for bucket in self._buckets)
