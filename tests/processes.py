"""Real processes for the tests that check what a script or a fresh interpreter sees.

Most of such a process's time is importing torch, so the tests start theirs side by side.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python *args`` with this interpreter and the project on its path; text pipes."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, *args], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m explorer *args``."""
    return python("-m", "explorer", *args, env=env)


def finished(proc: subprocess.Popen, timeout: float = 600) -> subprocess.CompletedProcess:
    """Wait for a started process; its exit status and output."""
    stdout, stderr = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def side_by_side(started: dict) -> dict[object, subprocess.CompletedProcess]:
    """Wait for every process of ``{key: started process}``; the finished ones by key."""
    return {key: finished(proc) for key, proc in started.items()}
