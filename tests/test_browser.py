"""The run browser (`rs_trainer.run.browser`) in a real headless Chromium, driven by Playwright: model text stays
text (no markup runs, nothing is requested), large runs load their rounds lazily, best-of-N folders get the page,
and a demo-sized run opens in under a second. The page of a real 2-round run of the embedded model is tested in
test_embedded.py."""

import json

import pytest
from helpers import ARTIFACTS, PageLog, open_run_page, shown_count, shown_prompt_ids, write_synthetic_run

from rs_trainer.run.browser import read_counts, round_data, safe_json, write_best_of_n_page, write_run_page
from rs_trainer.run.io import read_jsonl, write_json, write_jsonl
from rs_trainer.samples import passes

# Inspect View's viewer-xss spec, adapted: markup that runs script if it is ever parsed as HTML, and a tag that
# would end the inline <script> block holding the data.
PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    '<svg onload="window.__xss=2"></svg>',
    "</script><script>window.__xss=3</script>",
    '<iframe src="https://example.com/"></iframe>',
    '<a href="javascript:window.__xss=4">click</a>',
    "&lt;b&gt; stays as typed &amp;",
]


def payload_run(root, generator="<b>policy</b>"):
    """One round whose prompt ids, prompts, completions and generator name carry the payloads."""
    write_json(root / "run_config.json", {"model": {"model_name_or_path": "<i>m</i>"}, "rs": {"pass_threshold": 1.0}})
    rows = [
        {
            "prompt_id": f"x{i}<b>",
            "prompt": [{"role": "user", "content": f"prompt {payload}"}],
            "sample_index": 0,
            "completion": f"completion {payload}",
            "completion_tokens": 5,
            "finished": True,
            "generator": generator,
            "reward": 1.0,
            "rewards": {"<u>score</u>": 1.0},
            "filtered_out": False,
            "selected": True,
        }
        for i, payload in enumerate(PAYLOADS)
    ]
    write_jsonl(root / "round_0" / "generations.jsonl", rows)
    write_json(root / "round_0" / "metrics.json", {"round": 0})
    return rows


def test_page_data_escapes_markup_and_keeps_the_text():
    data = round_data(
        [{"prompt_id": "a", "prompt": "</script>", "sample_index": 3, "completion": "x & <y>\u2028", "reward": 0.5}],
        "0",
        "round 0",
        1.0,
    )
    text = safe_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == data  # the escapes are JSON's own: the page reads back the very same text
    assert data["samples"][0][:4] == [0, 3, "x & <y>\u2028", 0.5]
    assert data["counts"] == {
        "samples": 1,
        "prompts": 1,
        "selected": 0,
        "filtered_out": 0,
        "truncated": 0,
        "passing": 0,
    }


@pytest.mark.parametrize("lazy", [False, True], ids=["inline", "lazy"])
def test_model_text_renders_as_text_runs_nothing_and_requests_nothing(tmp_path, browser, lazy):
    rows = payload_run(tmp_path)
    index = write_run_page(tmp_path, inline_limit=0 if lazy else 10**9)
    page = browser.new_page()
    log = PageLog(page)
    open_run_page(page, index)
    assert sorted(shown_prompt_ids(page)) == sorted(r["prompt_id"] for r in rows)
    table = page.inner_text("#prompt-table")
    for payload in PAYLOADS:
        assert f"prompt {payload}" in table  # shown literally, as typed
    page.goto(index.resolve().as_uri() + "#prompt=" + "x2%3Cb%3E")
    page.wait_for_selector(".sample")
    assert page.inner_text(".sample .completion") == f"completion {PAYLOADS[2]}"
    assert "<b>policy</b>" in page.inner_text(".sample .meta")
    for i in range(len(PAYLOADS)):  # every prompt's own page: its completion is text too
        page.goto(index.resolve().as_uri() + f"#prompt=x{i}%3Cb%3E")
        page.wait_for_selector(".sample")
        assert page.inner_text(".sample .completion") == f"completion {PAYLOADS[i]}"
    assert page.evaluate("window.__xss") is None  # no handler, no injected script ran
    # No element came from model text: the only images, frames and links are the page's own.
    assert page.eval_on_selector_all("#app img, #app iframe, .sample svg, #prompt-table svg", "n => n.length") == 0
    assert page.eval_on_selector_all("a[href^='javascript']", "n => n.length") == 0
    expected = [index.resolve().as_uri()] + ([(tmp_path / "round_0" / "page.js").resolve().as_uri()] if lazy else [])
    assert [url.split("#")[0] for url in log.requests] == expected  # the page itself (and its data): nothing else
    assert log.errors == []


