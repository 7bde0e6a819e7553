"""An engine that cannot start: `ladder serve` names the tier and the cause in one line, exits 2,
and leaves no Ray or engine behind (real Ray Serve, a real vLLM engine refusing its settings)."""

import os
import subprocess
import sys
import time

import pytest
import yaml

from ladder.cluster.redis_server import free_port
from ladder.cluster.settings import LadderConfig

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.model, pytest.mark.slow]


def test_serve_reports_an_engine_that_cannot_start_in_one_line_and_exits_2(tmp_path):
    data = LadderConfig().model_dump(mode="json")
    data["tiers"] = [data["tiers"][0]]
    data["policy"] = {"kind": "fixed"}  # one tier (the bundled learned policy covers three)
    data["tiers"][0]["vllm"]["max_model_len"] = 100_000  # beyond SmolLM2's 8,192 positions: vLLM refuses
    data["ray"]["num_cpus"] = 2
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = subprocess.run(
        [sys.executable, "-m", "ladder.cli", "serve", "--config", str(cfg), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: tier small: the vLLM engine did not start"), proc.stderr[-3000:]
    assert "max_model_len" in last and "Traceback" not in last
    for _ in range(30):  # Ray's daemons take a moment to exit after `ray.shutdown()`
        leftover = subprocess.run(["pgrep", "-f", "VLLM::EngineCore|raylet"], capture_output=True, text=True).stdout
        if not leftover.strip():
            break
        time.sleep(1)
    assert leftover.strip() == "", leftover
