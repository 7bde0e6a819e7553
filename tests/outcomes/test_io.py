import json
from pathlib import Path

import numpy as np
import pytest

from ladder.errors import OutcomesError
from ladder.offline.pipeline import parse_target, split, three_way
from ladder.outcomes import Outcomes
from ladder.outcomes.io import load_routellm, read_jsonl, write_jsonl
from ladder.outcomes.schema import stable_split
from tests.shared_data import DATA, needs_data


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_round_trip(tmp_path):
    rows = [
        {
            "id": str(i),
            "query": f"q{i}",
            "quality": {"small": i % 2, "large": 1.0},
            "tokens": {"small": 3, "large": 5},
            "group": "g",
        }
        for i in range(10)
    ]
    o = read_jsonl(write(tmp_path / "o.jsonl", rows))
    assert o.rungs == ("small", "large") and o.quality[:, 0].tolist() == [0, 1] * 5
    write_jsonl(o, tmp_path / "copy.jsonl")
    again = read_jsonl(tmp_path / "copy.jsonl")
    assert again.fingerprint == o.fingerprint and np.array_equal(again.tokens, o.tokens)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"id": "1", "quality": {"a": 1, "b": 0}}], "no 'query' field"),
        ([{"id": "1", "query": "x", "quality": {"a": "yes", "b": 0}}], "is not a number"),
        ([{"id": "1", "query": "x", "quality": {"a": 1.5, "b": 0}}], "lies outside its scale [0, 1]"),
        (
            [{"id": "1", "query": "x", "quality": {"a": 11, "b": 1}, "quality_scale": [1, 10]}],
            "outside its scale [1, 10]",
        ),
        ([{"id": "1", "query": "x", "quality": {"a": 1, "b": 0}, "quality_scale": [5, 5]}], "is empty"),
        ([{"id": "1", "query": "x", "quality": {"a": 1}}], "at least two rungs"),
        (
            [
                {"id": "1", "query": "x", "quality": {"a": 1, "b": 0}},
                {"id": "2", "query": "y", "quality": {"b": 1, "c": 0}},
            ],
            "has rungs",
        ),
    ],
)
def test_malformed_outcomes_are_named(tmp_path, rows, message):
    with pytest.raises(OutcomesError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_jsonl(write(tmp_path / "bad.jsonl", rows))


def test_missing_columns_and_non_boolean_labels_in_routellm_csv(tmp_path):
    folder = tmp_path / "routellm" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "gsm8k_responses.csv").write_text("prompt,other\nx,1\n")
    with pytest.raises(OutcomesError, match="missing column"):
        load_routellm(tmp_path, "gsm8k")
    weak, strong = "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"
    (folder / "gsm8k_responses.csv").write_text(f"prompt,{weak},{strong},{weak}_response\nx,maybe,True,r\n")
    with pytest.raises(OutcomesError, match="must be boolean"):
        load_routellm(tmp_path, "gsm8k")


def test_empty_split_is_an_error():
    o = Outcomes(("a",), ("q",), ("s", "l"), np.array([[1.0, 0.0]]))
    with pytest.raises(OutcomesError, match="empty split"):
        o.take(np.array([False]))


def test_stable_split_is_deterministic_and_near_the_fraction():
    ids = [f"id{i}" for i in range(5000)]
    a, b = stable_split(ids), stable_split(list(reversed(ids)))[::-1]
    assert np.array_equal(a, b)
    assert 0.18 < a.mean() < 0.22


def test_targets_parse_and_bad_ones_are_named():
    t = parse_target("strong<=30%,cost<=2", ("weak", "strong"))
    assert t.max_fraction == {1: 0.3} and t.max_cost_per_1k == 2
    assert parse_target("quality>=0.8", ("weak", "strong")).min_quality == 0.8
    for bad, msg in (("huge<=0.1", "rung 'huge'"), ("strong=0.3", "bad target"), ("", "needs")):
        with pytest.raises(OutcomesError, match=msg):
            parse_target(bad, ("weak", "strong"))


@needs_data
def test_routellm_loaders_reproduce_published_accuracies():
    mmlu, contaminated = load_routellm(DATA, "mmlu")
    assert len(mmlu) == 14042 and mmlu.quality.mean(0) == pytest.approx([0.681, 0.806], abs=0.001)
    assert contaminated.sum() > 0
    gsm, _ = load_routellm(DATA, "gsm8k")
    assert len(gsm) == 1319 and gsm.quality.mean(0) == pytest.approx([0.638, 0.857], abs=0.001)
    parts = split(mmlu, contaminated)
    assert not set(parts.test.queries) & {q for q, c in zip(mmlu.queries, contaminated) if c}
    tw = three_way(gsm, np.zeros(len(gsm), bool))
    assert len(tw.fit) + len(tw.validation) + len(tw.test) == len(gsm)


def test_unicode_line_separators_inside_strings_round_trip(tmp_path):
    """U+0085 / U+2028 / U+2029 inside a prompt are not line breaks of the JSONL file."""
    import numpy as np

    from ladder.outcomes import Outcomes
    from ladder.outcomes.io import read_jsonl, write_jsonl

    queries = ("first\u0085line", "para\u2028graph\u2029end", "plain")
    out = Outcomes(("a", "b", "c"), queries, ("weak", "strong"), np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]))
    write_jsonl(out, tmp_path / "o.jsonl")
    back = read_jsonl(tmp_path / "o.jsonl")
    assert back.queries == queries and back.ids == out.ids


def test_grades_on_a_stated_scale_are_read_as_quality(tmp_path):
    rows = [
        {"id": "1", "query": "x", "quality": {"a": 1, "b": 10}, "quality_scale": [1, 10]},
        {"id": "2", "query": "y", "quality": {"a": 0.5, "b": 1}},
    ]
    o = read_jsonl(write(tmp_path / "graded.jsonl", rows))
    assert o.quality.tolist() == [[0.0, 1.0], [0.5, 1.0]]
