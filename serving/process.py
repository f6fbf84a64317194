"""`shaderbay serve` as a child process on localhost, for the tests and the bench."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

READY = "serving "


@contextmanager
def serve(*args: str, log: Path, timeout: float = 120.0):
    """Start `shaderbay serve --port 0 ARGS`, its messages going to `log`; yield its base URL (http://host:port/v1)."""
    command = [sys.executable, "-m", "shaderbay.cli", "serve", "--port", "0", *args]
    with open(log, "w") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ))
    try:
        deadline = time.monotonic() + timeout
        while True:
            text = log.read_text()
            line = next((ln for ln in text.splitlines() if ln.startswith(READY)), None)
            if line:
                yield line.rsplit(" at ", 1)[1]
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"shaderbay serve did not start (exit code {proc.poll()}):\n{text}")
            time.sleep(0.05)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