def test_a_large_run_loads_each_round_when_it_is_opened(tmp_path, browser):
    write_synthetic_run(tmp_path, rounds=2, prompts=150, samples=4)
    index = write_run_page(tmp_path, inline_limit=1000)  # each round's page.js is larger: every round lazy
    assert "p00000" not in index.read_text()  # the page holds the index (counts), not the samples
    page = browser.new_page()
    log = PageLog(page)
    open_run_page(page, index)  # opens on the last round
    round_files = [p.split("/")[-2] for p in log.requests if p.endswith("page.js")]
    assert round_files == ["round_1"]
    rows0 = read_jsonl(tmp_path / "round_0" / "generations.jsonl")
    page.click("nav.tabs a:has-text('round 0')")
    page.wait_for_selector("#prompt-table")
    assert [p.split("/")[-2] for p in log.requests if p.endswith("page.js")] == ["round_1", "round_0"]
    assert shown_count(page, "count-samples") == len(rows0) == 600
    assert shown_count(page, "shown-prompts") == 150
    assert shown_prompt_ids(page) == [f"p{i:05d}" for i in range(100)]  # the first page of 100
    page.click("#next")
    assert shown_prompt_ids(page) == [f"p{i:05d}" for i in range(100, 150)]
    assert read_counts(tmp_path / "round_0" / "page.js")["selected"] == sum(r["selected"] for r in rows0)
    assert log.errors == []


def test_a_demo_sized_run_opens_in_under_a_second(tmp_path, browser):
    """2 rounds x 96 prompts x 8 samples, the size of `make demo`, made up (the shape and size are what count)."""
    write_synthetic_run(tmp_path, rounds=2, prompts=96, samples=8, words=20)
    index = write_run_page(tmp_path)
    page = browser.new_page()
    open_run_page(page, index)  # a first load warms the browser's caches, as a second look at a page would
    ms = min(open_run_page(page, index) for _ in range(3))
    assert ms < 1000, f"the page took {ms:.0f} ms to draw itself"
    assert shown_count(page, "count-samples") == 96 * 8


def test_best_of_n_folder_gets_the_page_with_its_curve(tmp_path, browser):
    candidates = [
        {
            "model": m,
            "sample_index": i,
            "completion": f"{m} says {i}",
            "reward": float(i == 2),
            "rewards": {},
            "completion_tokens": 3,
            "finished": True,
        }
        for i, m in enumerate(["a", "a", "b", "b"])
    ]
    rows = [
        {
            "prompt_id": f"q{j}",
            "prompt": [{"role": "user", "content": f"question {j}"}],
            "best": candidates[2],
            "candidates": candidates,
        }
        for j in range(3)
    ]
    write_jsonl(tmp_path / "best_of_n.jsonl", rows)
    write_json(
        tmp_path / "best_of_n_metrics.json",
        {
            "n": [1, 2, 3, 4],
            "expected_reward": [0.25, 0.5, 0.75, 1.0],
            "num_prompts": 3,
            "candidates_per_prompt": 4,
            "models": ["a", "b"],
            "best_pass_rate": 1.0,
        },
    )
    index = write_best_of_n_page(tmp_path, pass_threshold=1.0)
    page = browser.new_page()
    open_run_page(page, index)
    assert page.eval_on_selector_all(".chart circle", "n => n.length") == 4  # the reward-vs-n curve's points
    assert shown_prompt_ids(page) == ["q0", "q1", "q2"]
    assert shown_count(page, "count-samples") == 12 and shown_count(page, "count-selected") == 3
    page.select_option("#f-generator", "b")
    assert shown_count(page, "shown-samples") == 6
    page.goto(index.resolve().as_uri() + "#prompt=q1")
    page.wait_for_selector(".sample")
    cards = "n => n.map(c => [c.dataset.sampleIndex, c.dataset.generator])"
    assert page.eval_on_selector_all(".sample", cards) == [["2", "b"], ["3", "b"]]  # the filter holds there too
    page.select_option("#f-generator", "")
    assert page.eval_on_selector_all(".sample", cards) == [["0", "a"], ["1", "a"], ["2", "b"], ["3", "b"]]
    assert page.inner_text(".sample.selected .completion") == "b says 2"


def test_phone_sized_window_stacks_the_rounds(tmp_path, browser):
    write_synthetic_run(tmp_path, rounds=2, prompts=6, samples=3)
    index = write_run_page(tmp_path)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    open_run_page(page, index, "#prompt=p00001")
    page.wait_for_selector(".round-col[data-round='1'] .sample")
    boxes = [page.locator(f".round-col[data-round='{r}']").bounding_box() for r in (0, 1)]
    assert boxes[1]["y"] >= boxes[0]["y"] + boxes[0]["height"]  # one above the other, not side by side
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the screen
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / "browser-phone-prompt.png", full_page=True)
    rows = read_jsonl(tmp_path / "round_1" / "generations.jsonl")
    want = [str(r["sample_index"]) for r in rows if r["prompt_id"] == "p00001"]
    assert (
        page.eval_on_selector_all(".round-col[data-round='1'] .sample", "n => n.map(c => c.dataset.sampleIndex)")
        == want
    )
    assert [passes(r, 1.0) for r in rows if r["prompt_id"] == "p00001"].count(True) == page.locator(
        ".round-col[data-round='1'] .badge.pass"
    ).count()
