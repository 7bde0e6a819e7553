"""The gateway's HTTP app in-process for the serving tests: the keys, a two-tier config, a
request through the real FastAPI routes over an ASGI transport, and the default tiers under the
bundled policy (a helper module: test modules import it, never each other)."""

import asyncio

import httpx

from ladder.cluster.settings import LadderConfig
from ladder.serving.gateway import Gateway, build_api

KEY = "sk-test"
ADMIN = "admin-test"


def config(**policy) -> LadderConfig:
    tier = {
        "source": {"kind": "local", "path": "/nowhere"},
        "price": {"input_per_1m": 1, "output_per_1m": 2},
        "backend": "transformers",
    }
    return LadderConfig(
        tiers=[{"name": "small", **tier}, {"name": "medium", **tier}],
        policy={"kind": "fixed", **policy},
        server={"api_keys": [KEY], "admin_keys": [ADMIN], "max_completion_tokens": 64},
    )


def call(gateway: Gateway, method: str, path: str, key: str | None = KEY, **kw) -> httpx.Response:
    api = build_api(lambda: gateway)
    headers = ({"authorization": f"Bearer {key}"} if key else {}) | kw.pop("headers", {})

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=api, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://ladder") as client:
            return await client.request(method, path, headers=headers, **kw)

    return asyncio.run(go())


def chat(**body) -> dict:
    return {"json": {"model": "ladder", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16, **body}}


def gateway(tiers, **policy) -> Gateway:
    return Gateway(config(**policy), tiers, tiers, redis_url=None)


def learned(changed: dict[str, str] | None = None) -> LadderConfig:
    """The default tiers and the bundled policy (which records the weights it was fitted on), with
    the tiers in ``changed`` serving other weights."""
    data = LadderConfig().model_dump(mode="json")
    data["server"] = {"api_keys": [KEY], "admin_keys": [ADMIN]}
    for tier in data["tiers"]:
        if tier["name"] in (changed or {}):
            tier["source"]["sha256"] = changed[tier["name"]]
    return LadderConfig.model_validate(data)


CODE = [  # prompts the bundled policy starts at medium or above (code)
    "Complete the following Python function. Reply with the complete function, including the imports it "
    f"needs, in one ```python code block.\n\n```python\ndef f{i}(xs: list) -> int:\n"
    f'    """Return the {word} of the list.\n    >>> f{i}([1, 2, 3])\n    6\n    """\n```'
    for i, word in enumerate(["sum", "product of the squares", "number of distinct primes", "longest run"])
]


def routed(gw: Gateway, prompts: list[str], model: str = "ladder") -> list[httpx.Response]:
    return [
        call(gw, "POST", "/v1/chat/completions", **chat(model=model, messages=[{"role": "user", "content": p}]))
        for p in prompts
    ]
