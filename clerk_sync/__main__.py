"""`python -m clerk_sync <command>`: the tools for people (see `clerk_sync.cli`)."""

from clerk_sync.cli import main

raise SystemExit(main())
