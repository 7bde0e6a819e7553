"""Faults under load, measured (small tier, loopback only, every scenario bounded).

    .venv/bin/python benchmarks/faults.py [--concurrency 2] [--seconds 40]

Under a steady closed-loop load, one fault each: a tier replica killed (Serve replaces it), Redis
killed (and restarted 10 s later), the Serve HTTP proxy killed (the controller restarts it),
Redis filled to its maxmemory with eviction off. For each: requests before / in flight / after
the fault, how many succeeded, failed with an HTTP error, or got no HTTP response, and the time
until every request succeeds again. Writes benchmarks/results/faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from harness.chaos import account, fill_redis, kill_proxy, kill_replica, scenario

from ladder.cluster.redis_server import EmbeddedRedis, free_port
from ladder.cluster.runtime import Runtime
from ladder.cluster.settings import LadderConfig
from ladder.serving.launch import deploy, restrict

RESULTS = Path(__file__).parent / "results"
KEY = "sk-ladder-faults"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=40.0, help="length of each scenario")
    args = ap.parse_args()
    data = LadderConfig().model_dump()
    data["server"]["api_keys"] = [KEY]
    data["ray"]["num_cpus"] = 2
    data["cache"]["breaker_cooldown_s"] = 1.0
    cfg = restrict(LadderConfig.model_validate(data), ["small"], "127.0.0.1", free_port())
    results = {}
    with Runtime.start(cfg) as runtime:
        url = deploy(cfg, runtime)
        port, password = runtime.embedded_redis.port, runtime.embedded_redis.password

        def restart_redis() -> None:
            runtime._redis = EmbeddedRedis(port=port, password=password).start()

        def run(name: str, fault, heal=None, heal_at=None) -> None:  # noqa: ANN001
            outcomes, at = asyncio.run(
                scenario(
                    url,
                    KEY,
                    fault,
                    at_s=5,
                    total_s=args.seconds,
                    concurrency=args.concurrency,
                    heal=heal,
                    heal_at_s=heal_at,
                )
            )
            results[name] = account(outcomes, at)
            r = results[name]
            print(
                f"{name:<22} in flight {r['in_flight']}  after {r['after']}  recovery {r['recovery_s']}  "
                f"kinds {r['error_kinds']}",
                flush=True,
            )

        run("kill tier replica", lambda: kill_replica("tier-small"))
        run("kill redis", lambda: runtime.embedded_redis.stop(), restart_redis, 15)
        run("kill serve proxy", kill_proxy)
        run("redis full (noeviction)", lambda: fill_redis(runtime.redis_url))
    RESULTS.mkdir(exist_ok=True)
    out = {"concurrency": args.concurrency, "seconds": args.seconds, "fault_at_s": 5, "scenarios": results}
    (RESULTS / "faults.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {RESULTS / 'faults.json'}")


if __name__ == "__main__":
    main()
