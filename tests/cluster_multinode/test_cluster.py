"""Ladder on a real multi-node Ray cluster (issue 31): a head and two worker nodes, each a raylet
in a network namespace of its own (``benchmarks.harness.netns_cluster``), Ray's token auth on,
Redis on the head node. ``ladder serve`` deploys onto it (``ray.address``); each tier lands on the
node type its ``placement`` names — checked by asking Ray where each replica runs — and answers
through Serve's proxy; a node lost under load costs no hung request and no 500, and its tier
comes back when the node does."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from benchmarks.harness.netns_cluster import NetnsCluster, netns_available
from benchmarks.harness.processes import end
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
        small["timeout_s"] = 20  # a rung on a lost node: given up on after 20 s without a token
        data["tiers"] = [
            {**small, "name": name, "placement": {"resources": {f"tier-{node}": 1}}} for name, node in PLACED.items()
        ]
        data["policy"] = {"kind": "fixed"}
        data["cache"]["redis_url"] = f"redis://:{password}@{head}:6380/0"
        data["ray"]["address"] = cluster.address
        data["server"] |= {"api_keys": [KEY], "host": "0.0.0.0", "port": PORT}  # 0.0.0.0 of the head's namespace
        data["server"]["ingress_placement"] = {"resources": {"node-head": 0.1}}  # the router stays on the head
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
            end(proc, signal.SIGTERM, 120)
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
    assert placed["ladder-router"] == [cluster.host("head")], placed
    headers = {"authorization": f"Bearer {KEY}"}
    for model in ("ladder", *PLACED):
        body = {"model": model, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
        r = httpx.post(served["url"] + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        assert r.status_code == 200, r.text
        assert r.headers["x-ladder-tier"] == ("small" if model == "ladder" else model)


def test_a_node_lost_under_load_hangs_nothing_and_its_tier_returns_with_the_node(served):
    """8 clients send routed requests (they start at ``small``, on node a; ``tiny``, on node b, is
    the rung above); node a is killed (every process in its namespace) a few seconds in. Each
    request is answered (by ``tiny`` once ``small`` is gone) or refused with 503 + Retry-After —
    none hangs past its bound, none is a 500. Then node a rejoins and Serve puts ``small`` back on it."""
    cluster, url = served["cluster"], served["url"]
    headers = {"authorization": f"Bearer {KEY}"}
    outcomes: list[tuple[float, int, str, float]] = []  # (start, status, tier or error code, seconds)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=90) as http:
            while not stop.is_set():
                t0 = time.monotonic()
                body = {"model": "ladder", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}
                try:
                    r = http.post(url + "/v1/chat/completions", json=body, headers=headers)
                    what = r.headers.get("x-ladder-tier") or r.json().get("error", {}).get("code", "?")
                    # a 503 must say when to come back; one that does not counts as a failure (-503)
                    status = -503 if r.status_code == 503 and not r.headers.get("retry-after") else r.status_code
                    outcomes.append((t0, status, what, time.monotonic() - t0))
                except (httpx.HTTPError, ValueError) as exc:
                    outcomes.append((t0, -1, f"{type(exc).__name__}: {exc}", time.monotonic() - t0))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(8)
    killed_at = time.monotonic()
    assert cluster.kill("a") > 3  # its raylet, agents, workers, the small tier's replica and engine
    time.sleep(45)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)  # nothing hung
    after = [o for o in outcomes if o[0] >= killed_at]
    assert {status for _, status, _, _ in outcomes} <= {200, 503}, [o for o in outcomes if o[1] != 200]
    assert any(status == 200 and tier == "tiny" for _, status, tier, _ in after), after  # the rung above answered
    assert max(seconds for *_, seconds in outcomes) < 60
    # the node comes back, and with it the tier placed there
    cluster.rejoin("a")
    deadline = time.monotonic() + 300
    while where_replicas_run(cluster).get("tier-small") != [cluster.host("a")]:
        assert time.monotonic() < deadline, where_replicas_run(cluster)
        time.sleep(5)
    body = {"model": "small", "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4}
    deadline = time.monotonic() + 300
    while (r := httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=120)).status_code != 200:
        # its engine is starting: 503 while the replica is not placed, 504 while it loads
        assert r.status_code in (503, 504) and time.monotonic() < deadline, r.text
        time.sleep(5)
    assert r.headers["x-ladder-tier"] == "small"


def test_a_stop_leaves_the_cluster_running(served):
    """Last: ``ladder serve`` on a cluster it did not start stops its app and exits 0; the nodes stay."""
    proc = served["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, Path(served["err"]).read_text()[-2000:]
    assert len(served["cluster"].nodes()) == 3
