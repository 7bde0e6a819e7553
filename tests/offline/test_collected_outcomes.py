"""Outcomes collected from Ladder's own tiers: log-probabilities survive the file and feed IDK."""

import json

import numpy as np

from ladder.offline.training import TrainSpec, idk_scores, train_policy
from ladder.outcomes.io import read_jsonl, write_jsonl
from ladder.policies.features import FeaturizerKind


def _collected(path, n=240, seed=0):
    """Rows shaped like `ladder collect` output: the small rung is right exactly when it was
    confident (first-token log-probability near 0), and its text says nothing about it."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        confident = rng.random() < 0.5
        first = float(rng.uniform(-0.05, 0.0) if confident else rng.uniform(-3.0, -1.0))
        lines.append(
            json.dumps(
                {
                    "id": f"q{i}",
                    "query": f"question number {i} about topic {i % 7}",
                    "gold": "C",
                    "quality": {"small": float(confident), "large": 1.0},
                    "tokens": {"small": 1.0, "large": 1.0},
                    "response": {"small": "C", "large": "C"},
                    "signals": {
                        "small": {"first_logprob": first, "latency_s": 0.1, "prompt_tokens": 50.0},
                        "large": {"first_logprob": -0.1, "latency_s": 1.0, "prompt_tokens": 50.0},
                    },
                    "logprobs": {"small": [first, -0.01], "large": [-0.1, -0.01]},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def test_logprobs_round_trip_and_split(tmp_path):
    o = read_jsonl(_collected(tmp_path / "c.jsonl", n=10))
    assert set(o.logprobs) == {"small", "large"} and len(o.logprobs["small"][3]) == 2
    assert o.signals["small/latency_s"].shape == (10,)
    part = o.take(np.array([1, 3]))
    assert part.logprobs["small"] == (o.logprobs["small"][1], o.logprobs["small"][3])
    write_jsonl(o, tmp_path / "again.jsonl")
    assert read_jsonl(tmp_path / "again.jsonl").logprobs == o.logprobs


def test_idk_step_learns_from_collected_logprobs(tmp_path):
    o = read_jsonl(_collected(tmp_path / "c.jsonl"))
    fit, test = o.take(np.arange(0, 200)), o.take(np.arange(200, 240))
    policy = train_policy(fit, TrainSpec(FeaturizerKind.TFIDF, idk=True))
    assert "first_logprob" in policy.idk[0].signals  # used because the outcomes carry log-probs
    route = policy.scores(list(test.queries))
    accept = idk_scores(policy, test, route)[:, 0]
    right = test.quality[:, 0] == 1
    # The answer text is identical for right and wrong answers: only the log-probability separates them.
    assert accept[right].min() > accept[~right].max()


def test_answers_with_absurdly_long_numbers_do_not_break_signals():
    from ladder.offline.datasets import score_gsm8k
    from ladder.policies.idk import SIGNALS, AnswerView, signal_matrix

    text = "The answer is " + "9" * 400  # seen in the small tier's GSM8K answers: parses to inf
    row = signal_matrix([AnswerView(text, (-0.1,), 0.5)], list(SIGNALS))
    assert np.isfinite(row).all()
    assert score_gsm8k(text, "18") == 0.0
