"""`RunLayout`: the one owner of a run's file names. Every reader and writer (the trainer, resume, the exporters)
asks it for a path; nothing else spells `round_<r>` or a file name.

    output_dir/
      run_config.json        the semantic config, checked when a run is resumed
      base_eval.json         the base model's evaluation, on every set of `eval_splits`
      base_eval.jsonl        its greedy completions, one row per prompt of every set, with reward and `passed`
      summary.json           every round's metrics, when the run ends
      report.png             the plots, redrawn each round
      index.html             the run browser (`run.browser`), rewritten each round; opens from file://
      merged/                `push_to_hub`: the last round's policy as one model folder, with its model card
      round_<r>/
        shards/generations.rank<k>.jsonl   rows appended as they are generated (removed once scored)
        temperature_probe.json             `temperature: auto`: the probe's table and choice
        served_model/, server-<name>.log   a managed server's model folder (removed after) and log
        sft.jsonl            the selected rows in TRL's SFT format
        generations.jsonl    every row, scored and marked `selected` (written after sft.jsonl: marks the phase done)
        checkpoint/          the adapter or model, with the round's SFT statistics (`TRAIN_METRICS`)
        eval.jsonl           the round's greedy completions on every evaluation set, as base_eval.jsonl
        samples.md           best and worst samples, whole
        page.js              the round's samples as the run browser's page data
        metrics.json         written last: the round is finished
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

TRAIN_METRICS = "rs_train_metrics.json"  # inside a checkpoint: the round's SFT statistics


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # ---- the run
    @property
    def run_config(self) -> Path:
        return self.root / "run_config.json"

    @property
    def base_eval(self) -> Path:
        return self.root / "base_eval.json"

    @property
    def base_eval_rows(self) -> Path:
        return self.root / "base_eval.jsonl"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.png"

    @property
    def index_page(self) -> Path:
        return self.root / "index.html"

    def run_files(self) -> list[Path]:
        """What a new run in the same folder replaces (`overwrite_output_dir`), besides the round folders."""
        return [self.summary, self.base_eval, self.base_eval_rows, self.report, self.index_page]

    def rounds(self) -> list[int]:
        """The numbers of the round folders present, in numeric order (round_10 after round_2)."""
        found = (re.fullmatch(r"round_(\d+)", p.name) for p in self.root.glob("round_*") if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    # ---- one round
    def round(self, r: int) -> Path:
        return self.root / f"round_{r}"

    def shards(self, r: int) -> Path:
        return self.round(r) / "shards"

    def shard(self, r: int, rank: int) -> Path:
        return self.shards(r) / f"generations.rank{rank}.jsonl"

    def temperature_probe(self, r: int) -> Path:
        return self.round(r) / "temperature_probe.json"

    def served_model(self, r: int) -> Path:
        return self.round(r) / "served_model"

    def server_log(self, r: int, generator: str) -> Path:
        return self.round(r) / f"server-{generator}.log"

    def judge_log(self, judge: str) -> Path:
        """The log of a judge's server that the run started (`kind: judge` with `command`), for the whole run."""
        return self.root / f"judge-{judge}.log"

    def sft_set(self, r: int) -> Path:
        return self.round(r) / "sft.jsonl"

    def generations(self, r: int) -> Path:
        return self.round(r) / "generations.jsonl"

    def checkpoint(self, r: int) -> Path:
        return self.round(r) / "checkpoint"

    def reward_model(self, r: int) -> Path:
        """The reward model `reward_model_refresh` trained after round `r`, on the samples of rounds 0..r."""
        return self.round(r) / "reward_model"

    def samples_table(self, r: int) -> Path:
        return self.round(r) / "samples.md"

    def eval_rows(self, r: int) -> Path:
        return self.round(r) / "eval.jsonl"

    def page_data(self, r: int) -> Path:
        return self.round(r) / "page.js"

    def metrics(self, r: int) -> Path:
        return self.round(r) / "metrics.json"
