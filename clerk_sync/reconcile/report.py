"""What a run found and did, per kind, and how it ended: the summary people and the scheduler read."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from clerk_sync.reconcile.kinds import KINDS

# What a run counts: the three kinds it lists, then Clerk Billing's subscriptions and plans.
TALLIED = (*KINDS, "subscriptions", "plans")

__all__ = ["LeaseLost", "Mode", "Progress", "ReconcileBusy", "ReconcileStopped", "Report", "Silent", "Tally"]


class Mode(enum.StrEnum):
    """How much a run looks at."""

    FULL = "full"
    INCREMENTAL = "incremental"


class ReconcileStopped(Exception):
    """Firestore kept failing, or a guard stopped the run; `reason` says which, for logs and alerts."""

    reason = "firestore_unavailable"


class LeaseLost(ReconcileStopped):
    """Another run took the lease (this one outlived it): this one stops writing at once."""

    reason = "lease_lost"


class ReconcileBusy(Exception):
    """Another run holds the lease (it renews it after every page)."""


class Progress(Protocol):
    """Where a run reports how far it got (a terminal bar, or nothing)."""

    def advance(self, kind: str, done: int, total: int | None, ceiling: int | None = None) -> None: ...

    def note(self, text: str) -> None: ...


class Silent:
    """Progress for a scheduled run: nobody watches it."""

    def advance(self, kind: str, done: int, total: int | None, ceiling: int | None = None) -> None:
        """Nobody watches a scheduled run."""

    def note(self, text: str) -> None:
        """Nobody watches a scheduled run."""


@dataclass
class Tally:
    """One kind's counts, and the ids an operator may need to look at (ids only, never emails)."""

    in_sync: int = 0
    missing: int = 0
    outdated: int = 0
    extra: int = 0
    conflicts: dict[str, str | None] = field(default_factory=dict)  # id -> who holds its email
    skipped: dict[str, str] = field(default_factory=dict)  # id -> why

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts and ids."""
        return {
            "in_sync": self.in_sync,
            "missing": self.missing,
            "outdated": self.outdated,
            "extra": self.extra,
            "conflicts": [{"id": key, "held_by": value} for key, value in sorted(self.conflicts.items())],
            "skipped": [{"id": key, "reason": value} for key, value in sorted(self.skipped.items())],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tally:
        """A tally saved in a checkpoint."""
        return cls(
            in_sync=int(data.get("in_sync", 0)),
            missing=int(data.get("missing", 0)),
            outdated=int(data.get("outdated", 0)),
            extra=int(data.get("extra", 0)),
            conflicts={item["id"]: item.get("held_by") for item in data.get("conflicts", [])},
            skipped={item["id"]: str(item.get("reason")) for item in data.get("skipped", [])},
        )


@dataclass
class Report:
    """What a run found and did."""

    mode: Mode
    dry_run: bool
    deletions: bool
    tallies: dict[str, Tally] = field(default_factory=lambda: {kind: Tally() for kind in TALLIED})
    clerk_requests: int = 0
    firestore_reads: int = 0
    elapsed_seconds: float = 0.0
    resumed: bool = False
    partial: bool = False
    stopped: str | None = None
    stop_reason: str | None = None  # other_instance, mass_deletion, clerk_unavailable, ..., interrupted
    run_id: str | None = None
    instance: str | None = None  # the key's Clerk instance, `ins_… (environment)`
    checkpointed: bool = False  # a checkpoint of this run is saved: the next run resumes from it
    undo_of: str | None = None  # the run whose deletions this one undid (`--undo-run`)
    undone: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> restored, kept tombstones
    write_ceiling: int | None = None  # the write ramp's ceiling (writes/s) when the run ended; None: wrote nothing
    resume: str | None = None  # a run that stopped early: when it goes on, and why it stopped where it did

    @property
    def drift(self) -> int:
        """Objects found missing, outdated or extra in Firestore."""
        return sum(tally.missing + tally.outdated + tally.extra for tally in self.tallies.values())

    @property
    def unresolved(self) -> int:
        """Conflicts and skipped objects left for a person."""
        return sum(len(tally.conflicts) + len(tally.skipped) for tally in self.tallies.values())

    @property
    def outcome(self) -> str:
        """in_sync, repaired, drift (a dry run found some), conflicts, partial or stopped."""
        if self.stopped:
            return "stopped"
        if self.partial:
            return "partial"
        if self.unresolved:
            return "conflicts"
        if self.drift:
            return "drift" if self.dry_run else "repaired"
        return "in_sync"

    @property
    def exit_code(self) -> int:
        """0 when Firestore matches Clerk at the end; 3 when something remains; 1 when stopped."""
        return {"in_sync": 0, "repaired": 0, "drift": 3, "conflicts": 3, "partial": 1, "stopped": 1}[self.outcome]

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable summary (`--json`, the scheduled function's answer)."""
        return {
            "mode": str(self.mode),
            "dry_run": self.dry_run,
            "deletions": self.deletions,
            "outcome": self.outcome,
            "drift": self.drift,
            "kinds": {kind: tally.as_dict() for kind, tally in self.tallies.items()},
            "clerk_requests": self.clerk_requests,
            "firestore_reads": self.firestore_reads,
            "elapsed_seconds": round(self.elapsed_seconds, 1),
            "resumed": self.resumed,
            "partial": self.partial,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "run_id": self.run_id,
            "instance": self.instance,
            "checkpointed": self.checkpointed,
            "write_ceiling": self.write_ceiling,
            "resume": self.resume,
            **({"undo_of": self.undo_of, "undone": self.undone} if self.undo_of else {}),
        }
