"""The built-in arithmetic task's evaluation splits: the trained sums asked in other forms (and two other skills),
never a training question, each drawn with its own seed, each form in one split only; the verifier judges every
split; and real runs report each split beside the held-out accuracy, which keeps its meaning and its numbers."""

import json
import re
import types

import pytest
from helpers import recipe_args

from rs_trainer.cli import main
from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError
from rs_trainer.rewards import score
from rs_trainer.rewards.verifiers import numeric_answer
from rs_trainer.tasks import arithmetic

ADDITION = {
    "phrasings": (arithmetic.PHRASINGS, arithmetic.SUFFIX),
    "words": (arithmetic.WORDS, arithmetic.WORDS_SUFFIX),
    "stories": (arithmetic.STORIES, arithmetic.SUFFIX),
}
WORD_VALUES = {arithmetic.number_words(n): n for n in range(-100, 1001)}
# Longest first, so that "seventeen" is read before "seven".
NUMBER_WORDS = re.compile(
    r"\b(" + "|".join(sorted(map(re.escape, WORD_VALUES), key=len, reverse=True)) + r")\b", re.IGNORECASE
)


def task_args(**overrides):
    """The default recipe's task keys, with 100 questions per evaluation split."""
    values = {
        "task_num_train": 256,
        "task_num_eval": 64,
        "task_min_operand": 1,
        "task_max_operand": 20,
        "seed": 42,
        "task_num_eval_ood": 100,
    }
    return types.SimpleNamespace(**{**values, **overrides})


def text(row: dict) -> str:
    return row["prompt"][0]["content"]


def operands(split: str, i: int, question: str) -> tuple[int, int]:
    """(a, b) of the i-th question of an addition split, read back through the template it must match."""
    templates, suffix = ADDITION[split]
    number = r"[a-z]+(?:[ -][a-z]+)*?" if split == "words" else r"-?\d+"
    pattern = re.escape(f"{templates[i % len(templates)]} {suffix}")
    pattern = pattern.replace(r"\{a\}", f"(?P<a>{number})").replace(r"\{b\}", f"(?P<b>{number})")
    pattern = pattern.replace(r"\{name\}", "|".join(arithmetic.NAMES).join("()"))
    found = re.fullmatch(pattern, question, flags=re.IGNORECASE)
    assert found, (split, i, question)
    read = (lambda s: WORD_VALUES[s.lower()]) if split == "words" else int
    return read(found["a"]), read(found["b"])


def form(question: str) -> str:
    """A question with its numbers (digits or words) and names blanked: what a template asks."""
    question = NUMBER_WORDS.sub("#", re.sub(r"-?\d+", "#", question))
    return re.sub(r"\b(" + "|".join(arithmetic.NAMES) + r")\b", "@", question)


def test_train_and_test_are_the_questions_runs_had_before_the_other_splits():
    import hashlib

    splits = arithmetic.make_splits(256, 64, 1, 20, 42)
    digest = hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()
    assert digest == "570eb34b94c7a0e38babafc7d23510c7d8aa94990a72fa16bb1db8290f8b2c61"  # as at 759a938
    assert text(splits["test"][0]) == "What is 19 + 18? Give only the final number."


def test_addition_splits_ask_sums_that_training_never_asks():
    args = task_args()
    train = [tuple(map(int, re.findall(r"\d+", text(r)))) for r in arithmetic.split(args, "train")]
    assert len(set(train)) == 256
    for split in ADDITION:
        rows = arithmetic.split(args, split)
        pairs = [operands(split, i, text(r)) for i, r in enumerate(rows)]
        assert len(set(pairs)) == len(rows) == 100, split
        assert not set(pairs) & set(train), split
        assert all(1 <= x <= 20 for pair in pairs for x in pair)
        assert [r["answer"] for r in rows] == [str(a + b) for a, b in pairs]
        assert [r["prompt_id"] for r in rows] == [f"{split}-{i:05d}" for i in range(100)]


