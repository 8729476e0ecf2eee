"""Our SFT step computes the same losses as `trl.SFTTrainer` on the same data, model and optimizer, with and
without gradient accumulation."""

import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.parametrize("batch_size,grad_accum", [(4, 1), (2, 2)])
def test_first_losses_match_trl_sft_trainer(tiny_model, tmp_path, batch_size, grad_accum):
    from bench_sft import make_examples, run_ours, run_trl

    from rs_trainer.run.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    examples = make_examples(tokenizer, 12)
    kwargs = {"steps": 3, "batch_size": batch_size, "lr": 1e-2, "grad_accum": grad_accum}
    ours = run_ours(tiny_model, tokenizer, examples, **kwargs)
    ref = run_trl(tiny_model, tokenizer, examples, out_dir=str(tmp_path), **kwargs)
    assert len(ref["losses"]) == 3
    assert ours["losses"][0] > 1.0  # a random model: a real, large loss
    for a, b in zip(ours["losses"], ref["losses"], strict=True):
        assert abs(a - b) < 1e-3, (ours["losses"], ref["losses"])
    assert ours["losses"][2] != ours["losses"][0]  # the steps did train
