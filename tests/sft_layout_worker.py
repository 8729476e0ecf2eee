"""One SFT run for `test_sft_layouts.py`: the same examples and seed under a given micro-batch size, gradient
accumulation and process count (run it plainly or under torchrun). Rank 0 saves the gradients of the first step
and the trainable weights after the last.

    python tests/sft_layout_worker.py MODEL OUT.pt BATCH ACCUM
"""

import random
import sys

import torch
from accelerate import Accelerator
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, get_scheduler

from rs_trainer.phases.sft import build_example, plan_steps, train_steps

NUM_EXAMPLES, EPOCHS = 24, 1


def examples() -> list[dict]:
    """Prompts of 3..12 tokens and completions of 1..40: uneven lengths are what tells the losses apart."""
    rng = random.Random(0)
    out = []
    for _ in range(NUM_EXAMPLES):
        prompt = [rng.randrange(10, 1000) for _ in range(rng.randint(3, 12))]
        completion = [rng.randrange(10, 1000) for _ in range(rng.choice([1, 2, 3, 25, 40]))]
        out.append(build_example(prompt, completion, 256))
    return out


def main(model_path: str, out: str, batch_size: int, accum: int) -> None:
    acc = Accelerator(cpu=True)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"
    )
    model = get_peft_model(model, config)
    with torch.no_grad():  # B starts at zero; give it values so every adapter weight has a gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model, opt = acc.prepare(model, opt)
    steps = plan_steps(examples(), EPOCHS, batch_size, accum, acc.process_index, acc.num_processes, seed=7)
    first_grads = {}

    def capture(optimizer, *_):
        if not first_grads:
            for name, p in acc.unwrap_model(model).named_parameters():
                if p.requires_grad:
                    first_grads[name] = p.grad.detach().clone()

    opt.optimizer.register_step_pre_hook(capture)
    sched = get_scheduler("constant", opt)
    losses, _ = train_steps(acc, model, opt, sched, steps, pad_id=0, max_grad_norm=0.0)
    if acc.is_main_process:
        weights = {n: p.detach().clone() for n, p in acc.unwrap_model(model).named_parameters() if p.requires_grad}
        torch.save({"grads": first_grads, "weights": weights, "losses": losses, "steps": len(steps)}, out)


if __name__ == "__main__":
    from helpers import leave_together

    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    leave_together()
