from pathlib import Path

import pytest
from pydantic import ValidationError

from ladder.cluster.settings import LadderConfig, load_config
from ladder.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_yaml_equals_the_embedded_default(monkeypatch):
    for var in ("LADDER_REDIS_URL", "LADDER_RAY_ADDRESS", "LADDER_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert load_config(ROOT / "configs" / "default.yaml") == LadderConfig()


def test_default_has_three_tiers_with_checksums():
    cfg = LadderConfig()
    assert cfg.tier_names == ["small", "medium", "large"]
    assert all(len(t.source.sha256) == 64 for t in cfg.tiers)
    assert cfg.server.host == "127.0.0.1"


_TIER = "tiers:\n- {name: small, price: {input_per_1m: 1, output_per_1m: 1}, source: {kind: local, path: /x}"


@pytest.mark.parametrize(
    "text, field",
    [
        ("tiers: []", "tiers"),
        ("server: {port: 70000}", "server.port"),
        (
            "tiers:\n- {name: small, price: {input_per_1m: 1, output_per_1m: 1}, source: {kind: pypi, packages: [x], filename: f, sha256: nothex}}",
            "tiers.0.source.pypi.sha256",
        ),
        ("policy: {kind: sometimes}", "policy.kind"),
        ("policy: {start_tier: huge}", "(top level)"),
        ("surprise: 1", "surprise"),
        (_TIER + ", adaptive: {mode: early_exit, threshold: 1.5}}", "tiers.0.adaptive.threshold"),
        (_TIER + ", adaptive: {mode: sometimes}}", "tiers.0.adaptive.mode"),
        (_TIER + ", adaptive: {mode: speculative, drafter: oracle}}", "tiers.0.adaptive.drafter"),
        (_TIER + ", backend: recurrent, adaptive: {mode: early_exit}}", "adaptive"),
        (_TIER + ", placement: {resources: {CPU: 1}}}", "tiers.0.placement.resources"),
        (_TIER + ", placement: {resources: {tier-gpu: 0}}}", "tiers.0.placement.resources.tier-gpu"),
        (_TIER + ", autoscaling: {min_replicas: 2, max_replicas: 1}}", "max_replicas (1) is below min_replicas (2)"),
        (_TIER + ", autoscaling: {min_replicas: 0, max_replicas: 2}}", "tiers.0.autoscaling.min_replicas"),
        (_TIER + ", autoscaling: {max_replicas: 2, target_ongoing_requests: 0}}", "target_ongoing_requests"),
        (_TIER + ", num_replicas: 2, autoscaling: {max_replicas: 3}}", "num_replicas and autoscaling exclude"),
    ],
)
def test_invalid_config_names_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert field in str(info.value)


def test_missing_and_non_yaml_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_environment_overrides_redis_and_ray(monkeypatch):
    monkeypatch.setenv("LADDER_REDIS_URL", "redis://10.0.0.1:6379/1")
    monkeypatch.setenv("LADDER_RAY_ADDRESS", "ray://head:10001")
    cfg = load_config()
    assert cfg.cache.redis_url == "redis://10.0.0.1:6379/1"
    assert cfg.ray.address == "ray://head:10001"


def test_prices_give_costs():
    price = LadderConfig().tier("large").price
    assert price.cost(1_000_000, 0) == pytest.approx(price.input_per_1m)
    assert price.cost(1000, 500) > price.cost(1000, 100)


def test_adaptive_example_config_is_valid_and_points_at_shipped_heads():
    cfg = load_config(ROOT / "configs" / "adaptive.yaml")
    small = cfg.tier("small")
    assert small.adaptive.mode == "speculative" and small.adaptive.drafter == "lookup+head"
    assert small.dtype == "float32"  # the lossless claim is made in float32 (docs/ADAPTIVE_DEPTH.md)
    for name in ("small", "medium"):  # heads ship for both, with the weights they were fitted to
        heads = cfg.tier(name).adaptive.resolved(name, "").heads
        assert (heads / "heads.safetensors").is_file()
        import json

        assert json.loads((heads / "heads.json").read_text())["model_sha256"] == cfg.tier(name).source.sha256
    draft = small.adaptive.resolved("small", "").draft_head  # the small tier's draft head ships too
    assert json.loads((draft / "draft.json").read_text())["model_sha256"] == small.source.sha256


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml") if p.name != "serve.yaml"))
def test_every_shipped_config_is_valid_and_its_policy_fits_its_tiers(name):
    from ladder.cluster.compose import build_policy

    cfg = load_config(ROOT / "configs" / name)
    policy = build_policy(cfg.policy, cfg.tier_names, cfg.verified_tiers)
    assert cfg.tiers and policy.version


def test_full_depth_tiers_run_on_the_vllm_engine_by_default_with_serve_limits_from_it():
    for tier in LadderConfig().tiers:
        assert tier.backend == "vllm"
        assert tier.max_ongoing_requests == tier.engine.max_num_seqs == 16  # Serve hands the engine a full batch
    gpu = load_config(ROOT / "configs" / "gpu.yaml")
    assert all(t.device == "cuda" and t.num_gpus > 0 and t.max_ongoing_requests == 64 for t in gpu.tiers)
    assert sum(t.num_gpus for t in gpu.tiers) <= 1  # fits one GPU
    assert sum(t.engine.gpu_memory_utilization for t in gpu.tiers) < 0.9
    old = load_config(ROOT / "configs" / "transformers.yaml")
    assert all(t.backend == "transformers" and t.max_ongoing_requests == 4 for t in old.tiers)


def test_the_large_tier_compiles_where_bfloat16_is_native_and_runs_eager_in_float32_on_a_cpu():
    from ladder.workers.options import VLLMOptions, runs_eager

    large = LadderConfig().tier("large")
    assert large.engine.enforce_eager == "auto"
    assert runs_eager(large.engine, "cpu", "float32") and not runs_eager(large.engine, "cpu", "bfloat16")
    assert not runs_eager(large.engine, "cuda", "float32")  # memory on a GPU is the engine's own
    assert runs_eager(VLLMOptions(enforce_eager=True), "cpu", "bfloat16")  # as configured, when set
    assert not runs_eager(VLLMOptions(enforce_eager=False), "cpu", "float32")
    bad = LadderConfig().model_dump(mode="json")
    bad["tiers"][2]["vllm"]["enforce_eager"] = "sometimes"
    with pytest.raises(ValidationError, match="enforce_eager"):
        LadderConfig.model_validate(bad)


def test_more_ongoing_requests_than_the_engine_batches_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_TIER + ", max_ongoing_requests: 20, vllm: {max_num_seqs: 8}}")
    with pytest.raises(ConfigError, match="max_num_seqs"):
        load_config(path)
    path.write_text(_TIER + ", vllm: {max_num_seqs: 8}}")
    assert load_config(path).tiers[0].max_ongoing_requests == 8


