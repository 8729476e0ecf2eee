"""The baseline a user writes first: rejection sampling in ~60 lines of transformers + peft, no rs_trainer loop.

`model.generate` with its defaults (so top-k 50), T=0.8 every round, best-of-N keeping the shortest right answer,
truncated samples kept, LoRA r=16 on all linear layers, AdamW at a constant lr, loss on the completion only. It
reads the same questions and scores with the same verifier as `make demo`, so its numbers sit in one table with
the recipe's (benchmarks/sweep_generalization.py). Writes `<out>/summary.json`.
    .venv/bin/python benchmarks/plain_loop.py --seed 42 --out outputs/sweep/plain-loop-s42
"""

import argparse
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from rs_trainer.rewards.verifiers import numeric_answer
from rs_trainer.run.io import write_json
from rs_trainer.run.models import resolve_model_path
from rs_trainer.tasks import arithmetic

p = argparse.ArgumentParser()
p.add_argument("--seed", type=int, default=42)
p.add_argument("--out", required=True)
p.add_argument("--eval_splits", default="test,phrasings,words,stories")
p.add_argument("--num_eval", type=int, default=64)
p.add_argument("--num_eval_ood", type=int, default=64)
p.add_argument("--prompts_per_round", type=int, default=96)
a = p.parse_args()
task = SimpleNamespace(
    task_num_train=256,
    task_num_eval=a.num_eval,
    task_num_eval_ood=a.num_eval_ood,
    task_min_operand=1,
    task_max_operand=20,
    seed=a.seed,
)
train, evals = arithmetic.split(task, "train"), {s: arithmetic.split(task, s) for s in a.eval_splits.split(",")}
path = resolve_model_path("embedded:SmolLM2-135M-Instruct")
tok = AutoTokenizer.from_pretrained(path, padding_side="left")
model = get_peft_model(
    AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
    LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear"),
)
opt = torch.optim.AdamW([w for w in model.parameters() if w.requires_grad], lr=2e-4, weight_decay=0.0)
random.seed(a.seed), torch.manual_seed(a.seed)
text = lambda row: tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)  # noqa: E731


@torch.no_grad()
def complete(rows, n=1, **kw):  # batches of 8 prompts; n samples each, in order
    global tokens
    model.eval()
    outs = []
    for i in range(0, len(rows), 8):
        enc = tok([text(r) for r in rows[i : i + 8]], return_tensors="pt", padding=True)
        gen = model.generate(**enc, max_new_tokens=32, num_return_sequences=n, pad_token_id=tok.pad_token_id, **kw)
        new = gen[:, enc["input_ids"].shape[1] :]
        ends = (new == tok.eos_token_id).int()  # tokens up to and including the end token, as rs_trainer counts
        tokens += int(torch.where(ends.any(1), ends.argmax(1) + 1, new.shape[1]).sum()) if kw.get("do_sample") else 0
        outs += tok.batch_decode(new, skip_special_tokens=True)
    return outs


def accuracy(rows):
    done = complete(rows, do_sample=False)
    return sum(numeric_answer(None, done, [r["answer"] for r in rows])) / len(rows)


tokens = 0
log = {"base": {s: accuracy(r) for s, r in evals.items()}, "rounds": []}
start = time.time()
for r in range(2):
    prompts = random.sample(train, a.prompts_per_round)
    samples = complete(prompts, n=8, do_sample=True, temperature=0.8)  # transformers' defaults: top-k 50
    chosen = []
    for i, row in enumerate(prompts):
        group = samples[i * 8 : (i + 1) * 8]
        right = [c for c, ok in zip(group, numeric_answer(None, group, [row["answer"]] * 8), strict=True) if ok]
        if right:
            chosen.append((text(row), min(right, key=len) + tok.eos_token))
    model.train()
    for _ in range(2):
        random.shuffle(chosen)
        for i in range(0, len(chosen), 8):
            prompt_ids = [tok(q, add_special_tokens=False)["input_ids"] for q, _ in chosen[i : i + 8]]
            full = [q + c for q, c in chosen[i : i + 8]]
            enc = tok(full, return_tensors="pt", padding=True, add_special_tokens=False, padding_side="right")
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
            for row, ids in zip(labels, prompt_ids, strict=True):
                row[: len(ids)] = -100
            model(**enc, labels=labels).loss.backward()
            opt.step(), opt.zero_grad()
    log["rounds"].append({"selected": len(chosen), **{s: accuracy(rows) for s, rows in evals.items()}})
    print(r, log["rounds"][-1], flush=True)
log.update(completion_tokens=tokens, seconds=round(time.time() - start, 1))
Path(a.out).mkdir(parents=True, exist_ok=True)
write_json(Path(a.out, "summary.json"), log)  # atomic: whole or absent, the sweep reads it
