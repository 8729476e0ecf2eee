"""Fixtures: tiny random Llama models built locally on the embedded SmolLM2 tokenizer (real chat template),
and small prompt files. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Server, build_tiny_model, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once to a plain transformers folder."""
    from rs_trainer.run.models import convert_embedded

    return convert_embedded("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), embedded_path)


@pytest.fixture(scope="session")
def short_context_model(tmp_path_factory, embedded_path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama-ctx64"), embedded_path, max_positions=64)


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    rows = [
        {"prompt_id": f"p{i}", "prompt": f"What is {i} + {i}? Give only the final number.", "answer": str(2 * i)}
        for i in range(6)
    ]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


@pytest.fixture(scope="session")
def sampling_model(tmp_path_factory, tiny_model) -> Path:
    """The tiny model with a generation config that samples: `transformers serve` decodes greedily otherwise."""
    import shutil

    from transformers import GenerationConfig

    path = tmp_path_factory.mktemp("tiny-llama-sampling")
    shutil.copytree(tiny_model, path, dirs_exist_ok=True)
    config = GenerationConfig.from_pretrained(path)
    config.do_sample = True
    config.save_pretrained(path)
    return path


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server").start()
    yield srv
    srv.stop()
