"""The loss of an optimizer step depends on the effective batch only: one process with batch 8, one with batch 4
and accumulation 2, and two processes under torchrun with batch 4 each give the same first-step gradients and
the same adapter weights after three steps, on completions of very uneven length."""

import os
import sys

import pytest
import torch
from helpers import REPO, TORCHRUN, run_group

pytestmark = pytest.mark.slow
WORKER = str(REPO / "tests" / "sft_layout_worker.py")


def run(cmd: list[str], tmp_path) -> None:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = run_group(cmd, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_gradients_and_weights_agree_across_batch_layouts(tiny_model, tmp_path):
    layouts = {
        "batch8": [sys.executable, WORKER, str(tiny_model), "batch8.pt", "8", "1"],
        "batch4x2": [sys.executable, WORKER, str(tiny_model), "batch4x2.pt", "4", "2"],
        "2procs": [
            *[*TORCHRUN, "--nproc_per_node", "2"],
            *[WORKER, str(tiny_model), "2procs.pt", "4", "1"],
        ],
    }
    results = {}
    for name, cmd in layouts.items():
        run(cmd, tmp_path)
        results[name] = torch.load(tmp_path / f"{name}.pt")
    ref = results["batch8"]
    assert ref["steps"] == 3 and ref["grads"]
    for name in ("batch4x2", "2procs"):
        got = results[name]
        assert got["steps"] == 3
        for key, grad in ref["grads"].items():
            assert grad.abs().sum() > 0, key
            torch.testing.assert_close(got["grads"][key], grad, rtol=1e-4, atol=1e-7, msg=f"{name}: {key}")
        for key, weight in ref["weights"].items():
            torch.testing.assert_close(got["weights"][key], weight, rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")
        assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
