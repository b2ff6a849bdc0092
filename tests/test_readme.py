"""The README's commands do not rot: every `lift3d ...` line in its code blocks names a command that exists, with
options that exist and values that parse (click's own parser, without running anything)."""

import json
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


# -- every command of "Using it", run as written on a fresh clone -------------------------------------------------------

SETTABLE = {"demo", "lift", "status", "batch"}  # the commands that take --set: the tiny scene goes in before theirs


def using_it_lines() -> list[str]:
    """The command lines of the README's first fenced bash block under "## Using it" (comments dropped)."""
    text = README.read_text()
    section = text[text.index("## Using it"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.DOTALL).group(1)
    lines = [shlex.join(shlex.split(line, comments=True)) for line in block.splitlines()]
    return [line for line in lines if line]


def tiny_sets() -> list[str]:
    """``--set`` options that shrink any run to the tests' tiny scene (conftest.TINY_OVERRIDES, minus the input)."""
    import yaml

    from tests.conftest import TINY_OVERRIDES

    out = []
    for section, values in TINY_OVERRIDES.items():
        if section == "input":
            continue
        for key, value in values.items():
            out += ["--set", f"{section}.{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
    return out


def with_tiny_scene(line: str) -> list[str]:
    words = shlex.split(line)
    i = next(i for i, w in enumerate(words) if w.endswith("lift3d"))
    if words[i + 1] in SETTABLE:
        words[i + 2:i + 2] = tiny_sets()  # the README's own --set come after, and win
    return words


def test_the_using_it_section_lists_the_cpu_commands():
    lines = using_it_lines()
    assert len(lines) >= 10 and all(line.startswith(".venv/bin/lift3d ") for line in lines)
    assert "GPU + weights" in README.read_text()  # what needs weights or a GPU is said, in its own block


@pytest.mark.slow
def test_every_using_it_command_runs_on_a_fresh_clone(tmp_path):
    """Each line of "Using it", copied into a shell at the root of a fresh clone (with this environment's .venv), with
    the tiny scene's --set put before the README's own, exits 0 and leaves what the README says it leaves."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from PIL import Image
    from skimage import data as skdata

    repo = README.parent
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    (clone / ".venv").symlink_to(Path(sys.prefix))  # what `make install` made
    for name in ("astronaut", "coffee"):  # a folder of photographs for `lift3d batch data/inputs`
        Image.fromarray(getattr(skdata, name)()).resize((96, 72)).save(clone / "data" / "inputs" / f"{name}.jpg")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIFT3D_", "PREFECT_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="300")

    def run(words):
        return subprocess.run(words, cwd=clone, env=env, capture_output=True, text=True, timeout=600)

    ran = []
    for line in using_it_lines():
        t0 = time.perf_counter()
        words = with_tiny_scene(line)
        sub = words[1]
        if sub == "view":  # a server: it must serve the page, then stop cleanly on Ctrl-C
            proc = subprocess.Popen(words, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            try:
                url = None
                for out_line in proc.stdout:
                    if m := re.search(r"viewer at (http://127\.0\.0\.1:\d+\S*)", out_line):
                        url = m.group(1)
                        break
                assert url, f"`{line}` printed no viewer URL"
                with urllib.request.urlopen(url, timeout=30) as page:
                    assert page.status == 200 and b"<html" in page.read(2000).lower()
                proc.send_signal(signal.SIGINT)
                assert proc.wait(timeout=60) == 0, f"`{line}` did not stop cleanly on Ctrl-C"
            finally:
                if proc.poll() is None:
                    proc.kill()
            ran.append(sub)
            print(f"{time.perf_counter() - t0:6.1f} s  {line}")
            continue
        done = run(words)
        output = done.stdout + done.stderr
        if words[1:3] == ["checkpoints", "verify"]:  # a fresh clone has no weights: it says so and exits 1
            assert done.returncode == 1 and "missing" in output.lower(), output[-2000:]
        else:
            assert done.returncode == 0, f"`{line}` exited {done.returncode}:\n{output[-3000:]}"
        if sub == "demo" and "--set" in line:  # a re-run with a train setting changed reuses the generated frames
            assert re.search(r"generate\s+HIT", output) and re.search(r"train\s+MISS", output), output[-3000:]
        ran.append(sub)
        print(f"{time.perf_counter() - t0:6.1f} s  {line}")  # pytest -s shows where the test's time goes

    runs = clone / "data" / "runs"
    assert (runs / "demo" / "summary.json").is_file() and (runs / "demo" / "report.html").is_file()
    assert list((runs / "demo").glob("*.mp4")), "lift3d render wrote no video"
    batches = [json.loads(p.read_text()) for p in runs.glob("*/batch.json")]
    assert batches and [e["status"] for e in batches[0]["inputs"]] == ["done", "done"]
    assert {"demo", "lift", "status", "report", "render", "view", "batch", "cache", "checkpoints"} <= set(ran)
