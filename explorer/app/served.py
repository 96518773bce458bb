"""The served app in a subprocess, and Debian Chromium's flags: shared by the
browser tests and the app benchmark (no Panel import here)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium headless on a machine with no outside network (DEVELOPERS.md).
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServedApp:
    """``panel serve app.py`` on 127.0.0.1 and a free port, its output kept in ``lines``."""

    def __init__(self, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/app"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "panel", "serve", "app.py", "--setup", "explorer/app/warm.py", "--address", "127.0.0.1",
             "--port", str(self.port), "--allow-websocket-origin", f"127.0.0.1:{self.port}",
             "--check-unused-sessions", "1000", "--unused-session-lifetime", "10000"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=None if env is None else {**os.environ, **env})
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())

    def wait_ready(self, timeout=90):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("panel serve exited:\n" + "\n".join(self.lines))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("panel serve did not start:\n" + "\n".join(self.lines))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
