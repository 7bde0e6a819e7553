"""Adaptive depth on the small tier's real weights: the layer-by-layer runner, CALM early exit,
self-speculation (lossless) and the exit-heads file."""

from pathlib import Path

import pytest
import torch

from ladder.cluster.compose import weights_id
from ladder.errors import WeightsUnavailable
from ladder.types import Query
from ladder.workers.adaptive_depth import (
    SpecStats,
    early_exit,
    full_depth,
    lookup_draft,
    self_speculative,
)
from ladder.workers.exit_heads import ExitHeads
from ladder.workers.transformer import AdaptiveDepth, DeviceConfig, TransformersWorker
from tests.workers.decoding import greedy, take

pytestmark = pytest.mark.model

PROMPTS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether?",
    "Write a haiku about autumn leaves.",
]


@pytest.fixture(scope="module")
def lens_heads(lw):
    """Untrained heads = the plain logit lens, gates at 0.5: lossless must not depend on training."""
    return ExitHeads(tuple(range(4, lw.n_layers, 4)), lw.hidden, rank=8)


def prompt_ids(worker, text):
    return worker.encode(Query.of(text, max_tokens=40))


@torch.inference_mode()
def test_layer_by_layer_runner_reproduces_the_transformers_forward(reference, lw):
    for text in PROMPTS:
        ids = prompt_ids(reference, text)
        ref = reference.generate_sync(Query.of(text, max_tokens=24))
        mine = [t for t, _, _ in take(full_depth(lw, ids, len(ids) + 30, greedy), 24)]
        assert tuple(mine[: ref.completion_tokens]) == ref.token_ids


@torch.inference_mode()
def test_fill_kv_writes_what_running_the_layer_would(lw):
    lw.reset(16)
    h = torch.randn(1, 3, lw.hidden) * 0.5
    lw.layers_range(h, 5, 7, 8)  # layer 7 on h at positions 5..7 writes K/V computed from h
    k, v = lw.k[7, :, 5:8].clone(), lw.v[7, :, 5:8].clone()
    lw.k[7].zero_(), lw.v[7].zero_()
    lw.fill_kv(h, 5, 7, 8)
    assert torch.equal(lw.k[7, :, 5:8], k) and torch.equal(lw.v[7, :, 5:8], v)  # same kernels, same bits


@torch.inference_mode()
@pytest.mark.parametrize("draft_layer,max_draft", [(4, 3), (12, 6)])
def test_self_speculation_is_token_for_token_the_full_depth_greedy_output(
    reference, lw, lens_heads, draft_layer, max_draft
):
    for text in PROMPTS:
        ids = prompt_ids(reference, text)
        ref = [t for t, _, _ in take(full_depth(lw, ids, len(ids) + 50, greedy), 40)]
        stats = SpecStats()
        spec = take(
            self_speculative(lw, lens_heads, ids, len(ids) + 50, greedy, draft_layer, max_draft, stats=stats), 40
        )
        assert [t for t, _, _ in spec] == ref
        assert (
            stats.verifications > 0 and stats.drafted >= stats.accepted > 0
        )  # the logit lens already agrees sometimes
        assert {d for _, _, d in spec} <= {draft_layer, lw.n_layers}
        assert 0 < sum(d == draft_layer for _, _, d in spec) <= stats.accepted


def test_prompt_lookup_proposes_what_followed_the_latest_repeat():
    assert lookup_draft([1, 2, 3, 9, 8, 7, 6, 1, 2, 3], 3) == [9, 8, 7]
    assert lookup_draft([5, 2, 3, 4, 0, 2, 3, 7, 1, 2, 3], 2) == [7, 1]  # latest occurrence wins
    assert lookup_draft([4, 5, 6, 7], 4) == [] and lookup_draft([1, 2], 4) == []  # no repeat, too short
    assert lookup_draft([7, 3, 9, 7], 4) == []  # a single repeated token is too weak a cue (n >= 2)


