"""The generative reward model (`kind: likelihood`): a causal LM's log-probability of the answer a completion states,
checked against a forward pass written out by hand on a tiny model built here; a LoRA adapter folder scores as its
merged model; the embedded SmolLM2 ranks right sums above the same sums off by one; a round selects with it; a wrong
entry stops the run in one line."""

import json

import pytest
import torch
from helpers import recipe_args, tiny_llama_config

from rs_trainer.config import RSConfig
from rs_trainer.errors import ConfigError
from rs_trainer.rewards import resolve_scorer, scorer_name
from rs_trainer.rewards.likelihood import LikelihoodScorer, LikelihoodSpec
from rs_trainer.rewards.verifiers import last_number_span

PROMPT = [{"role": "user", "content": "What is 13 + 7?"}]
TEXTS = ["13 + 7 = 20.", "The answer is 21", "no number here", "-4"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory, embedded_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = tmp_path_factory.mktemp("likelihood-lm")
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    torch.manual_seed(2)
    model = LlamaForCausalLM(tiny_llama_config(tokenizer, 512))
    with torch.no_grad():  # log-probabilities far from uniform, so that a wrong position or token shows
        model.lm_head.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def by_hand(model_dir, text: str, whole: bool, alone: str | None = None) -> tuple[float, int] | None:
    """The summed log-probability of the tokens of `text`'s last number (or of all of `text`) after the prompt's
    chat template, and their count, from one unbatched forward pass; `alone`: the number after that prefix, without
    the rest of `text`. Which characters a token covers is found by decoding the ids one more at a time, not from the
    tokenizer's offsets (what the scorer reads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    head = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    span = (0, len(text)) if whole else last_number_span(text)
    if span is None:
        return None
    if alone is not None:
        text, span = alone + text[span[0] : span[1]], (len(alone), len(alone) + span[1] - span[0])
    lo, hi = len(head) + span[0], len(head) + span[1]
    ids = tok.encode(head + text, add_special_tokens=False)
    ends = [len(tok.decode(ids[: k + 1])) for k in range(len(ids))]
    chosen = [k for k in range(1, len(ids)) if ends[k - 1] < hi and ends[k] > lo]
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logp[k - 1, ids[k]].item() for k in chosen), len(chosen)


@pytest.mark.parametrize(
    ("span", "context", "reduce"),
    [
        ("answer", "prompt", "sum"),
        ("answer", "", "sum"),  # context prompt, no answer prefix
        ("answer", "completion", "sum"),
        ("completion", "completion", "sum"),
        ("answer", "completion", "mean"),
    ],
)
def test_the_score_is_the_log_probability_of_the_answers_tokens(tiny_lm, span, context, reduce):
    prefix, context = ("The answer is ", context) if context else ("", "prompt")
    spec = LikelihoodSpec(
        model=str(tiny_lm), span=span, context=context, answer_prefix=prefix, reduce=reduce, max_tokens_per_batch=40
    )
    scorer = LikelihoodScorer(spec)
    scores = scorer([PROMPT] * len(TEXTS), [[{"role": "assistant", "content": t}] for t in TEXTS])
    for text, got in zip(TEXTS, scores, strict=True):
        alone = prefix if span == "answer" and context == "prompt" else None
        expected = by_hand(tiny_lm, text, whole=span == "completion", alone=alone)
        if expected is None:
            assert got is None, text
            continue
        total, count = expected
        # float32 sums of the same products in another order (a batch of 2 rows, padded, against 1 row)
        assert got == pytest.approx(total / count if reduce == "mean" else total, rel=1e-4, abs=1e-4), text
    assert scorer.__name__ == f"likelihood:{tiny_lm}"


def test_read_after_the_prompt_alone_a_copied_number_gains_nothing(tiny_lm):
    """`context: prompt` scores the answer as the model would give it itself, after "The answer is ": the rest of
    the completion, where a wrong answer written twice or a number copied from the question would make it likely,
    is never read."""
    alone = LikelihoodScorer(LikelihoodSpec(model=str(tiny_lm)))
    in_place = LikelihoodScorer(LikelihoodSpec(model=str(tiny_lm), context="completion"))
    texts = ["20", "13 + 7 = 20.", "13 + 7 = 20. The answer is 20", "13 + 7 = 21", "13 + 7 ="]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    got = alone([PROMPT] * len(texts), completions)
    # The same input ids give the same score; rows of one batch may still go through different GEMM kernels on some
    # CPUs, hence the float tolerance. Other answers, or the same one read in place, differ by far more.
    same = pytest.approx(got[0], abs=1e-5)
    assert got[1] == same and got[2] == same and abs(got[3] - got[0]) > 1e-3, got  # "The answer is 20"
    assert got[4] == pytest.approx(alone([PROMPT], [[{"role": "assistant", "content": "7"}]])[0], abs=1e-5)
    assert any(abs(x - got[0]) > 1e-3 for x in in_place([PROMPT] * 3, completions[:3]))


def test_a_lora_adapter_scores_as_its_merged_model(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(3)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_lm),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    model.save_pretrained(adapter)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(adapter)
    model.merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(tiny_lm).save_pretrained(merged)
    completions = [[{"role": "assistant", "content": t}] for t in TEXTS[:2]]
    from_adapter = LikelihoodScorer(LikelihoodSpec(model=str(adapter)))([PROMPT] * 2, completions)
    from_merged = LikelihoodScorer(LikelihoodSpec(model=str(merged)))([PROMPT] * 2, completions)
    base = LikelihoodScorer(LikelihoodSpec(model=str(tiny_lm)))([PROMPT] * 2, completions)
    assert from_adapter == pytest.approx(from_merged, abs=1e-4)  # float32, the same merge done twice
    assert all(abs(a - b) > 1e-3 for a, b in zip(from_adapter, base, strict=True))  # the adapter did change them


def test_the_embedded_model_ranks_right_sums_above_the_same_sums_off_by_one(embedded_path):
    """Easy sums written out, the answer read in place: SmolLM2-135M-Instruct predicts each one's result after
    "a + b =", so the right answer outscores the same text off by one by a wide margin (every pair below by more
    than 4 nats when this was written)."""
    scorer = resolve_scorer({"kind": "likelihood", "model": str(embedded_path), "context": "completion"})
    sums = [(2, 3), (4, 4), (10, 5), (6, 3), (7, 2)]
    prompts, completions = [], []
    for a, b in sums:
        for x in (a + b, a + b + 1):
            prompts.append([{"role": "user", "content": f"What is {a} + {b}?"}])
            completions.append([{"role": "assistant", "content": f"{a} + {b} = {x}"}])
    scores = scorer(prompts, completions)
    assert all(right > wrong for right, wrong in zip(scores[::2], scores[1::2], strict=True)), scores


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"kind": "likelihood", "model": "m", "span": "last"},
            "`span` 'last' is unknown; choose answer or completion",
        ),
        ({"kind": "likelihood", "model": "m", "reduce": "max"}, "`reduce` 'max' is unknown; choose sum or mean"),
        (
            {"kind": "likelihood", "model": "m", "context": "x"},
            "`context` 'x' is unknown; choose prompt or completion",
        ),
        ({"kind": "likelihood", "model": "m", "span": "completion", "context": "prompt"}, "is read in place"),
        ({"kind": "likelihood", "model": "m", "answer_prefix": 3}, "`answer_prefix` must be text"),
        ({"kind": "likelihood", "span": "answer"}, "`model` is missing"),
        ({"kind": "likelihood", "model": "m", "tag": "x"}, "unknown keys ['tag']"),
        ({"kind": "grader", "model": "m"}, "needs `kind: judge`, `kind: prm` or `kind: likelihood`"),
    ],
)
def test_a_wrong_likelihood_entry_is_refused_by_name(entry, message):
    with pytest.raises(ConfigError) as err:
        RSConfig(reward_funcs=["numeric_answer", entry])
    assert "`reward_funcs[1]`" in str(err.value) and message in str(err.value)


def test_a_likelihood_model_that_does_not_exist_stops_the_run_before_anything_is_written(tiny_model, tmp_path, capsys):
    from rs_trainer.cli import main

    out = tmp_path / "out"
    entry = {"kind": "likelihood", "model": str(tmp_path / "no-such-model")}
    argv = recipe_args(tiny_model, out, reward_funcs=[entry], eval_reward_funcs=["numeric_answer"])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("rs_trainer: error:") == 1 and "`reward_funcs`: likelihood:" in err and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_a_round_selects_with_the_generative_reward_model(tiny_lm, tiny_model, tmp_path):
    """Each prompt keeps its most likely completion (the tiny model writes no digits, hence `span: completion`)."""
    from rs_trainer.cli import main

    out = tmp_path / "out"
    entry = {"kind": "likelihood", "model": str(tiny_lm), "name": "lm", "span": "completion", "reduce": "mean"}
    argv = recipe_args(
        tiny_model,
        out,
        reward_funcs=[entry],
        eval_reward_funcs=["numeric_answer"],
        selection="best_of_n",
        selection_top_k=None,
        num_generations=3,
        max_completion_length=6,
    )
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "round_0" / "generations.jsonl").read_text().splitlines()]
    assert scorer_name(entry) == "lm"
    by_prompt = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row)
    assert len(by_prompt) == 6 and all(len(mine) == 3 for mine in by_prompt.values())
    for prompt_id, mine in by_prompt.items():
        scores = [r["rewards"]["lm"] for r in mine if r["rewards"]["lm"] is not None]
        chosen = [r for r in mine if r["selected"]]
        assert all(s < 0 for s in scores) and len(chosen) == (1 if scores else 0), prompt_id
        assert not chosen or chosen[0]["rewards"]["lm"] == max(scores), prompt_id