def test_subtraction_and_three_terms_ask_the_other_operations():
    suffix = re.escape(arithmetic.SUFFIX)
    for row in arithmetic.split(task_args(), "subtraction"):
        a, b = map(int, re.fullmatch(rf"What is (\d+) - (\d+)\? {suffix}", text(row)).groups())
        assert 1 <= b <= a <= 20 and row["answer"] == str(a - b)
    rows = arithmetic.split(task_args(task_min_operand=-5, task_max_operand=1000), "three_terms")
    triples = [
        tuple(map(int, re.fullmatch(rf"What is (-?\d+) \+ (-?\d+) \+ (-?\d+)\? {suffix}", text(r)).groups()))
        for r in rows
    ]
    assert len(set(triples)) == 100 and all(-5 <= x <= 1000 for t in triples for x in t)
    assert [r["answer"] for r in rows] == [str(sum(t)) for t in triples]


def test_each_split_is_the_same_under_its_seed_and_drawn_apart_from_the_others():
    for split in arithmetic.EVAL_SPLITS:
        rows = arithmetic.split(task_args(), split)
        assert rows == arithmetic.split(task_args(), split)
        assert [text(r) for r in rows] != [text(r) for r in arithmetic.split(task_args(seed=43), split)], split
    drawn = {s: [operands(s, i, text(r)) for i, r in enumerate(arithmetic.split(task_args(), s))] for s in ADDITION}
    assert drawn["phrasings"] != drawn["words"] != drawn["stories"] != drawn["phrasings"]  # each its own seed


def test_each_form_belongs_to_one_split():
    args = task_args()
    forms = {s: {form(text(r)) for r in arithmetic.split(args, s)} for s in ("train", *arithmetic.EVAL_SPLITS)}
    assert forms["train"] == {"What is # + #? Give only the final number."}
    assert forms["train"] == {form(text(r)) for r in arithmetic.split(args, "test")}
    for split, (templates, _) in ADDITION.items():
        assert len(forms[split]) == len(templates), split  # every template asked, none blanked into another
    assert not any(re.search(r"\d", text(r)) for r in arithmetic.split(args, "words"))
    names = list(forms)
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            assert not forms[one] & forms[other], (one, other, forms[one] & forms[other])


@pytest.mark.parametrize("split", ["test", *arithmetic.EVAL_SPLITS])
def test_the_verifier_accepts_each_splits_answers_and_rejects_wrong_ones(split):
    rows = arithmetic.split(
        task_args(task_num_eval=12, task_num_eval_ood=12, task_min_operand=-9, task_max_operand=9), split
    )
    answers = [r["answer"] for r in rows]
    if split == "subtraction":
        assert all(int(x) >= 0 for x in answers)  # a >= b
    replies = {
        "right": [f"Adding them up, the answer is {x}." for x in answers],
        "bare": answers,
        "off by one": [f"The answer is {int(x) + 1}." for x in answers],
        "in words": [arithmetic.number_words(int(x)) for x in answers],  # why the words split asks for digits
    }
    verdicts = {}
    for kind, completions in replies.items():
        samples = [{**r, "sample_index": 0, "completion": c} for r, c in zip(rows, completions, strict=True)]
        verdicts[kind] = [
            s["reward"] for s in score(samples, {"numeric_answer": numeric_answer}, {"numeric_answer": 1})
        ]
    assert verdicts == {"right": [1.0] * 12, "bare": [1.0] * 12, "off by one": [0.0] * 12, "in words": [0.0] * 12}


def test_too_few_questions_for_a_split_is_refused_naming_the_keys():
    args = task_args(task_num_train=12, task_num_eval=0, task_max_operand=4, task_num_eval_ood=10)
    with pytest.raises(ConfigError, match=r"`phrasings` split has only 4 pairs .* lower `task_num_eval_ood` \(10\)"):
        arithmetic.split(args, "phrasings")
    assert len(arithmetic.split(args, "subtraction")) == 10  # 10 pairs with a >= b in [1, 4]


def test_eval_splits_default_to_the_heldout_set_and_the_addition_forms():
    assert RSConfig().evaluation_splits() == ["heldout", "phrasings", "words", "stories"]
    assert RSConfig(dataset_test_split=None).evaluation_splits() == []  # evaluation off, as before
    assert RSConfig(dataset_name="openai/gsm8k", dataset_config="main").evaluation_splits() == ["heldout"]
    assert RSConfig(eval_splits="subtraction", dataset_test_split=None).evaluation_splits() == ["subtraction"]
    with pytest.raises(ConfigError, match=r"^`eval_splits` 'words': only the built-in tasks"):
        RSConfig(dataset_name="openai/gsm8k", eval_splits=["heldout", "words"])


