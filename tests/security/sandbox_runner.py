"""Runs one program in Ladder's sandbox and prints the result as JSON: the security tests start it
as root and as user nobody (with the system Python, ladder on PYTHONPATH), so the sandbox is
tested as each of them would run it."""

import json
import sys

from ladder.sandbox import SandboxLimits, run_python

if __name__ == "__main__":
    r = run_python(sys.stdin.read(), SandboxLimits(timeout_s=float(sys.argv[1]), cpu_s=2))
    print(json.dumps({"status": r.status, "stdout": r.stdout, "stderr": r.stderr[-2000:], "isolated": r.isolated}))
