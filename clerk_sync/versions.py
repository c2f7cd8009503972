"""Which of two copies of a Clerk object is newer, decided the same way whatever order they arrive in.

`updated_at` orders versions. Two versions can share an `updated_at` to the millisecond and still
differ; "the last to arrive wins" would then let a late Svix retry overwrite the other for good.
A digest of the synced content breaks the tie: the larger digest wins, in either order.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

__all__ = ["DIGEST_FIELD", "content_digest", "is_older"]

DIGEST_FIELD = "sync_digest"


def _json_value(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not part of a synced document")


def content_digest(document: dict[str, Any]) -> str:
    """A stable digest of the synced fields (not `synced_at`): equal content, equal digest."""
    canonical = json.dumps(document, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=_json_value)
    return hashlib.sha256(canonical.encode()).hexdigest()


def is_older(incoming_updated_at: datetime, incoming_digest: str, stored: dict[str, Any] | None) -> bool:
    """Whether the incoming version loses to the stored one (equal content applies again)."""
    if not stored:
        return False
    stored_updated_at = stored.get("updated_at")
    if not isinstance(stored_updated_at, datetime):
        return False  # nothing synced there yet: only the app's own fields, or a manual edit
    if stored_updated_at != incoming_updated_at:
        return stored_updated_at > incoming_updated_at
    stored_digest = stored.get(DIGEST_FIELD)
    return isinstance(stored_digest, str) and incoming_digest < stored_digest
