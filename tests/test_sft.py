import pytest
import torch
from transformers import AutoModelForCausalLM

from rs_trainer.phases.sft import (
    IGNORE,
    build_example,
    collate,
    completion_loss,
    count_targets,
    plan_steps,
    reset_optimizer,
)


def test_labels_mask_the_prompt():
    ex = build_example([1, 2, 3], [7, 8, 9], max_len=100)
    assert ex["input_ids"] == [1, 2, 3, 7, 8, 9]
    assert ex["labels"] == [IGNORE, IGNORE, IGNORE, 7, 8, 9]
    assert build_example([1, 2, 3], [7], max_len=3) is None  # nothing left to learn


def test_loss_sums_completion_tokens_only(tiny_model):
    """Changing prompt tokens' targets cannot move the loss; changing a completion token must. The loss is a sum
    over tokens, so two batches' sums add up, whatever their lengths."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    ex = build_example([10, 11, 12, 13], [20, 21, 22], max_len=100)
    batch = collate([ex], pad_id=0, device="cpu")
    loss, count = completion_loss(model, batch)
    assert count == 3 == count_targets(ex)
    logits = model(input_ids=batch["input_ids"]).logits[0, :-1]
    expected = torch.nn.functional.cross_entropy(logits[3:], torch.tensor([20, 21, 22]), reduction="sum")
    assert torch.allclose(loss, expected, atol=1e-5)
    # Padding rows and padded positions change nothing; a filler (weight 0) adds neither loss nor tokens.
    other = build_example([10, 11], [30, 31, 32, 33, 34, 35], max_len=100)
    both, count2 = completion_loss(model, collate([ex, other], pad_id=0, device="cpu"))
    assert count2 == 3 + 6
    loss_other, _ = completion_loss(model, collate([other], pad_id=0, device="cpu"))
    assert torch.allclose(both, loss + loss_other, atol=1e-5)
    filler = {**other, "weight": 0.0}
    with_filler, count3 = completion_loss(model, collate([ex, filler], pad_id=0, device="cpu"))
    assert count3 == 3 == count_targets(ex) + count_targets(filler)
    assert torch.allclose(with_filler, loss, atol=1e-5)


def real_ids(steps):
    return [sorted(e["input_ids"][0] for m in step for e in m if e.get("weight", 1.0) > 0) for step in steps]


def test_a_step_holds_the_same_examples_whatever_the_layout():
    """Batch 8; batch 4 x accumulation 2; 2 ranks x batch 4; 2 ranks x batch 2 x accumulation 2: every optimizer
    step trains on the same examples, and ranks take equal numbers of steps and micro-batches."""
    examples = [{"input_ids": [i, i], "labels": [IGNORE, i]} for i in range(21)]  # 21: a short last step

    def layout(batch, accum, world):
        per_rank = [plan_steps(examples, 2, batch, accum, rank, world, seed=3) for rank in range(world)]
        assert len({len(p) for p in per_rank}) == 1
        for s in range(len(per_rank[0])):
            assert len({len(p[s]) for p in per_rank}) == 1, "ranks disagree on micro-batches in a step"
            assert all(len(m) <= batch for p in per_rank for m in p[s])
        merged = [[m for p in per_rank for m in p[s]] for s in range(len(per_rank[0]))]
        return real_ids(merged)

    reference = layout(8, 1, 1)
    assert len(reference) == 6 and sorted(sum(reference[:3], [])) == list(range(21))  # each example once an epoch
    assert layout(4, 2, 1) == layout(4, 1, 2) == layout(2, 2, 2) == layout(1, 8, 1) == reference


def test_a_rank_with_nothing_left_trains_on_fillers():
    examples = [{"input_ids": [i, i], "labels": [IGNORE, i]} for i in range(5)]
    r0 = plan_steps(examples, epochs=1, batch_size=2, grad_accum=1, rank=0, world_size=2, seed=0)
    r1 = plan_steps(examples, epochs=1, batch_size=2, grad_accum=1, rank=1, world_size=2, seed=0)
    assert len(r0) == len(r1) == 2  # ceil(5 / (2*2))
    assert sorted(sum(real_ids(r0) + real_ids(r1), [])) == list(range(5))
    assert [e.get("weight") for e in r1[1][0]] == [0.0]  # the fifth example went to rank 0; rank 1 has a filler
    assert count_targets(r1[1][0][0]) == 0


def test_reset_optimizer_forgets_the_moments(tiny_model):
    from accelerate import Accelerator

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()
    assert len(opt.state) > 0 and all(int(s["step"]) == 1 for s in opt.state.values())
    reset_optimizer(opt)
    assert len(opt.state) == 0
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    opt.step()  # the state is built again, from step 1
    assert all(int(s["step"]) == 1 for s in opt.state.values())


def test_optimizer_state_is_freed_after_a_rounds_sft(tiny_model, tmp_path):
    """AdamW's moments (2 x the trainable parameters) are not held through generation and evaluation."""
    from helpers import recipe_args

    from rs_trainer.cli import parse_args
    from rs_trainer.trainer import RejectionSamplingTrainer

    args, model_args = parse_args(
        recipe_args(tiny_model, tmp_path / "run", reward_funcs=["tests.scorers_for_tests.length_reward"])
    )
    trainer = RejectionSamplingTrainer(args, model_args)
    trainer.setup()
    rows = [
        {"prompt_id": p["prompt_id"], "completion": "12", "finished": True} for p in trainer.inputs.train_prompts[:4]
    ]
    stats = trainer.learner.fit(rows, 0)
    assert stats["train/steps"] > 0
    assert len(trainer.optimizer.state) == 0


def test_gradient_checkpointing_trains_the_same(tiny_model, tmp_path):
    """`gradient_checkpointing: true` turns checkpointing on and leaves the step's loss and weights unchanged."""
    from helpers import recipe_args

    from rs_trainer.cli import parse_args
    from rs_trainer.trainer import RejectionSamplingTrainer

    results = []
    for on in (False, True):
        argv = recipe_args(
            tiny_model,
            tmp_path / f"run-{on}",
            reward_funcs=["tests.scorers_for_tests.length_reward"],
            gradient_checkpointing=on,
            use_peft=True,
            lora_target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
        )
        args, model_args = parse_args(argv)
        torch.manual_seed(0)
        trainer = RejectionSamplingTrainer(args, model_args)
        trainer.setup()
        model = trainer.accelerator.unwrap_model(trainer.model)
        inner = model.base_model.model  # transformers 5.23 names it is_activation_checkpointing, 5.19 as below
        assert getattr(inner, "is_activation_checkpointing", None) in (on, None)
        assert any(getattr(m, "gradient_checkpointing", False) for m in inner.modules()) == on
        rows = [
            {"prompt_id": p["prompt_id"], "completion": "12", "finished": True}
            for p in trainer.inputs.train_prompts[:4]
        ]
        stats = trainer.learner.fit(rows, 0)
        lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        results.append((stats["train/loss"], lora))
    (loss_off, off), (loss_on, on_) = results
    assert loss_on == pytest.approx(loss_off, rel=1e-5)
    assert all(torch.allclose(off[n], on_[n], atol=1e-6) for n in off) and any(off[n].abs().sum() > 0 for n in off)
