"""`ladder serve` against an existing Ray cluster insists on Ray's token authentication: a cluster
that answers a client without a token is refused in one line (exit 2), one that requires it is
accepted. The clusters run in a network namespace the test creates (only its own loopback)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from ladder.cluster.settings import LadderConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RAY = Path(sys.executable).with_name("ray")

SCRIPT = """
set -u
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0
for mode in disabled token; do
  RAY_AUTH_MODE=$mode {ray} start --head --port=6399 --num-cpus=1 --include-dashboard=false \\
      --temp-dir={tmp}/ray-$mode >{tmp}/ray-$mode.log 2>&1 || {{ echo "ray start failed"; exit 9; }}
  if [ $mode = disabled ]; then
    {python} -m ladder.cli serve --config {config} --port 18123 2>{tmp}/serve.err
    echo "serve exit $?"
  else
    {python} -c 'from ladder.cluster.runtime import Runtime; from ladder.cluster.settings import load_config
Runtime(load_config("{config}"))._require_token_auth(); print("token cluster accepted")'
  fi
  RAY_AUTH_MODE=$mode {ray} stop --force >/dev/null 2>&1
done
"""


def test_a_cluster_without_token_auth_is_refused_and_one_with_it_accepted(tmp_path):
    if os.geteuid() != 0:
        pytest.fail("run as root: the test makes a network namespace")
    data = LadderConfig().model_dump(mode="json")
    data["tiers"] = [data["tiers"][0]]
    data["policy"] = {"kind": "fixed"}
    data["ray"]["address"] = "127.0.0.1:6399"
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(data))
    short = Path(tempfile.mkdtemp(prefix="lt-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        script = SCRIPT.format(ray=RAY, python=sys.executable, tmp=short, config=config)
        p = subprocess.run(["unshare", "--net", "bash", "-c", script], capture_output=True, text=True, timeout=400)
        assert "serve exit 2" in p.stdout and "token cluster accepted" in p.stdout, p.stdout + p.stderr[-2000:]
        last = (short / "serve.err").read_text().strip().splitlines()[-1]
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert last.startswith("error: the Ray cluster at 127.0.0.1:6399 answers clients without a token")
    assert "RAY_AUTH_MODE=token" in last and "allow_unauthenticated" in last
