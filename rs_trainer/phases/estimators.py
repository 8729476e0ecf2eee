"""Estimators of what N samples buy, pure: rewards in, numbers out. Best-of-N inference (`rs_trainer.tools.best_of_n`)
draws its curve with them, and `temperature: auto` (`rs_trainer.phases.temperature`) picks a temperature by them.

- `expected_best_of_n`: the unbiased estimate of E[max reward of n samples] from N >= n samples of one prompt;
- `best_of_n_curve`: that estimate for n = 1..N, averaged over prompts;
- `kl_bound`: the analytic KL of the best-of-n policy from the base policy (Beirami et al. 2024).
"""

from __future__ import annotations

import math
from fractions import Fraction


def _exact_sorted(rewards: list[float]) -> tuple[list[int], int]:
    """Rewards sorted ascending as integers over one common denominator, for exact sums."""
    for reward in rewards:
        if reward is None or not math.isfinite(reward):
            raise ValueError(f"Rewards must be finite numbers, got {reward!r}.")
    fractions = [Fraction(r) for r in sorted(rewards)]
    denominator = max(f.denominator for f in fractions)  # float denominators are powers of 2: the max is the lcm
    return [f.numerator * (denominator // f.denominator) for f in fractions], denominator


def expected_best_of_n(rewards: list[float], n: int) -> float:
    """Unbiased estimate of E[max reward of n samples] from N >= n samples of one prompt: the mean of the maximum
    over all C(N, n) subsets of size n, in closed form. With rewards sorted ascending r_(1) <= ... <= r_(N), the
    i-th smallest is the maximum of C(i-1, n-1) subsets, so the mean is sum_i C(i-1, n-1) / C(N, n) * r_(i).

    Computed exactly (integers) and rounded once, so the estimate never falls as n grows, even by rounding.

    Rewards [2.0, 0.0, 1.0], n=2: the subsets {0,1}, {0,2}, {1,2} have maxima 2, 2, 1, so 5/3; n=1 is the mean,
    n=3 the maximum.

    >>> round(expected_best_of_n([2.0, 0.0, 1.0], 2), 3), expected_best_of_n([2.0, 0.0, 1.0], 1)
    (1.667, 1.0)
    >>> expected_best_of_n([2.0, 0.0, 1.0], 3)
    2.0
    """
    count = len(rewards)
    if not 1 <= n <= count:
        raise ValueError(f"n must be in 1..{count} (the number of samples), got {n}.")
    ints, denominator = _exact_sorted(rewards)
    total = sum(math.comb(i - 1, n - 1) * ints[i - 1] for i in range(n, count + 1))
    return total / (math.comb(count, n) * denominator)  # int / int is correctly rounded


def best_of_n_curve(rewards_by_prompt: list[list[float]]) -> list[float]:
    """`expected_best_of_n` for n = 1..N averaged over prompts; every prompt must have the same N.

    n=1 averages the means 0.5 and 1.0; n=2 the maxima:

    >>> best_of_n_curve([[0.0, 1.0], [1.0, 1.0]])
    [0.75, 1.0]
    """
    sizes = {len(r) for r in rewards_by_prompt}
    if len(sizes) != 1:
        raise ValueError(f"Every prompt needs the same number of rewards; got sizes {sorted(sizes)}.")
    count = sizes.pop()
    return [
        math.fsum(expected_best_of_n(r, n) for r in rewards_by_prompt) / len(rewards_by_prompt)
        for n in range(1, count + 1)
    ]


def kl_bound(n: int) -> float:
    """The analytic KL(best-of-n policy || base policy) bound, `log n - (n - 1) / n` nats.

    >>> kl_bound(1), round(kl_bound(4), 3)  # log 4 - 0.75
    (0.0, 0.636)
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    return math.log(n) - (n - 1) / n