def contains(big: dict, small: dict) -> bool:
    return all(k in big and big[k] == v for k, v in small.items())


def run_metrics(out, rounds: int) -> list[dict]:
    """Each round's metrics.json without the timings, which differ between any two runs."""
    metrics = [json.loads((out / f"round_{r}" / "metrics.json").read_text()) for r in range(rounds)]
    return [{k: v for k, v in m.items() if not k.startswith("timing/") and "tokens_per_s" not in k} for m in metrics]


def test_a_run_reports_every_split_keeps_the_heldout_numbers_and_resumes_them(tiny_model, tmp_path, capsys):
    settings = {
        "num_rounds": 2,
        "report_to": "none",
        "reward_funcs": ["tests.scorers_for_tests.length_reward"],
        "eval_reward_funcs": ["tests.scorers_for_tests.length_reward"],  # rewards that differ between completions
    }
    plain = tmp_path / "heldout_only"
    assert main(recipe_args(tiny_model, plain, eval_splits=["heldout"], **settings)) == 0
    out = tmp_path / "every_split"
    argv = recipe_args(tiny_model, out, eval_splits=["heldout", *arithmetic.EVAL_SPLITS], **settings)
    assert main(argv) == 0
    assert "phrasings_acc" in capsys.readouterr().out  # the end-of-run table has a column per split

    # Evaluating more sets changes neither the held-out numbers nor anything the run trains on. Exact, floats
    # included: both runs are in this process and each set is decoded greedily on its own, so what the runs share
    # is computed alike, in the same order.
    base, history = json.loads((out / "base_eval.json").read_text()), run_metrics(out, 2)
    plain_history = run_metrics(plain, 2)
    assert contains(base, json.loads((plain / "base_eval.json").read_text()))
    for m, p in zip(history, plain_history, strict=True):
        assert contains(m, p)
        assert m["eval/reward"] > 0  # a held-out evaluation did run
        for split in arithmetic.EVAL_SPLITS:
            assert m[f"eval/{split}/accuracy"] * 3 in (0, 1, 2, 3)  # `task_num_eval_ood` 3 in recipe_args
            assert m[f"eval/{split}/reward"] > 0 and f"eval/{split}/accuracy" in base
    every = json.loads((out / "round_1" / "metrics.json").read_text())
    assert all(every[f"timing/eval/{s}"] > 0 for s in ("heldout", *arithmetic.EVAL_SPLITS))
    assert history[1]["eval/accuracy_before"] == history[0]["eval/accuracy"]

    # A run killed before round 1's metrics.json, whose base_eval.json predates the other sets, resumes to the
    # same numbers: round 1 is evaluated again from its checkpoint, the base model on the sets the file lacks.
    (out / "round_1" / "metrics.json").unlink()
    (out / "base_eval.json").write_text(json.dumps({k: v for k, v in base.items() if k.count("/") == 1}))
    assert main(argv) == 0
    assert json.loads((out / "base_eval.json").read_text()) == base
    assert run_metrics(out, 2) == history  # exact: SFT's numbers are read back, round 1's weights loaded bit for bit


def test_the_report_draws_a_line_per_split_with_the_base_model_at_round_minus_one():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rs_trainer.run.report import plot_accuracy

    history = [
        {"round": 0, "eval/accuracy": 0.5, "eval/words/accuracy": 0.25, "eval/stories/accuracy": 0.75},
        {"round": 1, "eval/accuracy": 0.75, "eval/words/accuracy": 0.5, "eval/stories/accuracy": None},
    ]
    fig, ax = plt.subplots()
    plot_accuracy(ax, history, {"eval/accuracy": 0.25, "eval/words/accuracy": 0.0})
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    plt.close(fig)
    assert lines == {
        "heldout": ([-1, 0, 1], [0.25, 0.5, 0.75]),
        "stories": ([0, 1], [0.75, None]),
        "words": ([-1, 0, 1], [0.0, 0.25, 0.5]),
    }
