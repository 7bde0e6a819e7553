"""The learned draft head (issue 22) on the small tier's real weights: lossless whatever the head
predicts, the bundled head really drafts, its file is bound to the weights, the trainer runs."""

import asyncio
import json
from pathlib import Path

import pytest
import torch

from ladder.cluster.compose import weights_id
from ladder.cluster.settings import TierConfig
from ladder.errors import WeightsUnavailable
from ladder.types import Query
from ladder.workers.adaptive_depth import DraftChoice, SpecStats, full_depth, head_speculative
from ladder.workers.draft_head import DraftHead, bundled_draft_head
from ladder.workers.layerwise import KERNELS, set_kernel_rule
from ladder.workers.transformer import AdaptiveDepth, DeviceConfig, TransformersWorker
from tests.shared_data import DATA, needs_data
from tests.workers.decoding import greedy, take

pytestmark = pytest.mark.model

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether?",
    "Write a haiku about autumn leaves.",
    "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat.",
]


@pytest.fixture(scope="module")
def random_head(reference):
    """An untrained head: lossless must not depend on what the head predicts."""
    torch.manual_seed(0)
    return DraftHead.for_model(reference.model.config, list(range(0, 4000))).eval()


@torch.inference_mode()
@pytest.mark.parametrize("lookup", [False, True])
def test_head_speculation_is_token_for_token_full_depth_even_with_an_untrained_head(reference, lw, random_head, lookup):
    for text in PROMPTS:
        ids = reference.encode(Query.of(text, max_tokens=40))
        ref = [t for t, _, _ in take(full_depth(lw, ids, len(ids) + 60, greedy), 40)]
        stats, choice = SpecStats(), DraftChoice()
        out = take(head_speculative(lw, random_head, ids, len(ids) + 60, greedy, 5, 0.0, stats, lookup, choice), 40)
        assert [t for t, _, _ in out] == ref, text
        assert stats.verifications > 0 and stats.drafted >= stats.accepted
        assert {d for _, _, d in out} <= {0, 1, lw.n_layers}
        if not lookup:
            # a round whose drafts were not worth verifying decodes plainly and verifies nothing
            assert choice.lookup_rounds == 0 and choice.head_rounds >= stats.verifications


@pytest.fixture
def free_verification(lw):
    """Verification costs as a GPU reports them (every pass size costs one): every node of a draft
    tree with any chance is verified, so the tree path runs whatever the head predicts."""
    saved = lw.verify_costs(9)
    lw._verify_costs = [1.0] * 9
    yield
    lw._verify_costs = saved


@torch.inference_mode()
@pytest.mark.parametrize("head_name", ["random", "bundled"])
def test_a_draft_tree_is_token_for_token_full_depth(tier, reference, lw, random_head, free_verification, head_name):
    head = random_head if head_name == "random" else DraftHead.load(bundled_draft_head("small"), weights_id(tier[0]))
    branches = 0
    for text in PROMPTS:
        ids = reference.encode(Query.of(text, max_tokens=48))
        ref = [t for t, _, _ in take(full_depth(lw, ids, len(ids) + 60, greedy), 48)]
        stats = SpecStats()
        out = take(head_speculative(lw, head, ids, len(ids) + 60, greedy, 6, 0.0, stats, False, None, 3), 48)
        assert [t for t, _, _ in out] == ref, text
        assert stats.accepted_runs and stats.drafted >= stats.accepted
        branches += stats.branch_rounds
    if head_name == "bundled":
        assert branches > 0  # some rounds' accepted branch left the head's first-choice chain


@torch.inference_mode()
def test_a_tree_pass_computes_each_branch_as_if_it_were_decoded_alone(reference, lw):
    ids = reference.encode(Query.of(PROMPTS[1], max_tokens=8))
    prompt, (a, b, c, x) = ids[:-4], ids[-4:]
    lw.reset(len(ids) + 4)
    lw.layers_range(lw.embed_ids(prompt), 0, 0, lw.n_layers)
    # rows a, b, c (a chain) and x, a second child of a: the pass is a | a→b→c | a→x
    tree = lw.logits(lw.tree_range(lw.embed_ids([a, b, c, x]), len(prompt), [-1, 0, 1, 0]))[0]
    chain = lw.logits(lw.layers_range(lw.embed_ids([a, b, c]), len(prompt), 0, lw.n_layers))[0]
    branch = lw.logits(lw.layers_range(lw.embed_ids([a, x]), len(prompt), 0, lw.n_layers))[0]
    assert torch.allclose(tree[:3], chain, rtol=1e-4, atol=1e-4)
    assert torch.allclose(tree[3], branch[1], rtol=1e-4, atol=1e-4)
    assert torch.equal(tree.argmax(-1), torch.cat([chain, branch[1:]]).argmax(-1))
    with pytest.raises(ValueError, match="must come before"):
        lw.tree_range(lw.embed_ids([a, b]), len(prompt), [-1, 1])


