"""Ladder on a real multi-node Ray cluster (issue 31): a head and two worker nodes, each a raylet
in a network namespace of its own (``benchmarks.harness.netns_cluster``), Ray's token auth on,
Redis on the head node. ``ladder serve`` deploys onto it (``LADDER_RAY_ADDRESS``) and each tier
lands on the node type its ``placement`` names — checked by asking Ray where each replica runs —
and answers through Serve's proxy."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.harness.netns_cluster import NetnsCluster, netns_available
from ladder.cluster.redis_server import find_redis_server
from ladder.cluster.settings import LadderConfig

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.model, pytest.mark.slow, pytest.mark.redis]
if why := netns_available():
    pytestmark.append(pytest.mark.skip(reason=f"a multi-node cluster needs network namespaces: {why}"))
KEY = "sk-" + secrets.token_hex(12)
PORT = 8000
NODES = {"head": {"node-head": 1}, "a": {"tier-a": 1}, "b": {"tier-b": 1}}
PLACED = {"small": "a", "tiny": "b"}  # tier → the node type it is placed on


def where_replicas_run(cluster: NetnsCluster) -> dict[str, list[str]]:
    """Deployment → the addresses of the nodes its live replicas run on, as Ray's state API says."""
    script = f"""
import json, ray
from ray.util.state import list_actors
ray.init(address={cluster.address!r}, log_to_driver=False)
ip = {{n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}}
out = {{}}
for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
    if a.class_name.startswith("ServeReplica:ladder:"):
        out.setdefault(a.class_name.split(":")[-1], []).append(ip[a.node_id])
print(json.dumps(out))
"""
    p = cluster.run("head", [sys.executable, "-c", script], timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    with NetnsCluster(NODES, num_cpus=1) as cluster:
        head = cluster.host("head")
        password = secrets.token_urlsafe(24)
        (tmp / "redis.conf").write_text(
            f'port 6380\nbind {head}\nprotected-mode yes\nsave ""\nappendonly no\ndir {tmp}\nrequirepass {password}\n'
        )
        redis = cluster.popen("head", [find_redis_server(), str(tmp / "redis.conf")], stdout=subprocess.DEVNULL)
        data = LadderConfig().model_dump(mode="json")
        small = data["tiers"][0]
        small["vllm"] |= {"enforce_eager": True, "max_num_seqs": 4}
        small["max_ongoing_requests"] = 4
        small["verifier"] = None
        data["tiers"] = [
            {**small, "name": name, "placement": {"resources": {f"tier-{node}": 1}}} for name, node in PLACED.items()
        ]
        data["policy"] = {"kind": "fixed"}
        data["cache"]["redis_url"] = f"redis://:{password}@{head}:6380/0"
        data["ray"]["address"] = cluster.address
        data["server"] |= {"api_keys": [KEY], "host": "0.0.0.0", "port": PORT}  # 0.0.0.0 of the head's namespace
        cfg = tmp / "ladder.yaml"
        cfg.write_text(yaml.safe_dump(data))
        err = tmp / "stderr"
        with err.open("w") as e:
            proc = cluster.popen("head", [sys.executable, "-m", "ladder.cli", "serve", "--config", str(cfg)], stderr=e)
        try:
            deadline = time.monotonic() + 600
            while "Ladder is serving" not in err.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(2)
            yield {"cluster": cluster, "url": f"http://{head}:{PORT}", "proc": proc, "err": err}
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            redis.terminate()


def test_the_cluster_has_three_nodes_with_their_types(served):
    nodes = served["cluster"].nodes()
    by_ip = {n["ip"]: n["resources"] for n in nodes}
    assert len(nodes) == 3
    for node, resources in NODES.items():
        assert all(by_ip[served["cluster"].host(node)].get(k) == v for k, v in resources.items())


def test_each_tier_runs_on_the_node_type_its_placement_names_and_answers(served):
    cluster = served["cluster"]
    placed = where_replicas_run(cluster)
    for tier, node in PLACED.items():
        assert placed[f"tier-{tier}"] == [cluster.host(node)], placed
    headers = {"authorization": f"Bearer {KEY}"}
    for model in ("ladder", *PLACED):
        body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        r = httpx.post(served["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-ladder-tier"] == ("small" if model == "ladder" else model)


def test_a_stop_leaves_the_cluster_running(served):
    """Last: ``ladder serve`` on a cluster it did not start stops its app and exits 0; the nodes stay."""
    proc = served["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, Path(served["err"]).read_text()[-2000:]
    assert len(served["cluster"].nodes()) == 3
