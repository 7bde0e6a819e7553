"""The served policy and calibration's replay agree decision for decision (one start-rung rule,
one accept rule): the bundled policy on Ladder's own committed outcomes."""

from pathlib import Path

from ladder.cluster.settings import BUNDLED_POLICY
from ladder.offline.training import gate_scores, replay
from ladder.outcomes.io import read_jsonl
from ladder.policies.store import load_policy
from ladder.types import Generation, PrefixVerdict, Query

ROOT = Path(__file__).resolve().parents[2]


def test_served_decisions_equal_the_replayed_ones():
    policy = load_policy(BUNDLED_POLICY)
    outcomes = read_jsonl(ROOT / "data" / "outcomes" / "humaneval.jsonl")
    assert set(policy.idk_thresholds) == set(range(len(policy.rungs) - 1))  # every non-top rung has an IDK step
    replayed, route, accept = replay(policy, outcomes)
    gates = gate_scores(policy, outcomes, route)
    k = policy.prefix_tokens(0)
    disagreements = 0
    for i, text in enumerate(outcomes.queries):
        served = policy.route(Query.of(text))
        start = int(replayed.reached[i].argmax())
        assert served.start == start, i
        for b in range(start, len(policy.rungs) - 1):
            rung = policy.rungs[b]
            signals = tuple(
                (n, float(outcomes.signals[f"{rung}/{n}"][i])) for n in ("code_parses", "examples", "examples_passed")
            )
            answer = Generation(
                rung, outcomes.responses[rung][i], (), outcomes.logprobs[rung][i], 0, "stop", 0, 0, (), signals
            )
            disagreements += policy.accept(answer, served) != (accept[i, b] >= policy.idk_thresholds[b])
            if k:  # the prefix gate, as a streamed cascade asks it, against its replayed score
                partial = Generation(rung, "", (), outcomes.logprobs[rung][i][:k], 0, "length", 0, 0)
                verdict = policy.judge_prefix(partial, served)
                gate = next(g for g in policy.prefix[b] if g.active)
                expected = (
                    PrefixVerdict.ACCEPT
                    if gates[k][i, b] >= gate.accept_at
                    else PrefixVerdict.ESCALATE
                    if gates[k][i, b] < gate.escalate_below
                    else PrefixVerdict.WAIT
                )
                assert verdict is expected, (i, b)
    assert disagreements == 0
