import pytest

from rs_trainer.rewards import ScorerError, resolve_scorer, score
from rs_trainer.rewards.verifiers import final_number, numeric_answer
from rs_trainer.tasks.arithmetic import make_splits


def samples(completions, answer="7"):
    return [
        {
            "prompt_id": "p",
            "sample_index": i,
            "prompt": [{"role": "user", "content": "3+4?"}],
            "completion": c,
            "answer": answer,
            "solution": answer,
        }
        for i, c in enumerate(completions)
    ]


def test_final_number():
    assert final_number("3 + 4 = 7.") == 7.0
    assert final_number("It is 1,234") == 1234.0
    assert final_number("-3") == -3.0
    assert final_number("none") is None


def test_numeric_answer_verifier():
    comps = [[{"role": "assistant", "content": t}] for t in ["7", "3 + 4 = 7", "8", "seven"]]
    assert numeric_answer(None, comps, answer=["7"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert numeric_answer(None, comps[:1], answer=[None]) == [None]


def test_weighted_combination_keeps_each_scorer():
    scorers = {
        "numeric_answer": resolve_scorer("numeric_answer"),
        "len": resolve_scorer("tests.scorers_for_tests.length_reward"),
    }
    out = score(samples(["7", "8"]), scorers, {"numeric_answer": 2.0, "len": 0.5})
    assert out[0] == {"reward": 2.0 * 1 + 0.5 * 1, "rewards": {"numeric_answer": 1.0, "len": 1.0}}
    assert out[1]["reward"] == 0.5


def test_trl_accuracy_reward_by_dotted_path():
    fn = resolve_scorer("trl.rewards.accuracy_reward")
    out = score(samples([r"The answer is $\boxed{7}$", r"$\boxed{8}$"]), {"acc": fn}, {"acc": 1.0})
    assert [o["reward"] for o in out] == [1.0, 0.0]


def test_scorer_errors_name_the_scorer():
    with pytest.raises(ValueError, match="neither built-in"):
        resolve_scorer("nope")
    bad_len = {"short": lambda prompts, completions, **kw: [1.0]}
    with pytest.raises(ScorerError, match="'short' returned 1 rewards for 2 samples"):
        score(samples(["a", "b"]), bad_len, {"short": 1.0})
    missing = {"numeric_answer": numeric_answer}
    rows = [{k: v for k, v in s.items() if k not in ("answer",)} for s in samples(["7"])]
    with pytest.raises(ScorerError, match="numeric_answer.*answer"):
        score(rows, missing, {"numeric_answer": 1.0})


def test_arithmetic_splits_are_deterministic_and_disjoint():
    a, b = make_splits(50, 20, 1, 20, 3), make_splits(50, 20, 1, 20, 3)
    assert a == b
    train = {r["prompt"][0]["content"] for r in a["train"]}
    test = {r["prompt"][0]["content"] for r in a["test"]}
    assert not train & test and len(train) == 50
    with pytest.raises(ValueError, match="distinct pairs"):
        make_splits(5, 5, 1, 2, 0)