@torch.inference_mode()
@pytest.mark.parametrize("rule", KERNELS)
def test_every_verification_kernel_computes_the_full_models_pass(reference, lw, rule):
    ids = reference.encode(Query.of(PROMPTS[0], max_tokens=8))
    prompt, verified, L = ids[:-6], ids[-6:], lw.n_layers
    set_kernel_rule(rule)
    try:
        lw.tune(6, reps=1)
        assert lw.kernels == {n: rule for n in range(1, 7)}
        # oneDNN's packed copy (twice the weight memory) is kept only when a pass size uses it
        assert {getattr(m, "_ladder_packed", None) is not None for m in lw.linears()} == {rule == "packed"}
        lw.reset(len(ids))
        lw.layers_range(lw.embed_ids(prompt), 0, 0, L)
        got = lw.logits(lw.layers_range(lw.embed_ids(verified), len(prompt), 0, L))[0]
        lw.kernels.clear()  # the same positions again through F.linear
        want = lw.logits(lw.layers_range(lw.embed_ids(verified), len(prompt), 0, L))[0]
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(-1), want.argmax(-1))
    finally:
        set_kernel_rule("tuned")
        lw.tune(1, reps=1)  # forget the forced choice: the next verification re-tunes


@torch.inference_mode()
def test_the_bundled_head_drafts_tokens_the_model_accepts(tier, reference, lw, random_head):
    t, _ = tier
    head = DraftHead.load(bundled_draft_head("small"), weights_id(t))
    ids = reference.encode(Query.of(PROMPTS[0], max_tokens=64))
    ref = [tok for tok, _, _ in take(full_depth(lw, ids, len(ids) + 80, greedy), 64)]
    trained, untrained = SpecStats(), SpecStats()
    out = take(head_speculative(lw, head, ids, len(ids) + 80, greedy, 6, 0.0, trained), 64)
    take(head_speculative(lw, random_head, ids, len(ids) + 80, greedy, 6, 0.0, untrained), 64)
    assert [tok for tok, _, _ in out] == ref

    def per_pass(s: SpecStats) -> float:  # tokens emitted per verification pass
        return (s.accepted + s.verifications) / s.verifications

    # an untrained head is almost never right; the trained one is on a good part of a GSM8K answer
    # (per pass, not per draft: how many drafts a pass verifies depends on this CPU's pass costs)
    assert per_pass(untrained) < 1.3 and per_pass(trained) > 1.4, (trained, untrained)


def test_worker_serves_the_head_drafter_and_matches_full_depth(tier, reference):
    t, model_dir = tier
    a = AdaptiveDepth(
        "speculative", "lookup+head", weights_id=weights_id(t), draft_head=bundled_draft_head("small"), draft_width=3
    )
    spec = TransformersWorker("small", model_dir, DeviceConfig(dtype="float32"), a).load()
    for text in PROMPTS[:2]:
        q = Query.of(text, max_tokens=32)
        x, y = spec.generate_sync(q), reference.generate_sync(q)
        assert x.token_ids == y.token_ids and x.text == y.text
        assert len(x.depths) == x.completion_tokens and 1 in x.depths  # some token came from the head

    async def stream() -> list:
        return [item async for item in spec.stream(Query.of(PROMPTS[0], max_tokens=16))]

    pinned = asyncio.run(stream())  # a stream works on this drafter too
    assert pinned[-1].token_ids == reference.generate_sync(Query.of(PROMPTS[0], max_tokens=16)).token_ids


def test_draft_head_file_round_trip_and_refusals(tmp_path: Path, random_head):
    random_head.save(tmp_path / "d", "abc123", {"note": "test"})
    back = DraftHead.load(tmp_path / "d", "abc123")
    assert back.vocab.tolist() == random_head.vocab.tolist() and back.info["note"] == "test"
    assert torch.allclose(back.q.weight, random_head.q.weight.to(torch.bfloat16).float())
    with pytest.raises(WeightsUnavailable, match="trained for weights"):
        DraftHead.load(tmp_path / "d", "other")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "draft.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(WeightsUnavailable, match="unreadable"):
        DraftHead.load(tmp_path / "bad")
    with pytest.raises(WeightsUnavailable, match="--drafter head"):
        DraftHead.load(tmp_path / "missing")


