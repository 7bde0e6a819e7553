"""How fast the dashboard pages render with a long history (issue 33: under 1 s with 10,000
requests' history).

    .venv/bin/python benchmarks/dashboard.py [--requests 10000]

The HTTP app in-process (``serving.gateway`` over ASGI, three scripted tiers under the bundled
learned policy, so routes, escalations and the frontier are real), ``--requests`` chat requests
sent first with a snapshot after each (the history's cap — an hour at one per 5 s — is reached),
then ``/dashboard`` and ``/dashboard/tune`` fetched 20 times each: p50 / max seconds and bytes.
Writes benchmarks/results/dashboard.json, stamped with commit, policy version and command.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import httpx
import numpy as np
from harness.meta import ROOT, stamp
from tqdm import tqdm

sys.path.insert(0, str(ROOT))
from tests.serving.test_dashboard import ADMIN, KEY, learned_gateway  # noqa: E402

from ladder.serving.gateway import build_api  # noqa: E402


async def main(requests: int) -> dict:
    gw = learned_gateway()
    gw.board.every_s = 0.0  # a snapshot per request: the history fills to its cap
    transport = httpx.ASGITransport(app=build_api(lambda: gw))
    prompts = ["def add(a, b):\n    return a + b", "What is 17 * 23?", "Name a prime above 90.", "Why is the sky blue?"]
    async with httpx.AsyncClient(transport=transport, base_url="http://ladder") as client:
        auth = {"authorization": f"Bearer {KEY}"}
        for i in tqdm(range(requests), desc="requests", unit="req"):
            body = {"model": "ladder", "messages": [{"role": "user", "content": f"{prompts[i % 4]} ({i})"}]}
            r = await client.post("/v1/chat/completions", json={**body, "max_tokens": 8}, headers=auth)
            assert r.status_code == 200, r.text
        out = {}
        for path in ("/dashboard", "/dashboard/tune"):
            times, size = [], 0
            for _ in range(20):
                t0 = time.perf_counter()
                r = await client.get(path, headers={"authorization": f"Bearer {ADMIN}"})
                times.append(time.perf_counter() - t0)
                assert r.status_code == 200
                size = len(r.content)
            out[path] = {"p50_s": float(np.median(times)), "max_s": float(max(times)), "bytes": size}
    out["history_snapshots"] = len(gw.board.history)
    out["escalations_kept"] = len(gw.board.escalations)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    args = ap.parse_args()
    res = asyncio.run(main(args.requests))
    print(f"{'page':<18}{'p50 s':>8}{'max s':>8}{'bytes':>9}")
    for page in ("/dashboard", "/dashboard/tune"):
        r = res[page]
        print(f"{page:<18}{r['p50_s']:>8.3f}{r['max_s']:>8.3f}{r['bytes']:>9}")
    path = ROOT / "benchmarks" / "results" / "dashboard.json"
    path.write_text(__import__("json").dumps({**stamp(sys.argv), "requests": args.requests, **res}, indent=1) + "\n")
    print(f"wrote {path}")