@torch.inference_mode()
def test_lookup_and_combined_drafts_stay_lossless(reference, lw, lens_heads):
    text = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    ids = prompt_ids(reference, text)
    ref = [t for t, _, _ in take(full_depth(lw, ids, len(ids) + 50, greedy), 40)]
    for heads in (None, lens_heads):
        stats = SpecStats()
        out = take(self_speculative(lw, heads, ids, len(ids) + 50, greedy, 8, 5, stats=stats, lookup=True), 40)
        assert [t for t, _, _ in out] == ref
        assert stats.accepted > 0 and any(d == 0 for _, _, d in out)  # lookup drafts were accepted


@torch.inference_mode()
def test_early_exit_depths_follow_the_threshold_and_skipped_layers_get_kv(reference, lw, lens_heads):
    ids = prompt_ids(reference, PROMPTS[0])
    lw.reset(len(ids) + 30)
    lw.k.fill_(float("nan")), lw.v.fill_(float("nan"))  # reset keeps a big enough cache: poison it
    eager = take(early_exit(lw, lens_heads, ids, len(ids) + 30, greedy, threshold=0.01), 20)
    # untrained gates say 0.5 everywhere: below 0.5 every token after the first leaves at the first head
    assert eager[0][2] == lw.n_layers and {d for _, _, d in eager[1:]} == {4}
    # every position fed so far has K/V in every layer, also the 26 layers each token skipped
    fed = len(ids) + 19
    assert torch.isfinite(lw.k[:, :, :fed]).all() and torch.isfinite(lw.v[:, :, :fed]).all()
    patient = take(early_exit(lw, lens_heads, ids, len(ids) + 30, greedy, threshold=0.99), 20)
    assert {d for _, _, d in patient} == {lw.n_layers}  # no gate reaches 0.99: full depth


def test_heads_file_round_trip_and_refusals(tmp_path: Path, lens_heads):
    with torch.no_grad():
        lens_heads.up[0].weight.fill_(0.01)
    lens_heads.save(tmp_path / "h", "abc123", {"note": "test"})
    back = ExitHeads.load(tmp_path / "h", "abc123")
    assert back.layers == lens_heads.layers
    assert torch.allclose(back.up[0].weight, lens_heads.up[0].weight.to(torch.bfloat16).float())
    with pytest.raises(WeightsUnavailable, match="trained for weights"):
        ExitHeads.load(tmp_path / "h", "other")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "heads.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(WeightsUnavailable, match="unreadable"):
        ExitHeads.load(tmp_path / "bad")
    with pytest.raises(WeightsUnavailable, match="ladder depth train"):
        ExitHeads.load(tmp_path / "missing")


def test_worker_speculative_mode_matches_full_depth_and_reports_depths(tier, reference, lens_heads, tmp_path):
    t, model_dir = tier
    lens_heads.save(tmp_path / "heads", weights_id(t), {})
    base = AdaptiveDepth("speculative", heads=tmp_path / "heads", weights_id=weights_id(t), draft_layer=8, max_draft=4)
    spec = TransformersWorker("small", model_dir, DeviceConfig(dtype="float32"), base).load()
    q = Query.of(PROMPTS[0], max_tokens=32)
    a, b = spec.generate_sync(q), reference.generate_sync(q)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert len(a.depths) == a.completion_tokens and set(a.depths) <= {8, 30}
    assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) < 1e-3
    sampled = spec.generate_sync(Query.of(PROMPTS[1], max_tokens=8, temperature=0.8, seed=1))
    assert set(sampled.depths) == {30}  # sampled requests run at full depth in speculative mode
    with pytest.raises(WeightsUnavailable, match="no exit head after layer 9"):
        TransformersWorker(
            "small", model_dir, DeviceConfig(dtype="float32"), base.model_copy(update={"draft_layer": 9})
        ).load()
    with pytest.raises(WeightsUnavailable, match="trained for weights"):
        TransformersWorker(
            "small", model_dir, DeviceConfig(dtype="float32"), base.model_copy(update={"weights_id": "x"})
        ).load()
