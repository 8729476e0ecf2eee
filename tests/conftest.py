"""Fixtures: tiny random Llama models built locally on the embedded SmolLM2 tokenizer (real chat template),
and small prompt files. Nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import Server, build_tiny_model, chromium_executable, write_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest worker per core (pytest-xdist): each worker, and every process it starts, then
    # computes on one thread. Two processes of two OpenMP threads each on two cores run several times slower than
    # one would alone (the waiting threads spin): measured, a one-round run went from 50 s to over 7 min.
    import torch

    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


# The files that take longest (minutes each, measured by `--durations`), started first when two workers share the
# files (`make test`): a long file left for last would keep one worker busy while the other sits idle.
LONGEST_FIRST = (
    "tests/test_vllm.py",
    "tests/test_zero3.py",
    "tests/test_fsdp2.py",
    "tests/test_multinode.py",
    "tests/test_kill_phases.py",
    "tests/test_generators.py",
    "tests/test_embedded.py",
)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable: the rest in order


@pytest.fixture(autouse=True)
def vllm_multiprocessing_restored():
    """`engine: vllm` on one process sets `VLLM_ENABLE_V1_MULTIPROCESSING=0` in this process, so that its engine
    runs here. Put back after each test: a vLLM server or run started later would inherit it, and on the CPU such
    a server runs its model in the engine's process instead of a worker of its own, as it would not for a user."""
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    before = os.environ.get(key)
    yield
    if before is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = before


_RSS_AFTER: dict[str, float] = {}  # test id -> this process's resident GiB once the test's memory was returned


@pytest.fixture(autouse=True)
def memory_returned(request):
    """After each `slow` test (the ones that load real models or start processes), collect its garbage and hand
    freed heap pages back to the system (glibc's `malloc_trim`), so that what a finished test loaded does not stay
    resident under the tests that follow. Records the resident size for the summary at the end."""
    yield
    import ctypes
    import gc

    import psutil

    if request.node.get_closest_marker("slow") is None:  # no real model nor process: nothing worth a collection
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
    _RSS_AFTER[request.node.nodeid] = psutil.Process().memory_info().rss / 2**30


def pytest_terminal_summary(terminalreporter):
    """The pytest process's own memory: its peak, and the tests after which it held the most."""
    if not _RSS_AFTER:
        return
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    largest = sorted(_RSS_AFTER.items(), key=lambda kv: -kv[1])[:5]
    terminalreporter.write_line(f"pytest process: peak resident {peak:.2f} GiB; most held after a test:")
    for test, gib in largest:
        terminalreporter.write_line(f"  {gib:5.2f} GiB  {test}")


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


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's, `make test` installs it) driven by Playwright, for one test module: Playwright's
    sync API keeps an event loop of its own, ended before the next module's servers and asyncio clients run."""
    exe = chromium_executable()
    if exe is None:
        message = "no Chromium: `apt-get install chromium` (`make test` does), or set CHROMIUM=/path/to/chromium"
        if os.environ.get("RS_TRAINER_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=exe)
        yield chromium
        chromium.close()
