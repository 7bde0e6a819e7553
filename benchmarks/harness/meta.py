"""What every results JSON says about where it came from: the commit, the policy, the command."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_POLICY = ROOT / "src" / "ladder" / "data" / "policy" / "default.json"


def commit() -> str:
    """HEAD's hash, with ``-dirty`` when the tree had uncommitted changes to tracked files."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=ROOT).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty else "")


def stamp(argv: list[str], policy_version: str | None = None) -> dict:
    """``commit``, ``policy_version`` (the bundled policy's unless given) and ``command``."""
    if policy_version is None:
        policy_version = json.loads(DEFAULT_POLICY.read_text())["version"]
    return {"commit": commit(), "policy_version": policy_version, "command": " ".join(["python", *argv])}


def write_results(path: Path, argv: list[str], config: Path, **fields: object) -> None:
    """A results JSON for a run of ``config``: ``stamp(argv)``, the config (relative to the
    repository when inside it), then ``fields``."""
    label = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({**stamp(argv), "config": str(label), **fields}, indent=1) + "\n")
