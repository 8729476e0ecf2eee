"""Fixtures: tiny random Llama models built locally on the embedded SmolLM2 tokenizer (real chat template),
and small prompt files. Nothing is downloaded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once to a plain transformers folder."""
    from rs_trainer.models import convert_embedded

    return convert_embedded("SmolLM2-135M-Instruct")


def tiny_llama_config(tokenizer, max_positions: int = 256, **extra):
    """A 2-layer, 32-wide Llama config on `tokenizer`'s vocabulary and special tokens."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build_tiny_model(path: Path, tokenizer_dir: Path, max_positions: int = 256, seed: int = 0) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(tokenizer, max_positions, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_path)


@pytest.fixture(scope="session")
def short_context_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-ctx64"), embedded_path, max_positions=64)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    rows = [
        {"prompt_id": f"p{i}", "prompt": f"What is {i} + {i}? Give only the final number.", "answer": str(2 * i)}
        for i in range(6)
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def recipe_args(model_path, output_dir, **overrides) -> list[str]:
    """Command-line arguments for a small, fast run on the tiny model."""
    base = {
        "model_name_or_path": str(model_path),
        "output_dir": str(output_dir),
        "dataset_name": "builtin:arithmetic",
        "task_num_train": 6,
        "task_num_eval": 4,
        "num_rounds": 1,
        "num_samples_per_prompt": 2,
        "max_new_tokens": 4,
        "eval_max_new_tokens": 4,
        "per_device_train_batch_size": 2,
        "sft_epochs": 1,
        "selection": "top_k",
        "top_k": 4,
        "learning_rate": 1e-2,
    }
    base.update(overrides)
    argv = []
    for key, value in base.items():
        if isinstance(value, bool):
            argv += [f"--{key}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        else:
            argv += [f"--{key}", "none" if value is None else str(value)]
    return argv
