"""`python -m clerk_sync <command>`: the local dev loop, signed test events, a look at the data, backfill.

Each command imports its module only when it runs, so `--help` is quick and the function never pays
for the tools' dependencies (svix, clerk-backend-api).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clerk_sync import config, ids
from tools.common import (
    DEFAULT_AUTH_PORT,
    DEFAULT_EMULATOR_PORT,
    DEFAULT_FUNCTION_PORT,
    DEFAULT_TOKEN_PORT,
    ROOT,
    ToolError,
    firestore_client,
    firestore_target,
    settings,
)

if TYPE_CHECKING:
    from google.cloud import firestore

__all__ = ["build_parser", "main"]

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_FUNCTION_PORT}/"
DEFAULT_CLERK_API = "https://api.clerk.com/v1"
Command = Callable[[argparse.Namespace], int]


def load_env_file(path: Path) -> set[str]:
    """Read `.env` like the function does locally: real environment variables win; the names it filled."""
    return config.load_env_file(path) if path.is_file() else set()


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    try:
        return int(raw) if raw else default
    except ValueError:
        raise ToolError(f"{name}={raw!r} is not a port number") from None


def _run_dev(args: argparse.Namespace) -> int:
    from tools import devloop  # noqa: PLC0415 (each tool loads only when it runs)

    def chosen(given: int | None, variable: str, default: int) -> int:
        return given if given is not None else _port(variable, default)

    ports = devloop.Ports(
        webhook=chosen(args.port, "PORT", DEFAULT_FUNCTION_PORT),
        firestore=chosen(args.emulator_port, "EMULATOR_PORT", DEFAULT_EMULATOR_PORT),
        token=None if args.webhook_only else chosen(args.token_port, "TOKEN_PORT", DEFAULT_TOKEN_PORT),
        auth=None if args.webhook_only else chosen(args.auth_port, "AUTH_PORT", DEFAULT_AUTH_PORT),
    )
    return devloop.run(env_file=args.env_file, ports=ports, ngrok_api=args.ngrok_api, start_timeout=args.start_timeout)


def _run_session_token(args: argparse.Namespace) -> int:
    from tools import mint  # noqa: PLC0415 (each tool loads only when it runs)

    user_id = clerk_id(args.user_id, "user", "user_2abc...")
    organization = None
    if args.organization_id is not None:
        organization = mint.Organization(
            id=clerk_id(args.organization_id, "organization", "org_2abc..."),
            role=args.role or mint.Organization.role,
            slug=args.slug or mint.Organization.slug,
        )
    elif args.role is not None or args.slug is not None:
        raise ToolError("--role and --slug describe the active organization: give --org-id too")
    issuer = args.issuer or os.environ.get("CLERK_ISSUER", "").strip() or mint.DEFAULT_ISSUER
    key = mint.key_path(args.env_file)
    claims = mint.session_claims(
        user_id, organization=organization, azp=args.azp, issuer=issuer, lifetime=args.lifetime, pending=args.pending
    )
    token = mint.mint(key, claims)
    print(mint.describe(claims, key), file=sys.stderr)
    problem = mint.verifier_mismatch(key)
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    if args.claims:
        print(mint.claims_json(claims), file=sys.stderr)
    print(token)
    return 0


def _run_send(args: argparse.Namespace) -> int:
    from tools import send  # noqa: PLC0415 (each tool loads only when it runs)

    given = {
        name: getattr(args, name)
        for name in (
            "user_id", "email", "first_name", "last_name", "organization_id", "name", "slug", "membership_id", "role",
            "updated_at", "plan", "status", "trial", "seats", "subscription_id", "item_id", "payment_id",
        )
        if getattr(args, name) is not None
    }  # fmt: skip
    return send.send(
        args.event,
        send.Options(**given),
        secret=_signing_secret(),
        url=args.url,
        svix_id=args.svix_id,
        timeout=args.timeout,
        out=sys.stdout,
    )


def _signing_secret() -> str | None:
    try:
        return config.read_signing_secret()[1]
    except config.Misconfigured:
        return None


def _run_users(args: argparse.Namespace) -> int:
    from tools import show  # noqa: PLC0415 (each tool loads only when it runs)

    return show.list_users(
        firestore_client_for(args), settings().paths, limit=args.limit, timeout=args.timeout, out=sys.stdout
    )


def clerk_id(value: str, kind: str, example: str) -> str:
    """`value` when it can be a Clerk id, and so a document id; else a ToolError saying what one looks like."""
    if not ids.is_clerk_id(value):
        shown = repr(value) if value else "an empty id"
        raise ToolError(
            f"{shown[:140]} is not a Clerk {kind} id: those are letters, digits, _ and - only, such as {example} "
            "(the ids `users` and `organizations` list); the webhook stores nothing under any other id"
        )
    return value


def _run_user(args: argparse.Namespace) -> int:
    from tools import show  # noqa: PLC0415 (each tool loads only when it runs)

    user_id = clerk_id(args.user_id, "user", "user_2abc...")
    return show.show_user(firestore_client_for(args), settings().paths, user_id, timeout=args.timeout, out=sys.stdout)


def _run_organizations(args: argparse.Namespace) -> int:
    from tools import show  # noqa: PLC0415 (each tool loads only when it runs)

    db = firestore_client_for(args)
    return show.list_organizations(db, settings().paths, limit=args.limit, timeout=args.timeout, out=sys.stdout)


def _run_organization(args: argparse.Namespace) -> int:
    from tools import show  # noqa: PLC0415 (each tool loads only when it runs)

    organization_id = clerk_id(args.organization_id, "organization", "org_2abc...")
    db = firestore_client_for(args)
    return show.show_organization(db, settings().paths, organization_id, timeout=args.timeout, out=sys.stdout)


def _run_check(args: argparse.Namespace) -> int:
    from tools import check  # noqa: PLC0415 (each tool loads only when it runs)

    return check.run(
        firestore_client_for(args),
        settings(),
        repair_found=args.repair,
        as_json=args.json,
        timeout=args.timeout,
        out=sys.stdout,
    )


def firestore_client_for(args: argparse.Namespace) -> firestore.Client:
    """The client named by --project/--emulator/--database, announced on stderr."""
    target = firestore_target(args.project, args.emulator, args.database)
    print(target.describe(), file=sys.stderr)
    return firestore_client(target)


def _secret_key(args: argparse.Namespace, real_project: bool) -> str:
    """CLERK_SECRET_KEY from --secret-key-file, the environment or (for the emulator only) `.env`.

    Against a real project a key left in `.env` (often the development instance's) is never used.
    """
    if args.secret_key_file is not None:
        source = "standard input" if str(args.secret_key_file) == "-" else str(args.secret_key_file)
        try:
            text = sys.stdin.read(4096) if source == "standard input" else args.secret_key_file.read_text()[:4096]
        except OSError as error:
            raise ToolError(f"cannot read --secret-key-file {source}: {error.strerror or error}") from None
        key = text.strip()
        if not key.startswith("sk_"):
            raise ToolError(f"--secret-key-file {source} does not hold a Backend API key (sk_live_… or sk_test_…)")
        return key
    if real_project and "CLERK_SECRET_KEY" in args.from_env_file:
        raise ToolError(
            "against a real project CLERK_SECRET_KEY never comes from .env (it often holds the development "
            "instance's key): set it in the environment, or pass --secret-key-file FILE (- for standard input)"
        )
    key = os.environ.get("CLERK_SECRET_KEY", "").strip()
    if not key:
        where = "the environment or --secret-key-file" if real_project else "the environment, .env or --secret-key-file"
        raise ToolError(
            "set CLERK_SECRET_KEY to the instance's Backend API key (sk_live_… or sk_test_…, Clerk Dashboard → "
            f"API keys), in {where}"
        )
    return key


def _run_reconcile(args: argparse.Namespace) -> int:
    from clerk_sync.reconcile import Mode  # noqa: PLC0415 (each tool loads only when it runs)
    from tools import reconcile  # noqa: PLC0415

    target = firestore_target(args.project, args.emulator, args.database)
    secret_key = _secret_key(args, real_project=target.emulator_host is None)
    print(target.describe(), file=sys.stderr)
    backfill = args.command == "backfill"
    undo_run = None if backfill else args.undo_run
    if undo_run is not None and (args.mode != "full" or args.no_deletions or args.allow_mass_deletion):
        raise ToolError("--undo-run is a full run without deletions: leave out --mode, --no-deletions and "
                        "--allow-mass-deletion")  # fmt: skip
    return reconcile.reconcile(
        firestore_client(target),
        settings(),
        secret_key=secret_key,
        server_url=args.server_url or os.environ.get("CLERK_API_URL", "").strip() or DEFAULT_CLERK_API,
        mode=Mode.FULL if backfill else Mode(args.mode),
        deletions=not backfill and not args.no_deletions,
        dry_run=args.dry_run,
        workers=args.workers,
        page_size=args.page_size,
        budget_seconds=args.budget,
        restart=args.restart,
        allow_mass_deletion=not backfill and args.allow_mass_deletion,
        pin_instance=args.pin_instance,
        read_timeout=args.timeout,
        undo_run=undo_run,
        as_json=args.json,
        label=args.command,
        out=sys.stdout,
        err=sys.stderr,
    )


def _run_rules(args: argparse.Namespace) -> int:
    from tools import rules  # noqa: PLC0415 (each tool loads only when it runs)

    layout = settings().paths
    text = rules.block(layout) if args.block else rules.complete(layout)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output} for {layout.users} and {layout.organizations}", file=sys.stderr)
    if args.firebase_json is not None:
        database = args.database or os.environ.get("FIRESTORE_DATABASE", "").strip() or "(default)"
        args.firebase_json.write_text(rules.firebase_json(args.output, args.firebase_json, database))
        print(f"wrote {args.firebase_json} for database {database}", file=sys.stderr)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _page_size(text: str) -> int:
    value = _positive(text)
    if value > 500:
        raise argparse.ArgumentTypeError("Clerk serves at most 500 objects per page")
    return value


def _run_id(text: str) -> str:
    from clerk_sync.reconcile import undo  # noqa: PLC0415 (each tool loads only when it runs)

    if text != undo.ALL_RUNS and not undo.RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a run id (12 hex digits, as a summary prints) nor all")
    return text


def _not_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _add_send(commands: Any, common: argparse.ArgumentParser) -> None:
    """`send`: one option per field a generated event can carry."""
    send = commands.add_parser(
        "send",
        parents=[common],
        help="post a signed test event to the function (local or ngrok)",
        description="Build a realistic Clerk event (or read a JSON file), sign it like Svix and post it.",
    )
    send.add_argument(
        "event",
        metavar="EVENT|FILE.json",
        help="user.created|updated|deleted (updated, deleted: --user-id), organization.created|updated|deleted "
        "(updated, deleted: --org-id), organizationMembership.created|updated|deleted (all: --org-id and --user-id; "
        "updated, deleted: --membership-id too), subscription.created|updated|active|pastDue, "
        "subscriptionItem.updated|active|canceled|ended|abandoned|incomplete|pastDue|upcoming|freeTrialEnding, "
        "paymentAttempt.created|updated (billing: --user-id or --org-id, the payer), or a JSON file sent as it is",
    )
    send.add_argument("--url", default=DEFAULT_URL, help="where to post (default: %(default)s)")
    send.add_argument("--user-id", help="Clerk user id (user.created: default a new one; memberships: the member)")
    send.add_argument("--email", help="primary email (default: per user; user.updated picks a new one)")
    send.add_argument("--first-name", help="default: Ada (an update sends it too: it replaces the stored name)")
    send.add_argument("--last-name", help="default: Lovelace (an update sends it too)")
    send.add_argument(
        "--org-id", dest="organization_id", help="organization id (organization.created: default a new one)"
    )
    send.add_argument("--name", help="organization name (default: Analytical Engines; an update sends it too)")
    send.add_argument("--slug", help="organization slug (default: from the name)")
    send.add_argument(
        "--membership-id",
        help="membership id: organizationMembership.updated and .deleted need the one .created printed "
        "(organizationMembership.created: default a new one)",
    )
    send.add_argument("--role", help="membership role (default: org:member; an update sends it too)")
    billing = send.add_argument_group("billing events (the payer: --user-id or --org-id)")
    billing.add_argument("--plan", help="plan slug (default: pro)")
    billing.add_argument(
        "--status", help="item, subscription or payment status (default: the event's, e.g. canceled, past_due, paid)"
    )
    billing.add_argument(
        "--trial", action="store_true", default=None, help="the item is a free trial (freeTrialEnding: always)"
    )
    billing.add_argument("--seats", type=int, help="seats of the item (default: none, not a seat-based plan)")
    billing.add_argument("--subscription-id", help="default: one per payer, from its id")
    billing.add_argument("--item-id", help="default: one per payer and plan")
    billing.add_argument("--payment-id", help="paymentAttempt: the payment (default: a new one)")
    send.add_argument("--svix-id", help="reuse a delivery's svix id to send a duplicate (default: a new one)")
    send.add_argument(
        "--updated-at", type=int, metavar="MS", help="data.updated_at in epoch ms (deletions: the event timestamp)"
    )
    send.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for the answer (default: %(default)s)"
    )
    send.set_defaults(run=_run_send)


def _add_session_token(commands: Any, common: argparse.ArgumentParser) -> None:
    """`session-token`: what a Clerk app's getToken() returns, signed with make dev's development key."""
    from tools.mint import DEFAULT_AZP, LIFETIME_SECONDS, Organization  # noqa: PLC0415 (no heavy imports there)

    token = commands.add_parser(
        "session-token",
        parents=[common],
        help="print a Clerk-shaped session token for a user, signed with make dev's development key",
        description="A Clerk v2 session token (RS256; sub, sid, iat, nbf, exp, azp, iss, v, o, jti, fva, sts) signed "
        "with clerk-dev-key.pem, which `make dev` creates beside .env and its token function verifies with. "
        "The token alone goes to stdout, a description to stderr: "
        "TOKEN=$(python3 -m clerk_sync session-token user_2abc...)",
    )
    token.add_argument(
        "user_id", metavar="USER_ID", help="the Clerk user id (sub), e.g. one `send user.created` printed"
    )
    token.add_argument("--org-id", dest="organization_id", help="an active organization (the v2 `o` claim)")
    token.add_argument("--role", help=f"the role in it, with or without org: (default: {Organization.role})")
    token.add_argument("--slug", help=f"its slug (default: {Organization.slug})")
    token.add_argument(
        "--azp", default=DEFAULT_AZP, help="the app's origin, as Clerk records it (default: %(default)s)"
    )
    token.add_argument("--issuer", help="iss (default: CLERK_ISSUER, else a local placeholder)")
    token.add_argument(
        "--lifetime",
        type=_positive,
        default=LIFETIME_SECONDS,
        help="seconds until exp (default: %(default)s, as Clerk's session tokens)",
    )
    token.add_argument("--pending", action="store_true", help="a pending session (sts: pending)")
    token.add_argument("--claims", action="store_true", help="also print the claims to stderr")
    token.set_defaults(run=_run_session_token)


def _add_reconcile(commands: Any, common: argparse.ArgumentParser, firestore_options: argparse.ArgumentParser) -> None:
    """`reconcile`, and `backfill`: the same run, without deletions."""
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--dry-run", action="store_true", help="compare and report; write nothing")
    shared.add_argument("--json", action="store_true", help="print a machine-readable summary instead")
    shared.add_argument("--workers", type=_positive, default=8, help="parallel transactions (default: %(default)s)")
    shared.add_argument("--page-size", type=_page_size, default=500, help="objects per request, 1-500 (default: 500)")
    shared.add_argument("--budget", type=float, metavar="SECONDS", help="stop after this long, checkpointed")
    shared.add_argument("--restart", action="store_true", help="ignore a cut-off run's checkpoint; start over")
    shared.add_argument(
        "--server-url", help=f"Clerk Backend API base URL (default: CLERK_API_URL or {DEFAULT_CLERK_API})"
    )
    shared.add_argument(
        "--secret-key-file",
        type=Path,
        metavar="FILE",
        help="read the Backend API key from FILE (- for standard input) instead of CLERK_SECRET_KEY",
    )
    shared.add_argument(
        "--pin-instance",
        action="store_true",
        help="record the key's Clerk instance for a database that records none, though Firestore holds objects "
        "that instance does not have",
    )
    key = (
        "CLERK_SECRET_KEY is the instance's Backend API key: from the environment or --secret-key-file "
        "(.env only for the emulator)."
    )
    reconcile = commands.add_parser(
        "reconcile",
        parents=[common, firestore_options, shared],
        help="make Firestore equal Clerk again: users, organizations, memberships, deletions (CLERK_SECRET_KEY)",
        description="List Clerk's users, organizations and memberships, compare with Firestore and repair "
        f"through the webhook's transactions; deletes only what Clerk confirms is gone. {key}",
    )
    reconcile.add_argument(
        "--mode",
        choices=["full", "incremental"],
        default="full",
        help="full: everything, deletions found; incremental: users changed since the last run (default: full)",
    )
    reconcile.add_argument("--no-deletions", action="store_true", help="repair missing and outdated only")
    reconcile.add_argument(
        "--undo-run",
        type=_run_id,
        metavar="RUN_ID",
        help="remove the tombstones that run (or `all` runs) wrote for objects Clerk still holds, then write "
        "Clerk's state back (a full run without deletions)",
    )
    reconcile.add_argument(
        "--allow-mass-deletion",
        action="store_true",
        help="delete even when Clerk lacks more than max(50, 2 %%) of a kind Firestore holds (else the run stops)",
    )
    reconcile.set_defaults(run=_run_reconcile)
    backfill = commands.add_parser(
        "backfill",
        parents=[common, firestore_options, shared],
        help="copy every existing Clerk user, organization and membership (reconcile without deletions)",
        description=f"A full reconcile that deletes nothing: for the first deploy. {key}",
    )
    backfill.set_defaults(run=_run_reconcile, mode="full", no_deletions=True, allow_mass_deletion=False)


def build_parser() -> argparse.ArgumentParser:
    """The command line, one sub-command per tool."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--env-file",
        type=Path,
        default=ROOT / ".env",
        help="local settings file; real environment variables win (default: %(default)s)",
    )
    firestore_options = argparse.ArgumentParser(add_help=False)
    firestore_options.add_argument(
        "--project", help="a real Google Cloud project (ignores FIRESTORE_EMULATOR_HOST unless --emulator is given)"
    )
    firestore_options.add_argument(
        "--emulator",
        metavar="HOST:PORT",
        help="a Firestore emulator (default without --project: FIRESTORE_EMULATOR_HOST, else 127.0.0.1:8081)",
    )
    firestore_options.add_argument(
        "--database", help="Firestore database id (default: FIRESTORE_DATABASE or (default))"
    )
    firestore_options.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per Firestore call (default: %(default)s)"
    )

    parser = argparse.ArgumentParser(
        prog="python3 -m clerk_sync",
        description="Tools for the Clerk → Firestore sync of users, organizations, memberships.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = commands.add_parser(
        "dev",
        parents=[common],
        help="run the webhook, the token function and both emulators on localhost (what `make dev` runs)",
        description="Start the Firestore emulator (with firestore.rules) and the webhook function, the Firebase Auth "
        "emulator and the token function (with a development key pair, clerk-dev-key.pem beside .env) in the "
        "foreground; Ctrl-C stops them all.",
    )
    dev.add_argument("--port", type=int, help=f"webhook function port (default: PORT or {DEFAULT_FUNCTION_PORT})")
    dev.add_argument(
        "--emulator-port",
        type=int,
        help=f"Firestore emulator port (default: EMULATOR_PORT or {DEFAULT_EMULATOR_PORT})",
    )
    dev.add_argument(
        "--token-port", type=int, help=f"token function port (default: TOKEN_PORT or {DEFAULT_TOKEN_PORT})"
    )
    dev.add_argument("--auth-port", type=int, help=f"Auth emulator port (default: AUTH_PORT or {DEFAULT_AUTH_PORT})")
    dev.add_argument(
        "--webhook-only",
        action="store_true",
        help="only the webhook and the Firestore emulator (no Node.js needed)",
    )
    dev.add_argument(
        "--ngrok-api",
        default="http://127.0.0.1:4040",
        help="local ngrok agent API, watched to print the public URL (default: %(default)s)",
    )
    dev.add_argument(
        "--start-timeout", type=float, default=90.0, help="seconds to wait for each process (default: %(default)s)"
    )
    dev.set_defaults(run=_run_dev)

    _add_send(commands, common)
    _add_session_token(commands, common)

    users = commands.add_parser(
        "users", parents=[common, firestore_options], help="list synced users (id, email, name, updated_at)"
    )
    users.add_argument("--limit", type=_positive, default=50, help="how many (default: %(default)s)")
    users.set_defaults(run=_run_users)

    user = commands.add_parser(
        "user", parents=[common, firestore_options], help="one user's document, tombstone, memberships and event log"
    )
    user.add_argument("user_id", metavar="ID")
    user.set_defaults(run=_run_user)

    organizations = commands.add_parser(
        "organizations",
        parents=[common, firestore_options],
        help="list synced organizations (id, name, slug, members, updated_at)",
    )
    organizations.add_argument("--limit", type=_positive, default=50, help="how many (default: %(default)s)")
    organizations.set_defaults(run=_run_organizations)

    organization = commands.add_parser(
        "organization",
        parents=[common, firestore_options],
        help="one organization's document, tombstone, members and event log",
    )
    organization.add_argument("organization_id", metavar="ID")
    organization.set_defaults(run=_run_organization)

    check = commands.add_parser(
        "check",
        parents=[common, firestore_options],
        help="verify claims, tombstones, memberships and field types; exit 1 on any violation",
        description="Check what the transactions promise against Firestore as it is; prints ids, never emails.",
    )
    check.add_argument("--repair", action="store_true", help="fix what the transactions can fix, then check again")
    check.add_argument("--json", action="store_true", help="print a machine-readable summary instead")
    check.set_defaults(run=_run_check)

    _add_reconcile(commands, common, firestore_options)

    rules = commands.add_parser(
        "rules",
        parents=[common],
        help="print the security rules for USERS_COLLECTION / ORGANIZATIONS_COLLECTION",
        description="The whole ruleset for a database of its own, or (--block) the block to merge into yours.",
    )
    rules.add_argument("--block", action="store_true", help="only the block to merge into existing rules")
    rules.add_argument("--output", type=Path, help="write to this file instead of printing")
    rules.add_argument(
        "--firebase-json",
        type=Path,
        help="also write a firebase.json naming --output for --database (make deploy-rules)",
    )
    rules.add_argument("--database", help="Firestore database id for --firebase-json (default: FIRESTORE_DATABASE)")
    rules.set_defaults(run=_run_rules)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; problems the operator can fix end in a one-line message, exit code 1."""
    args = build_parser().parse_args(argv)
    run: Command = args.run
    try:
        args.from_env_file = load_env_file(args.env_file)
        return run(args)
    except ToolError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
