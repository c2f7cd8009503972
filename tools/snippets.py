"""The docs' TypeScript blocks as files, so they are compiled and run rather than trusted.

Every ```ts or ```tsx block in README.md and docs/*.md starts with a line naming its file
(`// firebase.ts`, optionally followed by `: what it is`); `python3 -m tools.snippets DIR` writes each
block there verbatim. A block without a name, or two blocks with one name, stop it: no block escapes
the compiler. `make docs-ts` then type-checks DIR with tsconfig.docs.json.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tools.common import ROOT

__all__ = ["Snippet", "main", "snippets", "write"]

FENCE = re.compile(r"^```(ts|tsx)[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NAME = re.compile(r"// ([A-Za-z0-9_-]+\.tsx?)(?::[^\n]*)?")
PAGES = ("README.md", "docs/*.md")


@dataclass(frozen=True)
class Snippet:
    """One TypeScript block: the file it names, its text, and where it is written."""

    name: str
    text: str
    page: Path
    line: int


def _pages(root: Path) -> list[Path]:
    return sorted({page for pattern in PAGES for page in root.glob(pattern)})


def snippets(root: Path = ROOT) -> list[Snippet]:
    """Every TypeScript block of the docs, in page order; ValueError for an unnamed or repeated one."""
    found: list[Snippet] = []
    for page in _pages(root):
        markdown = page.read_text()
        for block in FENCE.finditer(markdown):
            line = markdown.count("\n", 0, block.start()) + 1
            where = f"{page.relative_to(root)}:{line}"
            text = block.group(2)
            name = NAME.match(text.split("\n", 1)[0])
            if name is None:
                raise ValueError(f"{where}: a ```{block.group(1)} block must start with `// NAME.{block.group(1)}`")
            if not name.group(1).endswith(f".{block.group(1)}"):
                raise ValueError(f"{where}: a ```{block.group(1)} block names {name.group(1)}")
            if any(known.name == name.group(1) for known in found):
                raise ValueError(f"{where}: {name.group(1)} is named by another block too")
            found.append(Snippet(name.group(1), text, page, line))
    return found


def write(directory: Path, root: Path = ROOT) -> list[Path]:
    """Write every block to `directory` (only what changed, so a concurrent reader never sees half a file)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for snippet in snippets(root):
        path = directory / snippet.name
        if not path.exists() or path.read_text() != snippet.text:
            temporary = path.with_name(f".{snippet.name}.tmp")
            temporary.write_text(snippet.text)
            temporary.replace(path)
        written.append(path)
    wanted = {path.name for path in written}
    for stale in directory.glob("*.ts*"):
        if stale.name not in wanted:
            stale.unlink()  # a block renamed or removed since the last run
    return written


def main(argv: list[str] | None = None) -> int:
    """`python3 -m tools.snippets DIR`: write the blocks, list them."""
    arguments = sys.argv[1:] if argv is None else argv
    if len(arguments) != 1:
        print("usage: python3 -m tools.snippets DIR", file=sys.stderr)
        return 2
    try:
        written = write(Path(arguments[0]))
    except ValueError as problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} TypeScript files from the docs to {arguments[0]}: {' '.join(p.name for p in written)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
