"""The LLM judge (`rs_trainer.rewards.judge`): a `kind: judge` entry of `reward_funcs`, against a real
`transformers serve` on 127.0.0.1 with the embedded SmolLM2-135M-Instruct as the judge; its mistakes refused
before anything is written; its replies cached so a rerun never asks twice."""

import json
import sys

import pytest
from helpers import SERVE, Server, recipe_args

from rs_trainer.cli import main
from rs_trainer.errors import ConfigError
from rs_trainer.rewards import resolve_scorers, score
from rs_trainer.rewards.judge import JudgeScorer, cache_root, parse_judge_entry
from rs_trainer.run.io import read_jsonl


def judge_entry(base_url: str, model: str, **extra) -> dict:
    return {"kind": "judge", "name": "grader", "base_url": base_url, "model": model, **extra}


PROMPTS = [
    {"prompt_id": "a", "prompt": [{"role": "user", "content": "What is 2 + 2?"}], "answer": "4"},
    {"prompt_id": "b", "prompt": [{"role": "user", "content": "What is 3 + 5?"}], "answer": "8"},
]


def rows(completions: list[str]) -> list[dict]:
    return [{**p, "sample_index": 0, "completion": c} for p, c in zip(PROMPTS, completions, strict=True)]


def ask(judge, samples: list[dict]) -> list:
    """The judge called as a round calls a scorer: prompts, completions as messages, the other columns."""
    completions = [[{"role": "assistant", "content": s["completion"]}] for s in samples]
    return judge(
        prompts=[s["prompt"] for s in samples], completions=completions, answer=[s["answer"] for s in samples]
    )


