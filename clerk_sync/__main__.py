"""`python -m clerk_sync COMMAND`: the tools for people (in `tools/`, never deployed).

This file runs under whatever `python` the shell finds. When that interpreter lacks the tools'
dependencies and the project's `.venv` exists, the command re-runs itself there, so every
documented command works as typed without activating the virtualenv first.
"""

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
NEEDED = ("dotenv", "google.cloud.firestore", "svix", "clerk_backend_api")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


if not all(_has(module) for module in NEEDED):
    if VENV_PYTHON.exists() and Path(sys.executable).resolve() != VENV_PYTHON.resolve():
        os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), "-m", "clerk_sync", *sys.argv[1:]])  # noqa: S606
    sys.stderr.write("error: the tools need the project's dependencies: run `make venv` in " + str(ROOT) + " first\n")
    raise SystemExit(1)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.cli import main  # noqa: E402

raise SystemExit(main())
