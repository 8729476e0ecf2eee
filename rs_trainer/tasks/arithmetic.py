"""Addition questions with ground-truth answers, generated deterministically from a seed.

Train and eval splits never share an (a, b) pair, so held-out accuracy measures generalisation, not recall. Beside
them, the out-of-distribution evaluation splits (`EVAL_SPLITS`) ask for the same sums in other forms, each form in
one split only, so that a recipe that wins one form and loses another shows it:

- `phrasings`: a + b asked in other words ("Compute the sum of 7 and 12.");
- `words`: the operands written in words ("What is seven plus twelve?");
- `stories`: a + b as a short word problem ("Sam has 7 apples and buys 12 more. ...");
- `subtraction` (a - b, a >= b) and `three_terms` (a + b + c), in the training question's words: another skill
  than the one trained, so they are available but not in `DEFAULT_EVAL_SPLITS`.

The two-term addition splits draw their (a, b) pairs among those the `train` split lacks; each split draws with its
own seed (`seeds.arithmetic_split_rng`), and its question templates take turns. The answer is the integer, as in
training, and `VERIFIER` judges every split.
"""

from __future__ import annotations

from rs_trainer.errors import ConfigError
from rs_trainer.run import seeds

SUFFIX = "Give only the final number."
# The verifier reads digits; a question in number words invites an answer in number words, which would measure
# the answer's format rather than the sum.
WORDS_SUFFIX = "Give only the final number, in digits."
VERIFIER = "numeric_answer"  # the completion's final number against `answer` (rs_trainer.rewards.verifiers)

PHRASINGS = (
    "Add {a} and {b}.",
    "Compute the sum of {a} and {b}.",
    "{a} plus {b} equals what?",
    "What do you get when you add {b} to {a}?",
    "Calculate {a} + {b}.",
    "What is the total of {a} and {b}?",
    "How much is {a} plus {b}?",
    "Find the sum: {a} + {b}.",
    "Work out {a} + {b}.",
    "Tell me the result of adding {a} and {b}.",
    "{a} + {b} = ?",
)
WORDS = (
    "What is {a} plus {b}?",
    "What number is {a} more than {b}?",
    "Tell me what {a} and {b} add up to.",
    "{a} added to {b} gives what number?",
    "How many is {a} together with {b}?",
    "What is {a} increased by {b}?",
)
NAMES = ("Sam", "Ana", "Omar", "Mei", "Ravi", "Lena", "Tom", "Zoe")
STORIES = (
    "{name} has {a} apples and buys {b} more. How many apples does {name} have now?",
    "A shelf holds {a} books. {name} puts {b} more books on it. How many books are on the shelf now?",
    "There are {a} birds in a tree and {b} more land in it. How many birds are in the tree?",
    "{name} walked {a} kilometres on Monday and {b} kilometres on Tuesday. How many kilometres is that in all?",
    "A box has {a} red pens and {b} blue pens. How many pens are in the box?",
    "{name} scored {a} points in the first game and {b} points in the second. What is the total score?",
    "A bus carries {a} passengers. At the next stop {b} people get on and nobody gets off. How many are on the bus?",
    "{name} saved {a} dollars in May and {b} dollars in June. How many dollars did {name} save in both months?",
)
EVAL_SPLITS = ("phrasings", "words", "stories", "subtraction", "three_terms")
# The two-term addition forms: the trained skill asked otherwise, so every run measures them by default.
DEFAULT_EVAL_SPLITS = ("phrasings", "words", "stories")
SPLITS = ("train", "test", *EVAL_SPLITS)

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))


def number_words(n: int) -> str:
    """`n` in English words.

    >>> number_words(7), number_words(42), number_words(-105), number_words(12_000)
    ('seven', 'forty-two', 'minus one hundred five', 'twelve thousand')
    """
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    for size, name in _SCALES:
        if n >= size:
            rest = n % size
            return f"{number_words(n // size)} {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError(n)  # unreachable: every n >= 100 has a scale


def split(args, name: str) -> list[dict]:
    """The rows of split `name` (one of `SPLITS`) for a recipe's `task_*` keys and `seed`."""
    lo, hi = args.task_min_operand, args.task_max_operand
    if name in ("train", "test"):
        return make_splits(args.task_num_train, args.task_num_eval, lo, hi, args.seed)[name]
    train_pairs = draw_pairs(args.task_num_train, args.task_num_eval, lo, hi, args.seed)[: args.task_num_train]
    return make_eval_split(name, args.task_num_eval_ood, train_pairs, lo, hi, args.seed)


