"""The run browser at a real size: one round of 10,000 prompts x 16 samples (made-up rows, 20 words a completion),
its page written, then opened in headless Chromium (Playwright, Debian's `chromium`).

    .venv/bin/python benchmarks/bench_browser.py [--prompts 10000] [--samples 16] [--words 20]

Prints the file sizes, the seconds Python takes to write the page, and in the browser: the time from navigation
until the page has drawn itself with its data, a search over every completion, the no-passing-sample filter, and
one prompt's page. Both layouts side by side: `lazy` (the default beyond `INLINE_LIMIT`: index.html holds the
index, the round's page.js loads when the round is opened) and `inline` (everything in index.html, forced), with
the ratio lazy / inline. Each browser figure is the best of 3 loads in one browser.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import table  # noqa: E402
from helpers import chromium_executable, open_run_page, write_synthetic_run  # noqa: E402

from rs_trainer.run.browser import INLINE_LIMIT, write_run_page  # noqa: E402


def timed_in_browser(page, index: Path, prompts: int) -> dict:
    """Milliseconds: load to ready (best of 3), a search, the no-passing filter, one prompt's page."""
    from playwright.sync_api import expect

    expect.set_options(timeout=120_000)
    load = min(open_run_page(page, index) for _ in range(3))
    shown = page.locator("#shown-prompts")
    every = f"{prompts:,}"

    def until(action, check) -> float:  # Playwright's own polling: the page's CSP forbids evaluating strings
        start = time.perf_counter()
        action()
        check()
        return 1000 * (time.perf_counter() - start)

    # `fill` fires the input event; the page waits 150 ms (a typing pause) before it filters: not counted.
    search = until(lambda: page.fill("#f-search", "carry carry carry"), lambda: expect(shown).not_to_have_text(every))
    search -= 150
    page.fill("#f-search", "")
    expect(shown).to_have_text(every)
    nopass = until(lambda: page.check("#f-nopass"), lambda: expect(shown).not_to_have_text(every))
    page.uncheck("#f-nopass")
    prompt = until(
        lambda: page.goto(index.resolve().as_uri() + f"#prompt=p{prompts // 2:05d}"),
        lambda: page.locator(".sample").first.wait_for(),
    )
    return {"load_ms": load, "search_ms": search, "no_pass_filter_ms": nopass, "prompt_page_ms": prompt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--words", type=int, default=20)
    ns = parser.parse_args()
    exe = chromium_executable()
    if exe is None:
        sys.exit("bench_browser: no Chromium; install Debian's `chromium` or set CHROMIUM=/path/to/it")
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    try:
        run = write_synthetic_run(tmp / "run", rounds=1, prompts=ns.prompts, samples=ns.samples, words=ns.words)
        rows = []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe)
            for layout, limit in (("lazy", INLINE_LIMIT), ("inline", 10**12)):
                (run / "round_0" / "page.js").unlink(missing_ok=True)  # each layout pays for its own page data
                start = time.perf_counter()
                index = write_run_page(run, inline_limit=limit)
                write_s = time.perf_counter() - start
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                row = {
                    "layout": layout,
                    "index.html MB": index.stat().st_size / 1e6,
                    "page.js MB": (run / "round_0" / "page.js").stat().st_size / 1e6,
                    "write s": write_s,
                    **timed_in_browser(page, index, ns.prompts),
                }
                page.close()
                rows.append(row)
            browser.close()
        print(f"{ns.prompts} prompts x {ns.samples} samples ({ns.prompts * ns.samples} rows), {ns.words} words each")
        print(table(rows))
        lazy, inline = rows
        print(f"load time lazy / inline: {lazy['load_ms'] / inline['load_ms']:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
