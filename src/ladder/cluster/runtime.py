"""Bring up (and tear down) what Ladder needs: a Ray runtime and a Redis for the decision cache.

With nothing configured it starts a local Ray and an embedded ``redis-server`` on loopback; with
``ray.address`` / ``cache.redis_url`` (or ``LADDER_RAY_ADDRESS`` / ``LADDER_REDIS_URL``) it connects
to those instead and starts nothing. Everything it started is stopped by ``close()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ladder.cluster.redis_server import EmbeddedRedis
from ladder.cluster.settings import LadderConfig


def quiet_ray_env() -> None:
    """Ray's telemetry off, everything on loopback; set before ``ray`` starts."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")


@dataclass
class Runtime:
    config: LadderConfig
    redis_url: str | None = None
    _redis: EmbeddedRedis | None = None  # set only when this runtime started Redis itself
    _started_ray: bool = False
    _closed: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, config: LadderConfig, need_ray: bool = True) -> Runtime:
        rt = cls(config)
        if config.cache.enabled:
            if config.cache.redis_url:
                rt.redis_url = config.cache.redis_url
            else:
                rt._redis = EmbeddedRedis().start()
                rt.redis_url = rt._redis.url
        if need_ray:
            rt._start_ray()
        return rt

    def _start_ray(self) -> None:
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
            ray.init(address=self.config.ray.address, runtime_env=env, log_to_driver=False)
        else:
            ray.init(
                num_cpus=self.config.ray.num_cpus or os.cpu_count(),
                include_dashboard=False,
                runtime_env=env,
                log_to_driver=False,
            )
        self._started_ray = True

    def close(self) -> None:
        if self._started_ray:
            import ray
            from ray import serve

            try:
                serve.shutdown()
            finally:
                ray.shutdown()
            self._started_ray = False
        if self._redis is not None:
            self._redis.stop()
            self._redis = None

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def embedded_redis(self) -> EmbeddedRedis | None:
        return self._redis