def draw_pairs(num_train: int, num_eval: int, lo: int, hi: int, seed: int) -> list[tuple[int, int]]:
    """The distinct (a, b) pairs of the train split, then those of the test split."""
    pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
    if num_train + num_eval > len(pairs):
        raise ConfigError(
            f"builtin:arithmetic has only {len(pairs)} distinct pairs in [{lo}, {hi}]; lower `task_num_train` + "
            f"`task_num_eval` ({num_train + num_eval}) or widen `task_min_operand`/`task_max_operand`."
        )
    return seeds.arithmetic_rng(seed, lo, hi).sample(pairs, num_train + num_eval)


def _row(split: str, i: int, content: str, answer: int) -> dict:
    return {"prompt_id": f"{split}-{i:05d}", "prompt": [{"role": "user", "content": content}], "answer": str(answer)}


def make_splits(num_train: int, num_eval: int, lo: int, hi: int, seed: int) -> dict[str, list[dict]]:
    """Return `{"train": rows, "test": rows}`; each row has `prompt_id`, `prompt` (chat messages) and `answer`.

    Example: `make_splits(2, 1, 1, 3, 0)` draws 3 distinct pairs from {1,2,3}², e.g. ("What is 2 + 3? ...", "5").
    """
    chosen = draw_pairs(num_train, num_eval, lo, hi, seed)

    def rows(split: str, pairs: list) -> list[dict]:
        return [_row(split, i, f"What is {a} + {b}? {SUFFIX}", a + b) for i, (a, b) in enumerate(pairs)]

    return {"train": rows("train", chosen[:num_train]), "test": rows("test", chosen[num_train:])}


def make_eval_split(name: str, size: int, train_pairs: list, lo: int, hi: int, seed: int) -> list[dict]:
    """`size` questions of the evaluation split `name` (one of `EVAL_SPLITS`), none of them a training question:
    the addition splits leave out `train_pairs`, and subtraction and three terms are other operations. The i-th
    question takes the template `i % len(templates)` of its split, so every template is asked about as often.

    Example: operands in {1, 2} with (1, 2) trained on leave (1, 1), (2, 1) and (2, 2) to draw from.

    >>> rows = make_eval_split("words", 2, [(1, 2)], 1, 2, 0)
    >>> [(r["prompt_id"], r["prompt"][0]["content"].split("?")[0], r["answer"]) for r in rows]
    [('words-00000', 'What is one plus one', '2'), ('words-00001', 'What number is two more than one', '3')]
    """
    values = range(lo, hi + 1)
    if name in ("phrasings", "words", "stories"):
        taken = set(train_pairs)
        candidates = [(a, b) for a in values for b in values if (a, b) not in taken]
    elif name == "subtraction":
        candidates = [(a, b) for a in values for b in values if a >= b]
    elif name == "three_terms":
        candidates = range(len(values) ** 3)  # an index into values³, so that wide ranges are never listed
    else:
        raise ConfigError(f"builtin:arithmetic has no evaluation split {name!r}; choose from {list(EVAL_SPLITS)}.")
    if size > len(candidates):
        what = "pairs outside the training questions" if name not in ("subtraction", "three_terms") else "questions"
        raise ConfigError(
            f"builtin:arithmetic's `{name}` split has only {len(candidates)} {what} in [{lo}, {hi}]; lower "
            f"`task_num_eval_ood` ({size}) or `task_num_train`, widen `task_min_operand`/`task_max_operand`, or "
            f"leave `{name}` out of `eval_splits`."
        )
    chosen = seeds.arithmetic_split_rng(seed, name, lo, hi).sample(candidates, size)
    return [question(name, i, c, values) for i, c in enumerate(chosen)]


def question(name: str, i: int, chosen, values: range) -> dict:
    """The `i`-th question of evaluation split `name` about `chosen`, an (a, b) pair (an index into values³ for
    `three_terms`), in that split's `i`-th template."""
    if name == "three_terms":
        n = len(values)
        a, b, c = values[chosen // (n * n)], values[chosen // n % n], values[chosen % n]
        return _row(name, i, f"What is {a} + {b} + {c}? {SUFFIX}", a + b + c)
    a, b = chosen
    if name == "subtraction":
        return _row(name, i, f"What is {a} - {b}? {SUFFIX}", a - b)
    if name == "words":
        text = WORDS[i % len(WORDS)].format(a=number_words(a), b=number_words(b))
        return _row(name, i, f"{text[0].upper()}{text[1:]} {WORDS_SUFFIX}", a + b)
    if name == "stories":
        text = STORIES[i % len(STORIES)].format(a=a, b=b, name=NAMES[i // len(STORIES) % len(NAMES)])
        return _row(name, i, f"{text} {SUFFIX}", a + b)
    return _row(name, i, f"{PHRASINGS[i % len(PHRASINGS)].format(a=a, b=b)} {SUFFIX}", a + b)
