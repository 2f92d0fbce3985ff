"""The README's transcripts are real: every ```console block's `$ ` commands run in order, through
bash, in one fresh folder holding a copy of sample_images/, at 80 columns without colour, and each
command's output (stdout and stderr, as a terminal shows them) must equal the README's text.
`normcli`, `python` and `dask` there are this interpreter's, whatever PATH holds; without the [dask]
extra the test skips (the README runs a Dask scheduler).

After a change to what normcli prints, rewrite the transcripts with the real output:

    python tests/test_readme.py --update
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCK = re.compile(r"^```console\n(.*?)^```$", re.M | re.S)
TIMEOUT = 120


@dataclass
class Command:
    line: str  # as written after `$ `, continuation lines (ending in a backslash) included
    output: str  # what the README shows after it


def parse_block(body: str) -> list[Command]:
    commands: list[Command] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            raise ValueError(f"README console block: output before any `$ ` command: {lines[i]!r}")
        command = [lines[i][2:]]
        while command[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        output = []
        i += 1
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        commands.append(Command("\n".join(command), "\n".join(output)))
    return commands


def readme_commands(text: str) -> list[list[Command]]:
    return [parse_block(m.group(1)) for m in BLOCK.finditer(text)]


def environment(bin_dir: Path) -> dict:
    """`normcli` and `python` are this interpreter's, with this checkout's code; 80 columns, no colour,
    unbuffered (stdout and stderr interleave as on a terminal), messages of other tools in English."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    forced = {"FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE", "TTY_INTERACTIVE"}  # would style plain output
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("LC_", "NORMCLI", "_NORMCLI")) and key not in forced}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", "PYTHONPATH": pythonpath,
            "COLUMNS": "80", "LINES": "50", "NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1",
            "PYTHONIOENCODING": "utf-8", "LC_ALL": "C"}


def _shims(bin_dir: Path) -> None:
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("normcli", f'exec "{sys.executable}" -m normcli "$@"'),
                          ("dask", f'exec "{sys.executable}" -m dask "$@"')):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{command}\n")
        shim.chmod(0o755)


def run_all(blocks: list[list[Command]]) -> list[list[str]]:
    """Each command's real output, run in order in one shared folder."""
    with tempfile.TemporaryDirectory(prefix="normcli-readme-") as tmp:
        folder, bin_dir = Path(tmp) / "work", Path(tmp) / "bin"
        folder.mkdir()
        bin_dir.mkdir()
        _shims(bin_dir)
        shutil.copytree(ROOT / "sample_images", folder / "sample_images")
        env = environment(bin_dir)
        outputs = []
        for block in blocks:
            outputs.append([])
            for command in block:
                result = subprocess.run(["bash", "-c", command.line], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT)
                outputs[-1].append(result.stdout.decode("utf-8").rstrip("\n"))
        return outputs


def updated(text: str, outputs: list[list[str]]) -> str:
    blocks = iter(zip(readme_commands(text), outputs))

    def rewrite(match):
        commands, real = next(blocks)
        body = "".join(f"$ {c.line}\n" + (f"{out}\n" if out else "") for c, out in zip(commands, real))
        return f"```console\n{body}```"

    return BLOCK.sub(rewrite, text)


def test_readme_transcripts_are_real_output():
    text = README.read_text(encoding="utf-8")
    blocks = readme_commands(text)
    assert blocks, "README.md has no ```console block"
    if any("dask" in command.line for block in blocks for command in block):
        pytest.importorskip("distributed", reason="the README's Dask transcripts need the [dask] extra")
    real = run_all(blocks)
    for block, outputs in zip(blocks, real):
        for command, output in zip(block, outputs):
            assert output == command.output, (
                f"README output of `$ {command.line}` differs from the real one "
                f"(python tests/test_readme.py --update rewrites it):\n{output}")


def test_update_keeps_the_text_around_the_blocks():
    text = "intro\n```console\n$ echo a\nold\n$ true\n```\nmiddle\n```console\n$ echo b\n```\nend\n"
    blocks = readme_commands(text)
    assert [[c.line for c in b] for b in blocks] == [["echo a", "true"], ["echo b"]]
    new = updated(text, [["a", ""], ["b"]])
    assert new == "intro\n```console\n$ echo a\na\n$ true\n```\nmiddle\n```console\n$ echo b\nb\n```\nend\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    original = README.read_text(encoding="utf-8")
    README.write_text(updated(original, run_all(readme_commands(original))), encoding="utf-8")
    print(f"rewrote the console blocks of {README}")
