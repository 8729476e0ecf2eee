"""`index.html`: the run browser. One self-contained page that opens from `file://`, with no network, no server and
no CDN: its script and styles are inlined, its charts are drawn in SVG by that script.

    output_dir/index.html           rewritten after every round (and by `rs-trainer export html`)
    output_dir/round_<r>/page.js    the round's samples as page data, written once per round

The page shows the run (model, task, the resolved config; per round held-out accuracy, pass@1 and pass@N,
acceptance, KL and entropy, seconds per phase, each generator's share of the selected set) and a sample browser:
round -> prompt -> its samples, each with its reward (total and per scorer), generator, tokens, finished or
truncated, the filter that removed it and whether it was selected; and a prompt's samples in every round side by
side. A best-of-N folder gets the same page, its candidates as one round, with the reward-vs-n curve.

While the rounds' page data together stay under `INLINE_LIMIT` bytes, `index.html` holds all of it and is the only
file needed. Beyond that it holds the run and an index of each round (its counts), and loads a round's `page.js`
when that round is opened (a `<script src>`: the one way a `file://` page may read a file beside it).

Model text is data, never markup: it travels as JSON with `<`, `>` and `&` escaped (no `</script>` can end the
block), and the page puts it in the DOM as text nodes only. A Content-Security-Policy forbids every request but
the page's own scripts.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from rs_trainer.run.io import read_jsonl, write_atomic
from rs_trainer.run.layout import RunLayout
from rs_trainer.samples import passes

# Page data up to this size goes inside index.html. Chromium parses a 10,000-prompt x 16-sample round (29 MB) in
# about a second (BENCHMARKS.md, bench_browser.py); below 8 MB a whole run opens in well under one.
INLINE_LIMIT = 8_000_000
# One sample in the page data: a list in this order (the page reads them by name through this list).
SAMPLE_FIELDS = (
    "prompt",  # index into the round's `prompts`
    "sample_index",
    "completion",
    "reward",
    "rewards",  # per scorer, in the order of the round's `scorers`
    "generator",  # index into the round's `generators`
    "tokens",
    "finished",
    "filtered_by",  # the filter's recipe key, or null when no filter removed it
    "selected",
    "passed",  # `samples.passes` at the run's `pass_threshold`
    "gold",  # `verified_reward` (the verdict beside a reward model's score), or null
)
ASSETS = Path(__file__).with_name("page")


def safe_json(obj) -> str:
    """`obj` as compact JSON that is also safe inside an HTML `<script>` element: `<`, `>` and `&` become `\\u003c`
    and the like (they occur only inside strings in JSON), so model text cannot close the element or open a
    comment. NaN and infinities stay as JavaScript reads them.

    >>> safe_json({"t": "</script><b>&"})
    '{"t":"\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e\\\\u0026"}'
    """
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=str)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def prompt_text(prompt) -> str:
    """The text a person reads for a prompt: a single message's content; several as `[role]` blocks.

    >>> prompt_text([{"role": "user", "content": "2+2?"}])
    '2+2?'
    >>> prompt_text([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}])
    '[system]\\nBe brief.\\n\\n[user]\\n2+2?'
    """
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return str(prompt[0].get("content", ""))
    return "\n\n".join(f"[{m.get('role', '?')}]\n{m.get('content', '')}" for m in prompt)


def round_data(
    rows: list[dict], key: str, label: str, pass_threshold: float, generator_key: str = "generator"
) -> dict:
    """One round's rows as page data: its prompts (id, text), scorers and generators, and every sample as a list
    in `SAMPLE_FIELDS` order; with `counts` (samples, prompts, selected, filtered out, truncated, passing).

    `generator_key` names the row key that says where a sample came from (`model` in best-of-N folders).

    >>> d = round_data([{"prompt_id": "a", "prompt": "1+1?", "sample_index": 0, "completion": "2", "reward": 1.0,
    ...                  "rewards": {"exact": 1.0}, "generator": "policy", "completion_tokens": 2, "finished": True,
    ...                  "filtered_out": False, "selected": True}], "0", "round 0", 1.0)
    >>> d["prompts"], d["scorers"], d["samples"][0]
    ([['a', '1+1?']], ['exact'], [0, 0, '2', 1.0, [1.0], 0, 2, True, None, True, True, None])
    >>> d["counts"]
    {'samples': 1, 'prompts': 1, 'selected': 1, 'filtered_out': 0, 'truncated': 0, 'passing': 1}
    """
    prompt_index: dict[str, int] = {}
    prompts, generators, scorers = [], [], []
    for row in rows:
        for name in row.get("rewards") or {}:
            if name not in scorers:
                scorers.append(name)
    samples = []
    for row in rows:
        pid = str(row["prompt_id"])  # the page looks prompts up by the text of their id
        if pid not in prompt_index:
            prompt_index[pid] = len(prompts)
            prompts.append([pid, prompt_text(row.get("prompt", ""))])
        generator = str(row.get(generator_key) or "policy")
        if generator not in generators:
            generators.append(generator)
        filtered_by = row.get("filtered_by") or ("filter" if row.get("filtered_out") else None)
        per_scorer = row.get("rewards") or {}
        samples.append(
            [
                prompt_index[pid],
                row["sample_index"],
                row.get("completion", ""),
                row.get("reward"),
                [per_scorer.get(name) for name in scorers],
                generators.index(generator),
                row.get("completion_tokens"),
                bool(row.get("finished", True)),
                filtered_by,
                bool(row.get("selected")),
                passes(row, pass_threshold) if "reward" in row else False,
                row.get("verified_reward"),
            ]
        )
    counts = {
        "samples": len(samples),
        "prompts": len(prompts),
        "selected": sum(s[9] for s in samples),
        "filtered_out": sum(s[8] is not None for s in samples),
        "truncated": sum(not s[7] for s in samples),
        "passing": sum(s[10] for s in samples),
    }
    return {
        "key": key,
        "label": label,
        "fields": list(SAMPLE_FIELDS),
        "prompts": prompts,
        "generators": generators,
        "scorers": scorers,
        "samples": samples,
        "counts": counts,
    }


def page_data_script(data: dict) -> str:
    """A round's page data as the script `page.js` holds: its counts on the first line (a comment, read back by
    `read_counts` without parsing the rest), then one call that hands the data to the page."""
    return f"/* {json.dumps(data['counts'])} */\nrsRound({safe_json(data)});\n"


def read_counts(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        first = f.readline().strip()
    return json.loads(first.removeprefix("/*").removesuffix("*/"))


def render_page(run: dict, rounds: list[tuple[str, Path]], inline_limit: int = INLINE_LIMIT) -> str:
    """The HTML of the page: the run data (`run`, with `rounds`: key, label, counts, metrics), and each round's
    page data inlined when all of it is under `inline_limit` bytes, else named by its path relative to the page."""
    inline = sum(path.stat().st_size for _, path in rounds) <= inline_limit
    run = {**run, "lazy": not inline}
    script = "\n".join((ASSETS / name).read_text(encoding="utf-8") for name in ("draw.js", "page.js"))
    style = (ASSETS / "page.css").read_text(encoding="utf-8")
    blocks = [f"<script>{script}</script>", f"<script>rsRun({safe_json(run)});</script>"]
    if inline:
        blocks += [f"<script>{path.read_text(encoding='utf-8')}</script>" for _, path in rounds]
    title = run.get("title", "run")
    csp = "default-src 'none'; script-src 'unsafe-inline' file:; style-src 'unsafe-inline'; img-src 'none'"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title, quote=False)} · rs_trainer</title>",
            f"<style>{style}</style>",
            "</head><body>",
            "<noscript>This page draws itself with JavaScript; the same data is in the round folders' "
            "generations.jsonl.</noscript>",
            '<div id="app"></div>',
            *blocks,
            "<script>rsStart();</script>",
            "</body></html>",
            "",
        ]
    )


def write_run_page(output_dir: str | Path, inline_limit: int = INLINE_LIMIT) -> Path:
    """Write `output_dir/index.html` for a training run, from its files: `run_config.json`, `base_eval.json` and
    every finished round's `metrics.json` and `generations.jsonl` (turned into `round_<r>/page.js` once: a round's
    rows do not change after it finished). Returns the page's path."""
    files = RunLayout(output_dir)
    config = read_json(files.run_config) or {}
    rs, model = config.get("rs", {}), config.get("model", {})
    pass_threshold = float(rs.get("pass_threshold", 1.0))
    rounds, entries = [], []
    for r in files.rounds():
        if not files.metrics(r).exists() or not files.generations(r).exists():
            continue  # still running, or killed before its end
        page = files.page_data(r)
        if not page.exists() or page.stat().st_mtime < files.generations(r).stat().st_mtime:
            data = round_data(read_jsonl(files.generations(r)), str(r), f"round {r}", pass_threshold)
            write_atomic(page, page_data_script(data))
        rounds.append((str(r), page))
        metrics = read_json(files.metrics(r))
        entry = {"key": str(r), "label": f"round {r}", "src": f"round_{r}/page.js", "metrics": metrics}
        entries.append({**entry, "counts": read_counts(page)})
    run = {
        "kind": "run",
        "title": Path(output_dir).resolve().name,
        "model": model.get("model_name_or_path"),
        "task": rs.get("dataset_name"),
        "pass_threshold": pass_threshold,
        "config": config,
        "base_eval": read_json(files.base_eval),
        "rounds": entries,
    }
    write_atomic(files.index_page, render_page(run, rounds, inline_limit))
    return files.index_page


