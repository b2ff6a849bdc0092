"""Running a test file's comparison in Triton's CPU interpreter: it must be switched on (``TRITON_INTERPRET=1``)
before Triton is imported, so the comparison runs in a subprocess, the test file as a script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def interpret(script: str, *args: str, timeout: int = 600) -> dict:
    """The JSON object that ``script`` (a test file run as ``python script args...``) prints last, run with Triton's
    interpreter; raises AssertionError with its stderr's tail if it fails."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
