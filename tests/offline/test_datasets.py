"""Labelled datasets of `ladder collect`: scorers, stable subsets, the real files."""

import pytest

from ladder.errors import LadderError
from ladder.offline.datasets import (
    chosen_letter,
    final_number,
    load_dataset,
    score_gsm8k,
    score_letter,
    subset,
)
from tests.shared_data import DATA, needs_data


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("so 3 + 4 = 7.\n#### 7", 7.0),
        ("The answer is $1,250.", 1250.0),
        ("answer: -3", -3.0),
        ("she has 5 apples and then 12", 12.0),
        ("no numbers here", None),
        ("#### 18\nthen 3 more", 18.0),
    ],
)
def test_final_number_prefers_the_marked_answer(text, value):
    assert final_number(text) == value


def test_gsm8k_scoring_compares_final_numbers():
    assert score_gsm8k("Step 1: 2*9 = 18\n#### 18", "… #### 18") == 1.0
    assert score_gsm8k("#### 18.0", "18") == 1.0
    assert score_gsm8k("so it costs 17", "18") == 0.0
    assert score_gsm8k("", "18") == 0.0


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("C", "C"),
        ("(B)", "B"),
        ("J. Trivial", "J"),
        ("The answer is D.", "D"),
        ("the answer is (E)", "E"),
        ("Option H", "H"),
        ("To determine the value", None),
        ("A", "A"),
        ("K", None),
    ],
)
def test_chosen_letter(text, letter):
    assert chosen_letter(text) == letter
    assert score_letter(text, "C") == float(letter == "C")


@needs_data
def test_subsets_are_stable_prefixes_of_one_hash_order():
    items = load_dataset("gsm8k", DATA).items
    small, large = subset(list(items), 10), subset(list(items), 50)
    assert [i.id for i in small] == [i.id for i in large[:10]]
    assert [i.id for i in subset(list(reversed(items)), 10)] == [i.id for i in small]  # order-free
    # --skip N leaves out exactly a benchmark's first N and continues the same order
    assert [i.id for i in subset(list(items), 40, skip=10)] == [i.id for i in large[10:50]]
    held = {i.id for i in load_dataset("mmlu-pro", DATA, 48).items}
    rest = load_dataset("mmlu-pro", DATA, 20, skip=48).items
    assert len(rest) == 20 and not held & {i.id for i in rest}


@needs_data
def test_real_files_load_with_gold_answers():
    gsm = load_dataset("gsm8k", DATA, limit=5)
    assert len(gsm.items) == 5 and all(final_number(i.gold) is not None for i in gsm.items)
    assert "####" in gsm.items[0].prompt and gsm.system is None
    assert len(load_dataset("gsm8k", DATA).items) == 1319 and len(load_dataset("gsm8k-train", DATA).items) == 7473
    mmlu = load_dataset("mmlu-pro", DATA, limit=5)
    assert all(i.gold in "ABCDEFGHIJ" and "\nA. " in i.prompt for i in mmlu.items)
    assert mmlu.max_tokens <= 8 and mmlu.system


def test_bad_names_and_paths_are_clear_errors(tmp_path):
    with pytest.raises(LadderError, match="unknown dataset 'squad'"):
        load_dataset("squad", DATA)
    with pytest.raises(LadderError, match="not found"):
        load_dataset("gsm8k", tmp_path)
