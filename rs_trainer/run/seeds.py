"""Every seed of a run, derived from the recipe's `seed` in one place, so that a resumed run draws what an
uninterrupted one would have drawn.

- `sampling_seed`: a generation's seed, per (round, stream, rank). Streams keep draws apart: each generator,
  each temperature of a probe and rationalization sample from their own stream. `batch_seed` and `request_seed`
  derive from it the seed of one in-process batch and of one request to a server.
- `round_seed`: the round's other draws: selection tie-breaks (`tie_draw`), seeded strategies (`rso_rng`) and the
  matched-random control (`matched_random_rng`), the
  SFT order (`sft_order_rng`) and the rows KL is measured on (`kl_rows_rng`); `global_seed` reseeds the global
  RNGs (dropout) at the start of a round and of its SFT.
- The draws that are not per round: the prompts of a round (`prompt_draw_rng`), the probe's prompts
  (`probe_draw_rng`), the arithmetic task's questions (`arithmetic_rng`) and those of each of its evaluation splits
  (`arithmetic_split_rng`), and the offline tools' draws (`dpo_draw_rng`, `reward_split_rng`, `same_form_rng`,
  `label_budget_rng`).

Each `random.Random` is seeded by a tagged string (`"sft:{seed}:{epoch}"`): the tags keep draws apart, and they are
part of the result. Changing one changes every run's draws, and a resumed run no longer matches an uninterrupted
one; the values below pin them.

>>> sampling_seed(42, 1, generator_stream(2)) == 42 * 1_000_003 + 1009 + 2 * 7919
True
>>> batch_seed(7, 0), request_seed(7, "p1", 3), tie_draw(7, "p1", 3)
(1664739778, 1088407693, 9623938390176125641)
>>> [round(rng.random(), 6) for rng in (prompt_draw_rng(1, 2), probe_draw_rng(1, 2), rso_rng(1, "p"),
...  sft_order_rng(1, 0), kl_rows_rng(1, 2, 0), dpo_draw_rng(1, 2, "p"), reward_split_rng(1), arithmetic_rng(1, 1, 9))]
[0.754281, 0.333482, 0.078885, 0.159297, 0.12422, 0.326682, 0.69554, 0.082756]
>>> round(arithmetic_split_rng(1, "words", 1, 9).random(), 6), round(matched_random_rng(1, "p").random(), 6)
(0.13431, 0.131908)
"""

from __future__ import annotations

import hashlib
import random

RATIONALIZATION_STREAM = 104_729


def sampling_seed(seed: int, round_index: int, stream: int = 0, rank: int = 0) -> int:
    return seed * 1_000_003 + round_index * 1009 + stream + rank


def generator_stream(index: int) -> int:
    """The stream of the recipe's `index`-th generator."""
    return 7919 * index


def probe_stream(index: int) -> int:
    """The stream of the `index`-th temperature of a `temperature: auto` probe."""
    return 31337 * (index + 1)


def round_seed(seed: int, round_index: int) -> int:
    return seed * 1000 + round_index


def global_seed(seed: int, round_index: int) -> int:
    """The seed of the global RNGs (`accelerate.utils.set_seed`: dropout, any unseeded draw) in round
    `round_index`, set before its samples and again before its SFT, so a resumed round draws the same."""
    return seed + round_index


def _digest(text: str, size: int) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed of one in-process generation batch, from the generation's `sampling_seed`."""
    return _digest(f"{seed}:{batch_index}", 4)


def request_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """A distinct, reproducible seed per request to a server, from (seed, prompt, sample)."""
    return _digest(f"{seed}:{prompt_id}:{sample_index}", 4) & 0x7FFFFFFF


def tie_draw(seed: int, prompt_id: str, sample_index: int) -> int:
    """Selection's tie-break among equal rewards: a draw per (seed, prompt, sample), the same every run."""
    return _digest(f"{seed}:{prompt_id}:{sample_index}", 8)


def prompt_draw_rng(seed: int, round_index: int) -> random.Random:
    """The draw of a round's prompts (`prompts_per_round`)."""
    return random.Random(f"prompts:{seed}:{round_index}")


def probe_draw_rng(seed: int, round_index: int) -> random.Random:
    """The draw of a `temperature: auto` probe's prompts."""
    return random.Random(f"temperature-probe:{seed}:{round_index}")


def rso_rng(seed: int, prompt_id: str) -> random.Random:
    """RSO's accept/reject draws for one prompt; `seed` is the round's."""
    return random.Random(f"rso:{seed}:{prompt_id}")


def same_form_rng(seed: int, split: str, lo: int, hi: int) -> random.Random:
    """The questions on which a reward model's same-form accuracy is measured (`tools.same_form`)."""
    return random.Random(f"same-form-{split}:{seed}:{lo}:{hi}")


def label_budget_rng(seed: int, round_index: int | None) -> random.Random:
    """Which pairs of a round a reward model's label budget buys (`pairs_per_round`)."""
    return random.Random(f"label-budget:{seed}:{round_index}")


def matched_random_rng(seed: int, prompt_id: str) -> random.Random:
    """The matched-random control's draw among one prompt's candidates; `seed` is the round's."""
    return random.Random(f"matched-random:{seed}:{prompt_id}")


def sft_order_rng(seed: int, epoch: int) -> random.Random:
    """The order of SFT's examples in `epoch`; `seed` is the round's."""
    return random.Random(f"sft:{seed}:{epoch}")


def kl_rows_rng(seed: int, round_index: int, rank: int) -> random.Random:
    """The draw of the rows a rank measures KL and entropy on (`kl_samples`)."""
    return random.Random(f"kl:{round_seed(seed, round_index)}:{rank}")


def dpo_draw_rng(seed: int, round_index: int | None, prompt_id: str) -> random.Random:
    """`best_vs_random`'s draw of the rejected sample of one prompt of one round."""
    return random.Random(f"dpo:{seed}:{round_index}:{prompt_id}")


def reward_split_rng(seed: int) -> random.Random:
    """Which prompts a reward model holds out."""
    return random.Random(f"reward-split:{seed}")


def arithmetic_rng(seed: int, lo: int, hi: int) -> random.Random:
    """The arithmetic task's questions, for operands in [lo, hi]."""
    return random.Random(f"arithmetic:{seed}:{lo}:{hi}")


def arithmetic_split_rng(seed: int, split: str, lo: int, hi: int) -> random.Random:
    """The questions of the arithmetic task's evaluation split `split`, for operands in [lo, hi]: each split
    draws apart from the others and from the training questions."""
    return random.Random(f"arithmetic-{split}:{seed}:{lo}:{hi}")
