"""The contract every refused run keeps, checked in one place: its exit code, one `error:` line (or
Click's usage error), no traceback, nothing new or changed in its folder, no temporaries in $TMPDIR."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import pytest


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under `root` (hidden ones included) with a hash of its content."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        state[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_message(exit_code: int, stderr: str, code: int, *, contains: str | None = None) -> None:
    assert exit_code == code, stderr
    assert "Traceback" not in stderr, stderr
    if code == 2:
        assert "Usage:" in stderr and "Error: " in stderr, stderr
        message = [line for line in stderr.splitlines() if line.startswith("Error: ")]
        assert len(message) == 1, stderr
    else:
        assert len(stderr.splitlines()) == 1 and stderr.startswith("error: "), stderr
        message = stderr.splitlines()
    if contains is not None:
        assert contains in message[0], stderr


class Workspace:
    """A test's folder (the current directory) and its own $TMPDIR."""

    def __init__(self, root: Path, tmpdir: Path):
        self.root = root
        self.tmpdir = tmpdir

    def refused(self, *args, code: int = 1, contains: str | None = None):
        """Run the CLI, expecting a refusal that leaves the folder exactly as it was."""
        from click.testing import CliRunner

        from normcli.cli import cli

        before = snapshot(self.root)
        result = CliRunner().invoke(cli, [str(a) for a in args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert_message(result.exit_code, result.stderr, code, contains=contains)
        assert snapshot(self.root) == before  # nothing written, nothing left, inputs untouched
        assert not any(self.tmpdir.iterdir())
        return result


@pytest.fixture
def workspace(tmp_path, monkeypatch) -> Workspace:
    root, tmpdir = tmp_path / "work", tmp_path / "tmpdir"
    root.mkdir()
    tmpdir.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    return Workspace(root, tmpdir)
