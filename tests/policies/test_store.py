"""Policy files round-trip, and bad files are refused."""

import json

import numpy as np
import pytest

from ladder.errors import PolicyFileError
from ladder.offline.training import TrainSpec, train_policy
from ladder.outcomes import Outcomes
from ladder.policies.features import FeaturizerKind
from ladder.policies.store import load_policy, save_policy
from ladder.types import Generation, Query


def toy_outcomes(n: int = 400) -> Outcomes:
    rng = np.random.default_rng(0)
    hard = rng.random(n) < 0.4
    queries = tuple(
        ("prove the theorem about manifolds " if h else "what is two plus two ") + str(i) for i, h in enumerate(hard)
    )
    quality = np.stack([(~hard).astype(float), np.ones(n)], axis=1)
    responses = {"weak": tuple("#### 4" if not h else "However, I cannot" for h in hard)}
    return Outcomes(tuple(map(str, range(n))), queries, ("weak", "strong"), quality, responses=responses)


@pytest.fixture
def policy():
    return train_policy(toy_outcomes(), TrainSpec(FeaturizerKind.TFIDF))


def test_trained_router_separates_easy_from_hard(policy):
    easy = policy.route(Query.of("what is two plus two 9999"))
    hard = policy.route(Query.of("prove the theorem about manifolds 9999"))
    assert easy.start == 0 and hard.start == 1
    assert easy.scores[0] > 0.5 > hard.scores[0]


def test_idk_step_rejects_a_hedging_answer(policy):
    route = policy.route(Query.of("what is two plus two"))
    gen = lambda text: Generation("weak", text, (1,), (-0.1,), 3, "stop", 0, 0)  # noqa: E731
    assert policy.accept(gen("#### 4"), route)
    assert not policy.accept(gen("However, I cannot"), route)


def test_round_trip_keeps_decisions_and_version(policy, tmp_path):
    path = save_policy(policy, tmp_path / "p.json")
    loaded = load_policy(path, ["weak", "strong"])
    assert loaded.version == policy.version
    q = Query.of("prove the theorem about manifolds 1")
    assert loaded.route(q) == policy.route(q)
    assert json.loads(path.read_text())["meta"]["data_hash"] == policy.meta["data_hash"]


def test_bad_checksum_is_refused(policy, tmp_path):
    path = save_policy(policy, tmp_path / "p.json")
    tensors = tmp_path / "p.safetensors"
    raw = bytearray(tensors.read_bytes())
    raw[-1] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    with pytest.raises(PolicyFileError, match="checksum"):
        load_policy(path)


def test_newer_format_and_foreign_rungs_are_refused(policy, tmp_path):
    path = save_policy(policy, tmp_path / "p.json")
    with pytest.raises(PolicyFileError, match="fitted for rungs"):
        load_policy(path, ["small", "large"])
    doc = json.loads(path.read_text())
    doc["format_version"] = 99
    path.write_text(json.dumps(doc))
    with pytest.raises(PolicyFileError, match="format version 99"):
        load_policy(path)
    path.write_text("{not json")
    with pytest.raises(PolicyFileError, match="not JSON"):
        load_policy(path)


@pytest.mark.parametrize("scheme", ["probabilistic", "transformed"])
def test_soft_and_relaxed_labels_train_a_router_on_success_rates(scheme):
    from ladder.policies.labels import LabelScheme

    base = toy_outcomes()
    rng = np.random.default_rng(3)
    hard = np.array(["prove" in q for q in base.queries])
    rates = np.stack(
        [
            np.where(hard, rng.uniform(0.0, 0.3, len(hard)), rng.uniform(0.7, 1.0, len(hard))),
            rng.uniform(0.8, 1.0, len(hard)),
        ],
        axis=1,
    )
    outcomes = Outcomes(base.ids, base.queries, base.rungs, rates)
    policy = train_policy(outcomes, TrainSpec(FeaturizerKind.TFIDF, LabelScheme(scheme), idk=False))
    easy = policy.route(Query.of("what is two plus two 9999")).scores[0]
    hard_score = policy.route(Query.of("prove the theorem about manifolds 9999")).scores[0]
    assert easy > hard_score + 0.2


def test_verifier_signals_are_learned_served_and_required(tmp_path):
    """An IDK model fitted on a rung's verifier signals reads them from Generation.signals, and a
    config whose tier lacks the verifier is refused at start with one line."""
    from ladder.cluster.compose import build_policy
    from ladder.cluster.settings import PolicyConfig
    from ladder.errors import ConfigError
    from ladder.policies.idk import AnswerView

    rng = np.random.default_rng(1)
    n = 300
    good = rng.random(n) < 0.5  # the weak rung's code passes its examples exactly when it is right
    queries = tuple(f"write a function number {i}" for i in range(n))
    quality = np.stack([good.astype(float), np.ones(n)], axis=1)
    responses = {"weak": tuple("```python\ndef f():\n    return 1\n```" for _ in range(n))}
    signals = {
        "weak/code_parses": np.ones(n),
        "weak/examples": np.full(n, 2.0),
        "weak/examples_passed": good.astype(float),
    }
    out = Outcomes(
        tuple(map(str, range(n))), queries, ("weak", "strong"), quality, responses=responses, signals=signals
    )
    policy = train_policy(out, TrainSpec(FeaturizerKind.TFIDF))
    assert "examples_passed" in policy.idk[0].signals and policy.verifier_rungs() == ["weak"]
    route = policy.route(Query.of("write a function number 7"))
    verified = lambda passed: (("code_parses", 1.0), ("examples", 2.0), ("examples_passed", passed))  # noqa: E731
    p_pass, p_fail = policy.idk[0].proba(
        [AnswerView(responses["weak"][0], (), route.scores[0], verified(x)) for x in (1.0, 0.0)]
    )
    assert p_pass > 0.7 > 0.3 > p_fail
    gen = lambda passed: Generation(
        "weak",
        responses["weak"][0],
        (1,),
        (-0.1,),
        3,
        "stop",
        0,
        0,  # noqa: E731
        signals=verified(passed),
    )
    assert policy.accept(gen(1.0), route) and not policy.accept(gen(0.0), route)
    path = save_policy(policy, tmp_path / "p.json")
    with pytest.raises(ConfigError, match="verifier: python_examples"):
        build_policy(PolicyConfig(kind="learned", file=str(path)), ["weak", "strong"], verified=[])
    assert build_policy(PolicyConfig(kind="learned", file=str(path)), ["weak", "strong"], verified=["weak"]).version
