import torch
from transformers import AutoModelForCausalLM

from rs_trainer.sft import IGNORE, build_example, collate, completion_loss, plan_batches


def test_labels_mask_the_prompt():
    ex = build_example([1, 2, 3], [7, 8, 9], max_len=100)
    assert ex["input_ids"] == [1, 2, 3, 7, 8, 9]
    assert ex["labels"] == [IGNORE, IGNORE, IGNORE, 7, 8, 9]
    assert build_example([1, 2, 3], [7], max_len=3) is None  # nothing left to learn


def test_loss_covers_completion_tokens_only(tiny_model):
    """Changing prompt tokens' targets cannot move the loss; changing a completion token must."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ex = build_example([10, 11, 12, 13], [20, 21, 22], max_len=100)
    batch = collate([ex], pad_id=0, device="cpu")
    loss, count = completion_loss(model, batch)
    assert count == 3
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits[3:], torch.tensor([20, 21, 22]))
    assert torch.allclose(loss, expected, atol=1e-5)
    # Padding rows and padded positions change nothing.
    other = build_example([10, 11], [30, 31, 32, 33, 34, 35], max_len=100)
    both, count2 = completion_loss(model, collate([ex, other], pad_id=0, device="cpu"))
    assert count2 == 3 + 6
    loss_other, _ = completion_loss(model, collate([other], pad_id=0, device="cpu"))
    assert torch.allclose(both, (loss * 3 + loss_other * 6) / 9, atol=1e-5)


def test_filler_batches_keep_ranks_in_step():
    examples = [{"input_ids": [i, i], "labels": [IGNORE, i]} for i in range(5)]
    r0 = plan_batches(examples, epochs=2, batch_size=2, rank=0, world_size=2, seed=0)
    r1 = plan_batches(examples, epochs=2, batch_size=2, rank=1, world_size=2, seed=0)
    assert len(r0) == len(r1) == 4  # ceil(5 / (2*2)) = 2 per epoch
    real = [e["input_ids"][0] for b in r0[:2] + r1[:2] for e in b if e.get("weight", 1.0) > 0]
    assert sorted(real) == list(range(5))  # one epoch: every example once over both ranks
    assert any(e.get("weight") == 0.0 for b in r1 for e in b)
