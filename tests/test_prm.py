"""Process reward models: steps cut and aggregated as documented, each step's score read where the two published
heads put it (a token classifier at the tag's last token, as TRL's PRMTrainer trains; a causal LM's +/- logits at
Math-Shepherd's tag), checked against a forward pass written out by hand on tiny models built here; the rows keep
the steps' scores; a wrong PRM setting stops the run in one line."""

import json

import pytest
import torch
from helpers import recipe_args, tiny_llama_config

from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError
from rs_trainer.rewards import resolve_scorer, score
from rs_trainer.rewards.prm import PRMScorer, aggregate, parse_prm_entry, split_steps

PROMPTS = [[{"role": "user", "content": "What is 3 + 4 + 2?"}]] * 3
TEXTS = ["3 + 4 = 7\n7 + 2 = 9\nThe answer is 9.", "3 + 4 = 8\n\n8 + 2 = 10", ""]
COMPLETIONS = [[{"role": "assistant", "content": t}] for t in TEXTS]


def build_token_classifier(path, tokenizer_dir, num_labels=2, chat_template="keep"):
    from transformers import AutoTokenizer, LlamaForTokenClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template != "keep":
        tokenizer.chat_template = chat_template
    torch.manual_seed(0)
    model = LlamaForTokenClassification(tiny_llama_config(tokenizer, 512, num_labels=num_labels))
    with torch.no_grad():  # logits of order 1, so that a wrong position shows
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_causal_lm(path, tokenizer_dir):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, 512))
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def token_prm(tmp_path_factory, embedded_path):
    return build_token_classifier(tmp_path_factory.mktemp("prm-tc"), embedded_path)


@pytest.fixture(scope="module")
def shepherd_prm(tmp_path_factory, embedded_path):
    return build_causal_lm(tmp_path_factory.mktemp("prm-lm"), embedded_path)


