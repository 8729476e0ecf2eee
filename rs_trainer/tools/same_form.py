"""Right and wrong answers of the same form: does a reward model rank by correctness, or by the answer's form?

A reward model trained on a run's own pairs can score high on its held-out pairs by learning the form of the
answers (length, wording, a trailing explanation) rather than whether the final number is right, because in those
pairs the right and the wrong answer mostly differ in form as well. Here the two sides of a pair differ only in
their final number:

- `perturbed`: the same text with its last number off by `offset` (7 -> 8): the rejected side of a same-form pair,
  for training (`same_form_pairs` of `rs-trainer reward-model`) and for measuring;
- `same_form_accuracy`: the share of pairs (a right answer, and the same answer with its number off by 1 or 2, in
  each of `FORMS`) that a scorer ranks right first, on arithmetic questions it never trained on, worded as in
  training (`heldout`) or in the task's other forms (`phrasings`, `words`, `stories`).

>>> perturbed("So 13 + 7 = 20.", 1), perturbed("The answer is 3", -4), perturbed("no digits", 1)
('So 13 + 7 = 21.', None, None)
"""

from __future__ import annotations

import re

from rs_trainer.run import seeds

FORMS = ("{x}", "The answer is {x}.", "{a} + {b} = {x}")  # what the arithmetic policy writes, bare to worked
OFFSETS = (-2, -1, 1, 2)  # a wrong answer "off by a little"
SPLITS = ("heldout", "phrasings", "words", "stories")
_LAST_INTEGER = re.compile(r"-?\d+(?!.*\d)", re.S)


def perturbed(text: str, offset: int) -> str | None:
    """`text` with its last integer moved by `offset`; None when it has no integer or the result would be negative
    (a sign in front would change the form)."""
    found = _LAST_INTEGER.search(text)
    if found is None or int(found.group()) + offset < 0:
        return None
    return text[: found.start()] + str(int(found.group()) + offset) + text[found.end() :]


def offsets(count: int) -> list[int]:
    """The first `count` offsets of the same-form pairs made for training: +1, -1, +2, -2, ...

    >>> offsets(5)
    [1, -1, 2, -2, 3]
    """
    return [(i // 2 + 1) * (1 if i % 2 == 0 else -1) for i in range(count)]


def questions(split: str, count: int, lo: int, hi: int, train_pairs: set, seed: int) -> list[dict]:
    """`count` arithmetic questions of `split` whose (a, b) a run with training pairs `train_pairs` never trained
    on: `heldout` worded as the training questions, the others as the task's evaluation split of that name. Each
    row has `prompt_id`, `prompt`, `answer`, and `a`, `b` for the worked form.

    >>> [(q["prompt_id"], q["a"], q["b"]) for q in questions("heldout", 2, 1, 3, {(1, 1), (1, 2)}, 0)]
    [('same-form-heldout-00000', 3, 3), ('same-form-heldout-00001', 3, 2)]
    """
    from rs_trainer.tasks import arithmetic

    values = range(lo, hi + 1)
    candidates = [(a, b) for a in values for b in values if (a, b) not in train_pairs]
    if count > len(candidates):
        raise ValueError(
            f"only {len(candidates)} sums in [{lo}, {hi}] lie outside the run's training questions; "
            f"lower `same_form_questions` ({count})"
        )
    chosen = seeds.same_form_rng(seed, split, lo, hi).sample(candidates, count)
    rows = []
    for i, (a, b) in enumerate(chosen):
        if split == "heldout":
            content = f"What is {a} + {b}? {arithmetic.SUFFIX}"
        else:
            content = arithmetic.question(split, i, (a, b), values)["prompt"][0]["content"]
        rows.append(
            {"prompt_id": f"same-form-{split}-{i:05d}", "prompt": [{"role": "user", "content": content}]}
            | {"answer": str(a + b), "a": a, "b": b}
        )
    return rows


def pairs(rows: list[dict]) -> list[tuple[list[dict], str, str]]:
    """(prompt, right, wrong) for every question, form and offset."""
    out = []
    for row in rows:
        for form in FORMS:
            right = form.format(a=row["a"], b=row["b"], x=int(row["answer"]))
            for offset in OFFSETS:
                wrong = perturbed(right, offset)
                if wrong is not None:
                    out.append((row["prompt"], right, wrong))
    return out


def same_form_accuracy(scorer, rows: list[dict]) -> float:
    """The share of same-form pairs of `rows` (`pairs`) whose right answer `scorer` rates strictly above the
    wrong one. Each distinct text is scored once."""
    found = pairs(rows)
    texts = sorted({(repr(p), c) for p, right, wrong in found for c in (right, wrong)})
    prompt_of = {repr(p): p for p, _, _ in found}
    scores = scorer([prompt_of[p] for p, _ in texts], [[{"role": "assistant", "content": c}] for _, c in texts])
    score = dict(zip(texts, scores, strict=True))
    return sum(score[repr(p), right] > score[repr(p), wrong] for p, right, wrong in found) / len(found)
