"""Every command documents itself with examples, and the README's command lines name real commands."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from normcli.cli import cli

README = Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = sorted(cli.commands)


def example_lines(help_text: str) -> list[str]:
    """The indented lines after `Example:` in a docstring."""
    _, _, after = help_text.partition("Example:")
    lines = []
    for line in after.splitlines()[1:]:
        if not line.strip():
            if lines:
                break
            continue
        if not line.startswith((" ", "\t")):
            break
        lines.append(line.strip())
    return lines


def test_the_documented_commands_exist():
    assert {"stats", "normalize", "standardize", "batchnorm", "groupnorm", "sample", "demo",
            "merge-stats"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_command_docstring_has_an_example_block(name):
    command = cli.commands[name]
    assert command.help and command.help.strip(), f"{name} has no docstring"
    assert "Example:" in command.help, f"{name}'s docstring has no Example: block"
    examples = example_lines(command.help)
    assert examples, f"{name}'s Example: block is empty"
    assert any(shlex.split(line)[:2] == ["normcli", name] for line in examples), examples
    for line in examples:
        words = shlex.split(line)
        assert words[0] == "normcli" and words[1] in cli.commands, line


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_the_examples_unwrapped(name, width):
    result = CliRunner().invoke(cli, [name, "--help"], terminal_width=width)
    assert result.exit_code == 0, result.stderr
    assert "Example:" in result.stdout
    for line in example_lines(cli.commands[name].help):
        # \b keeps Click from re-wrapping the example lines, and they fit the width as printed
        assert any(shown.strip() == line and len(shown) <= width for shown in result.stdout.splitlines()), line


@pytest.mark.parametrize("args", [[], *([name] for name in COMMANDS)], ids=lambda a: a[0] if a else "normcli")
def test_help_fits_80_columns(args):
    result = CliRunner().invoke(cli, [*args, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    result.stdout.encode("ascii")  # so that an ASCII-only terminal can show it


def test_every_command_summary_is_whole_at_80_columns():
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    listed = result.stdout.split("Commands:")[1].split("\n\n")[0].splitlines()
    summaries = {line.split()[0]: line.split(None, 1)[1] for line in listed if line.strip()}
    assert set(summaries) == set(COMMANDS)
    for name, summary in summaries.items():
        assert not summary.endswith("..."), f"{name}: {summary}"
        assert summary == cli.commands[name].short_help


def test_help_says_how_to_turn_on_completion():
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    for shell in ("bash", "zsh", "fish"):
        assert f"_NORMCLI_COMPLETE={shell}_source normcli" in result.stdout


def readme_command_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [m.group(1).strip() for m in re.finditer(r"^\s*\$ (normcli\b.*)$", text, re.M)]


@pytest.mark.skipif(not README.exists(), reason="no README.md yet")
def test_readme_command_lines_name_existing_commands():
    lines = readme_command_lines()
    assert lines, "README.md shows no `$ normcli ...` command line"
    for line in lines:
        words = shlex.split(line.split("|")[0])
        options = [w for w in words[1:] if not w.startswith("-")]
        if words[1:2] in (["--help"], ["-h"], ["--version"]):
            continue
        assert options and options[0] in cli.commands, f"README line names no existing command: {line}"


def choices(name: str) -> dict[str, tuple]:
    """The choices of option `name` in every command that has it, by command."""
    found = {}
    for command in cli.commands.values():
        for param in command.params:
            if param.name == name:
                found[command.name] = tuple(param.type.choices)
    return found


def test_the_cli_choices_are_the_core_registries():
    """options.py spells the choices out (so that --help starts without numpy): they must stay the core's."""
    from normcli.engine import ENGINES
    from normcli.images import MODES
    from normcli.layout import LAYOUTS
    from normcli.scopes import SCOPES

    per = choices("per")
    assert per["stats"] == per["normalize"] == per["standardize"] == tuple(SCOPES)
    assert set(per["batchnorm"]) < set(SCOPES)
    from normcli.quantiles import METHODS

    for name, registry in (("layout", LAYOUTS), ("engine", ENGINES), ("mode", tuple(MODES)),
                           ("quantile_method", METHODS)):
        found = choices(name)
        assert found and set(found.values()) == {tuple(registry)}, name
