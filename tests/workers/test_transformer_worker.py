"""The transformers worker on the small tier's real weights."""

import asyncio
from pathlib import Path

import pytest

from ladder.cluster.compose import build_worker, materialize
from ladder.cluster.settings import load_config
from ladder.errors import InvalidRequest
from ladder.types import Message, Query, Sampling

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def worker():
    cfg = load_config(ROOT / "configs" / "transformers.yaml")  # the default serves on vLLM
    tier = cfg.tier("small")
    assert tier.backend == "transformers"
    return build_worker(tier, materialize(cfg, tier)).load()


def test_greedy_is_deterministic_and_reports_per_token_logprobs(worker):
    q = Query.of("What is the capital of France?", max_tokens=12)
    a, b = worker.generate_sync(q), worker.generate_sync(q)
    assert a.text == b.text and a.token_ids == b.token_ids
    assert "Paris" in a.text
    assert len(a.logprobs) == a.completion_tokens > 0
    assert all(lp <= 0 for lp in a.logprobs)
    assert a.prompt_tokens > 5 and a.decode_s > 0


def test_max_tokens_is_respected(worker):
    gen = worker.generate_sync(Query.of("Write a long story about a dragon.", max_tokens=7))
    assert gen.completion_tokens == 7 and gen.finish_reason == "length"


def test_stop_sequence_cuts_the_text(worker):
    q = Query.of("List the numbers from 1 to 10, separated by commas.", max_tokens=40, stop=("5",))
    gen = worker.generate_sync(q)
    assert "5" not in gen.text and gen.finish_reason == "stop"


def test_same_seed_same_sample_and_other_seed_differs(worker):
    def sample(seed):
        return worker.generate_sync(Query.of("Tell me a word.", max_tokens=10, temperature=1.2, seed=seed))

    a, b, c = sample(3), sample(3), sample(4)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_empty_prompt_and_context_overflow_are_invalid_requests(worker):
    with pytest.raises(InvalidRequest, match="empty"):
        worker.generate_sync(Query((Message("user", "  "),), Sampling()))
    with pytest.raises(InvalidRequest, match="context"):
        worker.generate_sync(Query.of("hi", max_tokens=worker.context_length))


def test_stream_yields_the_same_text_as_generate(worker):
    q = Query.of("Name three colors.", max_tokens=20)

    async def collect():
        return [item async for item in worker.stream(q)]

    items = asyncio.run(collect())
    final, deltas = items[-1], items[:-1]
    assert "".join(d.text for d in deltas) == final.text == worker.generate_sync(q).text
    assert len(deltas) > 2  # text arrived in pieces, not all at once
    # every token's log-probability arrives with its delta, in order, as the prefix decision reads them
    assert tuple(lp for d in deltas for lp in d.logprobs) == final.logprobs
    assert tuple(t for d in deltas for t in d.token_ids) == final.token_ids
    assert deltas[0].prompt_tokens == final.prompt_tokens > 0


def test_a_vanishing_temperature_decodes_greedily_instead_of_overflowing(worker):
    """Found by fuzzing: logits / 1e-300 overflowed to NaN and the sampler raised."""
    greedy = worker.generate_sync(Query.of("Name a color.", max_tokens=6, temperature=0))
    tiny = worker.generate_sync(Query.of("Name a color.", max_tokens=6, temperature=1e-300, top_p=1e-9))
    assert tiny.token_ids == greedy.token_ids
    # and a top_p that rounds to 0 in float32 keeps exactly the most likely token (it kept none:
    # NaN). Not compared with greedy token by token: bf16 logits tie, and sort and argmax may
    # break a tie differently.
    nucleus = worker.generate_sync(Query.of("Name a color.", max_tokens=6, temperature=0.7, top_p=1e-300, seed=1))
    assert nucleus.completion_tokens > 0 and all(lp == 0.0 for lp in nucleus.logprobs)
    # a lone surrogate (valid JSON: "\ud800") made the tokenizer raise a TypeError: now a 400
    with pytest.raises(InvalidRequest, match="Unicode"):
        worker.generate_sync(Query.of("hi \ud800 there", max_tokens=3))
    # a seed beyond 64 bits raised "Overflow when unpacking long long" (found by fuzzing)
    huge = worker.generate_sync(Query.of("Name a color.", max_tokens=3, temperature=0.7, seed=2**80 + 5))
    assert (
        huge.token_ids
        == worker.generate_sync(
            Query.of("Name a color.", max_tokens=3, temperature=0.7, seed=(2**80 + 5) % 2**64)
        ).token_ids
    )


def test_closing_a_stream_stops_the_decode_loop(worker):
    """A consumer that goes away (a rung that lost, a client that left) stops the generation at
    the next token, not at max_tokens: the worker's token counter stops growing."""
    import time

    q = Query.of("Write a very long story about a dragon who learns to cook.", max_tokens=400)

    async def read_a_few():
        gen = worker.stream(q)
        async for _ in gen:
            if worker.generated_tokens - before >= 3:
                break
        await gen.aclose()

    before = worker.generated_tokens
    asyncio.run(read_a_few())
    time.sleep(1.0)
    after_1s = worker.generated_tokens
    time.sleep(1.0)
    assert 3 <= after_1s - before < 20 and worker.generated_tokens == after_1s
