"""Scorers. A scorer is any function with TRL's reward-function signature::

    fn(prompts: list, completions: list, **columns) -> list[float | None]

`prompts` and `completions` are conversational (lists of messages), exactly as TRL's GRPOTrainer passes them, and
`columns` holds every other dataset column, one value per sample. `None` means "no opinion" on that sample.
So reward functions written for GRPO, such as `trl.rewards.accuracy_reward`, work here unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable

from rs_trainer.errors import ConfigError, ScorerError, first_line
from rs_trainer.rewards.sandbox import code_tests
from rs_trainer.rewards.verifiers import math_answer, numeric_answer

BUILTIN_SCORERS: dict[str, Callable] = {
    "numeric_answer": numeric_answer,
    "math_answer": math_answer,
    "code_tests": code_tests,
}
# Built-in scorers whose package is an extra: name -> (module, what to install).
BUILTIN_NEEDS = {"math_answer": ("math_verify", "'rs_trainer[math]'")}
REWARD_MODEL_PREFIX = "reward_model:"
_REWARD_MODELS: dict[tuple, Callable] = {}  # one loaded reward model per (path, device), however often named


PRM_PREFIX = "prm:"


def scorer_name(entry) -> str:
    """The name a `reward_funcs` entry scores under: the text itself, or a mapping's `name` (a PRM's default:
    `prm:<model>`).

    >>> scorer_name("numeric_answer"), scorer_name({"kind": "judge", "name": "grader"})
    ('numeric_answer', 'grader')
    >>> scorer_name({"kind": "prm", "model": "outputs/prm"}), scorer_name({"kind": "likelihood", "model": "m"})
    ('prm:outputs/prm', 'likelihood:m')
    """
    if isinstance(entry, str):
        return entry
    if entry.get("kind") in ("prm", "likelihood") and not entry.get("name"):
        return f"{entry['kind']}:{entry.get('model', '')}"
    return str(entry.get("name", ""))


def parse_scorer_entry(entry: str | dict, where: str):
    """Check a `reward_funcs` entry that carries options, before anything loads: a `kind: judge` mapping
    (`rewards.judge.JudgeSpec`), a `kind: prm` mapping or `prm:<model>` (`rewards.prm.PRMSpec`), a `kind: likelihood`
    mapping (`rewards.likelihood.LikelihoodSpec`); other names pass through. A mistake is a `ConfigError` naming
    `where` (`reward_funcs[1]`), the key and the fix."""
    if isinstance(entry, dict):
        if entry.get("kind") == "judge":
            from rs_trainer.rewards.judge import parse_judge_entry

            return parse_judge_entry(entry, where)
        if entry.get("kind") == "likelihood":
            from rs_trainer.rewards.likelihood import parse_likelihood_entry

            return parse_likelihood_entry(entry, where)
        if entry.get("kind") != "prm":
            raise ConfigError(
                f"{where}: a mapping entry needs `kind: judge`, `kind: prm` or `kind: likelihood`, got kind "
                f"{entry.get('kind')!r}."
            )
    elif not entry.startswith(PRM_PREFIX):
        return entry
    from rs_trainer.rewards.prm import parse_prm_entry

    return parse_prm_entry(entry, where)


def resolve_scorer(name: str | dict, reward_model_device: str | None = None) -> Callable:
    """A built-in name, `reward_model:<hub id or local path>`, a dotted path `package.module.function`, a
    `kind: judge` mapping (`rs_trainer.rewards.judge`, its endpoint checked here), or a process reward model,
    `prm:<path>` or a `kind: prm` mapping (`rs_trainer.rewards.prm`), or a generative reward model, a `kind:
    likelihood` mapping (`rs_trainer.rewards.likelihood`).

    A reward model (or PRM) is loaded once per (entry, device) on `reward_model_device` (default: this process's
    GPU, else the CPU), so it can live on another GPU than the policy."""
    spec = parse_scorer_entry(name, "scorer")
    if not isinstance(spec, str):
        from rs_trainer.rewards.judge import JudgeScorer, JudgeSpec
        from rs_trainer.rewards.likelihood import LikelihoodScorer, LikelihoodSpec
        from rs_trainer.rewards.prm import PRMScorer

        if isinstance(spec, JudgeSpec):
            judge = JudgeScorer(spec)
            if not spec.command:  # a server the run starts is checked once started (`Scoring.serve_judges`)
                judge.check()
            return judge
        if (spec, reward_model_device) not in _REWARD_MODELS:
            kind = LikelihoodScorer if isinstance(spec, LikelihoodSpec) else PRMScorer
            _REWARD_MODELS[spec, reward_model_device] = kind(spec, device=reward_model_device)
        return _REWARD_MODELS[spec, reward_model_device]
    if name in BUILTIN_SCORERS:
        needs = BUILTIN_NEEDS.get(name)
        if needs and importlib.util.find_spec(needs[0]) is None:
            raise ValueError(f"`{name}` needs the package {needs[0]}; install it with `pip install {needs[1]}`.")
        return BUILTIN_SCORERS[name]
    if name.startswith(REWARD_MODEL_PREFIX):
        path = name[len(REWARD_MODEL_PREFIX) :]
        if not path:
            raise ValueError(f"Scorer {name!r} names no reward model; write `reward_model:<hub id or local path>`.")
        if (path, reward_model_device) not in _REWARD_MODELS:
            from rs_trainer.rewards.reward_model import RewardModelScorer

            _REWARD_MODELS[path, reward_model_device] = RewardModelScorer(path, device=reward_model_device)
        return _REWARD_MODELS[path, reward_model_device]
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise ValueError(
            f"Scorer {name!r} is neither built-in ({sorted(BUILTIN_SCORERS)}), nor `reward_model:<path>`, nor a "
            "dotted path `package.module.function`."
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"Scorer {name!r} could not be imported: {err}") from err
    if not callable(fn):
        raise ValueError(f"Scorer {name!r} is not callable.")
    return fn


def resolve_scorers(
    key: str,
    names: list[str | dict],
    weights: list[float] | None,
    device: str | None,
    prompts: list[dict],
    dataset_name: str,
) -> tuple[dict[str, Callable], dict[str, float]]:
    """The scorers a recipe key (`reward_funcs`, `eval_reward_funcs`) names (an entry's name: `scorer_name`),
    with their weights (1.0 each when `weights` is None), after checking that `prompts` carry every ground-truth
    column they read. A scorer that cannot be loaded is refused as a `ConfigError` naming `key` and the scorer."""
    from rs_trainer.rewards.columns import check_scorer_columns

    scorers = {}
    for entry in names:
        name = scorer_name(entry)
        try:
            scorers[name] = resolve_scorer(entry, device)
        except (ValueError, OSError) as err:
            raise ConfigError(f"`{key}`: {name}: {first_line(err)}") from None
    check_scorer_columns(scorers, prompts, dataset_name)
    names = [scorer_name(entry) for entry in names]
    return scorers, dict(zip(names, weights or [1.0] * len(names), strict=True))


def score(samples: list[dict], scorers: dict[str, Callable], weights: dict[str, float]) -> list[dict]:
    """Score every sample with every scorer; return per sample `{"reward": total | None, "rewards": {name: r}}`.

    Each sample is a dict with `prompt_id`, `sample_index`, `prompt` (messages), `completion` (text) and the
    prompt's other dataset columns. The total is the weighted sum over the scorers that gave an opinion; it is
    `None` when none did. A sample whose check overran a pooled scorer's limit (`math_answer`) also gets
    `timed_out`, the names of those scorers; one whose judge replies could not be read, `judge_unparsed`; and
    with a PRM among the scorers every sample gets `step_scores`, each PRM's scores of its steps.
    """
    if not samples:
        return []
    prompts = [s["prompt"] for s in samples]
    completions = [[{"role": "assistant", "content": s["completion"]}] for s in samples]
    reserved = {"prompt", "completion", "prompt_id", "sample_index", "round", "completion_tokens", "finished"}
    columns = {k: [s.get(k) for s in samples] for k in samples[0] if k not in reserved}
    per_scorer, overran, unparsed, steps = {}, {}, {}, {}
    for name, fn in scorers.items():
        try:
            values = fn(prompts=prompts, completions=completions, **columns)
        except Exception as err:  # name the scorer, then let the round stop
            raise ScorerError(f"Scorer {name!r} raised {type(err).__name__}: {err}") from err
        values = list(values)
        if len(values) != len(samples):
            raise ScorerError(f"Scorer {name!r} returned {len(values)} rewards for {len(samples)} samples.")
        for s, v in zip(samples, values, strict=True):
            if v is not None and (not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v)):
                raise ScorerError(
                    f"Scorer {name!r} returned {v!r} for prompt_id {s['prompt_id']!r}, sample "
                    f"{s['sample_index']}; rewards must be finite numbers or None."
                )
        per_scorer[name] = values
        for i in getattr(fn, "timed_out", None) or ():  # a scorer in a killable pool: these samples overran
            overran.setdefault(i, []).append(name)
        for i in getattr(fn, "unparsed", None) or ():  # an LLM judge: no reply for these samples could be read
            unparsed.setdefault(i, []).append(name)
        if getattr(fn, "step_scores", None) is not None:  # a PRM: each sample's steps' scores
            steps[name] = fn.step_scores
    out = []
    for i in range(len(samples)):
        rewards = {name: (None if v[i] is None else float(v[i])) for name, v in per_scorer.items()}
        given = [weights[n] * r for n, r in rewards.items() if r is not None]
        out.append({"reward": sum(given) if given else None, "rewards": rewards})
        if i in overran:
            out[-1]["timed_out"] = overran[i]  # the scorers whose check this sample overran: no opinion from them
        if i in unparsed:
            out[-1]["judge_unparsed"] = unparsed[i]
        if steps:
            out[-1]["step_scores"] = {name: values[i] for name, values in steps.items()}
    return out
