"""The README's commands do not rot: every `lift3d ...` line in its code blocks names a command that exists, with
options that exist and values that parse (click's own parser, without running anything)."""

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer._click.core as click_core  # typer carries its own click
import typer._click.exceptions as click_errors

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[list[str]]:
    """The argument lists of every `lift3d` invocation in the README's fenced bash blocks (comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.DOTALL)
    out = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            for i, word in enumerate(words):
                if word.endswith("lift3d") and not word.endswith("/lift3d/"):
                    out.append(words[i + 1:])
                    break
    return out


def test_the_readme_has_lift3d_commands():
    commands = readme_commands()
    assert len(commands) >= 10 and {"lift", "demo", "batch", "view", "render", "report"} <= {c[0] for c in commands}


@pytest.mark.parametrize("args", readme_commands(), ids=lambda a: " ".join(a)[:60])
def test_every_readme_command_parses_against_the_cli(args):
    from flows.cli import app

    command = typer.main.get_command(app)
    path = list(args)
    while hasattr(command, "get_command"):  # a group: the next word names its command
        name = path.pop(0)
        command = command.get_command(click_core.Context(command), name)
        assert command is not None, f"README: `lift3d {' '.join(args)}`: no command {name!r}"
    try:
        command.make_context(command.name, path)
    except click_errors.UsageError as exc:
        pytest.fail(f"README: `lift3d {' '.join(args)}` does not parse: {exc.format_message()}")
