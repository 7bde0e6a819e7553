"""A real multi-node Ray cluster on one machine: each node a separate raylet in a network namespace
of its own, on a private bridge, with Ray's token authentication on.

Each node gets its own network stack (its own loopback and ports, an address on 10.77.N.0/24)
so Ray sees distinct nodes exactly as on separate hosts, and nothing listens on this machine's
own addresses: the bridge lives in a namespace of its own, and this process reaches it through
one veth pair whose root end holds ``.1``. The nodes share the filesystem (the weights; each node
has its own Ray temp dir, where its sockets live) and the CPUs. Needs root (``ip netns``).

    with NetnsCluster({"head": {"node-head": 1}, "a": {"tier-a": 1}}, num_cpus=1) as cluster:
        cluster.address    # 10.77.N.2:6379, for LADDER_RAY_ADDRESS
        cluster.run("head", [...])   # a command inside a node's namespace, with the cluster's token
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
GCS_PORT = 6379
OBJECT_STORE_BYTES = 256 * 1024**2  # per node (Ray's default, 30% of memory each, is for real machines)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def netns_available() -> str | None:
    """Why a namespace cluster cannot start here (None: it can)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    return None


class NetnsCluster:
    def __init__(self, nodes: dict[str, dict[str, float]], num_cpus: float = 1, subnet: int | None = None) -> None:
        """``nodes``: name → custom resources, the first is the head. Every node gets ``num_cpus``."""
        self.names = list(nodes)
        self.resources = nodes
        self.num_cpus = num_cpus
        self.tag = secrets.token_hex(2)
        self.subnet = subnet if subnet is not None else 100 + secrets.randbelow(100)
        self.token = secrets.token_hex(32)
        self.tmp = Path(tempfile.mkdtemp(prefix="ladder-netns-"))
        self._made: list[str] = []  # namespaces, to delete
        self._root_veth: str | None = None

    # -- addresses ---------------------------------------------------------------------------
    def ns(self, node: str) -> str:
        return f"lad{self.tag}-{node}"

    def host(self, node: str) -> str:
        return f"10.77.{self.subnet}.{2 + self.names.index(node)}"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.subnet}.1"  # this process's end of the bridge

    @property
    def address(self) -> str:
        return f"{self.host(self.names[0])}:{GCS_PORT}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a cluster process: Ray's token on, no usage stats."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
        return env | {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            **extra,
        }

    def command(self, node: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *argv]

    def run(self, node: str, argv: list[str], **kw) -> subprocess.CompletedProcess:  # noqa: ANN003
        env = self.env(**kw.pop("env", {}))
        return subprocess.run(self.command(node, argv), env=env, capture_output=True, text=True, **kw)

    def popen(self, node: str, argv: list[str], **kw) -> subprocess.Popen:  # noqa: ANN003
        env = self.env(**kw.pop("env", {}))
        return subprocess.Popen(self.command(node, argv), env=env, **kw)

    # -- lifecycle ---------------------------------------------------------------------------
    def _network(self) -> None:
        hub = self.ns("hub")
        _ip("netns", "add", hub)
        self._made.append(hub)
        _ip("-n", hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", hub, "link", "set", "br0", "up")
        self._root_veth = f"lad{self.tag}r"
        _ip("link", "add", self._root_veth, "type", "veth", "peer", "name", "up0", "netns", hub)
        _ip("addr", "add", f"{self.gateway}/24", "dev", self._root_veth)
        _ip("link", "set", self._root_veth, "up")
        _ip("-n", hub, "link", "set", "up0", "master", "br0", "up")
        for i, node in enumerate(self.names):
            ns = self.ns(node)
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"n{i}", "netns", hub)
            _ip("-n", ns, "addr", "add", f"{self.host(node)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.gateway)
            _ip("-n", hub, "link", "set", f"n{i}", "master", "br0", "up")

    def _ray_start(self, node: str) -> None:
        args = [
            RAY,
            "start",
            f"--node-ip-address={self.host(node)}",
            f"--num-cpus={self.num_cpus}",
            f"--resources={json.dumps(self.resources[node])}",
            # a temp dir per node: the raylet's and object store's sockets live there (and /tmp/ray,
            # another Ray's, is left alone)
            f"--temp-dir={self.tmp}/{node}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        if node == self.names[0]:
            # the dashboard serves Ray's state API (where each actor runs), in the head's namespace only
            args += ["--head", f"--port={GCS_PORT}", "--include-dashboard=true", f"--dashboard-host={self.host(node)}"]
        else:
            args += [f"--address={self.address}"]
        p = self.run(node, args, timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"ray start on {node} failed: {(p.stderr or p.stdout)[-2000:]}")

    def nodes(self) -> list[dict]:
        """Ray's view: alive nodes, their address and resources (asked through the GCS, with the token)."""
        script = (
            "import json, ray; ray.init(address=%r, log_to_driver=False);"
            "print(json.dumps([{'ip': n['NodeManagerAddress'], 'id': n['NodeID'], 'resources': n['Resources']}"
            " for n in ray.nodes() if n['Alive']]))" % self.address
        )
        p = self.run(self.names[0], [sys.executable, "-c", script], timeout=120)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        return json.loads(p.stdout.strip().splitlines()[-1])

    def kill(self, node: str) -> int:
        """Lose a node for real: SIGKILL every process in its namespace (raylet, workers, replicas).
        How many were killed."""
        out = subprocess.run(["ip", "netns", "pids", self.ns(node)], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        for pid in pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        return len(pids)

    def rejoin(self, node: str) -> None:
        """The node comes back: a fresh raylet in its namespace joins the cluster."""
        shutil.rmtree(self.tmp / node, ignore_errors=True)
        self._ray_start(node)

    def start(self, timeout_s: float = 120) -> NetnsCluster:
        try:
            self._network()
            self._ray_start(self.names[0])
            with ThreadPoolExecutor(len(self.names)) as pool:  # the workers join at once
                list(pool.map(self._ray_start, self.names[1:]))
            deadline = time.monotonic() + timeout_s
            while len(self.nodes()) < len(self.names):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(self.nodes())} of {len(self.names)} nodes joined")
                time.sleep(1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Every process in the cluster's namespaces is stopped (SIGTERM, then SIGKILL after 10 s),
        then the namespaces and the veth go. Not ``ray stop``: it kills every Ray process of this
        user on the machine, this cluster's or not."""
        pids: list[int] = []
        for ns in self._made:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        for sig in (15, 9):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while sig == 15 and time.monotonic() < deadline and any(_alive(p) for p in pids):
                time.sleep(0.2)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()
        if self._root_veth:
            subprocess.run(["ip", "link", "del", self._root_veth], capture_output=True)
            self._root_veth = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> NetnsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