def test_an_autoscaled_tier_gives_serve_its_bounds_and_waits_for_its_minimum():
    data = LadderConfig().model_dump(mode="json")
    data["tiers"][0]["autoscaling"] = {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 2}
    tier = LadderConfig.model_validate(data).tiers[0]
    assert tier.min_replicas == 1 and LadderConfig().tiers[0].autoscaling is None
    assert tier.autoscaling.serve_config() == {
        "min_replicas": 1,
        "max_replicas": 3,
        "target_ongoing_requests": 2,
        "upscale_delay_s": 30,
        "downscale_delay_s": 600,
        "look_back_period_s": 30,
    }
    from ray.serve.config import AutoscalingConfig  # what Serve will make of it: the same bounds

    serve = AutoscalingConfig(**tier.autoscaling.serve_config())
    assert (serve.min_replicas, serve.max_replicas, serve.target_ongoing_requests) == (1, 3, 2)


def test_engine_speculation_is_refused_on_a_cpu_tier_and_handed_to_vllm_on_a_gpu_one(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(_TIER + ", vllm: {speculative: {method: ngram, num_speculative_tokens: 3}}}")
    with pytest.raises(ConfigError, match="tier small: vllm.speculative needs a GPU"):
        load_config(path)
    path.write_text(_TIER + ", device: cuda, vllm: {speculative: {num_speculative_tokens: 3, prompt_lookup_max: 5}}}")
    spec = load_config(path).tiers[0].vllm.speculative
    # vLLM's own speculative_config field names
    assert spec.engine_config() == {
        "method": "ngram",
        "num_speculative_tokens": 3,
        "prompt_lookup_min": 1,
        "prompt_lookup_max": 5,
    }
    path.write_text(_TIER + ", device: cuda, vllm: {speculative: {prompt_lookup_min: 6, prompt_lookup_max: 2}}}")
    with pytest.raises(ConfigError, match="prompt_lookup_min"):
        load_config(path)
    path.write_text(_TIER + ", device: cuda, vllm: {speculative: {method: medusa}}}")
    with pytest.raises(ConfigError, match="speculative.method"):
        load_config(path)
    path.write_text(_TIER + ", device: cuda, vllm: {speculative: {method: eagle}}}")
    with pytest.raises(ConfigError, match="method eagle needs model"):
        load_config(path)
