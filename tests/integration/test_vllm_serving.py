"""The served app with the small tier on vLLM's engine, through the official OpenAI client.

Runs in .venv-vllm (marker ``vllm``; `make test` runs it there after the main suite).
"""

import openai
import pytest

from tests.integration.served import small_tier_app

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.redis, pytest.mark.model, pytest.mark.slow]
KEY = "sk-vllm-test"


@pytest.fixture(scope="module")
def client():
    tier = {"backend": "vllm", "vllm": {"max_model_len": 1024, "max_num_seqs": 8, "kv_cache_gib": 1}, "num_cpus": 1}
    with small_tier_app(KEY, tier=tier) as (url, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def test_routed_and_streamed_answers_come_from_the_vllm_tier(client):
    msgs = [{"role": "user", "content": "Name three colors."}]
    raw = client.chat.completions.with_raw_response.create(model="ladder", messages=msgs, max_tokens=16, temperature=0)
    resp = raw.parse()
    assert raw.headers["x-ladder-tier"] == "small" and resp.choices[0].message.content
    assert 0 < resp.usage.completion_tokens <= 16 and resp.choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="small", messages=msgs, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really incremental
    assert streamed == resp.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens


def test_bad_input_is_an_openai_error_not_a_crash(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=2000)
    assert "exceeds" in err.value.message
    ok = client.chat.completions.create(model="small", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert ok.choices[0].message.content is not None  # the tier still serves
