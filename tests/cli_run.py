"""Running the CLI as a user does (a real subprocess) and checking its one-line errors: shared by
every test module that drives ``ladder`` (a helper module, so no test module imports another)."""

import os
import subprocess
import sys

LADDER = [sys.executable, "-m", "ladder.cli"]


def ladder(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*LADDER, *args], capture_output=True, text=True, timeout=300, env=full_env)


def assert_clean_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