def write_best_of_n_page(output_dir: str | Path, pass_threshold: float, inline_limit: int = INLINE_LIMIT) -> Path:
    """Write `output_dir/index.html` for a best-of-N folder (`best_of_n.jsonl`, `best_of_n_metrics.json`): every
    prompt's candidates as one round, the best one selected, with the expected best-of-n reward against n."""
    out = Path(output_dir)
    rows = []
    for row in read_jsonl(out / "best_of_n.jsonl"):
        best = row["best"]["sample_index"] if row.get("best") else None
        for c in row["candidates"]:
            rows.append(
                {**c, "prompt_id": row["prompt_id"], "prompt": row["prompt"], "selected": c["sample_index"] == best}
            )
    data = round_data(rows, "bon", "best-of-N", pass_threshold, generator_key="model")
    page = out / "best_of_n_page.js"
    write_atomic(page, page_data_script(data))
    metrics = read_json(out / "best_of_n_metrics.json") or {}
    run = {
        "kind": "best_of_n",
        "title": out.resolve().name,
        "model": (metrics.get("models") or [None])[0],
        "pass_threshold": pass_threshold,
        "config": {},
        "best_of_n": metrics,
        "rounds": [{"key": "bon", "label": "best-of-N", "src": page.name, "metrics": {}, "counts": data["counts"]}],
    }
    index = out / "index.html"
    write_atomic(index, render_page(run, [("bon", page)], inline_limit))
    return index


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None
