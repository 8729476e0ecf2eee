"""Every seed of a run, derived from the recipe's `seed` in one place, so that a resumed run draws what an
uninterrupted one would have drawn.

- `sampling_seed`: a generation's seed, per (round, stream, rank). Streams keep draws apart: each generator,
  each temperature of a probe and rationalization sample from their own stream.
- `round_seed`: the round's other draws: selection tie-breaks and seeded strategies, and the SFT order.

>>> sampling_seed(42, 1, generator_stream(2)) == 42 * 1_000_003 + 1009 + 2 * 7919
True
"""

from __future__ import annotations

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
