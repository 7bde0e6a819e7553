"""The prompts a mixed-domain draft head is trained on (offline/draft_corpus): per-domain counts,
chat prompts that extend instead of reshuffling, none of the benchmark's held-out chat prompts."""

import json
from pathlib import Path

import pytest

from ladder.offline.draft_corpus import chat_prompts, domain_counts, mixed_prompts
from tests.shared_data import DATA, needs_data

BENCHMARK_CHAT = Path(__file__).parents[2] / "benchmarks" / "prompts" / "chat.jsonl"


def test_domain_counts_split_the_rest_equally_and_refuse_bad_entries():
    assert domain_counts(("gsm8k", "code", "chat"), 512) == [("gsm8k", 170), ("code", 170), ("chat", 170)]
    assert domain_counts(("gsm8k", "code", "chat:470"), 512) == [("gsm8k", 170), ("code", 170), ("chat", 470)]
    for bad, said in [
        ((), "no domain named"),
        (("poetry",), "unknown domain 'poetry'"),
        (("chat:0",), "positive whole number"),
        (("chat:x",), "positive whole number"),
        (("chat", "chat:5"), "named twice"),
    ]:
        with pytest.raises(ValueError, match=said):
            domain_counts(bad, 512)


def test_more_chat_prompts_extend_the_fewer_so_cached_answers_are_reused():
    few, many = chat_prompts(170, seed=0), chat_prompts(700, seed=0)
    assert many[:170] == few and len(set(many)) == 700
    assert chat_prompts(170, seed=1) != few  # the seed still decides the order


def test_no_composed_chat_prompt_is_a_benchmark_prompt():
    held_out = {json.loads(line)["prompt"] for line in BENCHMARK_CHAT.read_text().splitlines() if line.strip()}
    composed = set(chat_prompts(10_000, seed=0))
    assert len(composed) > 1000 and not composed & held_out


@needs_data
def test_mixed_prompts_ask_each_domain_its_count_and_interleave_them():
    pairs = mixed_prompts([("code", 5), ("chat", 20)], DATA, seed=0, gsm8k_questions=[])
    assert [d for d, _ in pairs].count("chat") == 20 and [d for d, _ in pairs].count("code") == 5
    assert [d for d, _ in pairs] != ["code"] * 5 + ["chat"] * 20  # shuffled: a held-out slice mixes them
