"""gcloud's own command line, run offline over the commands `make` would run.

With an empty CLOUDSDK_CONFIG gcloud parses a command in full (flags, dictionary and list values,
files named by `--*-from-file`) and then stops at "You do not currently have an active account
selected": exit 1 means gcloud accepted the command line, exit 2 that its parser refused it. Starting
gcloud costs 1-2 s, so `parse` runs gcloud's CLI once, in gcloud's own Python, for many command lines.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

GCLOUD_TIMEOUT_SECONDS = 120
NO_ACCOUNT = "You do not currently have an active account selected"
# Shell words that end a command: control operators and redirections.
_ENDS_COMMAND = re.compile(r"[;&|()<>]+")
_SUBSTITUTED_GCLOUD = re.compile(r"\$\((gcloud [^)]*)\)")
_ASSIGNMENT = re.compile(r"([a-z_]+)=([a-z]+)")
# Values a shell variable of the Makefile's recipes stands for when gcloud is called.
_COMMAND_SUBSTITUTIONS = {"id": "projects/demo-x/alertPolicies/1234567890"}

# Run by gcloud's Python with gcloud's lib on the path: one CLI, each command line in turn, stderr
# captured per command at the file-descriptor level (gcloud's log handlers hold the original stream).
_PROBE = """
import json, os, sys, tempfile
from googlecloudsdk import gcloud_main

cli = gcloud_main.CreateCLI([])
results = []
for args in json.load(open(sys.argv[1])):
    with tempfile.TemporaryFile() as capture:
        sys.stdout.flush(); sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            try:
                cli.Execute(args)
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else 1
            except BaseException as error:
                code, _ = -1, sys.stderr.write(repr(error))
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        results.append({"code": code, "stderr": capture.read().decode(errors="replace")})
json.dump(results, open(sys.argv[2], "w"))
"""


@dataclass(frozen=True)
class Parsed:
    """What gcloud made of one command line."""

    command: list[str]
    code: int
    stderr: str

    @property
    def accepted(self) -> bool:
        """Parsed in full: gcloud got as far as asking for credentials."""
        return self.code == 1 and NO_ACCOUNT in self.stderr


def _words(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _variants(command: list[str], assignments: dict[str, set[str]], unknown: str | None) -> list[list[str]]:
    """`$verb` once per value the line assigns it (`verb=update` / `verb=create`), `$id` as a real id,
    any other expansion as `unknown` (KeyError when None)."""
    for index, word in enumerate(command):
        if word.startswith("$"):
            name = word[1:]
            known = _COMMAND_SUBSTITUTIONS.get(name, unknown)
            values = sorted(assignments.get(name, set())) or [_COMMAND_SUBSTITUTIONS[name] if known is None else known]
            return [
                variant
                for value in values
                for variant in _variants([*command[:index], value, *command[index + 1 :]], assignments, unknown)
            ]
    return [command]


def commands_in(shell: str, unknown: str | None = None) -> list[list[str]]:
    """Every gcloud command in the shell text `make -n` prints, both branches of each `if`, and the
    gcloud inside `$(...)`; a shell expansion it does not know becomes `unknown`, or fails loudly
    (KeyError) when that is None."""
    found: list[list[str]] = []
    for line in shell.replace("\\\n", " ").splitlines():
        words = _words(line)
        assignments: dict[str, set[str]] = {}
        for word in words:
            match = _ASSIGNMENT.fullmatch(word)
            if match:
                assignments.setdefault(match.group(1), set()).add(match.group(2))
        for index, word in enumerate(words):
            if word == "gcloud":
                command = ["gcloud"]
                for following in words[index + 1 :]:
                    if _ENDS_COMMAND.fullmatch(following):
                        break
                    command.append(following)
                if "xargs" in words[max(0, index - 4) : index]:
                    command.append(_COMMAND_SUBSTITUTIONS["id"])  # `xargs -r -n1 gcloud ...`: one name appended
                found += _variants(command, assignments, unknown)
            for inner in _SUBSTITUTED_GCLOUD.findall(word):
                found += commands_in(inner, unknown)
    return found


def sdk() -> tuple[Path, Path]:
    """The SDK's root and the Python gcloud runs on, as `gcloud info` reports them."""
    info = subprocess.run(
        ["gcloud", "info", "--format=value(installation.sdk_root,basic.python_location)"],
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=True,
    )
    root, python = info.stdout.split()
    return Path(root), Path(python)


def offline_environment(config_dir: Path) -> dict[str, str]:
    """gcloud with an empty configuration: no account, no project, no prompts, no update check."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("CLOUDSDK_")}
    environment.update(
        {
            "CLOUDSDK_CONFIG": str(config_dir),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "true",
        }
    )
    return environment


def parse(commands: list[list[str]], cwd: Path) -> list[Parsed]:
    """Run each command line (each starting with `gcloud`) through gcloud's CLI in one process."""
    root, python = sdk()
    with tempfile.TemporaryDirectory() as scratch:
        given, answered = Path(scratch) / "commands.json", Path(scratch) / "results.json"
        given.write_text(json.dumps([command[1:] for command in commands]))
        (Path(scratch) / "config").mkdir()
        environment = offline_environment(Path(scratch) / "config")
        environment["PYTHONPATH"] = f"{root}/lib{os.pathsep}{root}/lib/third_party"
        run = subprocess.run(
            [str(python), "-c", _PROBE, str(given), str(answered)],
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            timeout=GCLOUD_TIMEOUT_SECONDS,
            check=False,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results = json.loads(answered.read_text())
    return [
        Parsed(command, result["code"], result["stderr"]) for command, result in zip(commands, results, strict=True)
    ]


def env_vars(flag_value: str) -> dict[str, str]:
    """A `--set-env-vars` value as gcloud's own dictionary-flag parser reads it (`^;^` and all)."""
    root, python = sdk()
    probe = "import json, sys\nfrom googlecloudsdk.calliope import arg_parsers\n"
    probe += "print(json.dumps(arg_parsers.ArgDict()(sys.argv[1])))"
    parsed = subprocess.run(
        [str(python), "-c", probe, flag_value],
        env={**os.environ, "PYTHONPATH": f"{root}/lib{os.pathsep}{root}/lib/third_party"},
        capture_output=True,
        text=True,
        timeout=GCLOUD_TIMEOUT_SECONDS,
        check=False,
    )
    assert parsed.returncode == 0, parsed.stderr
    result: dict[str, str] = json.loads(parsed.stdout)
    return result
