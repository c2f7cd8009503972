"""The cold-start floor: a functions-framework function with only the two unavoidable imports and one write.

Anything the real function costs beyond this (verification, parsing, our modules, a transaction of
three RPCs instead of one write) is what `cold_start.py` measures against it.
"""

from __future__ import annotations

import itertools
from typing import Any

import functions_framework
from google.cloud import firestore

_client: firestore.Client | None = None
_writes = itertools.count()


@functions_framework.http
def floor(request: Any) -> tuple[str, int]:
    """One Firestore write per request, with the client created on first use like the real function."""
    global _client
    if _client is None:
        _client = firestore.Client()
    _client.collection("floor").document(f"write-{next(_writes)}").set({"body_bytes": len(request.get_data())})
    return "ok", 200
