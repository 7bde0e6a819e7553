"""Bring up (and tear down) what Ladder needs: a Ray runtime and a Redis for the decision cache.

With nothing configured it starts a local Ray and an embedded ``redis-server`` on loopback; with
``ray.address`` / ``cache.redis_url`` (or ``LADDER_RAY_ADDRESS`` / ``LADDER_REDIS_URL``) it connects
to those instead and starts nothing. Everything it started is stopped by ``close()``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.cluster.signals import StopOnSignals
from ladder.cluster.settings import LadderConfig
from ladder.errors import ConfigError


# A GCS client without a token asks for the cluster's internal key names: a cluster with token
# authentication refuses it, an open one answers.
_STRANGER = """
import sys
from ray._raylet import GcsClient
GcsClient(address=sys.argv[1]).internal_kv_keys(b"", namespace=None, timeout=10)
print("ANSWERED")
"""


def quiet_ray_env() -> None:
    """Ray's telemetry off, everything on loopback; set before ``ray`` starts."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


def loopback_only_ray() -> None:
    """A single-machine Ray has no reason to be reachable from other hosts: its node IP becomes
    127.0.0.1, so the GCS, raylet, object manager, agents, workers and Serve's replicas bind to
    loopback. ``ray.init(_node_ip_address="127.0.0.1")`` does not do it (Ray swaps loopback for
    the host's address); Ray's own single-machine mode (its default on macOS and Windows) does.
    It is read from the environment when ``ray`` is first imported, so the module constant is set
    too (a test process may have imported Ray before). tests/security checks the socket table."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # for Ray's own child processes
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def private_ray_token() -> None:
    """Ray 2.60 makes a token for the embedded cluster (~/.ray/auth_token) readable by everyone who
    can enter the home directory; it is what keeps other local users out of the loopback ports."""
    token = Path.home() / ".ray" / "auth_token"
    if token.is_file() and token.stat().st_uid == os.getuid():
        token.chmod(0o600)


def loopback_only_serve_replica() -> None:
    """Run in every worker of the embedded Ray (``worker_process_setup_hook``): a Serve replica's
    inter-deployment gRPC server is hard-coded to ``[::]:0`` in Ray 2.60 (every interface, whatever
    the node IP); on a single-machine Ray it binds to loopback instead. The replica module takes
    the helper by name when it is imported (after this hook), so patching the helper's module is
    enough, and a worker that never hosts a replica does not pay for importing Serve."""
    import sys

    from ray._common import tls_utils

    bind = tls_utils.add_port_to_grpc_server

    def loopback(server: object, address: str) -> int:
        return bind(server, "127.0.0.1:0" if address == "[::]:0" else address)

    tls_utils.add_port_to_grpc_server = loopback
    if replica := sys.modules.get("ray.serve._private.replica"):
        replica.add_port_to_grpc_server = loopback


@dataclass
class Runtime:
    config: LadderConfig
    redis_url: str | None = None
    _redis: EmbeddedRedis | None = None  # set only when this runtime started Redis itself
    _started_ray: bool = False  # this process called ray.init (and so disconnects at close)
    _own_cluster: bool = False  # ... and that started a local Ray, which close stops with Serve on it
    apps: list[str] = field(default_factory=list)  # Serve apps this process deployed
    _closed: list[str] = field(default_factory=list)
    signals: StopOnSignals = field(default_factory=StopOnSignals)

    @classmethod
    def start(cls, config: LadderConfig, need_ray: bool = True, num_cpus: int | None = None) -> Runtime:
        """``num_cpus``: the logical CPUs of a local Ray (default ``ray.num_cpus``, else the machine's)."""
        rt = cls(config)
        if config.cache.enabled:
            if config.cache.redis_url:
                rt.redis_url = config.cache.redis_url
            else:
                rt._redis = EmbeddedRedis().start()
                rt.redis_url = rt._redis.url
        if need_ray:
            try:
                rt._start_ray(num_cpus or config.ray.num_cpus or os.cpu_count() or 1)
            except BaseException:
                rt.close()  # the Redis started above
                raise
        rt.signals.install()  # after ray.init, which installs an aborting SIGTERM handler of its own
        return rt

    def _start_ray(self, num_cpus: int) -> None:
        quiet_ray_env()
        import ray

        if ray.is_initialized():
            return
        env = {
            "env_vars": {
                k: os.environ[k]
                for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "LADDER_CACHE_DIR")
                if k in os.environ
            }
        }
        if self.config.ray.address:
            self._require_token_auth()
            ray.init(address=self.config.ray.address, runtime_env=env, log_to_driver=False)
        else:
            loopback_only_ray()
            # read by the raylet this ray.init starts (see RayConfig.memory_usage_threshold)
            os.environ["RAY_memory_usage_threshold"] = str(self.config.ray.memory_usage_threshold)
            env["worker_process_setup_hook"] = "ladder.cluster.runtime.loopback_only_serve_replica"
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                dashboard_host="127.0.0.1",
                runtime_env=env,
                log_to_driver=False,
            )
            private_ray_token()
            self._own_cluster = True
        self._started_ray = True

    def _require_token_auth(self) -> None:
        """Every port of a multi-node Ray listens on the network; only its token stands between
        them and anyone who can reach them. Probed from outside, as a stranger would: a client
        with no token asks the cluster's GCS for something; if it answers, the cluster is open."""
        if self.config.ray.allow_unauthenticated:
            return
        address = self.config.ray.address or ""
        problem = None
        if address.startswith("ray://"):
            problem = "a Ray Client address cannot be checked for token authentication"
        else:
            from ray._private.services import canonicalize_bootstrap_address_or_die

            gcs = canonicalize_bootstrap_address_or_die(address)
            env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
            probe = subprocess.run(
                [sys.executable, "-c", _STRANGER, gcs],
                env={**env, "RAY_AUTH_MODE": "disabled"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.stdout.strip().endswith("ANSWERED"):
                problem = f"the Ray cluster at {address} answers clients without a token"
        if problem:
            raise ConfigError(
                f"{problem}: start every node with RAY_AUTH_MODE=token and the cluster's token "
                "(docs/SECURITY.md), or set ray.allow_unauthenticated: true for a network nobody else reaches"
            )

    def close(self) -> None:
        """Stop what this runtime started; a signal that arrives meanwhile (see ``signals``)
        is ignored from here on: stopping Ray and Redis is never left halfway. On a cluster it
        only joined, Serve and everything else on it stay (another app, another job may be using
        them): only the apps this process deployed are removed (after a drain they are gone already)."""
        self.signals.tearing_down = True
        try:
            if self._started_ray:
                import ray
                from ray import serve

                try:
                    if self._own_cluster:
                        serve.shutdown()
                    else:
                        self._remove_apps()
                finally:
                    self._started_ray = self._own_cluster = False
                    ray.shutdown()
        finally:
            if self._redis is not None:
                self._redis.stop()
                self._redis = None
            self.signals.restore()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _remove_apps(self) -> None:
        from ray import serve

        for app in self.apps:
            try:
                if app in serve.status().applications:
                    serve.delete(app)
            except Exception as exc:  # noqa: BLE001 — Serve may be gone with the cluster: nothing left to remove
                print(f"could not remove app {app!r}: {type(exc).__name__}: {exc}", file=sys.stderr)
        self.apps.clear()

    @property
    def embedded_redis(self) -> EmbeddedRedis | None:
        return self._redis