def test_a_draft_width_outside_1_to_8_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="draft_width"):
        AdaptiveDepth("speculative", "lookup+head", draft_width=0)
    with pytest.raises(ValueError, match="draft_width"):
        AdaptiveDepth("speculative", "lookup+head", draft_width=9)


def test_a_16_bit_speculative_tier_must_state_its_approximate_guarantee():
    base = {
        "name": "s",
        "source": {"kind": "local", "path": "/x"},
        "price": {"input_per_1m": 1, "output_per_1m": 1},
        "backend": "transformers",
        "adaptive": {"mode": "speculative", "drafter": "head"},
    }
    with pytest.raises(ValueError, match="greedy_match: approximate"):
        TierConfig(**base, dtype="bfloat16")
    TierConfig(**base, dtype="float32")
    TierConfig(**{**base, "adaptive": {**base["adaptive"], "greedy_match": "approximate"}}, dtype="bfloat16")


@needs_data
def test_training_writes_a_head_bound_to_the_weights(tier, tmp_path):
    from ladder.offline.draft_head_training import DraftSpec, train

    t, model_dir = tier
    spec = DraftSpec(
        prompts=4, reference=3, new_tokens=12, draft_vocab=256, epochs=2, batch_sequences=2, gen_batch=4, holdout=0.25
    )
    info = train(
        "small", model_dir, weights_id(t), DATA, tmp_path / "head", spec, "test", corpus_dir=tmp_path / "corpus"
    )
    head = DraftHead.load(tmp_path / "head", weights_id(t))
    # 3 own answers + 3 reference solutions in training (1 own answer held out), 2 per batch, 2 epochs
    assert info["reference_sequences"] == 3 and info["steps"] == 6 and len(info["heldout_per_epoch"]) == 2
    assert len(head.vocab) <= 256 and len(info["heldout"]["agree_per_step"]) == spec.unroll
    assert (tmp_path / "corpus" / "corpus.json").is_file()


def test_the_teacher_corpus_generates_only_the_answers_its_cache_lacks(tier, tmp_path):
    from ladder.offline.exit_head_training import HeadSpec, corpus_key, frozen_teacher, teacher_corpus

    t, model_dir = tier
    model, tokenizer = frozen_teacher(model_dir, 0, 2)
    spec, corpus = HeadSpec(new_tokens=6, gen_batch=2), tmp_path / "corpus.json"
    key = corpus_key("small", weights_id(t), spec.new_tokens)
    a, b, c = "Name a colour.", "Name a fruit.", "Name a tree."
    first = teacher_corpus(model, tokenizer, DATA, corpus, key, spec, [a, b])
    assert len(first) == 2 and all(len(s) > 0 for s in first)
    # Mark a's cached answer: a rerun that regenerated it would not return the mark.
    cached = json.loads(corpus.read_text())
    cached["answers"][a] = [7, 7, 7]
    corpus.write_text(json.dumps(cached))
    second = teacher_corpus(model, tokenizer, DATA, corpus, key, spec, [c, a])
    assert second[1] == [7, 7, 7] and second[0] != first[0]
    assert list(json.loads(corpus.read_text())["answers"]) == [c, a, b]  # this run's questions first, as asked
    # Other weights (another key): nothing cached is used.
    other = teacher_corpus(model, tokenizer, DATA, corpus, {**key, "model": "other"}, spec, [a])
    assert other[0] != [7, 7, 7] and other[0][:5] == first[0][:5]  # a regenerated: its prompt, an answer


def test_verification_costs_are_timed_once_and_are_not_a_requests_work(lw):
    calls, positions = lw.layer_calls, lw.layer_positions
    costs = lw.verify_costs(5)
    assert len(costs) == 5 and costs[0] == 1.0 and all(c > 0.5 for c in costs)
    assert (lw.layer_calls, lw.layer_positions) == (calls, positions)
    assert lw.verify_costs(3) == costs[:3]  # kept: a request never pays for the timing again
    assert set(range(1, 6)) <= set(lw.kernels) and set(lw.kernels.values()) <= set(KERNELS)