def test_an_unreachable_judge_stops_the_run_before_anything_is_written(tiny_model, tmp_path, capsys):
    from rs_trainer.run.servers import free_port

    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    argv = recipe_args(tiny_model, out, reward_funcs=["numeric_answer", judge_entry(dead, "m")])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rs_trainer: error: `reward_funcs`: grader: ")
    assert f"{dead} does not answer; start the server or fix `base_url`" in err[0]
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"combine": "median"}, "`combine` 'median' is unknown; choose one of ('mean', 'vote')"),
        ({"template": "Grade {prompt}."}, "`template` has no `{completion}`"),
        ({"temperature": 0.7}, "unknown keys ['temperature']"),
        ({"max_tokens": 0}, "`max_tokens` must be a whole number >= 1, got 0"),
        ({"command": "vllm serve {model} --port {port}"}, "give `base_url` (a server that runs already) or `command`"),
        ({"base_url": "", "command": "vllm serve {model}"}, "`command` has no `{port}`; it may use `{model}`"),
        ({"base_url": "", "command": "serve --port {port} --gpu {gpu}"}, "`command` has unknown fields ['gpu']"),
        (
            {"base_url": "", "command": "vllm serve {model} --port {port}", "model": ["a", "b"]},
            "`command` serves `{model}`, one model, but `model` lists 2",
        ),
    ],
)
def test_a_wrong_judge_setting_is_one_line_naming_it(tmp_path, capsys, extra, message):
    argv = [
        "--output_dir",
        str(tmp_path / "run"),
        "--reward_funcs",
        json.dumps({**judge_entry("http://h/v1", "m"), **extra}),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "`reward_funcs[0]` (judge grader): " in err[0] and message in err[0], err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_judge_through_a_real_server_scores_caches_and_counts_unreadable_replies(tmp_path, embedded_path, monkeypatch):
    monkeypatch.setenv("RS_TRAINER_CACHE", str(tmp_path / "cache"))
    server = Server(tmp_path / "server").start()
    try:
        template = (
            "Question: {prompt}\nReference answer: {answer}\nResponse: {completion}\nIs the response right? Yes or No."
        )
        entry = judge_entry(server.base_url, str(embedded_path), template=template)
        scorers, _ = resolve_scorers("reward_funcs", [entry], None, None, PROMPTS, "test")
        judge = scorers["grader"]
        samples = rows(["4", "9"])
        first = ask(judge, samples)
        assert len(first) == 2 and all(v in (0.0, 1.0, None) for v in first)
        assert judge.unparsed == [i for i, v in enumerate(first) if v is None]
        cached = [row for path in cache_root().rglob("*.jsonl") for row in read_jsonl(path)]
        assert len(cached) == 2 and {row["model"] for row in cached} == {str(embedded_path)}
        # A reply with no number, read as `number`: no opinion, counted, never a 0.
        banana = judge_entry(server.base_url, str(embedded_path), name="banana", score="number",
                             template="Say the word banana and nothing else. {completion}")  # fmt: skip
        scorers, weights = resolve_scorers("reward_funcs", [banana], None, None, PROMPTS, "test")
        got = score(samples, scorers, weights)
        assert [g["reward"] for g in got] == [None, None]
        assert [g.get("judge_unparsed") for g in got] == [["banana"], ["banana"]]
        # `yes_prob` reads log-probabilities, which `transformers serve` does not return: refused before a run.
        probs = judge_entry(server.base_url, str(embedded_path), name="probs", score="yes_prob")
        with pytest.raises(ConfigError, match=r"`reward_funcs`: probs: .*log-probabilities"):
            resolve_scorers("reward_funcs", [probs], None, None, PROMPTS, "test")
    finally:
        server.stop()
    # The server is gone: the same questions are answered from the cache, the same way.
    again = JudgeScorer(parse_judge_entry(entry, "judge"))
    assert ask(again, samples) == first


def test_a_template_field_no_prompt_has_is_refused(tmp_path, monkeypatch):
    """Checked before the endpoint is asked anything: here no server answers at all."""
    entry = judge_entry("http://127.0.0.1:9/v1", "m", template="{completion} vs {reference}")
    judge = JudgeScorer(parse_judge_entry(entry, "judge"))
    from rs_trainer.rewards.columns import check_scorer_columns

    with pytest.raises(ConfigError, match=r"Scorer 'grader' needs the ground-truth column `reference`, which 2"):
        check_scorer_columns({"grader": judge}, PROMPTS, "test")


@pytest.mark.slow
def test_a_run_ranks_with_the_judge_and_a_rerun_asks_nothing_again(tiny_model, tmp_path, embedded_path, monkeypatch):
    monkeypatch.setenv("RS_TRAINER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    server = Server(tmp_path / "server").start()
    try:
        entry = judge_entry(server.base_url, str(embedded_path), max_tokens=4)
        argv = recipe_args(tiny_model, out, reward_funcs=[entry, "numeric_answer"], reward_weights=[1.0, 1.0],
                           eval_reward_funcs=["numeric_answer"])  # fmt: skip
        assert main(argv) == 0
        generated = read_jsonl(out / "round_0" / "generations.jsonl")
        assert all(set(r["rewards"]) == {"grader", "numeric_answer"} for r in generated)
        for r in generated:  # the total is the sum of the opinions given; the verifier's verdict is apart
            given = [v for v in r["rewards"].values() if v is not None]
            assert r["reward"] == (sum(given) if given else None)
            assert r["verified_reward"] == r["rewards"]["numeric_answer"]
        metrics = json.loads((out / "round_0" / "metrics.json").read_text())
        assert metrics["rs/judge_unparsed"] == sum(bool(r.get("judge_unparsed")) for r in generated)
        asked = [row for path in cache_root().rglob("*.jsonl") for row in read_jsonl(path)]
        distinct = {(r["prompt_id"], r["completion"]) for r in generated}
        assert len(asked) == len(distinct)  # one question per distinct (prompt, completion), none twice
        assert main([*argv, "--overwrite_output_dir", "true"]) == 0  # the same seeded samples again
        again = [row for path in cache_root().rglob("*.jsonl") for row in read_jsonl(path)]
        assert len(again) == len(asked)
        same = [(r["prompt_id"], r["sample_index"], r["completion"], r["rewards"]) for r in generated]
        rerun = read_jsonl(out / "round_0" / "generations.jsonl")
        assert [(r["prompt_id"], r["sample_index"], r["completion"], r["rewards"]) for r in rerun] == same
    finally:
        server.stop()


def test_a_judge_server_that_does_not_start_stops_the_run_naming_the_judge(tiny_model, tmp_path, capsys):
    """`command`: the run starts the server last, after every other check; one that exits at once stops the run with
    the judge's name, the exit code and its log, which the run keeps."""
    out = tmp_path / "run"
    command = f"{sys.executable} -c 'import sys; sys.exit(\"no GPU here\")' --port {{port}}"
    entry = {"kind": "judge", "name": "grader", "command": command, "model": "m"}
    assert main(recipe_args(tiny_model, out, reward_funcs=["numeric_answer", entry])) == 2
    err = capsys.readouterr().err
    assert err.startswith("rs_trainer: error: `reward_funcs`: judge 'grader': `"), err
    assert "exited with code 1 before answering" in err and "no GPU here" in err
    assert (out / "judge-grader.log").read_text().strip() == "no GPU here"
    assert sorted(p.name for p in out.iterdir()) == ["judge-grader.log"]  # nothing else was written


@pytest.mark.slow
def test_a_run_serves_its_judge_itself_and_stops_it(tiny_model, tmp_path, embedded_path, monkeypatch):
    """`command` in place of `base_url`: a real `transformers serve` started by the run, asked for every sample, its
    log in `output_dir`, and gone when the run returns."""
    import psutil

    monkeypatch.setenv("RS_TRAINER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    hub = tmp_path / "hub"
    command = f"env HF_HUB_CACHE={hub} OMP_NUM_THREADS=1 {SERVE} serve --host {{host}} --port {{port}} --device cpu"
    entry = {"kind": "judge", "name": "grader", "command": command, "model": str(embedded_path), "max_tokens": 4}
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    argv = recipe_args(tiny_model, out, reward_funcs=[entry, "numeric_answer"], eval_reward_funcs=["numeric_answer"])
    assert main(argv) == 0
    generated = read_jsonl(out / "round_0" / "generations.jsonl")
    asked = [row for path in cache_root().rglob("*.jsonl") for row in read_jsonl(path)]
    assert len(asked) == len({(r["prompt_id"], r["completion"]) for r in generated}) > 0
    assert all("grader" in r["rewards"] for r in generated)
    assert "serve" in (out / "judge-grader.log").read_text().lower()  # the server's own log, kept with the run
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in before and c.is_running()]
    assert not [c for c in left if c.status() != psutil.STATUS_ZOMBIE], [c.cmdline() for c in left]
