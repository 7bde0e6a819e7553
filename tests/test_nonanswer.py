"""The non-answer rule (ladder.nonanswer): what it catches, and ordinary answers it lets through."""

import pytest

from ladder.nonanswer import non_answer, refuses

CODE_PROMPT = 'Complete this function:\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n'


@pytest.mark.parametrize(
    ("question", "answer", "kind"),
    [
        # the non-answers quoted in issue 28
        ("Who wrote 'Pride and Prejudice'?", "I'm sorry, but I can't assist with that.", "refusal"),
        ("What is a list?", "Can you explain the difference between a list and a tuple in Python?", "question_back"),
        ("What is 2+2?", "Alright, I'll see you in my next conversation…", "no_number"),
        # and their kin
        ("Tell me a joke.", "   \n ... ", "empty"),
        ("Explain TCP.", "As an AI language model, I do not have opinions.", "refusal"),
        ("Summarise this.", "I apologize, but I cannot do that.", "refusal"),
        ("Explain TCP.", "I am unable to answer questions about networking.", "refusal"),
        (CODE_PROMPT, "Sure! This function adds two numbers together and gives back their sum.", "no_code"),
        ("Write a Python function that reverses a string.", "Reversing strings is a classic exercise.", "no_code"),
        ("Tom has 3 apples and buys 4 more. How many apples does he have?", "He has some apples.", "no_number"),
    ],
)
def test_non_answers_are_named(question, answer, kind):
    assert non_answer(question, answer) == kind


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("Who wrote 'Pride and Prejudice'?", "Jane Austen wrote it, in 1813."),
        ("What is 2+2?", "2 + 2 = 4"),
        ("What is 2+2?", "Four."),
        ("Options: A. 2+2=5 B. 2+2=4\nAnswer with the letter only.", "B"),
        ("Tom has 3 apples and buys 4 more. How many apples does he have?", "3 + 4 = 7. #### 7"),
        (CODE_PROMPT, "    return a + b"),
        (CODE_PROMPT, "```python\ndef add(a, b):\n    return a + b\n```"),
        ("Is Python slow?", "It can be. " * 40 + "Would you like to know more?"),  # long: it answered
        ("Should I refactor?", "I can't say for sure without the code, but usually small steps are safer."),
    ],
)
def test_answers_pass(question, answer):
    assert non_answer(question, answer) is None


def test_a_prefix_that_declines_is_caught_before_the_answer_ends():
    assert refuses("I'm sorry, but I can")
    assert not refuses("Sure, here is")
