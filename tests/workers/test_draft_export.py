"""A draft head exported for vLLM's EAGLE drafter (issue 34, `ladder depth export`): vLLM's own
model code loads it and computes what Ladder's head computes; a head it cannot express, or one
bound to other weights, is refused in one line; a tier's `vllm.speculative` names the head it
drafts with and refuses one exported for other weights."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from ladder.cluster.compose import materialize, weights_id
from ladder.cluster.settings import LadderConfig
from ladder.workers.draft_head import DraftHead, bundled_draft_head
from ladder.workers.options import EAGLE_EXPORT_FORMAT
from tests.cli_run import assert_clean_error, ladder

PROBE = Path(__file__).with_name("vllm_eagle_probe.py")


@pytest.mark.model
@pytest.mark.parametrize("name", ["small", "medium"])  # a Llama and a Qwen2 (q/k/v biases) target
def test_the_exported_head_computes_in_vllms_eagle_model_what_it_computes_in_ladder(name, tmp_path):
    cfg = LadderConfig()
    t = cfg.tier(name)
    model_dir = materialize(cfg, t)
    out = tmp_path / "eagle"
    proc = ladder("depth", "export", "--tier", name, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "speculative: {method: eagle" in proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["ladder"]["model_sha256"] == weights_id(t) and cfg["num_hidden_layers"] == 1
    run = subprocess.run(
        [sys.executable, str(PROBE), str(model_dir), str(out), str(bundled_draft_head(name))],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["architecture"] == "EagleLlamaForCausalLM"  # vLLM's config path named its EAGLE class
    # float32 on both sides from the same bfloat16 weights: only summation order differs
    assert got["feature_max_abs_diff"] <= 1e-4 * max(1.0, got["feature_scale"]), got
    assert got["logit_max_abs_diff"] <= 1e-4 * max(1.0, got["logit_scale"]), got
    assert got["same_draft_tokens"], got


def _fresh_head(tier_cfg, folder: Path, bound_to: str, input_norm: bool) -> Path:  # noqa: ANN001
    from transformers import AutoConfig

    torch.manual_seed(0)
    head = DraftHead.for_model(AutoConfig.from_pretrained(tier_cfg[1]), list(range(256)), input_norm=input_norm)
    return head.save(folder, bound_to, {})


@pytest.mark.model
@pytest.mark.slow  # subprocesses
def test_export_refuses_a_head_it_cannot_express_and_one_for_other_weights(tier, tmp_path):
    t, _ = tier
    old_shape = _fresh_head(tier, tmp_path / "normed", weights_id(t), input_norm=True)
    normed = ladder("depth", "export", "--tier", "small", "--head", str(old_shape), "--out", str(tmp_path / "a"))
    assert_clean_error(normed, "normalises its fused input")
    foreign = _fresh_head(tier, tmp_path / "foreign", "0" * 64, input_norm=False)
    other = ladder("depth", "export", "--tier", "small", "--head", str(foreign), "--out", str(tmp_path / "b"))
    assert_clean_error(other, "was trained for weights 0000000000000000")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing half-written
    assert all(len(p.stderr.strip().splitlines()) == 1 for p in (normed, other))


def _fake_export(folder: Path, bound_to: str) -> Path:
    """An export's binding is its config.json's `ladder` section: all a tier's config reads."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(
        json.dumps({"ladder": {"format": EAGLE_EXPORT_FORMAT, "model_sha256": bound_to}})
    )
    return folder


def _with_speculation(spec: dict, device: str = "cpu") -> LadderConfig:
    data = LadderConfig().model_dump(mode="json")
    data["tiers"][1]["vllm"]["speculative"] = spec
    data["tiers"][1]["device"] = device
    return LadderConfig(**data)


def test_a_tier_drafts_only_with_a_head_exported_for_its_own_weights(tmp_path):
    medium = LadderConfig().tier("medium")
    own = _fake_export(tmp_path / "own", weights_id(medium))
    other = _fake_export(tmp_path / "other", "f" * 64)
    with pytest.raises(
        ValidationError, match=r"tier medium: the draft head in .* was exported for weights ffffffffffffffff"
    ):
        _with_speculation({"method": "eagle", "model": str(other)}, device="cuda")
    with pytest.raises(ValidationError, match="tier medium: vllm.speculative.model .* holds no exported draft head"):
        _with_speculation({"method": "eagle", "model": str(tmp_path / "missing")}, device="cuda")
    tier = _with_speculation({"method": "eagle", "model": str(own), "num_speculative_tokens": 3}, device="cuda")
    engine = tier.tier("medium").vllm.speculative.engine_config()
    assert engine == {"method": "eagle", "model": str(own), "num_speculative_tokens": 3}
    # the engine's own head on a CPU tier: still refused, vLLM's CPU engine cannot draft
    with pytest.raises(ValidationError, match="tier medium: vllm.speculative needs a GPU"):
        _with_speculation({"method": "eagle", "model": str(own)})
    with pytest.raises(ValidationError, match="method eagle needs model"):
        _with_speculation({"method": "eagle"}, device="cuda")
    with pytest.raises(ValidationError, match="model belongs to method eagle"):
        _with_speculation({"method": "ngram", "model": str(own)}, device="cuda")
