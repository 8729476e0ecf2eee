"""Our SFT step computes the same losses as `trl.SFTTrainer` on the same data, model and optimizer."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def test_first_losses_match_trl_sft_trainer(tiny_model, tmp_path):
    from bench_sft import make_examples, run_ours, run_trl

    from rs_trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    examples = make_examples(tokenizer, 12)
    ours = run_ours(tiny_model, tokenizer, examples, steps=3, batch_size=4, lr=1e-2)
    ref = run_trl(tiny_model, tokenizer, examples, steps=3, batch_size=4, lr=1e-2, out_dir=str(tmp_path))
    assert len(ref["losses"]) == 3
    assert ours["losses"][0] > 1.0  # a random model: a real, large loss
    for a, b in zip(ours["losses"], ref["losses"]):
        assert abs(a - b) < 1e-3, (ours["losses"], ref["losses"])
    assert ours["losses"][2] != ours["losses"][0]  # the steps did train
