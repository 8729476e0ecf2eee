"""Same-form accuracy (`rs_trainer.tools.same_form`): a scorer that reads the number scores 1, one that reads only
the answer's form scores at chance, and the questions are ones the run never trained on."""

import re

import pytest

from rs_trainer.tasks.arithmetic import draw_pairs
from rs_trainer.tools import same_form


def oracle(questions: dict[str, list[dict]]):
    """A scorer that reads the number: 1 when the completion's last integer is the question's answer, else 0."""
    answers = {r["prompt"][-1]["content"]: int(r["answer"]) for rows in questions.values() for r in rows}

    def score(prompts, completions, **kwargs):
        return [
            float(int(re.findall(r"-?\d+", c[-1]["content"])[-1]) == answers[p[-1]["content"]])
            for p, c in zip(prompts, completions, strict=True)
        ]

    return score


def length(prompts, completions, **kwargs):
    """The completion's length: a reward model that reads only the form."""
    return [float(len(c[-1]["content"])) for c in completions]


@pytest.fixture(scope="module")
def questions() -> dict[str, list[dict]]:
    trained = set(draw_pairs(256, 64, 1, 20, 42)[:256])  # the default recipe's training questions
    return {split: same_form.questions(split, 24, 1, 20, trained, 42) for split in same_form.SPLITS}


def test_a_scorer_that_reads_the_number_ranks_every_right_answer_first(questions):
    for split, rows in questions.items():
        assert same_form.same_form_accuracy(oracle(questions), rows) == 1.0, split


def test_a_scorer_that_reads_the_form_is_at_chance_or_below(questions):
    for split, rows in questions.items():
        # Right and wrong differ only in one number: the same length but where the sum crosses 10 or 100, so a
        # length scorer wins only the pairs where the wrong number is shorter by a digit.
        assert same_form.same_form_accuracy(length, rows) < 0.25, split
        assert same_form.same_form_accuracy(lambda p, c, **k: [0.0] * len(c), rows) == 0.0  # ties count as wrong


def test_questions_are_unseen_and_the_pairs_differ_only_in_the_number(questions):
    trained = set(draw_pairs(256, 64, 1, 20, 42)[:256])
    for split, rows in questions.items():
        assert len(rows) == 24 and len({r["prompt_id"] for r in rows}) == 24
        assert not {(r["a"], r["b"]) for r in rows} & trained, split
        for _, right, wrong in same_form.pairs(rows):
            assert re.sub(r"\d+", "#", right) == re.sub(r"\d+", "#", wrong), (right, wrong)  # the same form
            assert abs(int(re.findall(r"\d+", right)[-1]) - int(re.findall(r"\d+", wrong)[-1])) in (1, 2)
    assert questions["words"][0]["prompt"][0]["content"].endswith("in digits.")
    first = questions["heldout"][0]
    x = int(first["answer"])
    assert same_form.pairs([first])[:4] == [(first["prompt"], str(x), str(x + d)) for d in (-2, -1, 1, 2)]
