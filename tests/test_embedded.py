"""Two real rounds of the default recipe on the embedded SmolLM2-135M-Instruct, on a handful of prompts, through
`make demo`'s own command, as a user runs it: its outputs, its console's first lines, and its run browser
(index.html) in a real headless Chromium."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ARTIFACTS, REPO, PageLog, open_run_page, run_group, shown_count, shown_prompt_ids

from rs_trainer.run.io import read_jsonl
from rs_trainer.samples import passes

pytestmark = pytest.mark.slow


def demo_command(output_dir: Path, args: list[str]) -> list[str]:
    """`make demo`'s own command line, as make prints it (`make -n`), with this venv's programs. Under `make test`'s
    two pytest workers the run gets one thread (`LAUNCH_THREADS`, as conftest.py gives every worker): two threads
    beside the other worker's made this run take 629 s instead of about 120."""
    venv = Path(sys.executable).parent.parent
    threads = ["LAUNCH_THREADS=--num_cpu_threads_per_process 1"] if os.environ.get("PYTEST_XDIST_WORKER") else []
    shown = subprocess.run(
        ["make", "-n", "--no-print-directory", "demo", f"VENV={venv}", f"ARGS={shlex.join(args)}", *threads],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(line for line in shown.splitlines() if "accelerate launch" in line)
    return shlex.split(line) + ["--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Two rounds of the default recipe through `make demo`'s command, on 8 questions (the same 8 both rounds) x 4
    samples, in an environment like a user's shell (no OMP_NUM_THREADS: the Makefile sets the launcher's threads)."""
    tmp = tmp_path_factory.mktemp("demo")
    out = tmp / "run"
    args = [
        "--num_rounds", "2", "--task_num_train", "8", "--prompts_per_round", "8", "--num_generations", "4",
        "--max_completion_length", "16", "--task_num_eval", "8", "--task_num_eval_ood", "4",
        "--eval_max_new_tokens", "16",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "RS_TRAINER_VERBOSE")}
    # From the repository root, as `make demo` runs (the recipe and accelerate config are relative paths).
    proc = run_group(demo_command(out, args), timeout=900, cwd=REPO, env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_default_recipe_two_rounds_on_embedded_model(demo_run):
    out, proc = demo_run
    assert "eval_acc_after" in proc.stdout + proc.stderr  # the end-of-run table
    rows = read_jsonl(out / "round_0" / "generations.jsonl")
    assert len(rows) == 8 * 4
    assert len({(r["round"], r["prompt_id"], r["sample_index"]) for r in rows}) == 32
    assert all(r["reward"] in (0.0, 1.0) for r in rows)
    selected = [r for r in rows if r["selected"]]
    assert all(r["reward"] == 1.0 for r in selected)  # min_reward: 1.0 in the recipe
    assert all(r["finished"] for r in selected)  # drop_truncated: true in the recipe
    assert len({r["prompt_id"] for r in selected}) == len(selected)  # best-of-N: at most one per prompt
    # drop_truncated is the recipe's one filter: what it removed says so, and nothing else is marked.
    assert [r["filtered_by"] for r in rows] == ["drop_truncated" if r["filtered_out"] else None for r in rows]
    metrics = json.loads((out / "round_0" / "metrics.json").read_text())
    for key in (
        "rs/reward_mean",
        "rs/acceptance_rate",
        "rs/pass@1",
        "rs/pass@n",
        "eval/accuracy",
        "eval/accuracy_before",
        "eval/phrasings/accuracy",  # the default `eval_splits`: held-out, then the addition forms
        "eval/words/accuracy",
        "eval/stories/accuracy",
        "timing/generate",
        "timing/score",
        "timing/sft",
        "timing/eval",
        "timing/save",
    ):
        assert key in metrics
    assert metrics["rs/pass@n"] >= metrics["rs/pass@1"]
    assert (out / "round_0" / "checkpoint" / "adapter_model.safetensors").exists()
    assert (out / "round_1" / "checkpoint" / "adapter_model.safetensors").exists()
    assert (out / "index.html").exists() and (out / "round_1" / "page.js").exists()
    assert f"browse the run: {(out / 'index.html').resolve().as_uri()}" in proc.stdout


# Every line a run writes itself: its banner, the base model's evaluation, the per-round tables, the progress of
# each phase, and its one-line notes (`round <r>: ...`).
OWN_LINE = re.compile(r"^(rs_trainer: |base model: |round\b|-+\+|\s+\d+ \||browse the run: |\s*$)")


def test_the_console_starts_with_the_runs_own_lines(demo_run):
    """No third-party note before the run's own first screen (issue 37): the launcher's thread note, bitsandbytes'
    kernels hint, DeepSpeed's accelerator guess and transformers' loading bars are gone or answered."""
    _, proc = demo_run
    out_lines, err_lines = proc.stdout.splitlines(), proc.stderr.splitlines()
    assert out_lines[0].startswith("rs_trainer: embedded:SmolLM2-135M-Instruct (LoRA) on builtin:arithmetic: 2 rounds")
    strangers = [line for line in out_lines[:25] + err_lines[:25] if not OWN_LINE.match(line)]
    assert strangers == [], "\n".join(strangers)


def expected_rows(out: Path, r: int) -> list[dict]:
    return read_jsonl(out / f"round_{r}" / "generations.jsonl")


def test_run_page_shows_what_generations_jsonl_holds(demo_run, browser):
    out, _ = demo_run
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log = PageLog(page)
    ms = open_run_page(page, out / "index.html")
    assert ms < 5000
    for r in (0, 1):
        rows = expected_rows(out, r)
        page.click(f"nav.tabs a:has-text('round {r}')")
        page.wait_for_selector(f"nav.tabs a.on:has-text('round {r}')")
        assert shown_count(page, "count-samples") == len(rows) == 32
        assert shown_count(page, "count-prompts") == len({s["prompt_id"] for s in rows}) == 8
        assert shown_count(page, "count-selected") == sum(s["selected"] for s in rows)
        assert shown_count(page, "count-filtered") == sum(s["filtered_out"] for s in rows)
        assert shown_count(page, "count-truncated") == sum(not s["finished"] for s in rows)
        assert shown_count(page, "count-passing") == sum(passes(s, 1.0) for s in rows)
        assert shown_prompt_ids(page) == list(dict.fromkeys(s["prompt_id"] for s in rows))
    metrics = json.loads((out / "round_1" / "metrics.json").read_text())
    table = page.inner_text("#round-table")
    assert f"{100 * metrics['eval/accuracy']:.1f}%" in table and f"{100 * metrics['rs/pass@1']:.1f}%" in table
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "browser-run.png", full_page=True)
    assert [u for u in log.requests if not u.startswith(out.resolve().as_uri())] == []
    assert log.errors == []


def test_run_page_filters_show_the_rows_they_name(demo_run, browser):
    from playwright.sync_api import expect

    out, _ = demo_run
    rows = expected_rows(out, 1)
    page = browser.new_page()
    open_run_page(page, out / "index.html", "#round=1")
    by_prompt: dict[str, list[dict]] = {}
    for s in rows:
        by_prompt.setdefault(s["prompt_id"], []).append(s)

    page.check("#f-nopass")
    assert shown_prompt_ids(page) == [p for p, g in by_prompt.items() if not any(passes(s, 1.0) for s in g)]
    page.uncheck("#f-nopass")

    page.check("#f-selected")
    assert shown_prompt_ids(page) == [p for p, g in by_prompt.items() if any(s["selected"] for s in g)]
    assert shown_count(page, "shown-samples") == sum(s["selected"] for s in rows)
    page.uncheck("#f-selected")

    page.select_option("#f-generator", "policy")  # the recipe's one generator: every sample
    assert shown_count(page, "shown-samples") == len(rows)
    page.select_option("#f-generator", "")

    word = rows[0]["completion"].split()[0].lower()  # a word of a completion: its prompts, by text or completion
    page.fill("#f-search", word)
    want = [
        p
        for p, g in by_prompt.items()
        if word in (p + "\n" + g[0]["prompt"][-1]["content"]).lower()
        or any(word in s["completion"].lower() for s in g)
    ]
    expect(page.locator("#shown-prompts")).to_have_text(str(len(want)))  # after the page's typing pause
    assert shown_prompt_ids(page) == want and rows[0]["prompt_id"] in want
    page.fill("#f-search", "no completion holds this")
    expect(page.locator("#shown-prompts")).to_have_text("0")


def test_run_page_shows_one_prompt_in_every_round(demo_run, browser):
    out, _ = demo_run
    pid = expected_rows(out, 0)[0]["prompt_id"]  # the same 8 questions both rounds
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    open_run_page(page, out / "index.html")
    page.click(f"#prompt-table tr[data-prompt-id='{pid}'] a")
    page.wait_for_selector(".round-col[data-round='1'] .sample")
    assert page.inner_text("#prompt-id") == pid
    for r in (0, 1):
        want = [s for s in expected_rows(out, r) if s["prompt_id"] == pid]
        col = f".round-col[data-round='{r}']"
        assert page.eval_on_selector_all(f"{col} .sample", "n => n.map(c => +c.dataset.sampleIndex)") == [
            s["sample_index"] for s in want
        ]
        assert page.eval_on_selector_all(f"{col} .completion", "n => n.map(c => c.textContent)") == [
            s["completion"] for s in want
        ]
        assert page.locator(f"{col} .sample.selected").count() == sum(s["selected"] for s in want)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "browser-prompt.png", full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=ARTIFACTS / "browser-prompt-390px.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