def by_hand(model_dir, prompt, text, tag, read, lm=False):
    """Each step's score from one unbatched forward pass over the input written out here: the prompt through the
    chat template, then every step and the tag, read at the tag's last token by `read(logits_at_position)`."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    ids = tok.encode(
        tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )
    positions = []
    for step in [s.strip() for s in text.split("\n") if s.strip()]:
        ids += tok.encode(step, add_special_tokens=False) + tok.encode(tag, add_special_tokens=False)
        positions.append(len(ids) - 1)
    cls = AutoModelForCausalLM if lm else AutoModelForTokenClassification
    model = cls.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return [read(logits[p], tok) for p in positions]


def test_steps_are_cut_and_aggregated_as_documented():
    assert split_steps(TEXTS[0], "\n") == ["3 + 4 = 7", "7 + 2 = 9", "The answer is 9."]
    assert split_steps(TEXTS[1], "\n") == ["3 + 4 = 8", "8 + 2 = 10"]
    assert split_steps("a. b. c", ". ") == ["a", "b", "c"]
    assert split_steps("", "\n") == []
    assert aggregate([0.5, 0.25, 0.75], "min") == 0.25
    assert aggregate([0.5, 0.25, 0.75], "last") == 0.75
    assert aggregate([0.5, 0.25, 0.75], "product") == pytest.approx(0.09375, abs=1e-12)
    assert aggregate([0.5, 0.25, 0.75], "mean") == 0.5
    assert aggregate([], "mean") is None


def test_a_token_classifier_is_read_at_each_tags_last_token(token_prm):
    scorer = resolve_scorer(f"prm:{token_prm}")
    assert isinstance(scorer, PRMScorer) and scorer.head == "token_classification" and scorer.step_tag == "\n"
    rewards = scorer(PROMPTS, COMPLETIONS)

    def tc(logits, tok):
        return logits.softmax(-1)[1].item()

    # 2e-5: the scorer's batch pads rows on the right; the hand pass has no padding, so sums run in another order
    for i in (0, 1):
        expected = by_hand(token_prm, PROMPTS[i], TEXTS[i], "\n", tc)
        assert len(scorer.step_scores[i]) == len(expected) == (3, 2)[i]
        assert scorer.step_scores[i] == pytest.approx(expected, abs=2e-5)
        assert rewards[i] == pytest.approx(min(expected), abs=2e-5)
    assert scorer.step_scores[2] == [] and rewards[2] is None  # an empty completion: no opinion
    assert len({round(v, 4) for v in scorer.step_scores[0] + scorer.step_scores[1]}) == 5  # random head: all differ
    alone = scorer(PROMPTS[1:2], COMPLETIONS[1:2])  # a score does not depend on its batch
    assert alone[0] == pytest.approx(rewards[1], abs=2e-5)


def test_a_math_shepherd_style_lm_is_read_from_its_good_and_bad_logits_at_the_tag(shepherd_prm):
    entry = {"kind": "prm", "name": "shepherd", "model": str(shepherd_prm), "aggregate": "product"}
    scorer = resolve_scorer(entry)
    assert scorer.head == "step_tag" and scorer.step_tag == " ки" and scorer.__name__ == "shepherd"
    rewards = scorer(PROMPTS, COMPLETIONS)

    def lm(logits, tok):
        good, bad = tok.encode("+", add_special_tokens=False)[0], tok.encode("-", add_special_tokens=False)[0]
        return logits[[good, bad]].softmax(-1)[0].item()

    for i in (0, 1):
        expected = by_hand(shepherd_prm, PROMPTS[i], TEXTS[i], " ки", lm, lm=True)
        assert scorer.step_scores[i] == pytest.approx(expected, abs=2e-5)
        product = 1.0
        for v in expected:
            product *= v
        assert rewards[i] == pytest.approx(product, abs=2e-5)


def test_rows_keep_each_prms_step_scores(token_prm):
    rows = [
        {"prompt_id": f"p{i}", "sample_index": 0, "prompt": p, "completion": t}
        for i, (p, t) in enumerate(zip(PROMPTS, TEXTS, strict=True))
    ]
    scorer = resolve_scorer(f"prm:{token_prm}")
    out = score(
        rows, {"prm": scorer, "len": lambda prompts, completions, **_: [1.0] * len(prompts)}, {"prm": 1.0, "len": 1.0}
    )
    assert [len(o["step_scores"]["prm"]) for o in out] == [3, 2, 0]
    assert out[0]["reward"] == pytest.approx(min(out[0]["step_scores"]["prm"]) + 1.0, abs=1e-9)
    assert out[2]["rewards"]["prm"] is None and out[2]["reward"] == 1.0  # no opinion: the other scorer alone
    json.dumps(out)  # rows stay JSON


def test_a_one_label_head_scores_by_sigmoid_and_a_three_label_head_is_refused(tmp_path, embedded_path):
    one = build_token_classifier(tmp_path / "one", embedded_path, num_labels=1)
    scorer = resolve_scorer({"kind": "prm", "model": str(one), "aggregate": "last"})
    rewards = scorer(PROMPTS[:1], COMPLETIONS[:1])
    assert 0.0 < rewards[0] < 1.0 and rewards[0] == scorer.step_scores[0][-1]
    three = build_token_classifier(tmp_path / "three", embedded_path, num_labels=3)
    with pytest.raises(ValueError, match="has 3 labels per token"):
        resolve_scorer(f"prm:{three}")


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"kind": "prm", "model": "m", "aggregate": "median"}, "`aggregate` 'median' is unknown; choose min, last"),
        ({"kind": "prm", "model": "m", "head": "value"}, "`head` 'value' is unknown"),
        ({"kind": "prm", "model": "m", "step_tag": ""}, "`step_tag` '' marks no position to read"),
        ({"kind": "prm", "aggregate": "min"}, "`model` is missing"),
        ({"kind": "prm", "model": "m", "sep": "\n"}, "unknown keys ['sep']"),
        ({"kind": "grader", "model": "m"}, "needs `kind: judge`, `kind: prm` or `kind: likelihood`"),
    ],
)
def test_a_wrong_prm_entry_is_refused_by_name(entry, message):
    with pytest.raises(ConfigError) as err:
        RSConfig(reward_funcs=["numeric_answer", entry])
    assert "`reward_funcs[1]`" in str(err.value) and message in str(err.value)


def test_a_prm_that_cannot_load_stops_the_run_before_anything_is_written(tiny_model, tmp_path, capsys):
    from rs_trainer.cli import main

    out = tmp_path / "out"
    argv = recipe_args(
        tiny_model, out, reward_funcs=[f"prm:{tmp_path / 'no-such-prm'}"], eval_reward_funcs=["numeric_answer"]
    )
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("rs_trainer: error:") == 1 and "`reward_funcs`: prm:" in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.iterdir())
    assert parse_prm_entry(f"prm:{tmp_path}", "x").model == str(tmp_path)


@pytest.mark.slow
def test_a_round_selects_with_a_prm_and_writes_its_step_scores(token_prm, tiny_model, tmp_path):
    from rs_trainer.cli import main

    out = tmp_path / "out"
    argv = recipe_args(
        tiny_model,
        out,
        reward_funcs=[f"prm:{token_prm}"],
        eval_reward_funcs=["numeric_answer"],
        max_completion_length=12,
    )
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "round_0" / "generations.jsonl").read_text().splitlines()]
    name = f"prm:{token_prm}"
    for row in rows:
        steps = row["step_scores"][name]
        expected = min(steps) if steps else None
        assert row["rewards"][name] == (pytest.approx(expected, abs=1e-9) if steps else None)
        assert len(steps) == len([s for s in row["completion"].split("\n") if s.strip()])
    assert any(row["selected"] for row in rows)
