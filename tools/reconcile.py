"""`reconcile` and `backfill` for people: a progress bar on a terminal, a summary table, an exit code.

The work is `clerk_sync.reconcile.run`, the same code the scheduled `clerk_reconcile` function runs;
`backfill` is a full reconcile that deletes nothing.
"""

from __future__ import annotations

import json
import time
from typing import TextIO

from google.cloud import firestore

from clerk_sync import config
from clerk_sync.reconcile import TALLIED, ClerkApi, Mode, ReconcileBusy, Report, run
from tools.common import ToolError

__all__ = ["TerminalProgress", "reconcile", "summary"]

REDRAW_SECONDS = 0.2


class TerminalProgress:
    """A redrawn line on a terminal, one line per page otherwise (stderr)."""

    def __init__(self, err: TextIO, label: str) -> None:
        self.err = err
        self.label = label
        self.tty = err.isatty()
        self.started: dict[str, float] = {}
        self.last = time.monotonic()
        self.drawn = 0.0

    def advance(self, kind: str, done: int, total: int | None, ceiling: int | None = None) -> None:
        """A page of `kind` is done; a terminal redraws at most five times a second."""
        now = time.monotonic()
        started = self.started.setdefault(kind, self.last)  # a kind starts when the previous one's last page ended
        self.last = now
        if self.tty and now - self.drawn < REDRAW_SECONDS:
            return
        self.drawn = now
        rate = done / max(now - started, 1e-9)
        where = f"{done}/{total}" if total else str(done)
        percent = f" {100 * done / total:3.0f}%" if total else ""
        line = f"{where} {kind}{percent}  {rate:.1f}/s"
        if ceiling is not None:
            line += f", writes at most {ceiling}/s"
        if self.tty:
            bar = ""
            if total:
                filled = min(30, round(30 * done / total))
                bar = "[" + "#" * filled + "-" * (30 - filled) + "] "
            self.err.write(f"\r\033[K{bar}{line}")
        else:
            self.err.write(f"{self.label}: {line}\n")
        self.err.flush()

    def note(self, text: str) -> None:
        """A retry, a phase starting: its own line."""
        self.err.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.err.flush()

    def finish(self) -> None:
        if self.tty:
            self.err.write("\n")
            self.err.flush()


def summary(report: Report, label: str) -> str:
    """The closing report: counts per kind, then every conflict and skipped object by id."""
    verb = {
        "in_sync": "Firestore already matched Clerk",
        "repaired": "repaired; Firestore matches Clerk",
        "drift": "dry run, nothing written; the counts say what a real run would repair",
        "conflicts": "done, but conflicts or skipped objects remain",
        "partial": f"stopped at its time budget; {report.resume or 'the next run starts again'}",
        "stopped": f"stopped: {report.stopped}",
    }[report.outcome]
    resumed = ", resumed from a checkpoint" if report.resumed else ""
    run = f"run {report.run_id}, " if report.run_id else ""
    lines = [
        f"{label} {report.mode}{'' if report.deletions or report.mode is Mode.INCREMENTAL else ' (no deletions)'}: "
        f"{verb}",
        f"{run}{report.elapsed_seconds:.1f} s, {report.clerk_requests} Clerk requests, "
        f"{report.firestore_reads} Firestore documents read{resumed}",
        "",
        f"  {'':<14}{'in sync':>9}{'missing':>9}{'outdated':>10}{'extra':>7}{'conflicts':>11}{'skipped':>9}",
    ]
    for kind in TALLIED:
        tally = report.tallies[kind]
        lines.append(
            f"  {kind:<14}{tally.in_sync:>9}{tally.missing:>9}{tally.outdated:>10}{tally.extra:>7}"
            f"{len(tally.conflicts):>11}{len(tally.skipped):>9}"
        )
    if report.undo_of:
        verb_undo = "would be removed" if report.dry_run else "removed"
        lines += [
            f"  undo of run {report.undo_of}: {kind}: {counted['restored']} tombstones {verb_undo} (Clerk holds "
            f"those objects), {counted['kept']} kept (Clerk confirms them gone)"
            for kind, counted in report.undone.items()
            if counted["restored"] or counted["kept"]
        ] or [f"  undo of run {report.undo_of}: no tombstone of that run found"]
    for kind in TALLIED:
        tally = report.tallies[kind]
        lines += [
            f"  conflict  {kind}/{key}: primary email still held by {holder or 'another user'}"
            for key, holder in sorted(tally.conflicts.items())
        ]
        lines += [f"  skipped   {kind}/{key}: {why}" for key, why in sorted(tally.skipped.items())]
    return "\n".join(lines) + "\n"


def reconcile(
    db: firestore.Client,
    settings: config.Settings,
    *,
    secret_key: str,
    server_url: str,
    mode: Mode,
    deletions: bool,
    dry_run: bool,
    workers: int,
    page_size: int,
    budget_seconds: float | None,
    restart: bool,
    allow_mass_deletion: bool = False,
    pin_instance: bool = False,
    read_timeout: float = 30.0,
    undo_run: str | None = None,
    as_json: bool,
    label: str,
    out: TextIO,
    err: TextIO,
) -> int:
    """Run, print the summary (or JSON), return the exit code: 0 matched, 3 something remains, 1 stopped."""
    progress = TerminalProgress(err, label)
    api = ClerkApi(secret_key, server_url, progress.note)
    try:
        report = run(
            db,
            settings,
            api,
            mode=mode,
            deletions=deletions,
            dry_run=dry_run,
            workers=workers,
            page_size=page_size,
            budget_seconds=budget_seconds,
            restart=restart,
            allow_mass_deletion=allow_mass_deletion,
            pin_instance=pin_instance,
            read_timeout=read_timeout,
            undo_run=undo_run,
            progress=progress,
        )
    except ReconcileBusy as busy:
        raise ToolError(f"{busy}; wait for it, or try again once its lease expires") from None
    finally:
        progress.finish()
        api.close()
    out.write(json.dumps(report.as_dict(), indent=2) + "\n" if as_json else summary(report, label))
    if report.stopped and report.checkpointed:
        err.write("the next run resumes from the checkpoint saved after the last finished step\n")
    return 130 if report.stopped == "interrupted" else report.exit_code
